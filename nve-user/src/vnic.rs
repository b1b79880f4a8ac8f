//! The vNIC state machine (RFC 8394, spec.md 2-3): one table of legal transitions. A vNIC is
//! absent, pre-associated (everything installed, not forwarding), associated (forwarding) or
//! inactive (paused: associated but not forwarding; paused with a migrating-out VTEP, its
//! frames go on to that VTEP). Pure.
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VnicState {
    PreAssociated,
    Associated,
    Inactive,
}

/// What the server asks of a vNIC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Op {
    PreAssociate,
    Associate,
    Disassociate,
    Pause,
    Resume,
    /// Refreshes a soft association's hold time (spec.md 2.1); changes nothing else.
    KeepAlive,
}

/// The state after `op` in state `from` (`None`: absent), or `Err` if `op` is illegal there.
/// Repeating an operation is legal and changes nothing (idempotence); parameters are
/// compared by the caller.
pub fn transition(from: Option<VnicState>, op: Op) -> Result<Option<VnicState>, Illegal> {
    use Op::*;
    use VnicState::*;
    let to = match (from, op) {
        (None, PreAssociate) | (Some(PreAssociated), PreAssociate) => Some(PreAssociated),
        (None | Some(PreAssociated | Associated | Inactive), Associate) => Some(Associated),
        (_, Disassociate) => None,
        (Some(Associated | Inactive), Pause) => Some(Inactive),
        (Some(Associated | Inactive), Resume) => Some(Associated),
        (Some(s), KeepAlive) => Some(s),
        (from, op) => return Err(Illegal { from, op }),
    };
    Ok(to)
}

/// An operation the state machine does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{op:?} is not allowed for a vNIC that is {}", from.map_or("absent".into(), |s| format!("{s:?}")))]
pub struct Illegal {
    pub from: Option<VnicState>,
    pub op: Op,
}

impl VnicState {
    /// Whether the dataplane forwards for a vNIC in this state.
    pub fn forwards(self) -> bool {
        self == VnicState::Associated
    }
}

#[cfg(test)]
mod tests {
    use super::{Op::*, VnicState::*, *};

    #[test]
    fn the_table() {
        let states = [None, Some(PreAssociated), Some(Associated), Some(Inactive)];
        let legal = |from, op| transition(from, op).ok();
        // Lifecycle: absent -> pre-associated -> associated <-> inactive -> absent.
        assert_eq!(legal(None, PreAssociate), Some(Some(PreAssociated)));
        assert_eq!(
            legal(Some(PreAssociated), Associate),
            Some(Some(Associated))
        );
        assert_eq!(legal(Some(Associated), Pause), Some(Some(Inactive)));
        assert_eq!(legal(Some(Inactive), Resume), Some(Some(Associated)));
        assert_eq!(legal(Some(Inactive), Associate), Some(Some(Associated)));
        for s in states {
            assert_eq!(
                legal(s, Disassociate),
                Some(None),
                "disassociate from {s:?}"
            );
        }
        // Illegal: pausing what does not forward, pre-associating what is associated.
        for (s, op) in [
            (None, Pause),
            (None, Resume),
            (Some(PreAssociated), Pause),
            (Some(PreAssociated), Resume),
            (Some(Associated), PreAssociate),
            (Some(Inactive), PreAssociate),
            (None, KeepAlive),
        ] {
            assert_eq!(transition(s, op), Err(Illegal { from: s, op }));
        }
        // Repeats are idempotent.
        for (s, op) in [
            (Some(PreAssociated), PreAssociate),
            (Some(Associated), Associate),
            (Some(Inactive), Pause),
            (Some(Associated), Resume),
        ] {
            assert_eq!(legal(s, op), Some(s));
        }
    }
}
