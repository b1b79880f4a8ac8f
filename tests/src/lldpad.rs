//! lldpad (Debian's package) as the VDP station (IEEE 802.1Qbg-2012) in a rig namespace,
//! driven by `vdptool` the way a hypervisor's scripts drive it; or in lldpad's own bridge
//! role, for golden captures and for checking the rig itself (that bridge accepts
//! everything and never assigns a VID: not a reference for nve).
//!
//! lldpad runs with a private /dev/shm (it refuses to start while /dev/shm/lldpad.state
//! names a live pid, and network namespaces do not isolate it) and a config written to a
//! directory of its own; stopped and everything removed on drop. vdptool's exit code only
//! says lldpad took a command: the answer is what it prints, parsed here
//! ([`parse_response`], [`parse_list`]); tests/data/vdp/output holds real outputs.
use std::{
    fmt,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::rig::{Netns, mac_str};

/// How long lldpad may take to answer `vdptool -p` and to turn VDP on (measured: pid
/// after 60-80 ms, VDP 1-2 s after start).
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// vdptool -W waits 5 s for the bridge's answer; past this it is stuck.
const VDPTOOL_TIMEOUT: Duration = Duration::from_secs(10);

/// The ECP and VDP timer exponents (10 us x 2^exp) and retries lldpad advertises in its
/// EVB TLV. Each side uses the larger of its own and the peer's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// ECP retransmission (RTE).
    pub ecprte: u8,
    /// ECP retries after the first send (R), at most 7.
    pub ecpretries: u8,
    /// VDP resource wait delay (RWD): the station's response timeout is
    /// 1.5 x ((1 + 2R) x 2^RTE + 2^RWD).
    pub vdprwd: u8,
    /// VDP keep-alive (RKA): the station re-sends each VSI every 2^RKA.
    pub vdprka: u8,
}

impl Timers {
    /// lldpad's own defaults: RTE 8 (2.56 ms), 3 retries, RWD and RKA 20 (10.5 s).
    pub const LLDPAD_DEFAULTS: Timers = Timers {
        ecprte: 8,
        ecpretries: 3,
        vdprwd: 20,
        vdprka: 20,
    };

    /// Keep-alives every 2^exp x 10 us.
    pub fn keepalive(&self) -> Duration {
        Duration::from_micros(10 << self.vdprka)
    }

    /// How long the station waits for the bridge's answer before it gives up.
    pub fn response_timeout(&self) -> Duration {
        let ticks = (1 + 2 * u64::from(self.ecpretries)) * (1 << self.ecprte) + (1 << self.vdprwd);
        Duration::from_micros(ticks * 15)
    }
}

impl Default for Timers {
    /// Rig timers: RTE 8, 3 retries, RWD and RKA 16 (655 ms): keep-alives every 655 ms and
    /// a response timeout of 1.01 s, inside the 5 s `vdptool -W` waits (with lldpad's RWD
    /// 20 vdptool gives up first and prints nothing).
    fn default() -> Self {
        Timers {
            ecprte: 8,
            ecpretries: 3,
            vdprwd: 16,
            vdprka: 16,
        }
    }
}

/// The EVB role lldpad plays on the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The hypervisor's side: what nve's bridge talks to.
    Station,
    /// lldpad's own bridge (`evbmode = "bridge"`): echoes every request with status 0x40.
    Bridge,
}

/// What the generated lldpad config says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub role: Role,
    pub timers: Timers,
    /// `evbgpid`: GroupID filters (formats 3, 4); they also need the bridge's BGID heard.
    pub gpid: bool,
}

impl Default for Config {
    /// A station with GroupID support and the rig's short timers.
    fn default() -> Self {
        Config {
            role: Role::Station,
            timers: Timers::default(),
            gpid: true,
        }
    }
}

impl Config {
    /// lldpad's bridge role with the rig's timers (reflective relay capable, BGID).
    pub fn bridge() -> Self {
        Config {
            role: Role::Bridge,
            ..Config::default()
        }
    }

    /// The lldpad.conf for `iface` (libconfig syntax; lldpad rewrites it as it runs).
    pub fn render(&self, iface: &str) -> String {
        let (mode, rrcap) = match self.role {
            Role::Station => ("station", false),
            Role::Bridge => ("bridge", true),
        };
        let t = &self.timers;
        format!(
            "dcbx :\n{{\n  version = \"1.0\";\n  dcbx_version = 2;\n}};\n\
             nearest_customer_bridge :\n{{\n  {iface} :\n  {{\n    adminStatus = 3;\n\
             \x20   tlvid0080c20d :\n    {{\n      enableTx = true;\n      evbmode = \"{mode}\";\n\
             \x20     evbrrcap = {rrcap};\n      evbrrreq = true;\n      evbgpid = {gpid};\n\
             \x20     ecpretries = {};\n      ecprte = {};\n      vdprwd = {};\n      vdprka = {};\n\
             \x20   }};\n  }};\n}};\n",
            t.ecpretries,
            t.ecprte,
            t.vdprwd,
            t.vdprka,
            gpid = self.gpid,
        )
    }
}

