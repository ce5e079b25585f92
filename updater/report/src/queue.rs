//! Reports that could not be sent wait in `<state dir>/reports/` and go out
//! later, oldest first. Each is one file `<sequence>.json`, written with the
//! one durable atomic replace (a power cut leaves a whole report or none).
//! The queue is bounded: past `max` reports the oldest are dropped, and the
//! number dropped is kept so the next delivered report can say so.

use std::io;
use std::path::{Path, PathBuf};

/// Largest report file read back (a report is well under 4 KiB).
pub const MAX_REPORT: u64 = 64 * 1024;

pub struct Queue {
    dir: PathBuf,
    max: usize,
}

/// A queued report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    pub seq: u64,
    pub path: PathBuf,
}

fn seq_of(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".json")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

impl Queue {
    pub fn new(dir: &Path, max: usize) -> Queue {
        Queue {
            dir: dir.to_owned(),
            max: max.max(1),
        }
    }

    /// The queued reports, oldest first. Files that are not queue entries are
    /// ignored (never deleted: they are not ours).
    pub fn pending(&self) -> io::Result<Vec<Queued>> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry?;
            if let Some(seq) = entry.file_name().to_str().and_then(seq_of) {
                out.push(Queued {
                    seq,
                    path: entry.path(),
                });
            }
        }
        out.sort_by_key(|q| q.seq);
        Ok(out)
    }

    /// Queues `json`; drops the oldest reports beyond the bound and returns
    /// how many were dropped.
    pub fn push(&self, json: &str) -> io::Result<usize> {
        std::fs::create_dir_all(&self.dir)?;
        let pending = self.pending()?;
        let seq = pending.last().map_or(1, |q| q.seq + 1);
        atomup_fsio::replace(&self.dir.join(format!("{seq:020}.json")), json.as_bytes())?;
        let excess = (pending.len() + 1).saturating_sub(self.max);
        for q in pending.iter().take(excess) {
            std::fs::remove_file(&q.path)?;
        }
        if excess > 0 {
            let dropped = self.dropped()? + excess as u64;
            atomup_fsio::replace(&self.dir.join("dropped"), format!("{dropped}\n").as_bytes())?;
        }
        Ok(excess)
    }

    /// Reads a queued report (refusing anything but a small regular file).
    pub fn read(&self, q: &Queued) -> io::Result<String> {
        atomup_fsio::read_text_capped(&q.path, MAX_REPORT)
    }

    /// Removes a delivered report.
    pub fn remove(&self, q: &Queued) -> io::Result<()> {
        std::fs::remove_file(&q.path)
    }

    /// Reports dropped so far because the queue was full.
    pub fn dropped(&self) -> io::Result<u64> {
        match atomup_fsio::read_text_capped(&self.dir.join("dropped"), 64) {
            Ok(t) => t.trim().parse().map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the dropped-report count is damaged",
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Forgets the dropped count once a report saying so was delivered.
    pub fn clear_dropped(&self) -> io::Result<()> {
        match std::fs::remove_file(self.dir.join("dropped")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> atomup_scratch::ScratchDir {
        atomup_scratch::ScratchDir::new(&format!("report-{name}"))
    }

    /// Reports come back oldest first, survive a new Queue (a reboot), and
    /// the bound drops the oldest, counting them.
    #[test]
    fn queue_is_ordered_durable_and_bounded() {
        let d = scratch("queue");
        let q = Queue::new(&d, 3);
        for i in 0..5 {
            q.push(&format!("{{\"n\":{i}}}")).unwrap();
        }
        let q = Queue::new(&d, 3);
        let pending = q.pending().unwrap();
        let texts: Vec<String> = pending.iter().map(|p| q.read(p).unwrap()).collect();
        assert_eq!(texts, ["{\"n\":2}", "{\"n\":3}", "{\"n\":4}"]);
        assert_eq!(q.dropped().unwrap(), 2);
        q.remove(&pending[0]).unwrap();
        q.clear_dropped().unwrap();
        assert_eq!(q.dropped().unwrap(), 0);
        q.push("{\"n\":5}").unwrap();
        let seqs: Vec<u64> = q.pending().unwrap().iter().map(|p| p.seq).collect();
        assert_eq!(seqs, [4, 5, 6]);
        std::fs::write(d.join("notes.txt"), "not a report").unwrap();
        assert_eq!(q.pending().unwrap().len(), 3);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
