//! Randomized verdicts: per program at least 100,000 generated and mutated frames through
//! BPF_PROG_TEST_RUN, each checked against the reference model (`nve_tests::reference`):
//! return code, the one outcome counter it moves, and the output bytes; and against the
//! isolation invariants, which do not trust the model: an encapsulated frame carries the
//! VNI of the VN its port (VID) belongs to, to a VTEP of that VN; a decapsulated frame comes
//! from a VNI this NVE serves and goes to a MAC that VN places on a forwarding local port.
//!
//! Deterministic: a fixed seed per program (`NVE_FUZZ_SEED` overrides it, `NVE_FUZZ_FRAMES`
//! the count). Each program runs in a network namespace of its own thread, where the VM
//! ports of the configuration exist (veth), so broadcast copies (`bpf_clone_redirect`) can
//! be made; the namespace goes with the thread.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use aya::maps::{MapData, PerCpuArray};
use nve_common::{
    maps::STATS_MAP,
    metrics::{Counter, DropReason, Forward, Hook, Outcome, SLOTS_PER_HOOK},
    wire::UDP_SRC_PORT_MIN,
};
use nve_tests::{
    packet::{self, BROADCAST, Ipv4},
    progtest::{self as pt, Loaded, Program},
    reference::{self, Config, Location, Output, Port, Prediction, Underlay},
    rig::{require_root, run},
};

const FRAMES: usize = 100_000;
/// Mismatches printed in full (the rest are counted).
const SHOWN: usize = 20;

#[test]
fn xdp_underlay_rx_matches_the_model() {
    fuzz(Program::XdpUnderlayRx, 0x6e76_6501);
}

#[test]
fn tc_underlay_rx_matches_the_model() {
    fuzz(Program::TcUnderlayRx, 0x6e76_6502);
}

#[test]
fn tc_vm_egress_matches_the_model() {
    fuzz(Program::TcVmEgress, 0x6e76_6503);
}

#[test]
fn tc_tunnel_rx_matches_the_model() {
    fuzz(Program::TcTunnelRx, 0x6e76_6504);
}

fn fuzz(program: Program, seed: u64) {
    require_root();
    let seed = env_or("NVE_FUZZ_SEED", seed);
    let frames = env_or("NVE_FUZZ_FRAMES", FRAMES as u64) as usize;
    let report = std::thread::spawn(move || {
        // SAFETY: unshare on this thread only; it leaves the namespace when it ends.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            panic!("unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        }
        run_program(program, seed, frames)
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e));
    println!("{}", report.summary());
    let min_hits = (MIN_HITS * frames / FRAMES).max(1);
    let unreached: Vec<&str> = must_reach(program)
        .iter()
        .map(|o| o.name())
        .filter(|name| report.predicted.get(name).copied().unwrap_or(0) < min_hits)
        .collect();
    assert!(
        report.mismatches == 0 && unreached.is_empty(),
        "{}: {} of {} frames disagree with the model; outcomes the model predicted fewer \
         than {min_hits} times: {unreached:?} (seed {seed:#x})",
        program.name(),
        report.mismatches,
        report.frames
    );
}

/// How often, per 100,000 frames, each outcome of [`must_reach`] must be predicted: a
/// generator that stops producing some kind of frame fails the test instead of quietly
/// testing less.
const MIN_HITS: usize = 20;

/// Every outcome the configuration makes possible for `program` in a test run.
fn must_reach(program: Program) -> Vec<Outcome> {
    use {DropReason as D, Forward as F};
    let (f, d) = (Outcome::Forward, Outcome::Drop);
    let decap = [
        f(F::PassedToHost),
        f(F::PassedFragment),
        d(D::VxlanInvalidHdr),
        d(D::InnerTruncated),
        d(D::VniNotFound),
        d(D::VtepNotInVn),
        d(D::FdbMiss),
        d(D::UnderlayHairpin),
        d(D::VnicInactive),
        f(F::Decapsulated),
    ];
    match program {
        Program::XdpUnderlayRx => [&decap[..], &[f(F::DeferredToTc)]].concat(),
        Program::TcUnderlayRx => [
            &decap[..],
            &[
                f(F::ToKernelVxlan),
                f(F::Flooded),
                f(F::ForwardedToVtep),
                d(D::FloodListEmpty),
                d(D::HeaderAdjustFailed),
                d(D::ForwardIpOptions),
            ],
        ]
        .concat(),
        Program::TcVmEgress => vec![
            d(D::PktTooSmall),
            d(D::VlanStacked),
            d(D::PortNotInVn),
            d(D::VnicInactive),
            d(D::SpoofedSrcMac),
            d(D::SpoofedSrcIp),
            f(F::ArpReplied),
            f(F::NdReplied),
            f(F::Flooded),
            d(D::FloodListEmpty),
            f(F::LocalSwitched),
            f(F::Encapsulated),
            f(F::IcmpTooBig),
            d(D::FdbMiss),
        ],
        Program::TcTunnelRx => vec![d(D::TunnelKeyMissing)],
        Program::XdpPass => vec![],
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("{name}={v}: not a number"))
        }
        Err(_) => default,
    }
}