/// lldpad running in a rig namespace on one interface. Stopped (SIGTERM, then SIGKILL) and
/// its directory removed on drop; the private /dev/shm goes with its mount namespace.
pub struct Station {
    ns: String,
    iface: String,
    config: Config,
    /// /tmp/<ns>-lldpad-<iface>: lldpad.conf and lldpad.log (kept if the test panicked).
    dir: PathBuf,
    child: Option<Child>,
}

impl Station {
    /// Starts lldpad in `ns` (an existing namespace) on `iface` and waits until VDP is on
    /// (station) or its port is up (bridge role, where vdptool then says "Command not
    /// applicable"): 1-2 s.
    pub fn new(ns: &Netns, iface: &str, config: Config) -> Result<Self> {
        let dir = PathBuf::from(format!("/tmp/{}-lldpad-{iface}", ns.name));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut station = Self {
            ns: ns.name.clone(),
            iface: iface.to_string(),
            config,
            dir,
            child: None,
        };
        station.start()?;
        Ok(station)
    }

    /// Starts lldpad again after [`Station::stop`], with a fresh config: it remembers no
    /// VSI (a bridge sees the station restart).
    pub fn start(&mut self) -> Result<()> {
        if self.running() {
            bail!("lldpad already runs in {} (pid {:?})", self.ns, self.pid());
        }
        let conf = self.dir.join("lldpad.conf");
        std::fs::write(&conf, self.config.render(&self.iface))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let script = format!(
            "mount -t tmpfs lldpad-shm /dev/shm && exec lldpad -p -V7 -f {}",
            conf.display()
        );
        let child = self
            .command("unshare")
            .args(["-m", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning lldpad (Debian's lldpad package)")?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Stops lldpad with SIGTERM (it sends a shutdown LLDPDU, TTL 0) and reaps it; SIGKILL
    /// after 5 s.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait()?.is_none() {
            // SAFETY: signalling our own child (nsenter, unshare and sh exec lldpad).
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!("lldpad in {} ignored SIGTERM for 5 s", self.ns)
    }

    /// Kills lldpad with SIGKILL: gone without a word on the wire.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// lldpad's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn iface(&self) -> &str {
        &self.iface
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Changes the config the next [`Station::start`] writes (timers for a restart, say).
    pub fn set_config(&mut self, config: Config) {
        self.config = config;
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("lldpad.log")
    }

    /// lldpad's -V7 log.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Associates `vsi` (`vdptool -T -W`) and returns the bridge's answer.
    pub fn associate(&self, vsi: &Vsi) -> Result<VdpResponse, VdpError> {
        self.request(Mode::Assoc, vsi)
    }

    /// De-associates `vsi`; where the bridge returned a VID, `vid` must be that one, or
    /// lldpad refuses ("Invalid parameters"; a VSI still at VID 0 takes any).
    pub fn deassociate(&self, vsi: &Vsi) -> Result<VdpResponse, VdpError> {
        self.request(Mode::Deassoc, vsi)
    }

    pub fn preassociate(&self, vsi: &Vsi) -> Result<VdpResponse, VdpError> {
        self.request(Mode::Preassoc, vsi)
    }

    /// Pre-associates with resource reservation.
    pub fn preassociate_rr(&self, vsi: &Vsi) -> Result<VdpResponse, VdpError> {
        self.request(Mode::PreassocRr, vsi)
    }

    /// Sends one VDP request through vdptool and waits (up to vdptool's 5 s) for the
    /// bridge's answer about this VSI. A refusal returns at once.
    pub fn request(&self, mode: Mode, vsi: &Vsi) -> Result<VdpResponse, VdpError> {
        let args = vsi.vdptool_args(&self.iface, mode);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self
            .vdptool_waiting(&args)
            .map_err(|e| VdpError::Run(format!("{e:#}")))?;
        check_response(mode, &vsi.uuid, &out)
    }

    /// Every VSI lldpad holds on the interface, in any mode (`vdptool -t`, one call per
    /// mode), with its status: 0 answered, 255 no answer yet.
    pub fn list(&self) -> Result<Vec<VdpResponse>> {
        let mut all = Vec::new();
        for mode in [Mode::Assoc, Mode::Preassoc, Mode::PreassocRr] {
            let out = self.vdptool(&["-i", &self.iface, "-t", "-V", mode.as_str(), "-c"])?;
            all.extend(parse_list(&out).with_context(|| format!("vdptool -t printed {out:?}"))?);
        }
        Ok(all)
    }

    /// The EVB TLV lldpad last heard from its neighbour (`lldptool -t -n ... -V evb`), if
    /// any: what it understood of the bridge's LLDP.
    pub fn neighbor_evb(&self) -> Result<Option<EvbTlv>> {
        let out = self.tool(
            "lldptool",
            &["-t", "-n", "-i", &self.iface, "-g", "ncb", "-V", "evb"],
        )?;
        Ok(parse_evb(&out))
    }

    /// Waits until lldpad has heard the neighbour's EVB TLV (GroupID filters need its BGID).
    pub fn wait_neighbor_evb(&self, timeout: Duration) -> Result<EvbTlv> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(evb) = self.neighbor_evb()? {
                return Ok(evb);
            }
            if Instant::now() > deadline {
                bail!("lldpad in {} heard no EVB TLV within {timeout:?}", self.ns);
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs `vdptool ARGS` in the namespace: what it printed (its exit code means little).
    pub fn vdptool(&self, args: &[&str]) -> Result<String> {
        self.tool("vdptool", args)
    }

    fn tool(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = self
            .command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program} in {}", self.ns))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok(text)
    }

    /// Runs a `vdptool -W` command, stopping it as soon as it prints a refusal: vdptool
    /// would wait 5 s for an event anyway. Line-buffered through stdbuf, since vdptool
    /// writes with printf to a pipe.
    fn vdptool_waiting(&self, args: &[&str]) -> Result<String> {
        let mut child = self
            .command("stdbuf")
            .args(["-oL", "vdptool"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawning vdptool in {}", self.ns))?;
        let stdout = child.stdout.take().context("vdptool stdout")?;
        let (tx, rx) = mpsc::channel();
        let reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + VDPTOOL_TIMEOUT;
        let mut text = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let refused = line.starts_with("FAILED");
                    text.push_str(&line);
                    text.push('\n');
                    if refused {
                        let _ = child.kill();
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let _ = reader.join();
                    bail!("vdptool {args:?} still running after {VDPTOOL_TIMEOUT:?}: {text}");
                }
            }
        }
        let _ = child.wait();
        let _ = reader.join();
        Ok(text)
    }

    /// A command to spawn in the namespace, as [`Netns::command`] makes it (the guard keeps
    /// only the name, so that it can live beside its `Netns`).
    fn command(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns)).arg(program);
        c
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "lldpad exited ({status}) before ready in {}:\n{}",
                    self.ns,
                    self.log_text()
                );
            }
            let ping = self.vdptool(&["-p"])?;
            if ping.trim().parse::<u32>().is_ok() {
                last = self.vdptool(&probe_args(&self.iface))?;
                let ready = match self.config.role {
                    // Deassociating an unknown VSI sends nothing; once VDP is on lldpad
                    // says "Invalid parameters" (before: "Device not found or inactive",
                    // then "VDP protocol not supported on interface").
                    Role::Station => last.contains("Invalid parameters"),
                    // vdptool is refused on a bridge-role port once the port is up.
                    Role::Bridge => last.contains("Command not applicable"),
                };
                if ready {
                    return Ok(());
                }
            } else {
                last = ping;
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "lldpad in {} not ready within {START_TIMEOUT:?} (vdptool: {}):\n{}",
            self.ns,
            last.trim(),
            self.log_text()
        )
    }
}

