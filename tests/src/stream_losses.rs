//! Where each datagram of a stream to a migrating VM ended, from what its two taps
//! transmitted to the guest (the network's side of the tap), split at the source VM's STOP
//! and the destination's RESUME: the datagrams lost between the two are the VM's pause;
//! those lost before STOP or after RESUME are the network's (once the VM runs on the
//! destination, a datagram lost is lost by the network). Pure: the caller gives the
//! timestamps.
use std::{collections::BTreeSet, time::SystemTime};

/// One tap's side: each datagram of the stream it transmitted to its guest, in order,
/// repeats included, with when.
pub type Arrivals = [(u32, SystemTime)];

/// What the stream lost and what the guest saw twice or out of order.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Losses {
    /// Lost, last seen (at the source's tap, else when sent) between STOP and RESUME.
    pub in_pause: Vec<u32>,
    /// Lost, last seen before STOP: the network's.
    pub before_stop: Vec<u32>,
    /// Lost, last seen after RESUME (at the stopped source's tap, or nowhere): the network's.
    pub after_resume: Vec<u32>,
    /// Of the lost, those that reached neither tap (the rest reached the stopped source's).
    pub at_no_tap: Vec<u32>,
    /// Datagrams the guest was given more than once: a repeat at one tap, or at the
    /// destination's one the source's guest had before it stopped.
    pub duplicates: usize,
    /// Datagrams the guest was given after one with a higher sequence number.
    pub out_of_order: usize,
}

impl Losses {
    /// Every datagram the guest did not get: the pause's and the network's.
    pub fn lost(&self) -> usize {
        self.in_pause.len() + self.before_stop.len() + self.after_resume.len()
    }

    /// What the network lost: before STOP and after RESUME.
    pub fn network(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self
            .before_stop
            .iter()
            .chain(&self.after_resume)
            .copied()
            .collect();
        v.sort_unstable();
        v
    }
}

impl std::fmt::Display for Losses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let range = |v: &[u32]| match (v.first(), v.last()) {
            (Some(a), Some(b)) => format!(" (seq {a}..={b})"),
            _ => String::new(),
        };
        write!(
            f,
            "lost during the pause (STOP -> RESUME) {}{}; lost by the network {} = {} before \
             STOP + {} after RESUME{} ({} of all lost reached no tap); duplicates delivered {}; \
             out of order at the receiver {}",
            self.in_pause.len(),
            range(&self.in_pause),
            self.network().len(),
            self.before_stop.len(),
            self.after_resume.len(),
            range(&self.after_resume),
            self.at_no_tap.len(),
            self.duplicates,
            self.out_of_order,
        )
    }
}

/// Accounts for `sent` (sequence number and when it left) given what the source's tap
/// (`src`) and the destination's (`dst`) transmitted, the source VM stopping at `stopped`
/// and the destination resuming at `resumed`. The guest had what reached the source's tap
/// before STOP and everything that reached the destination's (queued there until RESUME,
/// if it came earlier).
pub fn account(
    sent: &[(u32, SystemTime)],
    src: &Arrivals,
    dst: &Arrivals,
    stopped: SystemTime,
    resumed: SystemTime,
) -> Losses {
    let first_at = |arrivals: &Arrivals| {
        let mut m = std::collections::BTreeMap::new();
        for &(seq, at) in arrivals {
            m.entry(seq).or_insert(at);
        }
        m
    };
    let (at_src, at_dst) = (first_at(src), first_at(dst));
    let mut l = Losses::default();
    for &(seq, sent_at) in sent {
        if at_dst.contains_key(&seq) || at_src.get(&seq).is_some_and(|at| *at < stopped) {
            continue;
        }
        let seen = at_src.get(&seq).copied().unwrap_or_else(|| {
            l.at_no_tap.push(seq);
            sent_at
        });
        if seen < stopped {
            l.before_stop.push(seq);
        } else if seen < resumed {
            l.in_pause.push(seq);
        } else {
            l.after_resume.push(seq);
        }
    }
    let given = src
        .iter()
        .filter(|(_, at)| *at < stopped)
        .chain(dst)
        .map(|(seq, _)| *seq);
    (l.duplicates, l.out_of_order) = repeats(given);
    l
}

/// What became of the datagrams sent in one stretch of a stream to a VM whose migration was
/// cancelled (see [`account_aborted`]).
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Part {
    /// What the stretch is (e.g. "STOP -> pause answered").
    pub name: String,
    /// Datagrams sent in it (without send errors).
    pub sent: usize,
    /// Of those, the ones the source's tap transmitted (its guest, running again, has them).
    pub at_src: usize,
    /// Lost: they reached the destination's tap only (its QEMU never ran) ...
    pub lost_at_dst: Vec<u32>,
    /// ... or no tap at all.
    pub lost_at_no_tap: Vec<u32>,
}

impl Part {
    /// Every datagram of the stretch that its guest did not get.
    pub fn lost(&self) -> usize {
        self.lost_at_dst.len() + self.lost_at_no_tap.len()
    }
}

/// A stream to a VM whose migration was cancelled: what each stretch lost, and what the
/// guest was given twice or out of order.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize)]
pub struct Aborted {
    pub parts: Vec<Part>,
    pub duplicates: usize,
    pub out_of_order: usize,
}