struct Report {
    program: Program,
    seed: u64,
    frames: usize,
    refused: usize,
    mutated: usize,
    elapsed: Duration,
    /// Frames per observed outcome.
    outcomes: BTreeMap<String, usize>,
    /// Frames per outcome the model predicted.
    predicted: BTreeMap<&'static str, usize>,
    mismatches: usize,
    /// The first mismatches, described.
    shown: Vec<String>,
}

impl Report {
    fn summary(&self) -> String {
        let mut s = format!(
            "{}: {} frames ({} mutated) in {:.1?} ({:.1} us/frame), seed {:#x}; {} more \
             refused by BPF_PROG_TEST_RUN (too short for their ethertype)\n  outcomes: {:?}\n",
            self.program.name(),
            self.frames,
            self.mutated,
            self.elapsed,
            self.elapsed.as_secs_f64() * 1e6 / self.frames.max(1) as f64,
            self.seed,
            self.refused,
            self.outcomes,
        );
        if self.mismatches == 0 {
            s.push_str("  no mismatch\n");
            return s;
        }
        let _ = writeln!(s, "  {} mismatches:", self.mismatches);
        for m in &self.shown {
            s.push_str(m);
        }
        s
    }
}

fn run_program(program: Program, seed: u64, frames: usize) -> Report {
    let cfg = Config::progtest();
    for ifindex in cfg.ifindexes() {
        if ifindex != cfg.ingress_ifindex {
            vm_port(ifindex);
        }
    }
    let loaded = Loaded::new(&format!("fuzz{}", program as u32)).expect("loading the dataplane");
    let mut counters = Counters::new(&loaded, program.hook());
    let mut generator = Generator::new(seed);
    let mut report = Report {
        program,
        seed,
        frames: 0,
        refused: 0,
        mutated: 0,
        elapsed: Duration::ZERO,
        outcomes: BTreeMap::new(),
        predicted: BTreeMap::new(),
        mismatches: 0,
        shown: Vec::new(),
    };
    let start = Instant::now();
    while report.frames < frames {
        let (frame, mutated) = generator.frame(program);
        let (rc, out) = match loaded.run(program, &frame, 1) {
            Ok((rc, out, _)) => (rc, out),
            Err(_) => {
                report.refused += 1;
                continue;
            }
        };
        report.frames += 1;
        report.mutated += usize::from(mutated);
        let want = reference::predict(&cfg, program, &frame);
        *report.predicted.entry(want.outcome.name()).or_default() += 1;
        let counted = counters.counted(want.outcome);
        let observed = match counted.as_slice() {
            [(slot, 1)] => Some(*slot),
            _ => None,
        };
        *report
            .outcomes
            .entry(observed.map_or("(several)".into(), |s| counters.name(s)))
            .or_default() += 1;
        let mut problems = Vec::new();
        if rc != want.code(program) {
            problems.push(format!(
                "returned {rc}, model: {:?} ({})",
                want.verdict,
                want.code(program)
            ));
        }
        if observed != Some(want.outcome.slot(program.hook())) {
            let got: Vec<String> = counted
                .iter()
                .map(|(s, n)| format!("{} +{n}", counters.name(*s)))
                .collect();
            problems.push(format!(
                "counted {}, model: {}",
                got.join(", "),
                want.outcome.name()
            ));
        }
        if rc == want.code(program) && observed == Some(want.outcome.slot(program.hook())) {
            output_problems(&cfg, &frame, &want, &out, &mut problems);
        }
        let observed = observed.and_then(|s| counters.outcome(s));
        isolation_problems(&cfg, program, &frame, observed, &out, &mut problems);
        if problems.is_empty() {
            continue;
        }
        report.mismatches += 1;
        if report.shown.len() < SHOWN {
            report
                .shown
                .push(describe(program, &frame, &want, rc, &out, &problems));
        }
    }
    report.elapsed = start.elapsed();
    let stray = counters.counted_since_last();
    if !stray.is_empty() {
        report.mismatches += 1;
        report.shown.push(format!(
            "  counters moved without a frame to account for them: {:?}\n",
            stray
                .iter()
                .map(|(s, n)| format!("{} +{n}", counters.name(*s)))
                .collect::<Vec<_>>()
        ));
    }
    report
}

/// A device at `ifindex` in this thread's namespace, so clones to it succeed.
fn vm_port(ifindex: u32) {
    let (name, peer) = (format!("vmp{ifindex}"), format!("vmq{ifindex}"));
    let (index, peer_index) = (ifindex.to_string(), (ifindex + 1000).to_string());
    // A jumbo MTU: the model does not know port MTUs, and a clone of a frame over the MTU
    // fails (REDIRECT_FAILED).
    #[rustfmt::skip]
    run(&[
        "ip", "link", "add", &name, "index", &index, "mtu", "9000", "type", "veth",
        "peer", "name", &peer, "index", &peer_index, "mtu", "9000",
    ])
    .expect("creating a VM port");
    for dev in [&name, &peer] {
        run(&["ip", "link", "set", dev, "up"]).expect("setting a VM port up");
    }
}

