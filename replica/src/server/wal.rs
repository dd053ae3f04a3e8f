//! The write-ahead log: every [`PersistRecord`] as one frame
//! `len (u32 LE) | crc32 (u32 LE) | WalRecord protobuf`, appended to
//! `wal.log` in the data dir and fsynced once per group of records.
//!
//! At a stable checkpoint the log is compacted: the live records (the
//! checkpoint, what was committed or prepared above it, and what this replica
//! signed that can still matter) are written to `wal.log.tmp`, fsynced and
//! renamed over `wal.log` (then the directory is fsynced), so a crash at any
//! point leaves either the old or the new log.
//!
//! On open, a torn or corrupted tail (short frame, bad checksum, undecodable
//! record) is truncated with a warning. Every frame before it was fsynced
//! before anything depending on it was sent, so nothing acknowledged is lost.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use prost::Message as _;

use crate::core::PersistRecord;
use crate::proto::{message::Body, Message};
use crate::server::rpc::{wal_record::Kind, WalCheckpoint, WalCommitted, WalPrepared, WalRecord};

/// Largest record accepted when reading (a snapshot can be large).
pub const MAX_RECORD_BYTES: usize = 512 * 1024 * 1024;

/// Why the log could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// What opening the log found.
#[derive(Debug)]
pub struct Opened {
    pub wal: Wal,
    pub records: Vec<PersistRecord>,
    /// Bytes cut from a torn or corrupted tail (0 when clean).
    pub truncated_bytes: u64,
}

/// An open write-ahead log.
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    file: File,
    buf: Vec<u8>,
    /// Records since the last compaction (bounded by the watermark window).
    live: Vec<PersistRecord>,
    bytes: u64,
    /// fsyncs performed.
    pub syncs: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

/// The stable encoding of a record.
pub fn encode(rec: &PersistRecord) -> Vec<u8> {
    let kind = match rec.clone() {
        PersistRecord::Signed(env) => Kind::Signed(env),
        PersistRecord::Prepared { view, seq, pre_prepare, requests, prepares } => {
            Kind::Prepared(WalPrepared { view, seq, pre_prepare: Some(pre_prepare), requests, prepares })
        }
        PersistRecord::Committed { seq, view, batch } => {
            Kind::Committed(WalCommitted { seq, view, batch: Some(batch) })
        }
        PersistRecord::Checkpoint { seq, snapshot, proof } => Kind::Checkpoint(WalCheckpoint { seq, snapshot, proof }),
        PersistRecord::NewView(env) => Kind::NewView(env),
    };
    WalRecord { kind: Some(kind) }.encode_to_vec()
}

/// Decodes a record; `None` when it does not decode or is incomplete.
pub fn decode(bytes: &[u8]) -> Option<PersistRecord> {
    let rec = WalRecord::decode(bytes).ok()?;
    Some(match rec.kind? {
        Kind::Signed(env) => PersistRecord::Signed(env),
        Kind::Prepared(p) => PersistRecord::Prepared {
            view: p.view,
            seq: p.seq,
            pre_prepare: p.pre_prepare?,
            requests: p.requests,
            prepares: p.prepares,
        },
        Kind::Committed(c) => PersistRecord::Committed { seq: c.seq, view: c.view, batch: c.batch? },
        Kind::Checkpoint(c) => PersistRecord::Checkpoint { seq: c.seq, snapshot: c.snapshot, proof: c.proof },
        Kind::NewView(env) => PersistRecord::NewView(env),
    })
}

fn frame(out: &mut Vec<u8>, rec: &PersistRecord) {
    let body = encode(rec);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
}

/// Parses frames; returns the records and the length of the valid prefix.
pub fn parse(data: &[u8]) -> (Vec<PersistRecord>, usize) {
    let mut records = vec![];
    let mut at = 0;
    while data.len() - at >= 8 {
        let len = u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]) as usize;
        let crc = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]);
        if len > MAX_RECORD_BYTES || data.len() - at - 8 < len {
            break;
        }
        let body = &data[at + 8..at + 8 + len];
        if crc32fast::hash(body) != crc {
            break;
        }
        let Some(rec) = decode(body) else { break };
        records.push(rec);
        at += 8 + len;
    }
    (records, at)
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