impl Aborted {
    /// Every datagram the guest did not get.
    pub fn lost(&self) -> usize {
        self.parts.iter().map(Part::lost).sum()
    }
}

/// Accounts for `sent` to a VM whose migration was cancelled, given what the source's tap
/// (`src`) and the destination's (`dst`) transmitted. The source's guest runs again, and a
/// stopped VM's tap keeps its frames for it, so the guest has exactly what reached the
/// source's tap; the destination's QEMU never ran, so what reached only its tap is lost.
/// Datagrams are split by when they were sent at `marks` (ascending, one name each in
/// `names`, which has one more: the stretch before the first mark).
pub fn account_aborted(
    sent: &[(u32, SystemTime)],
    src: &Arrivals,
    dst: &Arrivals,
    marks: &[SystemTime],
    names: &[&str],
) -> Aborted {
    let at_src: BTreeSet<u32> = src.iter().map(|(seq, _)| *seq).collect();
    let at_dst: BTreeSet<u32> = dst.iter().map(|(seq, _)| *seq).collect();
    let mut parts: Vec<Part> = names
        .iter()
        .map(|n| Part {
            name: (*n).to_string(),
            ..Part::default()
        })
        .collect();
    for &(seq, sent_at) in sent {
        let part = &mut parts[marks.iter().take_while(|m| **m <= sent_at).count()];
        part.sent += 1;
        if at_src.contains(&seq) {
            part.at_src += 1;
        } else if at_dst.contains(&seq) {
            part.lost_at_dst.push(seq);
        } else {
            part.lost_at_no_tap.push(seq);
        }
    }
    let (duplicates, out_of_order) = repeats(src.iter().map(|(seq, _)| *seq));
    Aborted {
        parts,
        duplicates,
        out_of_order,
    }
}

/// Of the sequence numbers `given` (in the order a guest was given them): how many it was
/// given again, and how many came after a higher one.
fn repeats(given: impl Iterator<Item = u32>) -> (usize, usize) {
    let (mut seen, mut highest) = (BTreeSet::new(), None);
    let (mut duplicates, mut out_of_order) = (0, 0);
    for seq in given {
        if !seen.insert(seq) {
            duplicates += 1;
        } else if highest.is_some_and(|h| seq < h) {
            out_of_order += 1;
        }
        highest = highest.max(Some(seq));
    }
    (duplicates, out_of_order)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::{account, account_aborted};

    fn t(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn losses_split_at_stop_and_resume() {
        // STOP at 10 ms, RESUME at 20 ms; datagram n is sent at n ms.
        let sent: Vec<_> = (0..30).map(|n| (n, t(u64::from(n)))).collect();
        let src: Vec<_> = (0..25)
            .filter(|n| *n != 3 && *n != 12)
            .map(|n| (n, t(u64::from(n))))
            .collect();
        // The destination: 23.. after RESUME, 25 twice, 24 after 26, 5 again (the source's
        // guest had it), 28 never.
        let dst = [23, 25, 25, 26, 24, 27, 29, 5].map(|n| (n, t(u64::from(n) + 1)));
        let l = account(&sent, &src, &dst, t(10), t(20));
        assert_eq!(l.before_stop, [3]);
        assert_eq!(l.in_pause, (10..20).collect::<Vec<_>>());
        assert_eq!(l.after_resume, [20, 21, 22, 28]);
        assert_eq!(l.at_no_tap, [3, 12, 28]);
        assert_eq!(l.network(), [3, 20, 21, 22, 28]);
        assert_eq!(l.duplicates, 2);
        assert_eq!(l.out_of_order, 1);
    }

    #[test]
    fn an_aborted_migration_s_losses_split_by_send_time() {
        // Datagram n is sent at n ms; marks at 10 and 20 ms.
        let sent: Vec<_> = (0..30).map(|n| (n, t(u64::from(n)))).collect();
        // The source's tap: all but 12..18; 24 and 25 last (25 twice): 2 out of order.
        let src: Vec<_> = (0..30)
            .filter(|n| !(12..18).contains(n) && *n != 24 && *n != 25)
            .chain([25, 25, 24])
            .map(|n| (n, t(u64::from(n))))
            .collect();
        // The destination's tap: 12..16 (16 and 17 reached no tap).
        let dst: Vec<_> = (12..16).map(|n| (n, t(u64::from(n)))).collect();
        let a = account_aborted(&sent, &src, &dst, &[t(10), t(20)], &["a", "b", "c"]);
        let summary: Vec<_> = a
            .parts
            .iter()
            .map(|p| (p.name.as_str(), p.sent, p.at_src, p.lost()))
            .collect();
        assert_eq!(
            summary,
            [("a", 10, 10, 0), ("b", 10, 4, 6), ("c", 10, 10, 0)]
        );
        assert_eq!(a.parts[1].lost_at_dst, [12, 13, 14, 15]);
        assert_eq!(a.parts[1].lost_at_no_tap, [16, 17]);
        assert_eq!((a.lost(), a.duplicates, a.out_of_order), (6, 1, 2));
    }
}
