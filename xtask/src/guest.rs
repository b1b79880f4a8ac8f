//! The QEMU guest of the real-hypervisor tests, built from Debian packages and cached outside
//! the clone: bookworm's kernel (extracted from its .deb with `dpkg-deb -x`, not installed),
//! the modules virtio-net over PCI needs (Debian builds them as modules), and a static busybox
//! whose `/init` loads them, configures `eth0` from the kernel command line and says
//! `NVE-GUEST-READY` on the serial console. The initramfs (newc cpio, uncompressed: nothing to
//! inflate under TCG) is written here, so no cpio tool is needed.
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::cmd::{self, output, step};

/// The kernel: Debian's metapackage, resolved to the versioned image package it depends on.
const KERNEL_META: &str = "linux-image-amd64";
const BUSYBOX: &str = "/bin/busybox";
/// The modules the guest's NIC needs, loaded with their dependencies (read from each
/// module's `.modinfo`), dependencies first.
const ROOT_MODULES: &[&str] = &["virtio_pci", "virtio_net"];

/// `/init`: mounts, loads the modules in the order of `/modules.order`, then brings up `eth0`
/// with `nve.ip=ADDR/LEN` (and `nve.mac=MAC`, if given) from the kernel command line; with
/// `nve.ping=ADDR`, pings ADDR once it is up (a try a second, for 30 s) and says whether it
/// answered (`NVE-GUEST-PING-OK ADDR` or `NVE-GUEST-PING-FAILED ADDR`): a guest whose console
/// a test can only read (libvirt's file serial) still shows what it reaches. With
/// `nve.rxreport`, it then says `NVE-GUEST-RX N` whenever eth0's received-packet counter
/// changed (checked every 0.1 s): what the guest got, counted by the guest.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do
    insmod "/lib/modules/$m.ko" || echo "NVE-GUEST-FAILED insmod $m"
done
ip=; mac=; ping=; rxreport=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        nve.ip=*) ip="${arg#nve.ip=}" ;;
        nve.mac=*) mac="${arg#nve.mac=}" ;;
        nve.ping=*) ping="${arg#nve.ping=}" ;;
        nve.rxreport) rxreport=1 ;;
    esac
done
n=0
while [ ! -e /sys/class/net/eth0 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
ip link set lo up
[ -n "$mac" ] && ip link set eth0 address "$mac"
ip link set eth0 up
[ -n "$ip" ] && ip addr add "$ip" dev eth0
if ip -o addr show dev eth0 | grep -q inet; then
    echo "NVE-GUEST-READY $(cat /sys/class/net/eth0/address) $ip"
else
    echo "NVE-GUEST-FAILED eth0"
fi
if [ -n "$ping" ]; then
    n=0
    until ping -c 1 -W 1 "$ping" >/dev/null 2>&1; do
        n=$((n + 1))
        if [ $n -ge 30 ]; then echo "NVE-GUEST-PING-FAILED $ping"; break; fi
        sleep 0.2
    done
    [ $n -lt 30 ] && echo "NVE-GUEST-PING-OK $ping"
fi
last=
while [ -n "$rxreport" ]; do
    read -r n < /sys/class/net/eth0/statistics/rx_packets
    [ "$n" != "$last" ] && echo "NVE-GUEST-RX $n" && last=$n
    sleep 0.1
done
while :; do sleep 3600; done
"#;

/// The guest's files.
pub struct Guest {
    pub dir: PathBuf,
}

/// Returns the cached guest for the current kernel package and init script, building it
/// first if there is none.
pub fn build() -> Result<Guest> {
    let image = kernel_package()?;
    let version = output("apt-cache", &["policy", &image])
        .and_then(|p| {
            p.lines()
                .find_map(|l| l.trim().strip_prefix("Candidate: ").map(str::to_string))
        })
        .filter(|v| v != "(none)")
        .with_context(|| format!("no candidate for {image}: run `apt-get update`"))?;
    let busybox = fs::read(BUSYBOX)
        .with_context(|| format!("{BUSYBOX} (busybox-static): run `cargo xtask setup` as root"))?;
    let key = format!(
        "{image}_{version}-{:016x}",
        fnv1a(&[INIT.as_bytes(), ROOT_MODULES.join(",").as_bytes(), &busybox])
    );
    let dir = cache_root()?.join(&key);
    if dir.join("bzImage").exists() && dir.join("initrd.cpio").exists() {
        step(&format!("QEMU guest ({image} {version}): cached"));
        return Ok(Guest { dir });
    }
    step(&format!(
        "QEMU guest: building from {image} {version} and busybox-static into {}",
        dir.display()
    ));
    let work = cache_root()?.join(format!(".build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let result = build_into(&work, &image, &version, &busybox);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&work);
        return Err(e);
    }
    let out = work.join("out");
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&out, &dir).with_context(|| format!("moving the guest to {}", dir.display()))?;
    let _ = fs::remove_dir_all(&work);
    Ok(Guest { dir })
}

/// `~/.cache/nve/guest`: outside the clone, so fresh clones on this machine reuse it.
fn cache_root() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/nve/guest"))
}

/// The versioned kernel image package `linux-image-amd64` depends on.
fn kernel_package() -> Result<String> {
    let deps = output("apt-cache", &["depends", "--important", KERNEL_META])
        .with_context(|| format!("apt-cache depends {KERNEL_META}: run `apt-get update`"))?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .with_context(|| format!("{KERNEL_META} depends on no linux-image-*: {deps}"))
}

