//! The daemon's state on disk, in its state dir: a snapshot of the model (`state.json`) and
//! a journal of the events applied since (`journal.jsonl`), one JSON line per change.
//!
//! Why a journal and not redb or SQLite: the model is small and rebuilt in memory at start,
//! so all the store must do is make each applied change durable at the cost of one small
//! `write` — on the path of every associate, whose latency we aim to keep under 1 ms. A line
//! is appended with a single `write` on an O_APPEND file: a daemon killed at any point leaves
//! whole lines behind (a torn last line from a power cut is ignored on load). Snapshots are
//! written to a temporary file, fsynced and renamed over the old one, and the journal is
//! emptied after each, at start and every `COMPACT_AFTER` changes.
//!
//! The format is versioned ([`FORMAT`]): the snapshot is `{"format": N, "model": ...}` and
//! each journal line `{"format": N, "now": ..., "event": ...}`. Files without a format
//! (format 0, before it was recorded) hold the same model and events bare and are read as
//! such; a format newer than this build's is refused, never guessed at. The events and the
//! model hold some API types: `tests/data/store-*` are state dirs written by earlier
//! builds, and a test reads them into the state they held, so a change of either that would
//! change the format fails there rather than on an operator's disk.
use std::{
    fs::{self, File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::model::{Event, Model};

const SNAPSHOT: &str = "state.json";
const JOURNAL: &str = "journal.jsonl";
/// Journal lines after which the next change also writes a snapshot.
const COMPACT_AFTER: usize = 10_000;
/// The format this build writes, and the newest it reads.
pub const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a state nve wrote", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{}: written in format {format} by a newer nve; this one reads up to format {FORMAT}",
        .path.display()
    )]
    Newer { path: PathBuf, format: u32 },
}

type Result<T> = std::result::Result<T, StoreError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The snapshot as written.
#[derive(Serialize)]
struct SnapshotOut<'a> {
    format: u32,
    model: &'a Model,
}

/// One journal line: the event and the model clock it was applied at.
#[derive(Serialize, Deserialize)]
struct Line {
    /// Absent in format 0.
    #[serde(default)]
    format: u32,
    now: u64,
    event: Event,
}

pub struct Store {
    dir: PathBuf,
    journal: File,
    lines: usize,
}

impl Store {
    /// Opens the store in `dir`, rebuilding the model from the snapshot and the journal,
    /// then compacts both into a fresh snapshot (in this build's format).
    pub fn open(dir: &Path) -> Result<(Self, Model)> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let mut model = read_snapshot(&dir.join(SNAPSHOT))?;
        let journal = dir.join(JOURNAL);
        let replayed = replay(&journal, &mut model)?;
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal)
            .map_err(io(&journal))?;
        let mut store = Self {
            dir: dir.to_path_buf(),
            journal,
            lines: 0,
        };
        store.snapshot(&model)?;
        tracing::info!(dir = %dir.display(), replayed, "state loaded");
        Ok((store, model))
    }

    /// Records an applied event; `model` is the state after it (snapshotted now and then).
    pub fn append(&mut self, event: &Event, now: u64, model: &Model) -> Result<()> {
        let line = Line {
            format: FORMAT,
            now,
            event: event.clone(),
        };
        let mut bytes = serde_json::to_vec(&line).expect("events serialize");
        bytes.push(b'\n');
        let path = self.dir.join(JOURNAL);
        self.journal.write_all(&bytes).map_err(io(&path))?;
        self.lines += 1;
        if self.lines >= COMPACT_AFTER {
            self.snapshot(model)?;
        }
        Ok(())
    }

    /// Writes `model` as the snapshot (atomically) and empties the journal.
    pub fn snapshot(&mut self, model: &Model) -> Result<()> {
        let tmp = self.dir.join(format!("{SNAPSHOT}.tmp"));
        let out = SnapshotOut {
            format: FORMAT,
            model,
        };
        let bytes = serde_json::to_vec(&out).expect("the model serializes");
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        let path = self.dir.join(SNAPSHOT);
        fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        self.journal
            .set_len(0)
            .map_err(io(&self.dir.join(JOURNAL)))?;
        self.lines = 0;
        Ok(())
    }
}

