//! One line of `virsh event --loop --event lifecycle --timestamp` (run with `LC_ALL=C`, so
//! libvirt's own English words), read into a [`Lifecycle`] event:
//!
//! ```text
//! 2026-12-01 17:20:00.123+0000: event 'lifecycle' for domain 'vm1': Suspended Migrated
//! ```
//!
//! virsh writes the time it printed the line (UTC, milliseconds), the domain's name and
//! libvirt's words for the event and its detail (`virshDomainEventToString`,
//! `virshDomainEventDetailToString` in libvirt's tools/virsh-domain-event.c). A domain name
//! may hold quotes, colons and spaces; the event and detail words never hold `': `, so the
//! name ends at the line's last `': `. Anything else (virsh's own messages, another event
//! type, a torn line) is [`Line::Other`]: logged by the caller, never fatal.
use std::time::SystemTime;

use time::{
    OffsetDateTime, PrimitiveDateTime,
    format_description::{BorrowedFormatItem, well_known::Rfc3339},
    macros::format_description,
};

/// What a line of virsh's event loop says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Line {
    Lifecycle(Lifecycle),
    /// Not a lifecycle event (the text, for the log).
    Other(String),
}

/// A domain lifecycle event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    /// When virsh printed it (its `--timestamp`), if the line had a readable one.
    pub at: Option<SystemTime>,
    pub domain: String,
    pub event: Event,
    /// libvirt's word for the detail (`Migrated`, `Paused`, `Booted`, ...).
    pub detail: String,
}

/// libvirt's lifecycle event types (`virDomainEventType`), by virsh's word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    Defined,
    Undefined,
    Started,
    Suspended,
    Resumed,
    Stopped,
    Shutdown,
    PmSuspended,
    Crashed,
}

impl Event {
    fn from_word(word: &str) -> Option<Self> {
        Some(match word {
            "Defined" => Self::Defined,
            "Undefined" => Self::Undefined,
            "Started" => Self::Started,
            "Suspended" => Self::Suspended,
            "Resumed" => Self::Resumed,
            "Stopped" => Self::Stopped,
            "Shutdown" => Self::Shutdown,
            "PMSuspended" => Self::PmSuspended,
            "Crashed" => Self::Crashed,
            _ => return None,
        })
    }
}

const PREFIX: &str = "event 'lifecycle' for domain '";

/// Reads one line (without its newline).
pub fn parse(line: &str) -> Line {
    let other = || Line::Other(line.to_string());
    let (at, rest) = match line.find(PREFIX) {
        Some(0) => (None, line),
        Some(i) => match line[..i].strip_suffix(": ") {
            Some(stamp) => (parse_stamp(stamp), &line[i..]),
            None => return other(),
        },
        None => return other(),
    };
    let Some((domain, words)) = rest[PREFIX.len()..].rsplit_once("': ") else {
        return other();
    };
    let (event, detail) = words.split_once(' ').unwrap_or((words, ""));
    match Event::from_word(event) {
        Some(event) if !domain.is_empty() => Line::Lifecycle(Lifecycle {
            at,
            domain: domain.to_string(),
            event,
            detail: detail.trim().to_string(),
        }),
        _ => other(),
    }
}

/// virsh's `--timestamp` (libvirt's virTimeStringNowRaw: always UTC, milliseconds).
const VIRSH_STAMP: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second].[subsecond]+0000");

