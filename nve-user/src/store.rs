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
use std::{
    fs::{self, File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::model::{Event, Model};

const SNAPSHOT: &str = "state.json";
const JOURNAL: &str = "journal.jsonl";
/// Journal lines after which the next change also writes a snapshot.
const COMPACT_AFTER: usize = 10_000;

/// One journal line: the event and the model clock it was applied at.
#[derive(Serialize, Deserialize)]
struct Entry {
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
    /// then compacts both into a fresh snapshot.
    pub fn open(dir: &Path) -> anyhow::Result<(Self, Model)> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let snapshot = dir.join(SNAPSHOT);
        let mut model = match fs::read(&snapshot) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", snapshot.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Model::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", snapshot.display())),
        };
        let journal = dir.join(JOURNAL);
        let mut replayed = 0;
        if let Ok(file) = File::open(&journal) {
            for (n, line) in BufReader::new(file).lines().enumerate() {
                let line = line.with_context(|| format!("reading {}", journal.display()))?;
                let Ok(entry) = serde_json::from_str::<Entry>(&line) else {
                    tracing::warn!(line = n + 1, "ignoring a torn journal line");
                    break;
                };
                // Every journaled event was accepted once; replay is deterministic.
                let mut next = model.clone();
                match next.apply(&entry.event, entry.now) {
                    Ok(_) => model = next,
                    Err(e) => tracing::warn!(line = n + 1, "journal event no longer applies: {e}"),
                }
                replayed += 1;
            }
        }
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&journal)
            .with_context(|| format!("opening {}", journal.display()))?;
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
    pub fn append(&mut self, event: &Event, now: u64, model: &Model) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(&Entry {
            now,
            event: event.clone(),
        })?;
        line.push(b'\n');
        self.journal
            .write_all(&line)
            .context("appending to the journal")?;
        self.lines += 1;
        if self.lines >= COMPACT_AFTER {
            self.snapshot(model)?;
        }
        Ok(())
    }

    /// Writes `model` as the snapshot (atomically) and empties the journal.
    pub fn snapshot(&mut self, model: &Model) -> anyhow::Result<()> {
        let tmp = self.dir.join(format!("{SNAPSHOT}.tmp"));
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(&serde_json::to_vec(model)?)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join(SNAPSHOT)).context("replacing the snapshot")?;
        File::open(&self.dir)?.sync_all()?;
        self.journal.set_len(0).context("emptying the journal")?;
        self.lines = 0;
        Ok(())
    }
}
