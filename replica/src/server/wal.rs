//! The write-ahead log: every [`PersistRecord`] as one frame
//! `len (u32 LE) | crc32 (u32 LE) | WalRecord protobuf`, written to
//! `wal.log` in the data dir by a dedicated log thread ([`spawn`]) that
//! fsyncs once per group of records (group commit) while the driver keeps
//! stepping the protocol.
//!
//! # What waits for the disk, and why that is enough
//!
//! The log is one append-only file and `fdatasync` makes everything written
//! before it durable, so what survives a crash is always a prefix of the
//! records in the order the core emitted them. Records get increasing log
//! sequence numbers (LSNs); the driver holds every send and reply until the
//! newest record *that sends depend on* ([`must_precede_sends`]) that was
//! appended before it is durable, and releases them in order. Those records
//! are the signed messages (pre-prepares, votes, checkpoint votes, view
//! changes, state requests), prepared certificates and entered NEW-VIEWs:
//!
//! - a replica never sends what it signed before that is durable, so after
//!   `kill -9` it cannot sign a conflicting message (the core's guard
//!   re-reads what it signed from the log);
//! - a commit vote leaves only once the prepared certificate it rests on is
//!   durable, so the certificates a view change needs survive any crash.
//!
//! Committed batches and stable checkpoints ([`PersistRecord::Committed`],
//! [`PersistRecord::Checkpoint`]) are written in the same stream but nothing
//! waits for them: in particular a reply does not wait for the record of the
//! batch it answers. A crash may lose them (a suffix after the last record of
//! the other kinds), which loses no acknowledged write: a client accepts a
//! result on f+1 matching replies, so an honest replica executed the batch
//! after 2f+1 commit votes, each sent only after its sender's prepared
//! certificate was durable. At least f+1 of those senders are honest, and any
//! view-change quorum of 2f+1 contains one of them, so after any crash the
//! batch is re-proposed at the same sequence number and re-executed from the
//! certificates (or fetched from replicas that kept it). The simulator models
//! exactly this loss (`sim`: a crash drops a random suffix of such records).
//!
//! # Preallocation and compaction
//!
//! The file is extended with zeros in [`PREALLOC_BYTES`] steps ahead of the
//! records, so most `fdatasync`s write data only and need no metadata
//! update (file size). A zero tail is the unused preallocated space, not
//! damage.
//!
//! At a stable checkpoint the records a restart no longer needs are dropped
//! from the in-memory list of live records. The file itself is rewritten
//! (compacted) only when it has grown to twice its size after the last
//! compaction plus [`COMPACT_SLACK`]: the live records are written to
//! `wal.log.tmp`, fsynced and renamed over `wal.log` (then the directory is
//! fsynced), so a crash at any point leaves either the old or the new log.
//! Recovery from an uncompacted log is the same as from a compacted one: it
//! uses the newest checkpoint and skips what lies below it.
//!
//! On open, a torn or corrupted tail (short frame, bad checksum, undecodable
//! record) is truncated with a warning. Nothing after it was released to
//! anyone (the sync that would have covered it never completed).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::Instant;

use prost::Message as _;
use tokio::sync::watch;

use crate::core::PersistRecord;
use crate::proto::{message::Body, Message};
use crate::server::rpc::{wal_record::Kind, WalCheckpoint, WalCommitted, WalPrepared, WalRecord};

/// Largest record accepted when reading (a snapshot can be large).
pub const MAX_RECORD_BYTES: usize = 512 * 1024 * 1024;
/// The file is extended with zeros this far ahead of the records.
pub const PREALLOC_BYTES: u64 = 4 << 20;
/// A compaction is due once the file exceeds twice its compacted size plus this.
pub const COMPACT_SLACK: u64 = 16 << 20;

/// Why the log could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("write-ahead log thread stopped: {0}")]
    Stopped(String),
}

/// What opening the log found.
#[derive(Debug)]
pub struct Opened {
    pub wal: Wal,
    pub records: Vec<PersistRecord>,
    /// Bytes cut from a torn or corrupted tail (0 when clean).
    pub truncated_bytes: u64,
}