impl Wal {
    /// Opens (or creates) the log in `dir`, truncating a bad tail.
    pub fn open(dir: &Path) -> Result<Opened, WalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("wal.log");
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(&path).map_err(io(&path))?;
        let mut data = vec![];
        file.read_to_end(&mut data).map_err(io(&path))?;
        let (records, valid) = parse(&data);
        let truncated_bytes = (data.len() - valid) as u64;
        if truncated_bytes > 0 {
            tracing::warn!(
                path = %path.display(),
                valid_bytes = valid,
                truncated_bytes,
                records = records.len(),
                "write-ahead log has a torn or corrupted tail: truncating it (everything before it is intact)"
            );
            file.set_len(valid as u64).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
        }
        let _ = std::fs::remove_file(dir.join("wal.log.tmp"));
        let wal =
            Wal { dir: dir.to_path_buf(), file, buf: vec![], live: records.clone(), bytes: valid as u64, syncs: 0 };
        Ok(Opened { wal, records, truncated_bytes })
    }

    /// Buffers a record; it is durable after the next [`Wal::sync`].
    pub fn append(&mut self, rec: PersistRecord) {
        frame(&mut self.buf, &rec);
        self.live.push(rec);
    }

    /// Whether records wait for a sync.
    pub fn dirty(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Bytes in the log file.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes and fsyncs the buffered records (one fsync for the group);
    /// compacts when one of them was a stable checkpoint.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = self.dir.join("wal.log");
        self.file.write_all(&self.buf).map_err(io(&path))?;
        self.file.sync_data().map_err(io(&path))?;
        self.bytes += self.buf.len() as u64;
        self.buf.clear();
        self.syncs += 1;
        if let Some(seq) = self.live.iter().rev().find_map(|r| match r {
            PersistRecord::Checkpoint { seq, .. } => Some(*seq),
            _ => None,
        }) {
            // Compact only when something precedes the newest checkpoint.
            if !matches!(self.live.first(), Some(PersistRecord::Checkpoint { seq: s, .. }) if *s == seq) {
                self.compact(seq)?;
            }
        }
        Ok(())
    }

    /// Rewrites the log with the records still needed after the stable checkpoint at `stable`.
    fn compact(&mut self, stable: u64) -> Result<(), WalError> {
        let keep = retain(std::mem::take(&mut self.live), stable);
        let tmp = self.dir.join("wal.log.tmp");
        let path = self.dir.join("wal.log");
        // Record by record through a small buffer: the kept records include a
        // snapshot of the whole state, and a second in-memory copy of it here
        // was a large part of the memory burst at every stable checkpoint.
        let f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp).map_err(io(&tmp))?;
        let mut w = std::io::BufWriter::with_capacity(64 << 10, f);
        let mut written = 0usize;
        let mut one = vec![];
        for r in &keep {
            one.clear();
            frame(&mut one, r);
            w.write_all(&one).map_err(io(&tmp))?;
            written += one.len();
        }
        let f = w.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        drop(one);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)?;
        self.file = OpenOptions::new().append(true).open(&path).map_err(io(&path))?;
        tracing::debug!(stable, records = keep.len(), bytes = written, "write-ahead log compacted");
        self.bytes = written as u64;
        self.live = keep;
        Ok(())
    }
}

/// The records a restart still needs once the checkpoint at `stable` is durable:
/// that checkpoint, committed and prepared batches above it, and signed
/// messages about sequence numbers above it or about views (view changes
/// and new views of the last views, and the newest pre-prepare/votes).
pub fn retain(records: Vec<PersistRecord>, stable: u64) -> Vec<PersistRecord> {
    let mut max_view = 0;
    for r in &records {
        if let PersistRecord::Signed(env) = r {
            if let Ok(m) = Message::decode(env.payload.as_ref()) {
                max_view = max_view.max(view_of(&m).unwrap_or(0));
            }
        }
    }
    let mut ckpt_seen = false;
    // The newest vote of the highest view is kept so a restart resumes that view.
    let mut view_marker = false;
    let mut vote = |seq: u64, view: u64| {
        if seq > stable {
            return true;
        }
        let k = !view_marker && view == max_view;
        view_marker |= k;
        k
    };
    let mut out = vec![];
    // Newest checkpoint only; walk backwards to find it first.
    for r in records.into_iter().rev() {
        let keep = match &r {
            PersistRecord::Checkpoint { seq, .. } => {
                let k = !ckpt_seen && *seq == stable;
                ckpt_seen |= k;
                k
            }
            PersistRecord::Committed { seq, .. } | PersistRecord::Prepared { seq, .. } => *seq > stable,
            PersistRecord::Signed(env) => match Message::decode(env.payload.as_ref()) {
                Ok(m) => match &m.body {
                    Some(Body::PrePrepare(p)) => vote(p.seq, p.view),
                    Some(Body::Prepare(p)) => vote(p.seq, p.view),
                    Some(Body::Commit(p)) => vote(p.seq, p.view),
                    Some(Body::Checkpoint(c)) => c.seq >= stable,
                    Some(Body::ViewChange(v)) => v.new_view.saturating_add(16) >= max_view,
                    Some(Body::NewView(v)) => v.view.saturating_add(16) >= max_view,
                    _ => false,
                },
                Err(_) => false,
            },
            PersistRecord::NewView(env) => match Message::decode(env.payload.as_ref()) {
                Ok(m) => matches!(&m.body, Some(Body::NewView(v)) if v.view.saturating_add(16) >= max_view),
                Err(_) => false,
            },
        };
        if keep {
            out.push(r);
        }
    }
    out.reverse();
    // The checkpoint first, so recovery installs it before replaying above it.
    if let Some(i) = out.iter().position(|r| matches!(r, PersistRecord::Checkpoint { .. })) {
        let c = out.remove(i);
        out.insert(0, c);
    }
    out
}