impl Drop for Station {
    fn drop(&mut self) {
        if self.stop().is_err() {
            self.kill();
        }
        if thread::panicking() {
            eprintln!("lldpad's log kept: {}", self.log_path().display());
            let _ = std::fs::remove_file(self.dir.join("lldpad.conf"));
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A de-associate of a VSI nobody has: lldpad sends nothing for it.
fn probe_args(iface: &str) -> Vec<&str> {
    vec![
        "-i",
        iface,
        "-T",
        "-V",
        "deassoc",
        "-c",
        "mode=deassoc",
        "-c",
        "mgrid2=probe",
        "-c",
        "typeid=1",
        "-c",
        "typeidver=1",
        "-c",
        "uuid=00000000-0000-0000-0000-000000000001",
        "-c",
        "hints=none",
        "-c",
        "filter=0-02:00:00:00:00:01",
    ]
}

/// A VDP request: the VSI TLV's mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Preassoc,
    PreassocRr,
    Assoc,
    Deassoc,
}

impl Mode {
    /// vdptool's word for it (`-V` and `mode=`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Preassoc => "preassoc",
            Mode::PreassocRr => "preassoc-rr",
            Mode::Assoc => "assoc",
            Mode::Deassoc => "deassoc",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "preassoc" => Mode::Preassoc,
            "preassoc-rr" => Mode::PreassocRr,
            "assoc" => Mode::Assoc,
            "deassoc" => Mode::Deassoc,
            _ => return None,
        })
    }
}

/// The migration hint of a request (VSI TLV status bits 0x10 M, 0x20 S).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Hints {
    #[default]
    None,
    /// Migrating to this port (M).
    To,
    /// Migrating away (S).
    From,
}

impl Hints {
    fn as_str(self) -> &'static str {
        match self {
            Hints::None => "none",
            Hints::To => "to",
            Hints::From => "from",
        }
    }
}

/// One VSI as vdptool names it: UUID VSIID (format 5) and one MAC/VID filter (format 2),
/// or GroupID/MAC/VID (format 4) with `group`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vsi {
    /// Manager ID: up to 15 alphanumerics, or a UUID (vdptool refuses `0`).
    pub mgrid: String,
    /// VSI type id, 24 bits.
    pub typeid: u32,
    pub typeidver: u8,
    /// VSIID, a UUID with dashes.
    pub uuid: String,
    pub mac: [u8; 6],
    /// As vdptool takes it: the VID in the low 12 bits, the QoS (PS|PCP) in the top nibble;
    /// 0 asks the bridge to choose.
    pub vid: u16,
    /// GroupID (nve: the VNI).
    pub group: Option<u32>,
    pub hints: Hints,
}

impl Vsi {
    /// A VSI with manager `nve`, type 1 version 1, VID 0 (the bridge's choice), no group.
    pub fn new(uuid: &str, mac: [u8; 6]) -> Self {
        Vsi {
            mgrid: "nve".into(),
            typeid: 1,
            typeidver: 1,
            uuid: uuid.into(),
            mac,
            vid: 0,
            group: None,
            hints: Hints::None,
        }
    }

