//! Where a program's nanoseconds go: `perf record` over every CPU while the program runs
//! under BPF_PROG_TEST_RUN, each sample inside the program put in a class by what the
//! program was doing: its own instructions, or the kernel function it called (the frame
//! right above the program's in the stack: a map lookup, `bpf_skb_store_bytes`, ...).
use std::{
    collections::BTreeMap,
    process::{Child, Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// What a sample inside a program was spent on.
pub const CLASSES: [&str; 7] = [
    "own instructions",
    "map lookups",
    "store_bytes",
    "adjust_room / change_head",
    "redirect",
    "load_bytes",
    "other helpers",
];

/// The class of a kernel function a program calls.
fn class_of(callee: &str) -> &'static str {
    let has = |s: &str| callee.contains(s);
    if has("map_lookup") || has("lookup_elem") || has("htab") || has("lookup_nulls") {
        "map lookups"
    } else if has("store_bytes") {
        "store_bytes"
    } else if has("adjust_room") || has("change_head") || has("generic_push") || has("generic_pop")
    {
        "adjust_room / change_head"
    } else if has("redirect") {
        "redirect"
    } else if has("load_bytes") {
        "load_bytes"
    } else {
        "other helpers"
    }
}

/// A `perf record` of every CPU, stopped and read by [`Recording::classes`].
pub struct Recording {
    child: Child,
    file: String,
}

impl Recording {
    /// Starts recording (perf must be installed: Debian's linux-perf).
    pub fn start(tag: &str) -> Result<Self> {
        let file = format!("/tmp/nve-bench-{}-{tag}.perf", std::process::id());
        let child = Command::new("perf")
            .args(["record", "-a", "-g", "-F", "2999", "-q", "-o", &file])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("perf record (Debian's linux-perf)")?;
        // perf needs a moment before it samples.
        std::thread::sleep(std::time::Duration::from_millis(500));
        Ok(Self { child, file })
    }

    /// Stops the recording; the share of each class among the samples inside `program`
    /// (its name as loaded: the JIT's symbol ends in it).
    pub fn classes(mut self, program: &str) -> Result<BTreeMap<&'static str, f64>> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.child.wait()?;
        let out = Command::new("perf")
            .args(["script", "-i", &self.file, "-F", "ip,sym"])
            .stderr(Stdio::null())
            .output()?;
        let _ = std::fs::remove_file(&self.file);
        let counts = count(&String::from_utf8_lossy(&out.stdout), program);
        let total: f64 = counts.values().sum();
        if total == 0.0 {
            bail!("perf saw no sample inside {program}");
        }
        Ok(counts.into_iter().map(|(c, n)| (c, n / total)).collect())
    }
}

/// Samples by class: `script` is `perf script` of call chains (innermost frame first, a
/// blank line after each sample).
fn count(script: &str, program: &str) -> BTreeMap<&'static str, f64> {
    let suffix = format!("_{program}");
    let mut counts = BTreeMap::new();
    for sample in script.split("\n\n") {
        let frames: Vec<&str> = sample
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(|s| s.split('+').next().unwrap_or(s))
            .collect();
        let Some(at) = frames
            .iter()
            .position(|f| f.starts_with("bpf_prog_") && f.ends_with(&suffix))
        else {
            continue;
        };
        let class = match at {
            0 => "own instructions",
            _ => class_of(frames[at - 1]),
        };
        *counts.entry(class).or_insert(0.0) += 1.0;
    }
    counts
}

/// A stacked bar per program: its nanoseconds over the baseline, split by class.
pub fn svg(rows: &[(String, f64, BTreeMap<&'static str, f64>)]) -> String {
    use std::fmt::Write as _;
    const COLORS: [&str; 7] = [
        "#4a7ab5", "#d9822b", "#59a14f", "#b07aa1", "#e15759", "#76b7b2", "#9c9c9c",
    ];
    let (w, row, left) = (980.0, 26.0, 260.0);
    let max = rows.iter().map(|r| r.1).fold(1.0f64, f64::max);
    let scale = (w - left - 80.0) / max;
    let h = row * rows.len() as f64 + 70.0;
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{h}' font-family='sans-serif' font-size='12'>\n\
         <text x='10' y='16'>ns per packet over xdp_pass (BPF_PROG_TEST_RUN), by what the program spent it on (perf samples)</text>\n"
    );
    for (i, (label, ns, shares)) in rows.iter().enumerate() {
        let y = 30.0 + i as f64 * row;
        let _ = writeln!(
            s,
            "<text x='{}' y='{}' text-anchor='end'>{label}</text>",
            left - 6.0,
            y + 15.0
        );
        let mut x = left;
        for (class, color) in CLASSES.iter().zip(COLORS) {
            let part = shares.get(class).copied().unwrap_or(0.0) * ns;
            let _ = writeln!(
                s,
                "<rect x='{x:.1}' y='{}' width='{:.1}' height='{}' fill='{color}'><title>{class}: {part:.0} ns</title></rect>",
                y + 3.0,
                part * scale,
                row - 6.0
            );
            x += part * scale;
        }
        let _ = writeln!(
            s,
            "<text x='{:.1}' y='{}'>{ns:.0} ns</text>",
            x + 4.0,
            y + 15.0
        );
    }
    let legend = h - 24.0;
    for (i, (class, color)) in CLASSES.iter().zip(COLORS).enumerate() {
        let x = 10.0 + i as f64 * 138.0;
        let _ = writeln!(
            s,
            "<rect x='{x}' y='{legend}' width='10' height='10' fill='{color}'/><text x='{}' y='{}'>{class}</text>",
            x + 14.0,
            legend + 10.0
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_classed_by_the_function_the_program_called() {
        let script = "\
            ffffffff81000001 lookup_nulls_elem_raw+0x4f\n\
            ffffffff81000002 __htab_map_lookup_elem+0x2b\n\
            ffffffffc0000001 bpf_prog_fc1c7fdf71e5c69a_tc_vm_egress+0x24b\n\
            ffffffff81000003 bpf_test_run\n\
            \n\
            ffffffffc0000001 bpf_prog_fc1c7fdf71e5c69a_tc_vm_egress+0x5\n\
            ffffffff81000003 bpf_test_run\n\
            \n\
            ffffffff81000004 __pi_memcpy+0xa\n\
            ffffffff81000005 bpf_skb_store_bytes+0x41\n\
            ffffffffc0000001 bpf_prog_fc1c7fdf71e5c69a_tc_vm_egress+0x9\n\
            \n\
            ffffffffc0000002 bpf_prog_0885fe61a395df58_xdp_underlay_rx+0x9\n";
        let c = count(script, "tc_vm_egress");
        assert_eq!(c["map lookups"], 1.0);
        assert_eq!(c["own instructions"], 1.0);
        assert_eq!(c["store_bytes"], 1.0);
        assert_eq!(c.values().sum::<f64>(), 3.0);
    }
}