/// An open write-ahead log (used by one thread: the log thread, or a test).
#[derive(Debug)]
pub struct Wal {
    dir: PathBuf,
    file: File,
    /// Frames appended but not yet written.
    buf: Vec<u8>,
    /// End of the records in the file (where the next frame goes).
    end: u64,
    /// Length of the file, preallocated zeros included.
    allocated: u64,
    /// Whether to extend the file with zeros ahead of the records.
    prealloc: bool,
    /// Records a restart may still need (pruned at each stable checkpoint).
    live: Vec<PersistRecord>,
    /// The newest checkpoint appended since `live` was last pruned.
    new_checkpoint: Option<u64>,
    /// `end` right after the last compaction.
    compacted_end: u64,
    compact_slack: u64,
    /// fsyncs performed.
    pub syncs: u64,
    /// Compactions performed.
    pub compactions: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WalError + '_ {
    move |source| WalError::Io { path: path.to_path_buf(), source }
}

/// Whether sends and replies emitted after `rec` must wait until it is
/// durable (see the module docs): everything but committed batches and
/// stable checkpoints, which a restart can rebuild from the others.
pub fn must_precede_sends(rec: &PersistRecord) -> bool {
    rec.must_precede_sends()
}

/// The batch of a pre-prepare envelope, when it carries one.
fn batch_of(pre_prepare: &crate::proto::Envelope) -> Option<Vec<bytes::Bytes>> {
    match Message::decode(pre_prepare.payload.clone()).ok()?.body? {
        Body::PrePrepare(p) => p.batch.map(|b| b.requests),
        _ => None,
    }
}