    /// vdptool's filter: `VID-MAC` or `VID-MAC-GROUP`.
    pub fn filter(&self) -> String {
        match self.group {
            Some(g) => format!("{}-{}-{g}", self.vid, mac_str(self.mac)),
            None => format!("{}-{}", self.vid, mac_str(self.mac)),
        }
    }

    /// The same VSI with the VID the bridge returned (what a de-associate must carry).
    pub fn with_vid(&self, vid: u16) -> Self {
        Vsi {
            vid,
            ..self.clone()
        }
    }

    /// `vdptool -i IFACE -T -W -V MODE -c mode=MODE -c mgrid2=... -c filter=...`
    pub fn vdptool_args(&self, iface: &str, mode: Mode) -> Vec<String> {
        let mode = mode.as_str();
        let mut args: Vec<String> = ["-i", iface, "-T", "-W", "-V", mode]
            .map(String::from)
            .to_vec();
        for c in [
            format!("mode={mode}"),
            format!("mgrid2={}", self.mgrid),
            format!("typeid={}", self.typeid),
            format!("typeidver={}", self.typeidver),
            format!("uuid={}", self.uuid),
            format!("hints={}", self.hints.as_str()),
            format!("filter={}", self.filter()),
        ] {
            args.push("-c".into());
            args.push(c);
        }
        args
    }
}

/// One filter entry as vdptool prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    /// The VID, 12 bits.
    pub vid: u16,
    /// The top nibble of the printed number: PS and PCP.
    pub qos: u8,
    pub mac: Option<[u8; 6]>,
    /// GroupID. In the answer to a request ("Response from VDP") lldpad prints 0 for it
    /// whatever it is; the list shows the real one.
    pub group: Option<u32>,
}

/// A VSI as vdptool printed it: the bridge's answer, or one entry of the list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VdpResponse {
    pub mode: Mode,
    pub mgrid: String,
    pub typeid: u32,
    pub typeidver: u8,
    pub uuid: String,
    /// The list's `hints = N`: lldpad's status of the VSI (0 answered, 255 no answer
    /// yet); answers carry none.
    pub status: Option<u8>,
    pub filters: Vec<Filter>,
    /// `Error returned by Bridge: ...`, with lldpad's code for the text.
    pub bridge_error: Option<BridgeError>,
    /// `Internal Error : ...` lines (lldpad's own: "Ack not received from bridge",
    /// "Keepalive Timeout", "Transmission Error").
    pub internal_errors: Vec<String>,
}

impl VdpResponse {
    /// The VID of the first filter: the one the bridge returned.
    pub fn vid(&self) -> Option<u16> {
        self.filters.first().map(|f| f.vid)
    }
}

/// An error status the bridge returned, as vdptool prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeError {
    /// The VDP status error (1 invalid format, 2 insufficient resources, 3 unable to
    /// contact the VSI manager, 4 other, 5 invalid VID/GroupID/MAC) or lldpad's own codes
    /// for what it derived (252 de-associated, 253 timeout, 254 kept); 0: unknown text.
    pub code: u8,
    pub text: String,
}

/// lldpad's texts for the bridge's error codes (include/qbg_vdp22def.h).
const BRIDGE_ERRORS: [(u8, &str); 8] = [
    (1, "VDP TLV Format is Invalid"),
    (2, "Insufficient resources at bridge"),
    (3, "Unable to contact VSI Mgr"),
    (4, "Other Failures"),
    (5, "Invalid VID, GroupID or MAC address field"),
    (252, "Deassoc received from switch"),
    (253, "Timeout Error"),
    (
        254,
        "Command rejected by bridge and state prior to requested command is kept",
    ),
];

/// lldpad's text when no ACK or answer came from the bridge.
const ACK_TIMEOUT: &str = "Ack not received from bridge";

/// Why a VDP request did not come back accepted.
#[derive(Debug, thiserror::Error)]
pub enum VdpError {
    /// lldpad refused the command at once (`FAILED: TEXT`): bad parameters, a GroupID
    /// filter before the bridge's BGID, "VSI association in progress", ...
    #[error("lldpad refused the request: {0}")]
    Refused(String),
    /// No ACK or answer from the bridge within the station's response timeout.
    #[error("no answer from the bridge (Ack not received)")]
    AckTimeout(Box<VdpResponse>),
    /// Another lldpad-internal error (keep-alive timeout, transmission error).
    #[error("lldpad: {0}")]
    Internal(String, Box<VdpResponse>),
    /// The bridge answered with an error status.
    #[error("the bridge returned status {}: {}", .0.code, .0.text)]
    Bridge(BridgeError, Box<VdpResponse>),
    /// vdptool printed nothing: no event within its 5 s (the response timeout is longer
    /// than that, or lldpad is gone).
    #[error("vdptool printed no answer")]
    NoResponse,
    /// An answer, but not the one asked for (another VSI's event, another mode).
    #[error("unexpected answer to {asked:?}: {response:?}")]
    Unexpected {
        asked: Mode,
        response: Box<VdpResponse>,
    },
    /// Output this parser does not understand.
    #[error("vdptool printed {0:?}")]
    Unparsed(String),
    /// vdptool could not be run.
    #[error("running vdptool: {0}")]
    Run(String),
}

