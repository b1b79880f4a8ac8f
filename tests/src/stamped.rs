//! Packet sockets that say when the kernel saw each frame (`SO_TIMESTAMPNS`), with a receive
//! buffer large enough for a 10,000 frames/s stream and the socket's own drop count: the
//! captures of the QEMU tests, on taps and underlays.
use std::{
    os::fd::{AsRawFd, OwnedFd},
    time::{Duration, SystemTime},
};

use anyhow::Result;

use crate::rig::{Netns, packet_socket, recv_timeout};

const SOL_PACKET: i32 = 263;
const PACKET_STATISTICS: i32 = 6;

/// A packet socket on `iface` in `ns` receiving `ethertype` (`ETH_P_ALL` to see what the
/// device transmits too), stamped, returning from a receive after at most 50 ms.
pub fn stamped_socket(ns: &Netns, iface: &str, ethertype: u16) -> Result<OwnedFd> {
    let fd = packet_socket(ns, iface, ethertype)?;
    let set = |level: i32, name: i32, value: i32| -> Result<()> {
        // SAFETY: setsockopt with an int on a socket we own.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                (&raw const value).cast(),
                size_of::<i32>() as u32,
            )
        };
        anyhow::ensure!(rc == 0, "setsockopt: {}", std::io::Error::last_os_error());
        Ok(())
    };
    set(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 64 << 20)?;
    set(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
    recv_timeout(&fd, Duration::from_millis(50))?;
    Ok(fd)
}

/// A frame received on a [`stamped_socket`]: its length in `buf`, its packet type
/// (`PACKET_OUTGOING`, `PACKET_HOST`, ...) and when the kernel saw it. `None` on a timeout.
pub fn recv_stamped(fd: &OwnedFd, buf: &mut [u8]) -> Option<(usize, u8, SystemTime)> {
    let mut control = [0u64; 16];
    // SAFETY: zeroed plain-data structs, then pointed at buffers that outlive the call.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut sll).cast();
    msg.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = size_of_val(&control);
    // SAFETY: recvmsg into the buffers above.
    let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &raw mut msg, 0) };
    if n <= 0 {
        return None;
    }
    let mut at = SystemTime::now();
    // SAFETY: walking the control messages recvmsg filled in.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                at = SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
            }
            c = libc::CMSG_NXTHDR(&raw const msg, c);
        }
    }
    Some((n as usize, sll.sll_pkttype, at))
}

/// The frames the socket itself dropped so far (its buffer full): 0, or a capture is not
/// trustworthy.
pub fn socket_drops(fd: &OwnedFd) -> u32 {
    let mut stats = [0u32; 2];
    let mut len = size_of_val(&stats) as u32;
    // SAFETY: PACKET_STATISTICS fills struct tpacket_stats { packets, drops }.
    unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            PACKET_STATISTICS,
            stats.as_mut_ptr().cast(),
            &raw mut len,
        )
    };
    stats[1]
}

/// Milliseconds from `a` to `b` (negative if `b` is earlier).
pub fn ms(a: SystemTime, b: SystemTime) -> f64 {
    match b.duration_since(a) {
        Ok(d) => d.as_secs_f64() * 1000.0,
        Err(e) => -e.duration().as_secs_f64() * 1000.0,
    }
}