/// The hook's outcome counters, read one slot per frame: a copy of every slot is kept, the
/// expected slot is read after the run, and only when it did not move by exactly one are
/// all slots read to find what did.
struct Counters<'a> {
    map: PerCpuArray<&'a MapData, Counter>,
    hook: Hook,
    seen: Vec<u64>,
}

impl<'a> Counters<'a> {
    fn new(loaded: &'a Loaded, hook: Hook) -> Self {
        let map = PerCpuArray::try_from(loaded.ebpf.map(STATS_MAP).expect(STATS_MAP))
            .expect("NVE_STATS is a per-CPU array");
        let mut c = Self {
            map,
            hook,
            seen: Vec::new(),
        };
        c.seen = (0..SLOTS_PER_HOOK).map(|i| c.read(c.base() + i)).collect();
        c
    }

    fn base(&self) -> u32 {
        self.hook as u32 * SLOTS_PER_HOOK
    }

    fn read(&self, slot: u32) -> u64 {
        let values = self.map.get(&slot, 0).expect("reading NVE_STATS");
        values.iter().map(|c| c.packets).sum()
    }

    /// The slots (absolute) that moved since the last call, and by how much; `expected` is
    /// tried first.
    fn counted(&mut self, expected: Outcome) -> Vec<(u32, u64)> {
        let slot = expected.slot(self.hook);
        let i = (slot - self.base()) as usize;
        let now = self.read(slot);
        if now == self.seen[i] + 1 {
            self.seen[i] = now;
            return vec![(slot, 1)];
        }
        self.counted_since_last()
    }

    fn counted_since_last(&mut self) -> Vec<(u32, u64)> {
        let mut moved = Vec::new();
        for i in 0..SLOTS_PER_HOOK {
            let now = self.read(self.base() + i);
            let before = std::mem::replace(&mut self.seen[i as usize], now);
            if now != before {
                moved.push((self.base() + i, now.wrapping_sub(before)));
            }
        }
        moved
    }

    fn outcome(&self, slot: u32) -> Option<Outcome> {
        let forwards = Forward::ALL.into_iter().map(Outcome::Forward);
        let drops = DropReason::ALL.into_iter().map(Outcome::Drop);
        forwards.chain(drops).find(|o| o.slot(self.hook) == slot)
    }

    fn name(&self, slot: u32) -> String {
        self.outcome(slot)
            .map_or_else(|| format!("slot {slot}"), |o| o.name().to_string())
    }
}

fn output_problems(cfg: &Config, frame: &[u8], want: &Prediction, out: &[u8], p: &mut Vec<String>) {
    match &want.output {
        Output::Unchanged if out != frame => p.push(format!("frame changed: {}", short_hex(out))),
        Output::Forwarded(want) if want != out => p.push(format!(
            "output {}\n        model  {}",
            short_hex(out),
            short_hex(want)
        )),
        Output::Delivered { frame: want, .. } | Output::Flooded { frame: want, .. }
            if want != out =>
        {
            p.push(format!(
                "output {}\n        model  {}",
                short_hex(out),
                short_hex(want)
            ));
        }
        Output::Encapsulated { vni, vtep, inner } => {
            let want = cfg
                .encapsulation(*vni, *vtep, inner)
                .expect("a next hop for every VTEP");
            let sport = out
                .get(34..36)
                .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]));
            let mut got = out.to_vec();
            if let Some(b) = got.get_mut(34..36) {
                b.fill(0);
            }
            if got != want {
                p.push(format!(
                    "output {}\n        model  {}",
                    short_hex(out),
                    short_hex(&want)
                ));
            }
            if sport < UDP_SRC_PORT_MIN {
                p.push(format!("UDP source port {sport} below {UDP_SRC_PORT_MIN}"));
            }
        }
        _ => {}
    }
}

/// The isolation invariants, from the configuration alone (not from the model's verdict):
/// whatever the program did, it must not have carried the frame into another VN.
fn isolation_problems(
    cfg: &Config,
    program: Program,
    frame: &[u8],
    observed: Option<Outcome>,
    out: &[u8],
    p: &mut Vec<String>,
) {
    let Some(Outcome::Forward(forward)) = observed else {
        return;
    };
    match program {
        Program::TcVmEgress => vm_isolation(cfg, frame, forward, out, p),
        Program::XdpUnderlayRx | Program::TcUnderlayRx => {
            underlay_isolation(cfg, frame, forward, out, p)
        }
        Program::TcTunnelRx => p.push(format!(
            "ISOLATION: {} without tunnel metadata: no VNI to keep it in",
            forward.name()
        )),
        Program::XdpPass => {}
    }
}