/// The snapshot at `path` (none: an empty model).
fn read_snapshot(path: &Path) -> Result<Model> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Model::default()),
        Err(e) => return Err(io(path)(e)),
    };
    let parse = |source| StoreError::Parse {
        path: path.to_path_buf(),
        source,
    };
    // Read straight into the model: a `serde_json::Value` of 100,000 vNICs first would
    // hold several times their size.
    let probe: FormatProbe = serde_json::from_slice(&bytes).map_err(parse)?;
    // Format 0 is the bare model; later ones wrap it.
    match probe.format.as_ref().and_then(serde_json::Value::as_u64) {
        Some(format) if format > u64::from(FORMAT) => Err(StoreError::Newer {
            path: path.to_path_buf(),
            format: format as u32,
        }),
        Some(_) => Ok(serde_json::from_slice::<SnapshotIn>(&bytes)
            .map_err(parse)?
            .model),
        None => serde_json::from_slice(&bytes).map_err(parse),
    }
}

/// A snapshot's format field, the rest skipped.
#[derive(Deserialize)]
struct FormatProbe {
    #[serde(default)]
    format: Option<serde_json::Value>,
}

/// A snapshot of format 1 or later, as read.
#[derive(Deserialize)]
struct SnapshotIn {
    model: Model,
}

/// Applies the journal at `path` to `model`; the lines replayed.
fn replay(path: &Path, model: &mut Model) -> Result<usize> {
    let Ok(file) = File::open(path) else {
        return Ok(0);
    };
    let mut replayed = 0;
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io(path))?;
        let Ok(line) = serde_json::from_str::<Line>(&line) else {
            tracing::warn!(line = n + 1, "ignoring a torn journal line");
            break;
        };
        if line.format > FORMAT {
            return Err(StoreError::Newer {
                path: path.to_path_buf(),
                format: line.format,
            });
        }
        // Every journaled event was accepted once; replay is deterministic.
        let mut next = model.clone();
        match next.apply(&line.event, line.now) {
            Ok(_) => *model = next,
            Err(e) => tracing::warn!(line = n + 1, "journal event no longer applies: {e}"),
        }
        replayed += 1;
    }
    Ok(replayed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state dir of `tests/data`, copied somewhere it may be compacted.
    fn copy_of(name: &str) -> PathBuf {
        let from = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/data")
            .join(name);
        let to = std::env::temp_dir().join(format!("nve-store-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&to);
        fs::create_dir_all(&to).unwrap();
        for entry in fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
        to
    }

    fn views(m: &Model) -> serde_json::Value {
        serde_json::json!({"vns": m.vn_views(), "fdb": m.fdb_views(None), "vnics": m.vnic_views()})
    }

    /// State dirs earlier builds wrote (format 0: a journal of every kind of change, and the
    /// snapshot the same state compacted into) read into the state they held; written back
    /// in this build's format, they read the same again.
    #[test]
    fn reads_what_earlier_builds_wrote() {
        let expected: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/store-v0-views.json"),
            )
            .unwrap(),
        )
        .unwrap();
        for name in ["store-v0-journal", "store-v0-snapshot"] {
            let dir = copy_of(name);
            let (_, model) = Store::open(&dir).unwrap();
            assert_eq!(views(&model), expected, "{name}");
            let (_, again) = Store::open(&dir).unwrap();
            assert_eq!(again, model, "{name}, read back in format {FORMAT}");
            let text = fs::read_to_string(dir.join(SNAPSHOT)).unwrap();
            assert!(
                text.starts_with(&format!("{{\"format\":{FORMAT},")),
                "{text}"
            );
            fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn a_newer_format_is_refused() {
        let dir = copy_of("store-v0-snapshot");
        fs::write(dir.join(SNAPSHOT), br#"{"format": 99, "model": {}}"#).unwrap();
        let e = Store::open(&dir).err().expect("refused").to_string();
        assert!(e.contains("format 99 by a newer nve"), "{e}");
        fs::remove_dir_all(dir).unwrap();
    }
}