/// virsh's `--timestamp`, `YYYY-MM-DD HH:MM:SS.mmm+0000`, or an RFC 3339 time in UTC
/// (tracing's log lines: `YYYY-MM-DDTHH:MM:SS.ffffffZ`).
pub fn parse_stamp(s: &str) -> Option<SystemTime> {
    if let Ok(t) = PrimitiveDateTime::parse(s, VIRSH_STAMP) {
        return Some(t.assume_utc().into());
    }
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    t.offset().is_utc().then(|| t.into())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn lifecycle(line: &str) -> Lifecycle {
        match parse(line) {
            Line::Lifecycle(l) => l,
            Line::Other(o) => panic!("not read as an event: {o:?}"),
        }
    }

    /// Lines virsh 11.3 printed in the libvirt migration test (tests/tests/all/libvirtd.rs,
    /// `the_events_bridge_pauses_the_source_at_the_switchover`; `virsh event --loop --event
    /// lifecycle --timestamp`, LC_ALL=C, as the bridge's debug log shows them): the source,
    /// then the destination.
    const CAPTURED: &str = "\
2026-12-01 17:42:20.211+0000: event 'lifecycle' for domain 'le-guest': Suspended Migrated
2026-12-01 17:42:22.493+0000: event 'lifecycle' for domain 'le-guest': Shutdown Finished after host request
2026-12-01 17:42:22.616+0000: event 'lifecycle' for domain 'le-guest': Stopped Migrated
2026-12-01 17:42:19.769+0000: event 'lifecycle' for domain 'le-guest': Started Migrated
2026-12-01 17:42:20.245+0000: event 'lifecycle' for domain 'le-guest': Resumed Migrated
";

    #[test]
    fn reads_what_virsh_printed() {
        let events: Vec<_> = CAPTURED.lines().map(lifecycle).collect();
        let words: Vec<_> = events
            .iter()
            .map(|e| (e.domain.as_str(), e.event, e.detail.as_str()))
            .collect();
        assert_eq!(
            words,
            [
                ("le-guest", Event::Suspended, "Migrated"),
                ("le-guest", Event::Shutdown, "Finished after host request"),
                ("le-guest", Event::Stopped, "Migrated"),
                ("le-guest", Event::Started, "Migrated"),
                ("le-guest", Event::Resumed, "Migrated"),
            ]
        );
        // 2026-12-01 17:42:20.211 UTC.
        assert_eq!(
            events[0].at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_146_940_211))
        );
    }

    #[test]
    fn names_may_hold_quotes_colons_and_spaces() {
        let e = lifecycle("event 'lifecycle' for domain 'it's: a 'vm'': Resumed Unpaused");
        assert_eq!(
            (e.at, e.domain.as_str(), e.event, e.detail.as_str()),
            (None, "it's: a 'vm'", Event::Resumed, "Unpaused")
        );
        let e = lifecycle(
            "2026-12-01 17:48:02.611+0000: event 'lifecycle' for domain 'x': Suspended I/O Error",
        );
        assert_eq!(
            (e.event, e.detail.as_str()),
            (Event::Suspended, "I/O Error")
        );
        // A name made to look like a switchover is still only a name.
        let e =
            lifecycle("event 'lifecycle' for domain 'evil': Suspended Migrated': Started Booted");
        assert_eq!(
            (e.domain.as_str(), e.event, e.detail.as_str()),
            ("evil': Suspended Migrated", Event::Started, "Booted")
        );
    }

    #[test]
    fn anything_else_is_other() {
        for line in [
            "",
            "error: Disconnected from qemu:///system due to end of file",
            "events received: 3",
            "event 'reboot' for domain 'vm1'",
            "2026-12-01 17:48:02.611+0000: event 'lifecycle' for domain 'vm1'",
            "event 'lifecycle' for domain '': Started Booted",
            "event 'lifecycle' for domain 'vm1': Exploded Loudly",
            "event 'lifecycle' for domain 'vm1': ",
            "garbage event 'lifecycle' for domain 'vm1': Started Booted",
            "\u{0}\u{7f}event 'lifecycle' for domain 'vm1': Started Booted",
            "2026-12-01 17:48:02.611+0000 event 'lifecycle' for domain 'vm1': Started Booted",
        ] {
            assert_eq!(parse(line), Line::Other(line.into()), "{line:?}");
        }
        let long = format!("{PREFIX}{}", "'".repeat(100_000));
        assert!(matches!(parse(&long), Line::Other(_)));
    }

    #[test]
    fn a_bad_stamp_is_no_time() {
        for stamp in [
            "2026-13-01 17:48:02.611+0000",
            "2026-12-01 17:48:02.611+0100",
            "2026-12-01 25:48:02.611+0000",
            "yesterday",
            "2026-12-01 17:48:02+0000",
        ] {
            let e = lifecycle(&format!("{stamp}: {PREFIX}vm1': Started Booted"));
            assert_eq!((e.at, e.event), (None, Event::Started), "{stamp}");
        }
        assert_eq!(
            parse_stamp("1970-01-01 00:00:01.002+0000"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1002))
        );
        assert_eq!(
            parse_stamp("2026-12-01T17:48:02.611250Z"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_micros(1_796_147_282_611_250))
        );
        for bad in ["1970-01-01 00:00:01.+0000", "1970-01-01 00:00:01.-1+0000"] {
            assert_eq!(parse_stamp(bad), None, "{bad}");
        }
    }
}