/// Parses what `vdptool -T -W` printed into the bridge's answer. A refusal, no output, a
/// bridge error status and lldpad's internal errors (the ACK timeout) are errors.
pub fn parse_response(text: &str) -> Result<VdpResponse, VdpError> {
    // A refusal comes first; a "Response from VDP" after it is about an earlier request.
    if let Some(line) = text.lines().find(|l| l.starts_with("FAILED")) {
        let reason = line.trim_start_matches("FAILED").trim_start_matches(':');
        return Err(VdpError::Refused(reason.trim().to_string()));
    }
    if text.trim().is_empty() {
        return Err(VdpError::NoResponse);
    }
    let blocks = parse_blocks(text, "Response from VDP")?;
    let Some(response) = blocks.into_iter().next() else {
        return Err(VdpError::Unparsed(text.to_string()));
    };
    if response.internal_errors.iter().any(|e| e == ACK_TIMEOUT) {
        return Err(VdpError::AckTimeout(Box::new(response)));
    }
    if let Some(e) = response.internal_errors.first() {
        return Err(VdpError::Internal(e.clone(), Box::new(response)));
    }
    if let Some(e) = &response.bridge_error {
        return Err(VdpError::Bridge(e.clone(), Box::new(response)));
    }
    Ok(response)
}

/// [`parse_response`], then: the answer is about VSI `uuid` and in the mode asked for.
pub fn check_response(asked: Mode, uuid: &str, text: &str) -> Result<VdpResponse, VdpError> {
    let response = parse_response(text)?;
    if response.mode != asked || !response.uuid.eq_ignore_ascii_case(uuid) {
        return Err(VdpError::Unexpected {
            asked,
            response: Box::new(response),
        });
    }
    Ok(response)
}

/// Parses `vdptool -t` (the `VSI  N:` blocks; nothing at all is an empty list).
pub fn parse_list(text: &str) -> Result<Vec<VdpResponse>, VdpError> {
    if let Some(line) = text.lines().find(|l| l.starts_with("FAILED")) {
        let reason = line.trim_start_matches("FAILED").trim_start_matches(':');
        return Err(VdpError::Refused(reason.trim().to_string()));
    }
    parse_blocks(text, "VSI ")
}

/// Splits vdptool's output into blocks that start at a line beginning with `header`,
/// each a list of tab-indented `key = value` lines and error lines.
fn parse_blocks(text: &str, header: &str) -> Result<Vec<VdpResponse>, VdpError> {
    let unparsed = || VdpError::Unparsed(text.to_string());
    let mut blocks: Vec<Vec<&str>> = Vec::new();
    for line in text.lines() {
        if line.starts_with(header) {
            blocks.push(Vec::new());
        } else if let Some(field) = line.strip_prefix('\t') {
            blocks.last_mut().ok_or_else(unparsed)?.push(field);
        } else if !line.trim().is_empty() {
            return Err(unparsed());
        }
    }
    blocks
        .into_iter()
        .map(|fields| parse_vsi(&fields).ok_or_else(unparsed))
        .collect()
}

fn parse_vsi(fields: &[&str]) -> Option<VdpResponse> {
    let mut mode = None;
    let mut r = VdpResponse {
        mode: Mode::Assoc,
        mgrid: String::new(),
        typeid: 0,
        typeidver: 0,
        uuid: String::new(),
        status: None,
        filters: Vec::new(),
        bridge_error: None,
        internal_errors: Vec::new(),
    };
    for field in fields {
        if let Some(text) = field.strip_prefix("Error returned by Bridge:") {
            let text = text.trim().to_string();
            let code = BRIDGE_ERRORS
                .iter()
                .find(|(_, t)| *t == text)
                .map_or(0, |(c, _)| *c);
            r.bridge_error = Some(BridgeError { code, text });
            continue;
        }
        if let Some(text) = field.strip_prefix("Internal Error :") {
            r.internal_errors.push(text.trim().to_string());
            continue;
        }
        let (key, value) = field.split_once(" = ")?;
        match key {
            "mode" => mode = Some(Mode::parse(value)?),
            "mgrid2" => r.mgrid = value.to_string(),
            "typeid" => r.typeid = value.parse().ok()?,
            "typeidver" => r.typeidver = value.parse().ok()?,
            "uuid" => r.uuid = value.to_string(),
            "hints" => r.status = Some(value.parse().ok()?),
            "filter" => r.filters.push(parse_filter(value)?),
            // "oui" and whatever a later lldpad adds.
            _ => {}
        }
    }
    r.mode = mode?;
    Some(r)
}

/// `VLAN`, `VLAN-MAC`, `VLAN-MAC-GROUP` or `VLAN-GROUP` (format 3 prints one dash), VLAN
/// being the VID with the QoS nibble on top.
fn parse_filter(s: &str) -> Option<Filter> {
    let mut parts = s.split('-');
    let vlan: u16 = parts.next()?.parse().ok()?;
    let mut f = Filter {
        vid: vlan & 0x0fff,
        qos: (vlan >> 12) as u8,
        mac: None,
        group: None,
    };
    for part in parts {
        if part.contains(':') && f.mac.is_none() && f.group.is_none() {
            f.mac = Some(parse_mac(part)?);
        } else if f.group.is_none() {
            f.group = Some(part.parse().ok()?);
        } else {
            return None;
        }
    }
    Some(f)
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut n = 0;
    for (i, byte) in s.split(':').enumerate() {
        *mac.get_mut(i)? = u8::from_str_radix(byte, 16).ok()?;
        n = i + 1;
    }
    (n == 6).then_some(mac)
}

