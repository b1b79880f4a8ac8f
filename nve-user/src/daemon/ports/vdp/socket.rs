//! A packet socket on one interface for one ethertype (ECP's, LLDP's): whole Ethernet
//! frames in and out, incoming only (the kernel shows a protocol-bound socket no outgoing
//! frames; `PACKET_OUTGOING` ones are skipped anyway).
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use tokio::io::{Interest, unix::AsyncFd};

/// Largest frame read (a jumbo frame).
const FRAME_MAX: usize = 9216;

pub struct PacketSocket {
    fd: AsyncFd<OwnedFd>,
    ifindex: i32,
    protocol: u16,
}

/// An interface's index and MAC, by name, in this network namespace.
pub fn interface(name: &str) -> io::Result<(u32, [u8; 6])> {
    let ifindex = crate::netlink::ifindex(name).ok_or(io::ErrorKind::NotFound)?;
    // SAFETY: a plain socket for the ioctl, closed by OwnedFd.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a descriptor we just opened.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; the name fits (if_nametoindex found it).
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr of the ifreq we own.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the ioctl set the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(data) {
        *d = s as u8;
    }
    Ok((ifindex, mac))
}

fn sockaddr(ifindex: i32, protocol: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = protocol.to_be();
    addr.sll_ifindex = ifindex;
    addr.sll_halen = 6;
    addr
}

impl PacketSocket {
    /// Opens and binds a socket for `protocol` frames on `ifindex`.
    pub fn open(ifindex: u32, protocol: u16) -> io::Result<Self> {
        let flags = libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
        // SAFETY: socket(2) with constant arguments.
        let raw = unsafe { libc::socket(libc::AF_PACKET, flags, i32::from(protocol.to_be())) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a descriptor we just opened.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let ifindex = i32::try_from(ifindex).map_err(|_| io::ErrorKind::InvalidInput)?;
        let addr = sockaddr(ifindex, protocol);
        // SAFETY: addr is a valid sockaddr_ll of the length given.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the OwnedFd keeps its descriptor open for as long as the AsyncFd that
        // owns it lives.
        let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
        Ok(Self {
            fd,
            ifindex,
            protocol,
        })
    }

    /// The next frame another host sent, whole.
    pub async fn recv(&self) -> io::Result<Vec<u8>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let got = guard.try_io(|fd| {
                let mut buf = vec![0u8; FRAME_MAX];
                // SAFETY: sockaddr_ll is plain data.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = size_of::<libc::sockaddr_ll>() as u32;
                // SAFETY: buf and from are ours, of the lengths given.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&raw mut from).cast(),
                        &mut len,
                    )
                };
                if n < 0 {
                    return Err(io::Error::last_os_error());
                }
                buf.truncate(n as usize);
                Ok((buf, from.sll_pkttype))
            });
            match got {
                Ok(Ok((_, pkttype))) if pkttype == libc::PACKET_OUTGOING => continue,
                Ok(result) => return result.map(|(buf, _)| buf),
                Err(_would_block) => continue,
            }
        }
    }

    /// Sends a whole frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let addr = sockaddr(self.ifindex, self.protocol);
        // SAFETY: frame and addr are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                self.fd.get_ref().as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Frames the kernel dropped for a full receive buffer since the last call.
    pub fn drops(&self) -> u64 {
        // SAFETY: tpacket_stats is plain data.
        let mut stats: libc::tpacket_stats = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::tpacket_stats>() as u32;
        // SAFETY: PACKET_STATISTICS fills the struct of the length given.
        let ok = unsafe {
            libc::getsockopt(
                self.fd.get_ref().as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&raw mut stats).cast(),
                &mut len,
            )
        };
        if ok < 0 { 0 } else { u64::from(stats.tp_drops) }
    }
}