fn vm_isolation(cfg: &Config, frame: &[u8], forward: Forward, out: &[u8], p: &mut Vec<String>) {
    let vid = reference::vm_frame(frame).map_or(0, |(vid, _)| vid);
    let port = Port::new(cfg.ingress_ifindex, vid);
    let Some(vni) = cfg.bindings.get(&port).filter(|b| b.active).map(|b| b.vni) else {
        p.push(format!(
            "ISOLATION: {} from {port:?}, which forwards for no VN",
            forward.name()
        ));
        return;
    };
    match forward {
        // Over IPv6 the frame goes as it is to the kernel's vxlan device (the VNI and VTEP
        // ride in the tunnel key, which a test run does not show): its destination must be
        // a MAC of the VN behind an IPv6 VTEP.
        Forward::Encapsulated if out == frame_untagged(frame) => {
            let dst: [u8; 6] = out[..6].try_into().expect("6 bytes");
            if !matches!(cfg.fdb.get(&(vni, dst)), Some(Location::RemoteV6(_))) {
                p.push(format!(
                    "ISOLATION: from {port:?} (VNI {vni}) to the tunnel device for {dst:02x?}, \
                     no MAC of that VN over IPv6"
                ));
            }
        }
        Forward::Encapsulated => {
            if out.len() < 50 {
                p.push("ISOLATION: encapsulated frame shorter than its headers".into());
                return;
            }
            let out_vni = u32::from_be_bytes([0, out[46], out[47], out[48]]);
            let vtep = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
            if out_vni != vni {
                p.push(format!(
                    "ISOLATION: from {port:?} (VNI {vni}) encapsulated with VNI {out_vni}"
                ));
            }
            if !cfg.vteps_of(vni).contains(&vtep) {
                p.push(format!(
                    "ISOLATION: from {port:?} (VNI {vni}) sent to {vtep}, no VTEP of that VN"
                ));
            }
        }
        Forward::ArpReplied => {
            let answer = (out.len() >= 42).then(|| {
                let ip = Ipv4Addr::new(out[28], out[29], out[30], out[31]);
                (ip, <[u8; 6]>::try_from(&out[22..28]).expect("6 bytes"))
            });
            let known =
                answer.and_then(|(ip, mac)| (cfg.arp.get(&(vni, ip)) == Some(&mac)).then_some(()));
            if known.is_none() {
                p.push(format!(
                    "ISOLATION: ARP answer {answer:?} on {port:?} is not an address of VNI {vni}"
                ));
            }
        }
        Forward::NdReplied => {
            // The advertisement's target, and its target link-layer address option.
            let answer = (out.len() >= 86).then(|| {
                let target = <[u8; 16]>::try_from(&out[62..78]).expect("16 bytes");
                (
                    Ipv6Addr::from(target),
                    <[u8; 6]>::try_from(&out[80..86]).expect("6 bytes"),
                )
            });
            let known =
                answer.and_then(|(ip, mac)| (cfg.nd.get(&(vni, ip)) == Some(&mac)).then_some(()));
            if known.is_none() {
                p.push(format!(
                    "ISOLATION: ND answer {answer:?} on {port:?} is not an address of VNI {vni}"
                ));
            }
        }
        _ => {}
    }
}

fn underlay_isolation(
    cfg: &Config,
    frame: &[u8],
    forward: Forward,
    out: &[u8],
    p: &mut Vec<String>,
) {
    if !matches!(forward, Forward::Decapsulated | Forward::Flooded) {
        return;
    }
    let Underlay::Vxlan {
        src, vni, inner, ..
    } = reference::underlay(cfg, frame)
    else {
        p.push(format!(
            "ISOLATION: {} a frame that is not VXLAN for this VTEP",
            forward.name()
        ));
        return;
    };
    let Some(vn) = cfg.vns.get(&vni) else {
        p.push(format!(
            "ISOLATION: {} from VNI {vni}, which this NVE does not serve",
            forward.name()
        ));
        return;
    };
    if !cfg.accepts(vni, src) {
        p.push(format!(
            "ISOLATION: {} VNI {vni} from {src}, a VTEP the VN does not know",
            forward.name()
        ));
    }
    let dst: [u8; 6] = inner[..6].try_into().expect("inner Ethernet header");
    let location = cfg.fdb.get(&(vni, dst));
    let forwarding_in_vn = |port: &Port| {
        cfg.bindings
            .get(port)
            .is_some_and(|b| b.active && b.vni == vni)
    };
    let fine = match forward {
        Forward::Decapsulated => {
            matches!(location, Some(Location::Local { port, .. }) if forwarding_in_vn(port))
        }
        _ => reference::is_multicast(&dst) || (location.is_none() && vn.floods_unknown),
    };
    if !fine {
        p.push(format!(
            "ISOLATION: {} VNI {vni} to {dst:02x?}, which is {location:?} in that VN",
            forward.name()
        ));
    }
    if out != inner {
        p.push(format!(
            "ISOLATION: {} bytes are not the inner frame of VNI {vni}",
            forward.name()
        ));
    }
}

fn describe(
    program: Program,
    frame: &[u8],
    want: &Prediction,
    rc: u32,
    out: &[u8],
    problems: &[String],
) -> String {
    let mut s = format!(
        "  - {} frame ({} bytes) {}\n      model: {} {:?} (rc {}) {}\n      got:   rc {rc}\n",
        program.name(),
        frame.len(),
        hex(frame),
        want.outcome.name(),
        want.verdict,
        want.code(program),
        output_summary(&want.output),
    );
    let _ = writeln!(s, "      out:   {}", short_hex(out));
    for problem in problems {
        let _ = writeln!(s, "      {problem}");
    }
    s
}