/// The EVB TLV (IEEE 802.1Qbg-2012 D.2.12) as `lldptool -t [-n] -V evb` prints it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EvbTlv {
    /// BGID 0x04, RRCAP 0x02, RRCTR 0x01.
    pub bridge_status: u8,
    /// SGID 0x08, RRREQ 0x04, RRSTAT 0x03.
    pub station_status: u8,
    pub retries: u8,
    pub rte: u8,
    /// True: the sender is a bridge.
    pub bridge_mode: bool,
    /// ROL of RWD: the sender uses its peer's value.
    pub rwd_remote: bool,
    pub rwd: u8,
    pub rka_remote: bool,
    pub rka: u8,
}

impl EvbTlv {
    /// BGID: the bridge takes GroupID filters.
    pub fn bgid(&self) -> bool {
        self.bridge_status & 0x04 != 0
    }
}

impl fmt::Display for EvbTlv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bridge {:#x} station {:#x} retries {} rte {} {} rwd {}{} rka {}{}",
            self.bridge_status,
            self.station_status,
            self.retries,
            self.rte,
            if self.bridge_mode {
                "bridge"
            } else {
                "station"
            },
            self.rwd,
            if self.rwd_remote { " (remote)" } else { "" },
            self.rka,
            if self.rka_remote { " (remote)" } else { "" },
        )
    }
}