fn view_of(m: &Message) -> Option<u64> {
    match &m.body {
        Some(Body::PrePrepare(p)) => Some(p.view),
        Some(Body::Prepare(p)) => Some(p.view),
        Some(Body::Commit(p)) => Some(p.view),
        Some(Body::ViewChange(v)) => Some(v.new_view),
        Some(Body::NewView(v)) => Some(v.view),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Batch, Envelope};
    use bytes::Bytes;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pbft-wal-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn committed(seq: u64) -> PersistRecord {
        PersistRecord::Committed { seq, view: 0, batch: Batch { requests: vec![Bytes::from(vec![seq as u8; 40])] } }
    }

    fn write(dir: &Path, n: u64) {
        let mut w = Wal::open(dir).unwrap().wal;
        for s in 1..=n {
            w.append(committed(s));
            w.sync().unwrap();
        }
    }

    #[test]
    fn round_trip() {
        let d = tmpdir("rt");
        write(&d, 5);
        let o = Wal::open(&d).unwrap();
        assert_eq!(o.records, (1..=5).map(committed).collect::<Vec<_>>());
        assert_eq!(o.truncated_bytes, 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn truncated_tail_is_cut_and_prefix_kept() {
        let d = tmpdir("trunc");
        write(&d, 5);
        let p = d.join("wal.log");
        let len = std::fs::metadata(&p).unwrap().len();
        for cut in [1u64, 7, 20] {
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(len - cut).unwrap();
            drop(f);
            let o = Wal::open(&d).unwrap();
            assert_eq!(o.records, (1..=4).map(committed).collect::<Vec<_>>(), "cut {cut}");
            assert!(o.truncated_bytes > 0);
            // After truncation the log is clean and appendable.
            let mut w = o.wal;
            w.append(committed(5));
            w.sync().unwrap();
            let o = Wal::open(&d).unwrap();
            assert_eq!(o.records.len(), 5);
            assert_eq!(o.truncated_bytes, 0);
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn flipped_byte_in_last_record_detected() {
        let d = tmpdir("flip");
        write(&d, 3);
        let p = d.join("wal.log");
        let mut data = std::fs::read(&p).unwrap();
        let n = data.len();
        data[n - 3] ^= 0x40;
        std::fs::write(&p, &data).unwrap();
        let o = Wal::open(&d).unwrap();
        assert_eq!(o.records, (1..=2).map(committed).collect::<Vec<_>>());
        // A flipped length field also stops at the last good frame.
        let mut data = std::fs::read(&p).unwrap();
        let first_len = 8 + u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
        data[first_len] ^= 0xff;
        std::fs::write(&p, &data).unwrap();
        let o = Wal::open(&d).unwrap();
        assert_eq!(o.records, vec![committed(1)]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn compaction_keeps_what_recovery_needs() {
        let d = tmpdir("compact");
        let mut w = Wal::open(&d).unwrap().wal;
        for s in 1..=10 {
            w.append(committed(s));
        }
        w.append(PersistRecord::Checkpoint { seq: 8, snapshot: Bytes::from_static(b"snap"), proof: vec![] });
        w.append(committed(11));
        w.sync().unwrap();
        let o = Wal::open(&d).unwrap();
        assert!(matches!(o.records[0], PersistRecord::Checkpoint { seq: 8, .. }));
        assert_eq!(&o.records[1..], &[committed(9), committed(10), committed(11)]);
        let _ = Envelope::default();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