/// The stable encoding of a record. A prepared certificate whose
/// pre-prepare carries the batch does not repeat the requests (they are
/// taken from the pre-prepare on decoding).
pub fn encode(rec: &PersistRecord) -> Vec<u8> {
    let kind = match rec.clone() {
        PersistRecord::Signed(env) => Kind::Signed(env),
        PersistRecord::Prepared { view, seq, pre_prepare, requests, prepares } => {
            let in_pp = batch_of(&pre_prepare).is_some_and(|b| b == requests);
            Kind::Prepared(WalPrepared {
                view,
                seq,
                pre_prepare: Some(pre_prepare),
                requests: if in_pp { vec![] } else { requests },
                prepares,
                requests_in_pre_prepare: in_pp,
            })
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
        Kind::Prepared(p) => {
            let pre_prepare = p.pre_prepare?;
            let requests = if p.requests_in_pre_prepare { batch_of(&pre_prepare)? } else { p.requests };
            PersistRecord::Prepared { view: p.view, seq: p.seq, pre_prepare, requests, prepares: p.prepares }
        }
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

/// Writes `len` zero bytes at `at`.
fn write_zeros(file: &File, mut at: u64, len: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; (64 << 10).min(len as usize).max(1)];
    let end = at + len;
    while at < end {
        let n = ((end - at) as usize).min(zeros.len());
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

impl Wal {
    /// Opens (or creates) the log in `dir`, truncating a bad tail.
    pub fn open(dir: &Path) -> Result<Opened, WalError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let path = dir.join("wal.log");
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io(&path))?;
        let mut data = vec![];
        file.read_to_end(&mut data).map_err(io(&path))?;
        let (records, valid) = parse(&data);
        let zero_tail = data[valid..].iter().all(|b| *b == 0);
        let (truncated_bytes, allocated) = if zero_tail {
            (0, data.len() as u64)
        } else {
            let cut = (data.len() - valid) as u64;
            tracing::warn!(
                path = %path.display(),
                valid_bytes = valid,
                truncated_bytes = cut,
                records = records.len(),
                "write-ahead log has a torn or corrupted tail: truncating it (everything before it is intact)"
            );
            file.set_len(valid as u64).map_err(io(&path))?;
            file.sync_all().map_err(io(&path))?;
            (cut, valid as u64)
        };
        drop(data);
        let _ = std::fs::remove_file(dir.join("wal.log.tmp"));
        let wal = Wal {
            dir: dir.to_path_buf(),
            file,
            buf: vec![],
            end: valid as u64,
            allocated,
            prealloc: true,
            live: records.clone(),
            new_checkpoint: None,
            compacted_end: 0,
            compact_slack: COMPACT_SLACK,
            syncs: 0,
            compactions: 0,
        };
        Ok(Opened { wal, records, truncated_bytes })
    }

    /// Sets the compaction slack (tests use 0: compact at every stable checkpoint).
    pub fn set_compact_slack(&mut self, bytes: u64) {
        self.compact_slack = bytes;
    }

    /// Turns preallocation off (the file then grows with every write).
    pub fn set_prealloc(&mut self, on: bool) {
        self.prealloc = on;
    }

    /// Buffers a record; it is durable after the next [`Wal::sync`].
    pub fn append(&mut self, rec: PersistRecord) {
        frame(&mut self.buf, &rec);
        if let PersistRecord::Checkpoint { seq, .. } = &rec {
            self.new_checkpoint = Some(self.new_checkpoint.map_or(*seq, |s| s.max(*seq)));
        }
        self.live.push(rec);
    }

    /// Whether records wait for a sync.
    pub fn dirty(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Bytes of records in the log file (preallocated space excluded).
    pub fn bytes(&self) -> u64 {
        self.end
    }

    /// Records kept for a compaction.
    pub fn live_records(&self) -> usize {
        self.live.len()
    }

    /// Writes and fsyncs the buffered records (one fsync for the group);
    /// prunes the live records at a stable checkpoint and compacts when due.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = self.dir.join("wal.log");
        let need = self.end + self.buf.len() as u64;
        if self.prealloc && need > self.allocated {
            // Zeros beyond the records, written before them; the fsync below
            // makes the new length durable once, later fsyncs find it in place.
            let target = need.div_ceil(PREALLOC_BYTES) * PREALLOC_BYTES + PREALLOC_BYTES;
            let from = self.allocated.max(need);
            write_zeros(&self.file, from, target - from).map_err(io(&path))?;
            self.allocated = target;
        }
        self.file.write_all_at(&self.buf, self.end).map_err(io(&path))?;
        self.file.sync_data().map_err(io(&path))?;
        self.end = need;
        self.allocated = self.allocated.max(need);
        self.buf.clear();
        self.syncs += 1;
        if let Some(seq) = self.new_checkpoint.take() {
            // Only the newest checkpoint and what lies above it stay live.
            if !matches!(self.live.first(), Some(PersistRecord::Checkpoint { seq: s, .. }) if *s == seq) {
                self.live = retain(std::mem::take(&mut self.live), seq);
            }
            if self.end > 2 * self.compacted_end + self.compact_slack {
                self.compact(seq)?;
            }
        }
        Ok(())
    }

    /// Rewrites the log with the live records (the stable checkpoint at `stable` first).
    fn compact(&mut self, stable: u64) -> Result<(), WalError> {
        let tmp = self.dir.join("wal.log.tmp");
        let path = self.dir.join("wal.log");
        // Record by record through a small buffer: the kept records include a
        // snapshot of the whole state, and a second in-memory copy of it here
        // was a large part of the memory burst at every stable checkpoint.
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&tmp).map_err(io(&tmp))?;
        let mut w = std::io::BufWriter::with_capacity(64 << 10, f);
        let mut written = 0u64;
        let mut one = vec![];
        for r in &self.live {
            one.clear();
            frame(&mut one, r);
            w.write_all(&one).map_err(io(&tmp))?;
            written += one.len() as u64;
        }
        let f = w.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
        let allocated = if self.prealloc {
            let target = written.div_ceil(PREALLOC_BYTES) * PREALLOC_BYTES + PREALLOC_BYTES;
            write_zeros(&f, written, target - written).map_err(io(&tmp))?;
            target
        } else {
            written
        };
        f.sync_all().map_err(io(&tmp))?;
        drop(one);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir)?;
        self.file = f;
        tracing::debug!(stable, records = self.live.len(), bytes = written, "write-ahead log compacted");
        self.end = written;
        self.allocated = allocated;
        self.compacted_end = written;
        self.compactions += 1;
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

// ---------------------------------------------------------------- log thread

/// How far the log thread got.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// LSN of the newest durable record (records are numbered from 1 in append order).
    pub durable: u64,
    /// fsyncs so far.
    pub syncs: u64,
    /// Bytes of records in the file.
    pub bytes: u64,
    /// Set when writing failed; the log accepts nothing more.
    pub failed: Option<Arc<WalError>>,
}

/// Timing hooks of the log thread (metrics).
pub trait SyncObserver: Send + 'static {
    /// One group of `records` made durable by one fsync that took `seconds` (write included).
    fn synced(&self, records: usize, seconds: f64);
}

impl SyncObserver for () {
    fn synced(&self, _: usize, _: f64) {}
}

enum Command {
    Records(Vec<PersistRecord>, u64),
    Stop,
}