fn output_summary(o: &Output) -> String {
    match o {
        Output::Unchanged => "unchanged".into(),
        Output::Dropped => "dropped".into(),
        Output::Delivered { vni, port, frame } => {
            format!("to {port:?} of VNI {vni}: {}", short_hex(frame))
        }
        Output::Encapsulated { vni, vtep, inner } => {
            format!("VNI {vni} to {vtep}: inner {}", short_hex(inner))
        }
        Output::Forwarded(frame) => format!("sent on: {}", short_hex(frame)),
        Output::Flooded {
            vni, ports, vteps, ..
        } => format!("VNI {vni} to {ports:?} and {vteps:?}"),
    }
}

/// The first 96 bytes of a long frame are enough to read its headers.
fn short_hex(b: &[u8]) -> String {
    const SHOWN: usize = 96;
    if b.len() <= SHOWN {
        return hex(b);
    }
    format!("{}... ({} bytes)", hex(&b[..SHOWN]), b.len())
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// xorshift64* (Vigna): small, seeded, the same frames on every run.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn percent(&mut self, p: usize) -> bool {
        self.below(100) < p
    }

    fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())]
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.byte()).collect()
    }

    /// `min` to `min + spread - 1` random bytes.
    fn some_bytes(&mut self, min: usize, spread: usize) -> Vec<u8> {
        let n = min + self.below(spread);
        self.bytes(n)
    }
}

/// Where the fields of a generated frame are, for mutations that aim at them.
#[derive(Default)]
struct Layout {
    /// Single bytes worth randomizing (types, lengths, flags, addresses).
    fields: Vec<usize>,
    /// Offsets of MAC addresses.
    macs: Vec<usize>,
    /// Offset of a 24-bit VNI.
    vni: Option<usize>,
    /// Offset of an 802.1Q TCI.
    tci: Option<usize>,
    /// Header boundaries, where truncation is most interesting.
    bounds: Vec<usize>,
}

/// Frames from the configuration's building blocks, then mutated.
struct Generator {
    rng: Rng,
}

const MULTICAST: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb];
const IPV6_MULTICAST: [u8; 6] = [0x33, 0x33, 0x00, 0x00, 0x00, 0x01];
const MACS: [[u8; 6]; 15] = [
    pt::VM1,
    pt::VM2,
    pt::VM3,
    pt::VM4,
    pt::VM5,
    pt::VM6,
    pt::VM7,
    pt::VM8,
    pt::VM9,
    pt::UNKNOWN,
    BROADCAST,
    MULTICAST,
    IPV6_MULTICAST,
    pt::NEXT_HOP_MAC,
    pt::UNDERLAY_MAC,
];

