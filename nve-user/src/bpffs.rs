//! Where the pins live: a bpffs on /sys/fs/bpf that outlives the daemon, however it was
//! started in a network namespace.
//!
//! `nsenter --net=...` and systemd's `NetworkNamespacePath=` keep the host's mount
//! namespace, and its /sys/fs/bpf. `ip netns exec` does not: it gives the process a private
//! mount namespace with a fresh /sys, where a bpffs mounted on /sys/fs/bpf dies with the
//! process, and with it every pinned link and map (a restart then rebuilds the dataplane
//! and loses traffic). So before anything is pinned the daemon checks that its /sys/fs/bpf
//! is the host's; where it is not, it joins the host's mount namespace (that of pid 1, or
//! of the process that started it), and where it cannot, it refuses to start.
use std::{
    ffi::CStr,
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::PathBuf,
};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const BPFFS: &CStr = c"/sys/fs/bpf";

/// What [`settle`] did, for the log once logging is up.
#[derive(Debug)]
pub enum Settled {
    /// /sys/fs/bpf was the host's bpffs already.
    Shared,
    /// It was missing in the host's mount namespace and is mounted now.
    Mounted,
    /// This process was in a private mount namespace (`ip netns exec`); it joined the
    /// host's, of process `pid`.
    Joined { pid: u32, mounted: bool },
    /// /sys/fs/bpf is a bpffs already, and pid 1 may not be inspected with this process's
    /// capabilities (systemd's `CapabilityBoundingSet=`), so it is taken as the host's.
    Bounded,
}

impl std::fmt::Display for Settled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Settled::Shared => write!(f, "pins under the host's bpffs on /sys/fs/bpf"),
            Settled::Mounted => write!(f, "mounted bpffs on /sys/fs/bpf (the host's had none)"),
            Settled::Bounded => write!(
                f,
                "pins under the bpffs on /sys/fs/bpf (pid 1's mount namespace is not readable \
                 with this process's capabilities: not compared)"
            ),
            Settled::Joined { pid, mounted } => write!(
                f,
                "started in a private mount namespace (ip netns exec?), whose /sys/fs/bpf \
                 would die with the daemon: joined the mount namespace of pid {pid}{}",
                if *mounted {
                    ", and mounted bpffs on its /sys/fs/bpf"
                } else {
                    ""
                }
            ),
        }
    }
}

/// Makes /sys/fs/bpf the host's bpffs for this process (see the module doc). Must run
/// before any thread is started: a multithreaded process cannot change mount namespace.
pub fn settle() -> anyhow::Result<Settled> {
    // With bounded capabilities pid 1 cannot be read, other processes' namespaces only
    // where theirs are bounded too: guessing the host from those could pick a sandbox's.
    // Joining would need CAP_SYS_ADMIN anyway. A fresh /sys (`ip netns exec`) has no bpffs.
    if pid1_unreadable() && is_bpffs(BPFFS) {
        return Ok(Settled::Bounded);
    }
    let Some(host) = host_process() else {
        // No other mount namespace can be seen: this one is the host's as far as we know.
        return mount_if_missing().map(|m| if m { Settled::Mounted } else { Settled::Shared });
    };
    if mount_ns(&format!("/proc/{host}")) == mount_ns("/proc/self") {
        return mount_if_missing().map(|m| if m { Settled::Mounted } else { Settled::Shared });
    }
    let theirs = PathBuf::from(format!("/proc/{host}/root/sys/fs/bpf"));
    let shared = is_bpffs(BPFFS)
        && std::fs::metadata(&theirs)
            .and_then(|t| std::fs::metadata("/sys/fs/bpf").map(|o| o.dev() == t.dev()))
            .unwrap_or(false);
    if shared {
        return Ok(Settled::Shared);
    }
    join_mount_ns(host)?;
    let mounted = mount_if_missing()?;
    Ok(Settled::Joined { pid: host, mounted })
}

/// The process whose mount namespace is the host's: pid 1, or where that cannot be read
/// (some sandboxes hide it), one in the mount namespace most processes share. Not the
/// parent: under `ip netns exec NS sh -c ...` the shell shares the private namespace, and a
/// daemon started in the background may have been handed to pid 1 already. Only processes
/// started by `ip netns exec` (each in a namespace of its own) are outside the host's.
fn host_process() -> Option<u32> {
    if mount_ns("/proc/1").is_some() {
        return Some(1);
    }
    let me = std::process::id();
    let mut by_ns: std::collections::BTreeMap<PathBuf, (usize, u32)> = Default::default();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Some(ns) = mount_ns(&format!("/proc/{pid}")) {
            let seen = by_ns.entry(ns).or_insert((0, pid));
            seen.0 += 1;
        }
    }
    by_ns
        .into_values()
        .max_by_key(|&(n, _)| n)
        .map(|(_, pid)| pid)
}

/// Whether pid 1's mount namespace is there but not ours to read (EACCES: pid 1 holds
/// capabilities this process lacks).
fn pid1_unreadable() -> bool {
    matches!(std::fs::read_link("/proc/1/ns/mnt"),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied)
}

/// The mount namespace of the process at `proc_dir` (`mnt:[inode]`).
fn mount_ns(proc_dir: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("{proc_dir}/ns/mnt")).ok()
}

fn join_mount_ns(pid: u32) -> anyhow::Result<()> {
    let path = format!("/proc/{pid}/ns/mnt");
    let refuse = |why: String| {
        anyhow::anyhow!(
            "this process has a private mount namespace (ip netns exec?) whose /sys/fs/bpf \
             is not the host's, so pinned programs and maps would die with the daemon and a \
             restart would lose traffic; joining the host's mount namespace ({path}) failed: \
             {why}. Start the daemon with `nsenter --net=/run/netns/NAME nve daemon ...` \
             instead"
        )
    };
    let ns = File::open(&path).map_err(|e| refuse(e.to_string()))?;
    // setns moves the root and working directory to the new namespace's: relative paths
    // given on the command line (--config, --peers) must still mean what they meant.
    let cwd = std::env::current_dir();
    // SAFETY: setns on a descriptor we own; the process is still single-threaded.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
        return Err(refuse(std::io::Error::last_os_error().to_string()));
    }
    if let Ok(cwd) = cwd {
        std::env::set_current_dir(&cwd).map_err(|e| {
            anyhow::anyhow!(
                "back to {} after joining the host's mount namespace: {e}",
                cwd.display()
            )
        })?;
    }
    Ok(())
}

fn is_bpffs(path: &CStr) -> bool {
    // SAFETY: statfs into a zeroed struct we own, with a NUL-terminated path.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(path.as_ptr(), &mut st) == 0 && st.f_type == BPF_FS_MAGIC }
}

/// Mounts bpffs on /sys/fs/bpf unless one is there; whether it mounted one.
fn mount_if_missing() -> anyhow::Result<bool> {
    if is_bpffs(BPFFS) {
        return Ok(false);
    }
    // SAFETY: mount with static, NUL-terminated arguments.
    let rc = unsafe {
        libc::mount(
            c"bpffs".as_ptr(),
            BPFFS.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        anyhow::bail!(
            "mounting bpffs on /sys/fs/bpf: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(true)
}