/// Parses lldptool's EVB TLV text; `None` when it shows none (not heard yet).
pub fn parse_evb(text: &str) -> Option<EvbTlv> {
    let mut lines = text.lines();
    lines.find(|l| l.trim() == "EVB Configuration TLV")?;
    let words: Vec<&str> = lines.flat_map(str::split_whitespace).collect();
    let value = |key: &str| -> Option<&str> {
        words
            .iter()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix(':'))
    };
    let status = |key: &str| -> Option<u8> {
        // `bridge:bgid,rrcap,rrctr(0x7)`; printf's %#02x prints 0 as `0`.
        let v = value(key)?;
        let hex = v.rsplit_once('(')?.1.strip_suffix(')')?;
        u8::from_str_radix(hex.trim_start_matches("0x"), 16).ok()
    };
    let num = |key: &str| -> Option<u8> { value(key)?.parse().ok() };
    // `r/l:` appears twice: before rwd, then before rka.
    let rl: Vec<bool> = words
        .iter()
        .filter_map(|w| w.strip_prefix("r/l:"))
        .map(|v| v == "1")
        .collect();
    Some(EvbTlv {
        bridge_status: status("bridge")?,
        station_status: status("station")?,
        retries: num("retries")?,
        rte: num("rte")?,
        bridge_mode: value("mode")? == "bridge",
        rwd_remote: *rl.first()?,
        rwd: num("rwd")?,
        rka_remote: *rl.get(1)?,
        rka: num("rka")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(name: &str) -> String {
        let path = format!("{}/data/vdp/output/{name}.txt", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    const UUID: &str = "6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a";
    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x10];

    #[test]
    fn assoc_with_mac_vid() {
        let r = check_response(Mode::Assoc, &format!("{UUID}10"), &output("assoc-macvid")).unwrap();
        assert_eq!(r.mgrid, "blue");
        assert_eq!((r.typeid, r.typeidver), (5, 1));
        assert_eq!(r.status, None);
        assert_eq!(
            r.filters,
            [Filter {
                vid: 0,
                qos: 0,
                mac: Some(MAC),
                group: None
            }]
        );
        assert_eq!(r.vid(), Some(0));
    }

    #[test]
    fn assigned_vid_is_read() {
        let r = check_response(
            Mode::Assoc,
            &format!("{UUID}30"),
            &output("assoc-vid-assigned"),
        )
        .unwrap();
        assert_eq!(r.vid(), Some(100));
        let r = parse_response(&output("assoc-gid-vid-assigned")).unwrap();
        assert_eq!(r.filters[0].vid, 100);
        assert_eq!(r.filters[0].mac, Some([2, 0, 0, 0, 0, 0x31]));
        // lldpad's event prints GroupID 0, whatever it was.
        assert_eq!(r.filters[0].group, Some(0));
    }

    #[test]
    fn deassoc_answer() {
        let r = check_response(
            Mode::Deassoc,
            &format!("{UUID}10"),
            &output("deassoc-macvid"),
        )
        .unwrap();
        assert_eq!(r.mode, Mode::Deassoc);
        let r = check_response(
            Mode::Deassoc,
            &format!("{UUID}30"),
            &output("deassoc-vid-assigned"),
        )
        .unwrap();
        assert_eq!(r.vid(), Some(100));
    }

    #[test]
    fn every_mode_parses() {
        for (mode, name, n) in [
            (Mode::Preassoc, "preassoc", "14"),
            (Mode::PreassocRr, "preassoc-rr", "15"),
            (Mode::Assoc, "preassoc-to-assoc", "14"),
            (Mode::Assoc, "assoc-hint-to", "16"),
            (Mode::Assoc, "assoc-gidmacvid", "11"),
            (Mode::Deassoc, "deassoc-gidvid", "12"),
        ] {
            let r = check_response(mode, &format!("{UUID}{n}"), &output(name));
            assert!(r.is_ok(), "{name}: {r:?}");
        }
    }

    #[test]
    fn format_3_prints_one_dash() {
        let r = parse_response(&output("assoc-gidvid")).unwrap();
        assert_eq!(
            r.filters,
            [Filter {
                vid: 0,
                qos: 0,
                mac: None,
                group: Some(0)
            }]
        );
        let l = parse_list(&output("list-assoc-gidvid")).unwrap();
        assert_eq!(l[0].filters[0].group, Some(10000));
        assert_eq!(l[0].filters[0].mac, None);
    }

    #[test]
    fn no_bridge_is_an_ack_timeout() {
        let e = parse_response(&output("assoc-nobridge")).unwrap_err();
        let VdpError::AckTimeout(r) = e else {
            panic!("{e:?}")
        };
        // lldpad reports a failed request as de-associated.
        assert_eq!(r.mode, Mode::Deassoc);
        assert_eq!(r.uuid, format!("{UUID}20"));
    }

    #[test]
    fn bridge_errors_carry_their_status() {
        for code in 1..=5u8 {
            let e = parse_response(&output(&format!("assoc-err{code}"))).unwrap_err();
            let VdpError::Bridge(err, r) = e else {
                panic!("err{code}: {e:?}")
            };
            assert_eq!(err.code, code, "{}", err.text);
            assert_eq!(r.mode, Mode::Deassoc);
            assert_eq!(r.status, None);
        }
        let e = parse_response(&output("assoc-err5")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the bridge returned status 5: Invalid VID, GroupID or MAC address field"
        );
    }

    #[test]
    fn refusals() {
        for (name, reason) in [
            ("deassoc-unknown-refused", "Invalid parameters"),
            ("assoc-group0-refused", "Invalid parameters"),
            ("deassoc-vid0-refused", "Invalid parameters"),
            ("deassoc-busy-refused", "VSI association in progress"),
        ] {
            match parse_response(&output(name)) {
                Err(VdpError::Refused(r)) => assert_eq!(r, reason, "{name}"),
                other => panic!("{name}: {other:?}"),
            }
        }
        // A refusal, then the -W event of an earlier request (seen live).
        let text = "FAILED: VSI association in progress\nResponse from VDP\n\tmode = deassoc\n\
                    \tmgrid2 = blue\n\ttypeid = 5\n\ttypeidver = 1\n\
                    \tuuid = 6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a95\n\
                    \tInternal Error : Ack not received from bridge\n\
                    \tfilter = 0-02:00:00:00:00:55\n";
        assert!(matches!(parse_response(text), Err(VdpError::Refused(_))));
    }

    #[test]
    fn nothing_printed_is_no_response() {
        assert!(matches!(
            parse_response(&output("assoc-nobridge-nowait")),
            Err(VdpError::NoResponse)
        ));
    }

    #[test]
    fn another_vsi_is_unexpected() {
        let e =
            check_response(Mode::Assoc, &format!("{UUID}99"), &output("assoc-macvid")).unwrap_err();
        assert!(matches!(e, VdpError::Unexpected { .. }), "{e:?}");
        let e = check_response(
            Mode::Preassoc,
            &format!("{UUID}10"),
            &output("assoc-macvid"),
        )
        .unwrap_err();
        assert!(matches!(e, VdpError::Unexpected { .. }), "{e:?}");
    }

    #[test]
    fn lists() {
        let l = parse_list(&output("list-preassoc")).unwrap();
        assert_eq!(
            l.iter().map(|r| r.mode).collect::<Vec<_>>(),
            [Mode::Preassoc, Mode::PreassocRr]
        );
        assert_eq!(l[1].filters[0].group, Some(10000));
        assert_eq!(l[1].status, Some(0));
        let l = parse_list(&output("list-nobridge-pending")).unwrap();
        assert_eq!(l[0].status, Some(255));
        assert!(parse_list(&output("list-after-err1")).unwrap().is_empty());
        let l = parse_list(&output("list-vid-assigned")).unwrap();
        assert_eq!(l[0].vid(), Some(100));
    }

    #[test]
    fn evb_tlv_of_the_bridge() {
        let evb = parse_evb(&output("lldptool-neighbor-evb")).unwrap();
        assert_eq!(
            evb,
            EvbTlv {
                bridge_status: 7,
                station_status: 0xd,
                retries: 3,
                rte: 8,
                bridge_mode: true,
                rwd_remote: true,
                rwd: 16,
                rka_remote: true,
                rka: 16,
            }
        );
        assert!(evb.bgid());
        let zero = "EVB Configuration TLV\n\tbridge:(0)\n\tstation:(0)\n\tretries:3 rte:8\n\
                    \tmode:station r/l:0 rwd:20\n\tr/l:0 rka:20\n";
        let evb = parse_evb(zero).unwrap();
        assert_eq!(
            (evb.bridge_status, evb.bridge_mode, evb.rka),
            (0, false, 20)
        );
        assert_eq!(parse_evb(""), None);
    }

    #[test]
    fn vdptool_arguments() {
        let mut vsi = Vsi::new("6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a10", MAC);
        vsi.group = Some(10000);
        vsi.hints = Hints::To;
        assert_eq!(vsi.filter(), "0-02:00:00:00:00:10-10000");
        assert_eq!(
            vsi.vdptool_args("vst0", Mode::Assoc).join(" "),
            "-i vst0 -T -W -V assoc -c mode=assoc -c mgrid2=nve -c typeid=1 -c typeidver=1 \
             -c uuid=6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a10 -c hints=to \
             -c filter=0-02:00:00:00:00:10-10000"
        );
        assert_eq!(vsi.with_vid(100).filter(), "100-02:00:00:00:00:10-10000");
    }

    /// A namespace named `lrig-<pid>-<tag>`, outside the suite's `nvet-` prefix (which the
    /// suite sweeps), deleted on drop.
    fn lrig_netns(tag: &str) -> Netns {
        let name = format!("lrig-{}-{tag}", std::process::id());
        crate::rig::run(&["ip", "netns", "add", &name]).unwrap();
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]).unwrap();
        ns
    }

    /// The rig itself against lldpad's bridge role on one veth, then without a bridge.
    #[test]
    #[ignore = "root and lldpad: cargo test -p nve-tests --lib lldpad -- --ignored"]
    fn station_against_lldpad_bridge() {
        let br_ns = lrig_netns("br");
        let st_ns = lrig_netns("st");
        crate::rig::veth(&br_ns, "vbr0", &st_ns, "vst0", 1500).unwrap();
        let t0 = Instant::now();
        let mut bridge = Station::new(&br_ns, "vbr0", Config::bridge()).unwrap();
        eprintln!("bridge-role lldpad up after {:?}", t0.elapsed());
        let t0 = Instant::now();
        let mut station = Station::new(&st_ns, "vst0", Config::default()).unwrap();
        eprintln!("station VDP on after {:?}", t0.elapsed());
        let evb = station.wait_neighbor_evb(Duration::from_secs(5)).unwrap();
        eprintln!("neighbour EVB: {evb}");
        assert!(evb.bridge_mode && evb.bgid());

        let vsi = Vsi::new("6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a10", MAC);
        let t0 = Instant::now();
        let r = station.associate(&vsi).unwrap();
        eprintln!("associate answered after {:?}", t0.elapsed());
        assert_eq!((r.mode, r.vid()), (Mode::Assoc, Some(0)));
        let mut gvsi = Vsi::new(
            "6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a11",
            [2, 0, 0, 0, 0, 0x11],
        );
        gvsi.group = Some(10000);
        station.associate(&gvsi).unwrap();
        let listed = station.list().unwrap();
        assert_eq!(listed.len(), 2, "{listed:?}");
        assert!(listed.iter().any(|l| l.filters[0].group == Some(10000)));
        let t0 = Instant::now();
        let unknown = Vsi::new("6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a99", MAC);
        let refused = station.deassociate(&unknown).unwrap_err();
        assert!(matches!(refused, VdpError::Refused(_)), "{refused:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "refusal took {:?}",
            t0.elapsed()
        );
        station.deassociate(&vsi).unwrap();
        assert_eq!(station.preassociate(&vsi).unwrap().mode, Mode::Preassoc);
        station.deassociate(&vsi).unwrap();
        station.deassociate(&gvsi).unwrap();
        let mut rr = Vsi::new(
            "6f1c7a2e-3b4d-4e5f-8a9b-0c1d2e3f4a12",
            [2, 0, 0, 0, 0, 0x12],
        );
        rr.hints = Hints::To;
        assert_eq!(station.preassociate_rr(&rr).unwrap().mode, Mode::PreassocRr);

        station.stop().unwrap();
        assert!(!station.running());
        let t0 = Instant::now();
        station.start().unwrap();
        eprintln!("station VDP on again after {:?}", t0.elapsed());
        assert!(station.list().unwrap().is_empty());

        bridge.stop().unwrap();
        let e = station.associate(&vsi).unwrap_err();
        assert!(matches!(e, VdpError::AckTimeout(_)), "{e:?}");
        assert!(station.list().unwrap().is_empty());
        // An lldpad of another namespace does not stop this one from starting.
        bridge.start().unwrap();
    }

    #[test]
    fn config_and_timers() {
        let t = Timers::default();
        assert_eq!(t.keepalive(), Duration::from_micros(655_360));
        assert_eq!(t.response_timeout(), Duration::from_micros(1_009_920));
        let conf = Config::default().render("vst0");
        for want in [
            "  vst0 :",
            "adminStatus = 3;",
            "enableTx = true;",
            "evbmode = \"station\";",
            "evbgpid = true;",
            "ecprte = 8;",
            "ecpretries = 3;",
            "vdprwd = 16;",
            "vdprka = 16;",
        ] {
            assert!(conf.contains(want), "{want} missing:\n{conf}");
        }
        assert!(
            Config::bridge()
                .render("vbr0")
                .contains("evbmode = \"bridge\";")
        );
    }
}
