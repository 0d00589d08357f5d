//! A bounded on-disk FIFO of batches for one sink.
//!
//! Each batch is a file `<seq>.batch` (sequence number, 20 digits, so names sort in order),
//! written to `<seq>.tmp`, fsynced, renamed and the directory fsynced before `push` returns: a
//! batch is on disk before any send is attempted, and a crash (SIGKILL, power loss) leaves
//! either the whole batch or none. On open, leftover `.tmp` files are removed and the batches
//! are replayed oldest first. When a new batch would exceed the byte budget, the oldest batches
//! are deleted and reported to the caller, which counts them.
//!
//! File format: the line `crmprof-spool-v1`, the batch id on its own line, then the payload.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Mutex,
};

const MAGIC: &[u8] = b"crmprof-spool-v1\n";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("spool state poisoned by a panic")]
    Poisoned,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A batch read back from the spool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub seq: u64,
    pub id: String,
    pub payload: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    seq: u64,
    bytes: u64,
}

#[derive(Debug, Default)]
struct Inner {
    entries: VecDeque<Entry>,
    bytes: u64,
    next_seq: u64,
}

/// What a push did besides storing the batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PushOutcome {
    /// Older batches deleted to make room.
    pub evicted: u64,
    /// The batch itself was larger than the whole budget and was not stored.
    pub rejected: bool,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
}

impl Spool {
    /// Opens (creating, mode 0700) the spool in `dir` and indexes what a previous run left.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        let mut entries = Vec::new();
        for item in fs::read_dir(dir).map_err(io_err(dir))? {
            let item = item.map_err(io_err(dir))?;
            let path = item.path();
            let name = item.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".tmp") {
                log::debug!("spool: removing the unfinished batch {stem}");
                let _ = fs::remove_file(&path);
            } else if let Some(seq) = name
                .strip_suffix(".batch")
                .and_then(|s| s.parse::<u64>().ok())
            {
                let bytes = item.metadata().map_err(io_err(&path))?.len();
                entries.push(Entry { seq, bytes });
            }
        }
        entries.sort_by_key(|e| e.seq);
        let inner = Inner {
            bytes: entries.iter().map(|e| e.bytes).sum(),
            next_seq: entries.last().map_or(0, |e| e.seq + 1),
            entries: entries.into(),
        };
        Ok(Self {
            dir: dir.to_owned(),
            max_bytes,
            inner: Mutex::new(inner),
        })
    }

    fn path(&self, seq: u64, ext: &str) -> PathBuf {
        self.dir.join(format!("{seq:020}.{ext}"))
    }

    /// Stores a batch durably, deleting the oldest batches if the budget requires it.
    pub fn push(&self, id: &str, payload: &[u8]) -> Result<PushOutcome, SpoolError> {
        let size = (MAGIC.len() + id.len() + 1 + payload.len()) as u64;
        let mut inner = self.inner.lock().map_err(|_| SpoolError::Poisoned)?;
        if size > self.max_bytes {
            return Ok(PushOutcome {
                evicted: 0,
                rejected: true,
            });
        }
        let mut evicted = 0;
        while inner.bytes + size > self.max_bytes {
            let Some(oldest) = inner.entries.pop_front() else {
                break;
            };
            inner.bytes -= oldest.bytes;
            let _ = fs::remove_file(self.path(oldest.seq, "batch"));
            evicted += 1;
        }
        let seq = inner.next_seq;
        let tmp = self.path(seq, "tmp");
        let done = self.path(seq, "batch");
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        let mut contents = Vec::with_capacity(size as usize);
        contents.extend_from_slice(MAGIC);
        contents.extend_from_slice(id.as_bytes());
        contents.push(b'\n');
        contents.extend_from_slice(payload);
        file.write_all(&contents).map_err(io_err(&tmp))?;
        file.sync_all().map_err(io_err(&tmp))?;
        drop(file);
        fs::rename(&tmp, &done).map_err(io_err(&done))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        inner.next_seq = seq + 1;
        inner.bytes += size;
        inner.entries.push_back(Entry { seq, bytes: size });
        Ok(PushOutcome {
            evicted,
            rejected: false,
        })
    }

    /// The oldest batch. A batch that cannot be read or parsed is deleted and returned as
    /// `Err` with its sequence number, so the caller can count it and ask again.
    pub fn oldest(&self) -> Result<Option<Batch>, (u64, SpoolError)> {
        let seq = {
            let inner = self.inner.lock().map_err(|_| (0, SpoolError::Poisoned))?;
            match inner.entries.front() {
                Some(e) => e.seq,
                None => return Ok(None),
            }
        };
        let path = self.path(seq, "batch");
        let parsed = fs::read(&path).map_err(io_err(&path)).and_then(|data| {
            parse(&data)
                .map(|(id, p)| (id, p.to_vec()))
                .ok_or_else(|| SpoolError::Io {
                    path: path.clone(),
                    source: io::Error::new(io::ErrorKind::InvalidData, "not a crmprof spool batch"),
                })
        });
        match parsed {
            Ok((id, payload)) => Ok(Some(Batch { seq, id, payload })),
            Err(e) => {
                self.remove(seq);
                Err((seq, e))
            }
        }
    }

    /// Deletes a batch (delivered or given up). False when it was already gone (evicted).
    pub fn remove(&self, seq: u64) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        let Some(pos) = inner.entries.iter().position(|e| e.seq == seq) else {
            return false;
        };
        if let Some(entry) = inner.entries.remove(pos) {
            inner.bytes -= entry.bytes;
        }
        if let Err(e) = fs::remove_file(self.path(seq, "batch")) {
            log::warn!(
                "spool: could not delete batch {seq} in {}: {e}",
                self.dir.display()
            );
        }
        true
    }

    /// Whether a batch is still waiting (not delivered, given up or evicted).
    pub fn contains(&self, seq: u64) -> bool {
        self.inner
            .lock()
            .is_ok_and(|i| i.entries.iter().any(|e| e.seq == seq))
    }

    /// Batches and bytes waiting.
    pub fn usage(&self) -> (u64, u64) {
        self.inner
            .lock()
            .map_or((0, 0), |i| (i.entries.len() as u64, i.bytes))
    }
}