impl Generator {
    fn new(seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
        }
    }

    /// A frame for `program`, and whether it was mutated.
    fn frame(&mut self, program: Program) -> (Vec<u8>, bool) {
        let (mut frame, layout) = match program {
            Program::XdpUnderlayRx | Program::TcUnderlayRx => self.underlay(),
            Program::TcVmEgress => self.vm(),
            Program::TcTunnelRx | Program::XdpPass => {
                let (dst, src) = (self.mac(), self.mac());
                self.l2(dst, src, 0)
            }
        };
        let mutated = self.rng.percent(50);
        if mutated {
            self.mutate(&mut frame, &layout);
        }
        (frame, mutated)
    }

    fn mac(&mut self) -> [u8; 6] {
        match self.rng.below(12) {
            0 => {
                let mut m: [u8; 6] = self.rng.bytes(6).try_into().expect("6 bytes");
                m[0] &= 0xfe;
                m
            }
            1 => self.rng.bytes(6).try_into().expect("6 bytes"),
            _ => self.rng.pick(&MACS),
        }
    }

    fn vni(&mut self) -> u32 {
        if self.rng.percent(75) {
            return self.rng.pick(&[pt::VNI, pt::VNI_TAGGED, pt::VNI_EMPTY]);
        }
        let random = self.rng.next() as u32 & 0xff_ffff;
        self.rng
            .pick(&[0, 999, 0xff_ffff, pt::VNI | 0x01_0000, pt::VNI << 8, random])
    }

    fn ip(&mut self) -> Ipv4Addr {
        let random = Ipv4Addr::from(self.rng.next() as u32);
        self.rng.pick(&[
            pt::VTEP,
            pt::REMOTE,
            Ipv4Addr::new(10, 0, 0, 9),
            pt::KNOWN_IP,
            Ipv4Addr::new(192, 168, 30, 1),
            Ipv4Addr::new(192, 168, 10, 1),
            pt::VM7_IP,
            Ipv4Addr::UNSPECIFIED,
            random,
        ])
    }

    fn ipv6(&mut self) -> Ipv6Addr {
        let random: [u8; 16] = self.rng.bytes(16).try_into().expect("16 bytes");
        self.rng.pick(&[
            pt::VM7_IPV6,
            pt::VM7_IPV6,
            pt::KNOWN_IPV6,
            Ipv6Addr::UNSPECIFIED,
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 7),
            Ipv6Addr::new(0xfebf, 0, 0, 0, 0, 0, 0, 7),
            Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 7),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 8),
            random.into(),
        ])
    }

    /// An Ethernet frame a VM could send, from `src` to `dst`, of about `size` bytes (0: a
    /// small one).
    fn l2(&mut self, dst: [u8; 6], src: [u8; 6], size: usize) -> (Vec<u8>, Layout) {
        let mut layout = Layout {
            fields: vec![12, 13, 14],
            macs: vec![0, 6],
            bounds: vec![0, 6, 12, 14],
            ..Layout::default()
        };
        let frame = if size > 0 {
            packet::inner_ping(dst, src, size.saturating_sub(42))
        } else {
            match self.rng.below(9) {
                0 => packet::inner_ping(dst, src, self.rng.below(80)),
                1 => {
                    let ip = Ipv4::new(self.ip(), self.ip(), 1);
                    let echo = packet::icmp_echo(1, 1, self.rng.below(40));
                    layout.fields.extend([26, 29]);
                    packet::eth(dst, src, 0x0800, &ip.packet(&echo))
                }
                2 | 3 => {
                    let (sender, target) = (self.ip(), self.ip());
                    let mut f = packet::arp_request(src, sender, target);
                    if self.rng.percent(25) {
                        f[..6].copy_from_slice(&dst);
                    }
                    layout.fields.extend([20, 21, 28, 31, 41]);
                    layout.bounds.extend([22, 42]);
                    f
                }
                4 => {
                    let (asker, owner) = (self.ip(), self.ip());
                    packet::arp_reply(dst, asker, src, owner)
                }
                5 => {
                    let (from, to) = (self.ipv6(), self.ipv6());
                    let next = self.rng.pick(&[58, 58, 17, 6, 0]);
                    let payload = match self.rng.below(3) {
                        0 if next == 58 => {
                            let target = self.ipv6();
                            packet::neighbour_advert(target, src)
                        }
                        1 => vec![128, 0, 0, 0, 0, 1, 0, 1],
                        _ => self.rng.some_bytes(0, 40),
                    };
                    layout.fields.extend([20, 22, 23, 37, 54, 62, 77]);
                    layout.bounds.extend([54, 55, 62, 78]);
                    packet::eth(dst, src, 0x86dd, &packet::ipv6(from, to, next, &payload))
                }
                6 => {
                    let vid = self.rng.below(4096) as u16;
                    let ethertype = self.rng.pick(&[0x0800, 0x0806, 0x8100, 0x88a8]);
                    let payload = self.rng.some_bytes(0, 60);
                    layout.fields.extend([15, 16, 17]);
                    packet::eth_tagged(dst, src, vid, ethertype, &payload)
                }
                7 => {
                    let ethertype = self.rng.pick(&[0x88cc, 0x05dc, 0x0600, 0x8847, 0x0842]);
                    let payload = self.rng.some_bytes(0, 64);
                    packet::eth(dst, src, ethertype, &payload)
                }
                _ => {
                    let ip = Ipv4::new(self.ip(), self.ip(), 17);
                    let payload = self.rng.some_bytes(0, 40);
                    let udp = packet::udp(self.rng.next() as u16, 53, &payload);
                    packet::eth(dst, src, 0x0800, &ip.packet(&udp))
                }
            }
        };
        (frame, layout)
    }

    fn underlay(&mut self) -> (Vec<u8>, Layout) {
        if self.rng.percent(10) {
            return self.not_vxlan();
        }
        let (dst, src) = (self.mac(), self.mac());
        let (inner, inner_layout) = self.l2(dst, src, 0);
        let mut ip = Ipv4::new(
            match self.rng.below(10) {
                0 => pt::STRANGER,
                1 => self.ip(),
                _ => pt::REMOTE,
            },
            if self.rng.percent(90) {
                pt::VTEP
            } else {
                self.ip()
            },
            if self.rng.percent(95) {
                17
            } else {
                self.rng.pick(&[1, 6, 47, 255])
            },
        );
        if self.rng.percent(10) {
            let words = 1 + self.rng.below(10);
            ip.options = if self.rng.percent(50) {
                vec![1; words * 4]
            } else {
                self.rng.bytes(words * 4)
            };
        }
        ip.frag = if self.rng.percent(85) {
            self.rng.pick(&[0x4000, 0])
        } else {
            self.rng
                .pick(&[0x2000, 0x0010, 0x8000, 0x4001, 0x3fff, 0x6000, 0xa000])
        };
        ip.ttl = self.rng.byte();
        let dport = if self.rng.percent(92) {
            4789
        } else {
            self.rng.pick(&[4790, 8472, 0, 0x12b6, 0xb512])
        };
        let flags = if self.rng.percent(90) {
            0x08
        } else {
            self.rng.pick(&[0x00, 0x0c, 0x88, 0xff, 0xf7, 0x80])
        };
        let vni = self.vni();
        let sport = self.rng.next() as u16;
        let frame = packet::eth(
            pt::UNDERLAY_MAC,
            pt::NEXT_HOP_MAC,
            0x0800,
            &ip.packet(&packet::udp(
                sport,
                dport,
                &packet::vxlan(flags, vni, &inner),
            )),
        );
        let udp = 14 + 20 + ip.options.len();
        let (vxlan, at) = (udp + 8, udp + 16);
        let mut layout = Layout {
            fields: vec![
                12,
                13,
                14,
                20,
                21,
                23,
                29,
                30,
                33,
                udp + 2,
                udp + 3,
                vxlan,
                vxlan + 4,
            ],
            macs: vec![],
            vni: Some(vxlan + 4),
            tci: None,
            bounds: vec![14, 33, 34, udp, udp + 8, vxlan + 8, at + 14, at + 34],
        };
        layout
            .fields
            .extend(inner_layout.fields.iter().map(|f| at + f));
        layout.macs.extend(inner_layout.macs.iter().map(|f| at + f));
        (frame, layout)
    }

    fn not_vxlan(&mut self) -> (Vec<u8>, Layout) {
        let frame = match self.rng.below(4) {
            0 => packet::arp_request(pt::NEXT_HOP_MAC, pt::REMOTE, pt::VTEP),
            1 => packet::eth(
                pt::UNDERLAY_MAC,
                pt::NEXT_HOP_MAC,
                0x0800,
                &Ipv4::new(pt::REMOTE, pt::VTEP, 6).packet(&[0; 20]),
            ),
            2 => {
                // VXLAN behind an 802.1Q tag: the underlay is untagged, so not ours.
                let inner = packet::inner_ping(pt::VM1, pt::VM2, 8);
                let mut ip = Ipv4::new(pt::REMOTE, pt::VTEP, 17);
                ip.ttl = 64;
                let f = packet::vxlan_frame(
                    pt::UNDERLAY_MAC,
                    pt::NEXT_HOP_MAC,
                    &ip,
                    1,
                    pt::VNI,
                    &inner,
                );
                packet::eth_tagged(pt::UNDERLAY_MAC, pt::NEXT_HOP_MAC, 5, 0x0800, &f[14..])
            }
            _ => {
                let mut v6 = vec![0x60, 0, 0, 0, 0, 16, 17, 64];
                v6.extend(self.rng.bytes(32 + 16));
                packet::eth(pt::UNDERLAY_MAC, pt::NEXT_HOP_MAC, 0x86dd, &v6)
            }
        };
        let layout = Layout {
            fields: vec![12, 13, 14, 23],
            bounds: vec![14, 34],
            ..Layout::default()
        };
        (frame, layout)
    }

    /// A frame a VM sends on the test port: untagged, priority-tagged, tagged with one of
    /// the port's VIDs or another, sometimes with a second tag of its own.
    fn vm(&mut self) -> (Vec<u8>, Layout) {
        let vid = match self.rng.below(20) {
            0..7 => None,
            7 => Some(0),
            8 => Some(self.rng.below(4096) as u16),
            9 => Some(self.rng.pick(&[40, 99, 4095])),
            _ => Some(self.rng.pick(&[pt::VID, 30, 50])),
        };
        let dst = match self.rng.below(10) {
            0 | 1 => BROADCAST,
            _ => self.mac(),
        };
        let src = if vid == Some(50) && self.rng.percent(70) {
            pt::VM7
        } else {
            self.mac()
        };
        let (frame, mut layout) = match self.rng.below(20) {
            0..3 => {
                // An ARP request, the suppression candidates among them.
                let (other_target, other_sender) = (self.ip(), self.ip());
                let target = self.rng.pick(&[pt::KNOWN_IP, pt::KNOWN_IP, other_target]);
                let sender = self
                    .rng
                    .pick(&[Ipv4Addr::new(192, 168, 30, 1), other_sender]);
                let mut f = packet::arp_request(src, sender, target);
                if self.rng.percent(10) {
                    f[..6].copy_from_slice(&dst);
                }
                let layout = Layout {
                    fields: vec![12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 28, 31, 41],
                    macs: vec![0, 6, 22],
                    bounds: vec![14, 22, 41, 42],
                    ..Layout::default()
                };
                (f, layout)
            }
            3 | 4 => {
                // A neighbour solicitation, the suppression candidates among them.
                let (asker, other) = (self.ipv6(), self.ipv6());
                let target = self.rng.pick(&[pt::KNOWN_IPV6, pt::KNOWN_IPV6, other]);
                let mut f = packet::neighbour_solicit(src, asker, target);
                if self.rng.percent(10) {
                    f[..6].copy_from_slice(&dst);
                }
                let layout = Layout {
                    // Hop limit, ICMPv6 type and code, the target's last byte.
                    fields: vec![12, 13, 20, 21, 37, 54, 55, 77],
                    macs: vec![0, 6],
                    bounds: vec![14, 54, 56, 62, 78],
                    ..Layout::default()
                };
                (f, layout)
            }
            5 => {
                // Around the largest frame the underlay MTU carries (1464 bytes untagged).
                let size = 1464 + self.rng.below(7) - 3;
                self.l2(dst, src, size)
            }
            _ => self.l2(dst, src, 0),
        };
        let Some(vid) = vid else {
            return (frame, layout);
        };
        let tci = (self.rng.below(8) as u16) << 13 | vid;
        let mut tagged = frame[..12].to_vec();
        tagged.extend_from_slice(&0x8100u16.to_be_bytes());
        tagged.extend_from_slice(&tci.to_be_bytes());
        if self.rng.percent(8) {
            // A second tag: the VM's own VLANs inside its VN.
            let tpid = self.rng.pick(&[0x8100u16, 0x88a8]);
            tagged.extend_from_slice(&tpid.to_be_bytes());
            tagged.extend_from_slice(&(self.rng.below(4096) as u16).to_be_bytes());
        }
        let shift = tagged.len() - 12;
        tagged.extend_from_slice(&frame[12..]);
        for f in layout.fields.iter_mut().chain(&mut layout.bounds) {
            if *f >= 12 {
                *f += shift;
            }
        }
        for m in layout.macs.iter_mut().filter(|m| **m >= 12) {
            *m += shift;
        }
        layout.fields.extend([12, 13, 14, 15]);
        layout.bounds.extend([13, 16, 17, 18]);
        layout.tci = Some(14);
        (tagged, layout)
    }

    fn mutate(&mut self, frame: &mut Vec<u8>, layout: &Layout) {
        for _ in 0..1 + self.rng.below(3) {
            let len = frame.len();
            match self.rng.below(8) {
                0 if len > 0 => {
                    let bit = self.rng.below(len * 8);
                    frame[bit / 8] ^= 1 << (bit % 8);
                }
                1 if len > 0 => {
                    let bit = self.rng.below(len.min(80) * 8);
                    frame[bit / 8] ^= 1 << (bit % 8);
                }
                2 if !layout.fields.is_empty() => {
                    let at = self.rng.pick(&layout.fields);
                    if at < len {
                        frame[at] = self.rng.byte();
                    }
                }
                3 => {
                    let cut = if self.rng.percent(60) && !layout.bounds.is_empty() {
                        (self.rng.pick(&layout.bounds) + self.rng.below(3)).saturating_sub(1)
                    } else {
                        self.rng.below(len + 1)
                    };
                    frame.truncate(cut);
                    if self.rng.percent(50) {
                        reseal_ipv4(frame);
                    }
                }
                4 => {
                    let extra = self.rng.some_bytes(1, 40);
                    frame.extend(extra);
                    if self.rng.percent(50) {
                        reseal_ipv4(frame);
                    }
                }
                5 if !layout.macs.is_empty() => {
                    let at = self.rng.pick(&layout.macs);
                    let mac = self.mac();
                    if at + 6 <= len {
                        frame[at..at + 6].copy_from_slice(&mac);
                    }
                }
                6 => {
                    if let Some(at) = layout.vni.filter(|at| at + 3 <= len) {
                        let vni = self.vni().to_be_bytes();
                        frame[at..at + 3].copy_from_slice(&vni[1..]);
                    } else if let Some(at) = layout.tci.filter(|at| at + 2 <= len) {
                        let vid = self.rng.pick(&[0, 10, 30, 40, 50, 99, 4095]);
                        let tci = u16::from_be_bytes([frame[at], frame[at + 1]]) & 0xf000 | vid;
                        frame[at..at + 2].copy_from_slice(&tci.to_be_bytes());
                    }
                }
                _ => {
                    let at = self.rng.below(len.max(1));
                    let n = (1 + self.rng.below(8)).min(len - at.min(len));
                    let noise = self.rng.bytes(n);
                    frame[at..at + n].copy_from_slice(&noise);
                }
            }
        }
    }
}

/// Makes an untagged IPv4 frame's total length, UDP length and header checksum agree with
/// its length again after a cut or an extension, as a sender of a short (or long) frame
/// would have written them: what lies past the outer headers is then what gets tested.
fn reseal_ipv4(frame: &mut [u8]) {
    const IP: usize = 14;
    let len = frame.len();
    if len < IP + 20 || frame[12..14] != [0x08, 0x00] {
        return;
    }
    let ihl = usize::from(frame[IP] & 0x0f) * 4;
    if ihl < 20 || len < IP + ihl {
        return;
    }
    frame[IP + 2..IP + 4].copy_from_slice(&((len - IP) as u16).to_be_bytes());
    let udp = IP + ihl;
    if frame[IP + 9] == 17 && len >= udp + 8 {
        frame[udp + 4..udp + 6].copy_from_slice(&((len - udp) as u16).to_be_bytes());
    }
    packet::refresh_ipv4_checksum(frame, IP);
}

/// The frame as tc_vm_egress forwards it: without the port's VLAN tag.
fn frame_untagged(frame: &[u8]) -> Vec<u8> {
    reference::vm_frame(frame).map_or_else(|_| frame.to_vec(), |(_, f)| f)
}