fn build_into(work: &Path, image: &str, version: &str, busybox: &[u8]) -> Result<()> {
    cmd::run(
        Command::new("apt-get")
            .args(["download", "-q", "-o", "APT::Sandbox::User=root"])
            .arg(format!("{image}={version}"))
            .current_dir(work),
    )?;
    let deb = fs::read_dir(work)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let tree = work.join("pkg");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    let vmlinuz = fs::read_dir(tree.join("boot"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("no /boot/vmlinuz-* in the kernel package")?;
    let modules_dir = fs::read_dir(tree.join("lib/modules"))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .next()
        .context("no /lib/modules/<release> in the kernel package")?;
    let available = index_modules(&modules_dir)?;
    let order = load_order(&available)?;

    let mut cpio = Newc::default();
    for d in ["bin", "dev", "proc", "sys", "lib", "lib/modules"] {
        cpio.dir(d);
    }
    // The kernel opens /dev/console before devtmpfs is mounted: init's stdout is the serial.
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, busybox);
    cpio.file("init", 0o755, INIT.as_bytes());
    cpio.file(
        "modules.order",
        0o644,
        format!("{}\n", order.join("\n")).as_bytes(),
    );
    for name in &order {
        let path = &available[name];
        let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        cpio.file(&format!("lib/modules/{name}.ko"), 0o644, &data);
    }

    let out = work.join("out");
    fs::create_dir_all(&out)?;
    fs::copy(&vmlinuz, out.join("bzImage"))?;
    fs::write(out.join("initrd.cpio"), cpio.finish())?;
    fs::write(
        out.join("SOURCE"),
        format!("{image} {version}\nmodules: {}\n", order.join(" ")),
    )?;
    Ok(())
}

/// Module name (`virtio_net`) -> its .ko file, for every module of the package.
fn index_modules(dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let path = e?.path();
            if path.is_dir() {
                stack.push(path);
            } else if let Some(stem) = path.file_name().and_then(|n| n.to_str()) {
                if stem.ends_with(".ko.xz") || stem.ends_with(".ko.zst") || stem.ends_with(".ko.gz")
                {
                    bail!(
                        "{} is compressed: this guest build loads plain .ko files",
                        path.display()
                    );
                }
                if let Some(name) = stem.strip_suffix(".ko") {
                    found.insert(name.replace('-', "_"), path);
                }
            }
        }
    }
    Ok(found)
}

/// [`ROOT_MODULES`] and their dependencies, each after what it depends on.
fn load_order(available: &BTreeMap<String, PathBuf>) -> Result<Vec<String>> {
    fn visit(
        name: &str,
        available: &BTreeMap<String, PathBuf>,
        order: &mut Vec<String>,
        path: &mut Vec<String>,
    ) -> Result<()> {
        if order.iter().any(|m| m == name) {
            return Ok(());
        }
        if path.iter().any(|m| m == name) {
            bail!("module dependency cycle through {name}");
        }
        let file = available
            .get(name)
            .with_context(|| format!("module {name} is not in the kernel package"))?;
        let data = fs::read(file)?;
        path.push(name.to_string());
        for dep in modinfo_depends(&data) {
            visit(&dep, available, order, path)?;
        }
        path.pop();
        order.push(name.to_string());
        Ok(())
    }
    let mut order = Vec::new();
    for root in ROOT_MODULES {
        visit(root, available, &mut order, &mut Vec::new())?;
    }
    Ok(order)
}

/// The `depends=` field of a module's `.modinfo` section (NUL-separated `key=value`s).
fn modinfo_depends(ko: &[u8]) -> Vec<String> {
    const KEY: &[u8] = b"\0depends=";
    let Some(at) = ko.windows(KEY.len()).position(|w| w == KEY) else {
        return Vec::new();
    };
    let rest = &ko[at + KEY.len()..];
    let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.replace('-', "_"))
        .collect()
}

/// A newc ("070701") cpio archive, the initramfs format the kernel unpacks.
#[derive(Default)]
struct Newc {
    buf: Vec<u8>,
    ino: u32,
}

impl Newc {
    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: reproducible
            u32::try_from(data.len()).expect("initramfs file under 4 GiB"),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            u32::try_from(name.len() + 1).expect("short name"),
            0, // check
        ];
        self.buf.extend_from_slice(b"070701");
        for f in fields {
            self.buf.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, (0, 0), &[]);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.entry(name, 0o100000 | perm, (0, 0), data);
    }

    fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020600, (major, minor), &[]);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.buf
    }
}

/// FNV-1a (64 bit): a cache key that stays the same across Rust releases, unlike std's hasher.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Part boundaries count: ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_depends_reads_the_field() {
        let ko = b"\x7fELF...\0license=GPL\0depends=virtio_ring,virtio,net_failover\0name=x\0";
        assert_eq!(
            modinfo_depends(ko),
            ["virtio_ring", "virtio", "net_failover"]
        );
        assert!(modinfo_depends(b"\0depends=\0name=failover\0").is_empty());
    }

    #[test]
    fn newc_entries_are_aligned_and_end_with_the_trailer() {
        let mut c = Newc::default();
        c.dir("bin");
        c.file("init", 0o755, b"#!/bin/sh\n");
        let out = c.finish();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        // Header 110 bytes + "bin\0" = 114, padded to 116.
        assert_eq!(&out[116..122], b"070701");
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn fnv1a_separates_parts() {
        assert_ne!(fnv1a(&[b"ab", b"c"]), fnv1a(&[b"a", b"bc"]));
        assert_eq!(fnv1a(&[b"x"]), fnv1a(&[b"x"]));
    }
}