/// The driver's end of the log: appends records (numbered), hands them to
/// the log thread in groups and learns when they are durable.
pub struct LogHandle {
    tx: std_mpsc::Sender<Command>,
    group: Vec<PersistRecord>,
    appended: u64,
    progress: watch::Receiver<Progress>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts the log thread on an open log.
pub fn spawn(mut wal: Wal, observer: impl SyncObserver) -> Result<LogHandle, WalError> {
    let (tx, rx) = std_mpsc::channel::<Command>();
    let (ptx, prx) = watch::channel(Progress { bytes: wal.bytes(), ..Progress::default() });
    let thread = std::thread::Builder::new()
        .name("pbft-wal".into())
        .spawn(move || {
            let mut durable = 0;
            loop {
                let Ok(first) = rx.recv() else { break };
                let mut stop = false;
                let mut last = durable;
                let mut records = 0;
                for cmd in std::iter::once(first).chain(rx.try_iter()) {
                    match cmd {
                        Command::Records(recs, lsn) => {
                            records += recs.len();
                            for r in recs {
                                wal.append(r);
                            }
                            last = lsn;
                        }
                        Command::Stop => stop = true,
                    }
                }
                let t = Instant::now();
                if let Err(e) = wal.sync() {
                    ptx.send_modify(|p| p.failed = Some(Arc::new(e)));
                    break;
                }
                if records > 0 {
                    observer.synced(records, t.elapsed().as_secs_f64());
                }
                durable = last;
                ptx.send_modify(|p| {
                    p.durable = durable;
                    p.syncs = wal.syncs;
                    p.bytes = wal.bytes();
                });
                if stop {
                    break;
                }
            }
        })
        .map_err(|e| WalError::Stopped(format!("cannot start the log thread: {e}")))?;
    Ok(LogHandle { tx, group: vec![], appended: 0, progress: prx, thread: Some(thread) })
}

impl LogHandle {
    /// Appends a record to the current group; returns its LSN.
    pub fn append(&mut self, rec: PersistRecord) -> u64 {
        self.group.push(rec);
        self.appended += 1;
        self.appended
    }

    /// LSN of the newest record appended.
    pub fn appended(&self) -> u64 {
        self.appended
    }

    /// Hands the current group to the log thread.
    pub fn submit(&mut self) -> Result<(), WalError> {
        if self.group.is_empty() {
            return Ok(());
        }
        let group = std::mem::take(&mut self.group);
        self.tx.send(Command::Records(group, self.appended)).map_err(|_| self.stopped())
    }

    fn stopped(&self) -> WalError {
        match &self.progress.borrow().failed {
            Some(e) => WalError::Stopped(e.to_string()),
            None => WalError::Stopped("the log thread exited".into()),
        }
    }

    /// The progress watch (changes when a group became durable or writing failed).
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.clone()
    }

