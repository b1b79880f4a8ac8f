//! VMs behind real tap devices, as QEMU runs them: a relay (the "hypervisor") moves frames
//! with their virtio-net headers between the host's tap (the port nve serves) and a tap in
//! the VM's namespace (the guest's NIC), and records what the host's tap delivered: frame
//! sizes and GSO types, so tests can see whether large TCP segments arrive whole.
use std::{
    fs::File,
    io::{Read, Write},
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
};

use anyhow::{Context as _, Result, bail};

use crate::rig::{Netns, Vm, mac_str};

const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;
const IFF_VNET_HDR: i16 = 0x4000;
const TUNSETIFF: u64 = 0x4004_54ca;
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const TUN_F_CSUM: u64 = 0x01;
const TUN_F_TSO4: u64 = 0x02;
const TUN_F_TSO6: u64 = 0x04;
/// struct virtio_net_hdr (no mergeable buffers): the tap's default vnet header size.
pub const VNET_HDR_LEN: usize = 10;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;

/// Opens tap `name` in `ns` with virtio-net headers and TCP offloads, as QEMU does.
pub fn open_tap(ns: &Netns, name: &str) -> Result<File> {
    let ns_path = ns.path();
    let name = name.to_string();
    // setns affects only the calling thread: open the tap from a thread of its own.
    thread::spawn(move || -> Result<File> {
        let target =
            File::open(&ns_path).with_context(|| format!("opening {}", ns_path.display()))?;
        // SAFETY: setns on this thread with a namespace fd we own.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        let tun = File::options()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .context("/dev/net/tun")?;
        let mut ifr = [0u8; 40];
        ifr[..name.len()].copy_from_slice(name.as_bytes());
        ifr[16..18].copy_from_slice(&(IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).to_ne_bytes());
        // SAFETY: TUNSETIFF with a 40-byte struct ifreq.
        if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, ifr.as_mut_ptr()) } != 0 {
            bail!("TUNSETIFF {name}: {}", std::io::Error::last_os_error());
        }
        // SAFETY: TUNSETOFFLOAD takes the flags by value.
        if unsafe {
            libc::ioctl(
                tun.as_raw_fd(),
                TUNSETOFFLOAD,
                TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
            )
        } != 0
        {
            bail!("TUNSETOFFLOAD {name}: {}", std::io::Error::last_os_error());
        }
        Ok(tun)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("tap thread panicked"))?
}

/// What the host's tap handed the hypervisor.
#[derive(Clone, Debug, Default)]
pub struct Delivered {
    pub frames: u64,
    /// Frames with a GSO type other than NONE.
    pub gso_frames: u64,
    pub tcpv4_gso_frames: u64,
    /// Largest frame (without the vnet header).
    pub max_len: usize,
}

/// A VM on a tap: `port` in the host namespace, `eth0` in the VM's, joined by a relay.
pub struct TapVm {
    pub vm: Vm,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    delivered: Arc<Mutex<Delivered>>,
}

impl TapVm {
    pub fn new(tag: &str, host: &Netns, port: &str, mac: [u8; 6], ip: &str) -> Result<Self> {
        let ns = Netns::new(tag)?;
        let host_tap = open_tap(host, port)?;
        let guest_tap = open_tap(&ns, "eth0")?;
        host.ip(&["link", "set", port, "mtu", "1450", "up"])?;
        ns.ip(&[
            "link",
            "set",
            "eth0",
            "address",
            &mac_str(mac),
            "mtu",
            "1450",
            "up",
        ])?;
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        let stop = Arc::new(AtomicBool::new(false));
        let delivered = Arc::new(Mutex::new(Delivered::default()));
        let to_guest = relay(
            host_tap.try_clone()?,
            guest_tap.try_clone()?,
            stop.clone(),
            Some(delivered.clone()),
        );
        let to_host = relay(guest_tap, host_tap, stop.clone(), None);
        let vm = Vm {
            ns,
            mac,
            ip: ip.into(),
        };
        Ok(Self {
            vm,
            stop,
            threads: vec![to_guest, to_host],
            delivered,
        })
    }

    pub fn delivered(&self) -> Delivered {
        self.delivered.lock().expect("relay poisoned").clone()
    }

    pub fn reset_delivered(&self) {
        *self.delivered.lock().expect("relay poisoned") = Delivered::default();
    }
}

impl Drop for TapVm {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Copies frames (vnet header included) from `from` to `to` until `stop`; polls so it
/// notices `stop` within 100 ms.
fn relay(
    mut from: File,
    mut to: File,
    stop: Arc<AtomicBool>,
    record: Option<Arc<Mutex<Delivered>>>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = vec![0u8; 70_000];
        while !stop.load(Ordering::Relaxed) {
            let mut pfd = libc::pollfd {
                fd: from.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd we own.
            if unsafe { libc::poll(&mut pfd, 1, 100) } <= 0 {
                continue;
            }
            let Ok(n) = from.read(&mut buf) else { break };
            if n < VNET_HDR_LEN {
                continue;
            }
            if let Some(rec) = &record {
                let mut d = rec.lock().expect("relay poisoned");
                let gso = buf[1] & 0x7f;
                d.frames += 1;
                d.gso_frames += u64::from(gso != GSO_NONE);
                d.tcpv4_gso_frames += u64::from(gso == GSO_TCPV4);
                d.max_len = d.max_len.max(n - VNET_HDR_LEN);
            }
            // A full guest queue drops the frame, as a real NIC would.
            let _ = to.write(&buf[..n]);
        }
    })
}