fn parse(data: &[u8]) -> Option<(String, &[u8])> {
    let rest = data.strip_prefix(MAGIC)?;
    let nl = rest.iter().position(|&b| b == b'\n')?;
    let id = std::str::from_utf8(rest.get(..nl)?).ok()?.to_owned();
    Some((id, rest.get(nl + 1..)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    impl From<io::Error> for SpoolError {
        fn from(source: io::Error) -> Self {
            Self::Io {
                path: PathBuf::new(),
                source,
            }
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("crmprof-spool-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn batches_come_back_in_order_after_reopen() -> Result<(), SpoolError> {
        let dir = scratch("order");
        {
            let spool = Spool::open(&dir, 1 << 20)?;
            for i in 0..5 {
                spool.push(&format!("id{i}"), format!("payload {i}").as_bytes())?;
            }
            let first = spool.oldest().ok().flatten();
            assert_eq!(first.as_ref().map(|b| b.id.as_str()), Some("id0"));
            assert!(first.is_some_and(|b| spool.remove(b.seq)));
        }
        // A crash mid-write leaves a .tmp file: it is ignored and removed.
        fs::write(dir.join("00000000000000000099.tmp"), b"partial")?;
        let spool = Spool::open(&dir, 1 << 20)?;
        assert_eq!(spool.usage().0, 4);
        spool.push("id5", b"payload 5")?;
        let mut ids = Vec::new();
        while let Ok(Some(b)) = spool.oldest() {
            ids.push(b.id.clone());
            assert_eq!(b.payload, format!("payload {}", &b.id[2..]).as_bytes());
            spool.remove(b.seq);
        }
        assert_eq!(ids, ["id1", "id2", "id3", "id4", "id5"]);
        assert!(!dir.join("00000000000000000099.tmp").exists());
        assert_eq!(spool.usage(), (0, 0));
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn full_spool_drops_the_oldest() -> Result<(), SpoolError> {
        let dir = scratch("full");
        let one = (MAGIC.len() + 3 + 1 + 100) as u64;
        let spool = Spool::open(&dir, one * 3)?;
        let payload = [7u8; 100];
        let mut evicted = 0;
        for i in 0..5 {
            evicted += spool.push(&format!("b{i:02}")[..3], &payload)?.evicted;
        }
        assert_eq!(evicted, 2);
        assert_eq!(spool.usage(), (3, one * 3));
        let first = spool.oldest().ok().flatten().map(|b| b.id);
        assert_eq!(first.as_deref(), Some("b02"));
        // Larger than the whole budget: refused, nothing evicted.
        let big = spool.push("big", &[0u8; 1000])?;
        assert_eq!(
            big,
            PushOutcome {
                evicted: 0,
                rejected: true
            }
        );
        assert_eq!(spool.usage().0, 3);
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn corrupt_batch_is_reported_and_skipped() -> Result<(), SpoolError> {
        let dir = scratch("corrupt");
        let spool = Spool::open(&dir, 1 << 20)?;
        spool.push("a", b"1")?;
        spool.push("b", b"2")?;
        fs::write(dir.join(format!("{:020}.batch", 0)), b"garbage")?;
        assert!(matches!(spool.oldest(), Err((0, _))));
        let next = spool.oldest().ok().flatten().map(|b| b.id);
        assert_eq!(next.as_deref(), Some("b"));
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }
}