    /// Submits what is buffered, waits until all of it is durable and stops the thread.
    pub async fn close(mut self) -> Result<(), WalError> {
        self.submit()?;
        let _ = self.tx.send(Command::Stop);
        let want = self.appended;
        let mut p = self.progress.clone();
        let r = p.wait_for(|p| p.durable >= want || p.failed.is_some()).await.map(|p| p.failed.clone());
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        match r {
            Ok(None) => Ok(()),
            Ok(Some(e)) => Err(WalError::Stopped(e.to_string())),
            Err(_) => Err(self.stopped()),
        }
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
    fn preallocated_zero_tail_is_not_damage() {
        let d = tmpdir("prealloc");
        write(&d, 3);
        let len = std::fs::metadata(d.join("wal.log")).unwrap().len();
        assert!(len >= PREALLOC_BYTES, "file preallocated: {len}");
        let o = Wal::open(&d).unwrap();
        assert_eq!((o.records.len(), o.truncated_bytes), (3, 0));
        // Appending after a reopen writes over the zeros, right after the records.
        let mut w = o.wal;
        w.append(committed(4));
        w.sync().unwrap();
        assert_eq!(std::fs::metadata(d.join("wal.log")).unwrap().len(), len, "no growth within the preallocation");
        assert_eq!(Wal::open(&d).unwrap().records, (1..=4).map(committed).collect::<Vec<_>>());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn truncated_tail_is_cut_and_prefix_kept() {
        let d = tmpdir("trunc");
        write(&d, 5);
        let p = d.join("wal.log");
        let end = Wal::open(&d).unwrap().wal.bytes();
        for cut in [1u64, 7, 20] {
            // Tear the last frame: its tail becomes zeros (as unwritten preallocated space reads).
            let f = OpenOptions::new().write(true).open(&p).unwrap();
            f.set_len(end - cut).unwrap();
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
        let end = Wal::open(&d).unwrap().wal.bytes() as usize;
        let mut data = std::fs::read(&p).unwrap();
        data[end - 3] ^= 0x40;
        std::fs::write(&p, &data).unwrap();
        let o = Wal::open(&d).unwrap();
        assert_eq!(o.records, (1..=2).map(committed).collect::<Vec<_>>());
        assert!(o.truncated_bytes > 0);
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
        w.set_compact_slack(0);
        for s in 1..=10 {
            w.append(committed(s));
        }
        w.append(PersistRecord::Checkpoint { seq: 8, snapshot: Bytes::from_static(b"snap"), proof: vec![] });
        w.append(committed(11));
        w.sync().unwrap();
        assert_eq!(w.compactions, 1);
        let o = Wal::open(&d).unwrap();
        assert!(matches!(o.records[0], PersistRecord::Checkpoint { seq: 8, .. }));
        assert_eq!(&o.records[1..], &[committed(9), committed(10), committed(11)]);
        assert_eq!(o.truncated_bytes, 0);
        let _ = Envelope::default();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn compaction_waits_for_growth_but_live_records_are_pruned() {
        let d = tmpdir("lazy");
        let mut w = Wal::open(&d).unwrap().wal;
        for s in 1..=10 {
            w.append(committed(s));
        }
        w.append(PersistRecord::Checkpoint { seq: 8, snapshot: Bytes::from_static(b"snap"), proof: vec![] });
        w.sync().unwrap();
        assert_eq!((w.compactions, w.live_records()), (0, 3), "pruned in memory, file left as it is");
        // The uncompacted file still recovers: everything is there, the newest checkpoint last.
        let o = Wal::open(&d).unwrap();
        assert_eq!(o.records.len(), 11);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn prepared_certificate_does_not_repeat_the_batch() {
        use crate::crypto::Keypair;
        use crate::proto::{message::Body, PrePrepare};
        let k = Keypair::from_secret([3; 32]);
        let requests: Vec<Bytes> = (0..4).map(|i| Bytes::from(vec![i as u8; 300])).collect();
        let pp = k.seal(&Message {
            epoch: 0,
            sender: 0,
            body: Some(Body::PrePrepare(PrePrepare {
                view: 0,
                seq: 1,
                digest: Bytes::from_static(&[1; 32]),
                batch: Some(Batch { requests: requests.clone() }),
            })),
        });
        let rec = PersistRecord::Prepared { view: 0, seq: 1, pre_prepare: pp.clone(), requests, prepares: vec![] };
        let enc = encode(&rec);
        // 1,200 bytes of requests: stored once, not twice.
        assert!(enc.len() > 1200 && enc.len() < 1600, "batch stored once: {} bytes", enc.len());
        assert_eq!(decode(&enc), Some(rec));
        // A pre-prepare without the batch (from a NEW-VIEW) keeps the requests apart.
        let bare = PersistRecord::Prepared {
            view: 1,
            seq: 1,
            pre_prepare: Envelope::default(),
            requests: vec![Bytes::from_static(b"r")],
            prepares: vec![],
        };
        assert_eq!(decode(&encode(&bare)), Some(bare));
    }

    #[tokio::test]
    async fn log_thread_reports_durable_lsns_in_order() {
        let d = tmpdir("thread");
        let o = Wal::open(&d).unwrap();
        let mut log = spawn(o.wal, ()).unwrap();
        let mut p = log.progress();
        for s in 1..=50 {
            assert_eq!(log.append(committed(s)), s);
            if s % 7 == 0 {
                log.submit().unwrap();
            }
        }
        log.submit().unwrap();
        let got = p.wait_for(|p| p.durable >= 50).await.unwrap().clone();
        assert!(got.syncs >= 1 && got.syncs <= 8, "grouped: {} fsyncs", got.syncs);
        log.append(committed(51));
        log.close().await.unwrap();
        assert_eq!(Wal::open(&d).unwrap().records, (1..=51).map(committed).collect::<Vec<_>>());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
