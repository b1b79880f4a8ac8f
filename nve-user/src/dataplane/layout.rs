//! Pinned maps a daemon of another build left with a layout this build's programs do not
//! share (a value grew a field, a hash became an array): a program loaded against such a
//! map would be refused by the verifier, or worse, read it wrongly. Their pins are removed
//! before the load, so the loader creates them anew; the daemon then fills them from its
//! state, as after a reboot. Maps whose layout is unchanged are taken over as always.
use std::path::Path;

use aya::maps::MapInfo;
use aya_obj::Object;

/// What must match for a pinned map to be reused.
#[derive(Debug, PartialEq, Eq)]
struct Layout {
    kind: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

/// Removes the pins in `pin_dir` of maps of `object` whose layout differs from the
/// object's; returns their names.
pub(super) fn remove_stale_pins(pin_dir: &Path, object: &[u8]) -> Vec<String> {
    let Ok(object) = Object::parse(object) else {
        // The loader reports what is wrong with the object itself.
        return Vec::new();
    };
    let mut removed = Vec::new();
    for (name, map) in &object.maps {
        let pin = pin_dir.join(name);
        let Ok(info) = MapInfo::from_pin(&pin) else {
            continue;
        };
        let wanted = Layout {
            kind: map.map_type(),
            key_size: map.key_size(),
            value_size: map.value_size(),
            max_entries: map.max_entries(),
        };
        let pinned = Layout {
            kind: info.map_type().map_or(u32::MAX, |t| t as u32),
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
        };
        if pinned != wanted {
            tracing::warn!(
                map = %name,
                ?pinned,
                ?wanted,
                "a pinned map has another layout than this build's: it is created anew and \
                 refilled from the state dir (its counters restart from zero)"
            );
            if std::fs::remove_file(&pin).is_ok() {
                removed.push(name.clone());
            }
        }
    }
    removed
}
