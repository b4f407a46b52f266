//! A sink's spool directory: append-only segments of [`Frame`]s, owned by the sink task
//! (no locks). Records get consecutive sequence numbers; a batch is a contiguous range of
//! them, sealed (label written and synced) before its first send and marked done at its
//! verdict. Verdicts mostly come in seal order (one load in flight); a refused batch
//! waiting for its dead-letter file may get its verdict after later ones. The done
//! watermark is where every batch before has a verdict, so a segment can go once every
//! record in it is below the watermark and every label sealed in it is done.
//!
//! Opening a spool recovers it: every segment is read (damage tolerated and reported), the
//! pending state (sealed batches without a verdict, records not yet in a batch) is written
//! into one fresh segment and synced, and only then are the old segments removed (a
//! corrupt one is moved into `corrupt/`). A crash in between leaves both, which replay
//! merges by sequence number and label.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::segment::{self, Damage, Disposition, FormatError, Frame};

/// A segment is closed and a new one started past this size (or an eighth of the spool's
/// cap, if smaller, so that space comes back in steps well below the cap).
const SEGMENT_BYTES: u64 = 64 << 20;
/// The smallest segment size, however small the cap.
const MIN_SEGMENT_BYTES: u64 = 64 << 10;
/// Freed segment files kept for reuse, at most: writing over a file whose pages and
/// blocks are already there costs the kernel a third less than writing a new one and
/// deleting the old (`scripts/bench-segment-reuse` on ext4: 0.25-0.27 against 0.38-0.47
/// CPU-s per GiB written and synced).
const MAX_FREE: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool segment {file}: {source}")]
    Format {
        file: PathBuf,
        #[source]
        source: FormatError,
    },
    /// Another process holds the directory: two loaders on one spool would delete each
    /// other's segments and load each other's batches.
    #[error("spool {dir} is in use by another loader{}; give each loader a spoolDir of its own (in Kubernetes the injector gives each pod its own directory)", holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Locked { dir: PathBuf, holder: Option<u32> },
    /// The filesystem refuses `flock`: one owner per spool cannot be made sure of.
    #[error("spool {dir} is on a filesystem without file locks ({source}); put spoolDir on a local disk or a volume that supports flock (NFS needs its lock service)")]
    NoLocks {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A sealed batch that has no verdict yet: resolve its label before any re-send. Its
/// records stay on disk; [`Spool::read`] gives them back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingBatch {
    pub label: String,
    pub seqs: Range<u64>,
    /// Records of it the spool still has (fewer than `seqs` after damage).
    pub rows: u64,
}

/// A set of sequence numbers kept as disjoint runs: small however many it holds, as
/// long as they come mostly in order (as records do).
#[derive(Default)]
struct SeqSet {
    /// start -> end (exclusive).
    runs: BTreeMap<u64, u64>,
}

impl SeqSet {
    /// Adds `seq`; false if it was there already.
    fn insert(&mut self, seq: u64) -> bool {
        let before = self.runs.range(..=seq).next_back().map(|(s, e)| (*s, *e));
        if before.is_some_and(|(_, e)| e > seq) {
            return false;
        }
        let start = match before {
            Some((s, e)) if e == seq => s,
            _ => seq,
        };
        let mut end = seq + 1;
        if let Some(next_end) = self.runs.remove(&end) {
            end = next_end;
        }
        self.runs.insert(start, end);
        true
    }
}

/// The start of the (sorted, disjoint) range in `ranges` holding `seq`.
fn batch_start(ranges: &[Range<u64>], seq: u64) -> u64 {
    let i = ranges.partition_point(|r| r.end <= seq);
    ranges.get(i).map_or(seq, |r| r.start)
}

/// What the spool held at open.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replay {
    /// In seal order.
    pub sealed: Vec<PendingBatch>,
    /// Records after the last sealed batch, in order, with their sequence numbers.
    pub unsealed: Vec<(u64, Bytes)>,
    /// Damage found, per segment file, for logs and metrics.
    pub damage: Vec<(PathBuf, Damage)>,
    /// Of `unsealed`, records whose batch's Sealed frame was lost to damage: they may
    /// have been committed already.
    pub orphaned: u64,
}

struct Segment {
    id: u64,
    path: PathBuf,
    /// Its size on disk, once closed (the current segment's is the larger of
    /// `Spool::file_len` and `Spool::file_disk`).
    bytes: u64,
    /// One past the highest record sequence number in it (0 if none).
    records_end: u64,
    /// Labels sealed in it that have no verdict yet.
    open_labels: HashSet<String>,
}

/// The file in a spool directory that its owner holds an exclusive lock on, holding the
/// owner's pid.
pub const LOCK_FILE: &str = "LOCK";

/// Space the spool keeps allocated for itself: when the disk fills up (with the spool's
/// own batches, say), giving it back lets the batch being filled be sealed and a new
/// segment be started, so that loads can go on and free the rest.
pub const RESERVE_FILE: &str = "RESERVE";

/// The reserve's size: enough for a socket read's records, a few frames and a segment
/// header, and small beside the cap.
fn reserve_bytes(max_bytes: u64) -> u64 {
    (max_bytes / 16).clamp(64 << 10, 1 << 20)
}

/// The disk (or the user's quota on it) is full.
fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Why a lock could not be taken: a filesystem without locks, or another I/O error.
fn lock_failed(dir: &Path, e: io::Error) -> SpoolError {
    match e.raw_os_error() {
        Some(libc::ENOLCK | libc::EOPNOTSUPP | libc::ENOSYS) => SpoolError::NoLocks {
            dir: dir.to_owned(),
            source: e,
        },
        _ => SpoolError::Io {
            dir: dir.to_owned(),
            source: e,
        },
    }
}

/// Takes the exclusive lock on `dir` for as long as the returned file is open (`flock`:
/// released by the kernel when the process dies, however it dies).
fn lock(dir: &Path) -> Result<File, SpoolError> {
    use std::io::{Read, Seek, Write};
    let err = io_err(dir);
    let path = dir.join(LOCK_FILE);
    let mut file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(&err)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(SpoolError::Locked {
                dir: dir.to_owned(),
                holder: text.trim().parse().ok(),
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(lock_failed(dir, e)),
    }
    file.set_len(0).map_err(&err)?;
    file.rewind().map_err(&err)?;
    write!(file, "{}", std::process::id()).map_err(&err)?;
    Ok(file)
}

/// The sink task's handle on its spool directory.
pub struct Spool {
    dir: PathBuf,
    /// Held locked for the spool's life: the directory has one owner.
    _lock: File,
    segments: Vec<Segment>,
    /// The current segment, written at `file_len` (positioned writes: a reused file is
    /// longer than what is written to it).
    file: File,
    file_len: u64,
    /// The current segment file's size on disk: more than `file_len` while it is a
    /// reused file not yet written past its earlier end.
    file_disk: u64,
    /// Freed segment files, kept for reuse while the cap leaves room for them.
    free: Vec<FreeFile>,
    next_id: u64,
    next_seq: u64,
    /// Sealed batches in seal order until every batch before them has a verdict too:
    /// (label, end of their records, has its verdict). A verdict may come out of order
    /// (a refused batch whose dead-letter file waits for a retry).
    sealed: VecDeque<(String, u64, bool)>,
    /// Every record below this has a verdict.
    done_below: u64,
    buf: Vec<u8>,
    /// The current segment is closed past this size.
    segment_bytes: u64,
    /// The cap on disk use: past it, [`Spool::is_full`] says so.
    max_bytes: u64,
    /// Bytes of the closed segments still on disk.
    closed_bytes: u64,
    /// Where each Records frame of the live segments is, by its first sequence number:
    /// how a batch that waited on disk is read back.
    index: BTreeMap<u64, RecordsAt>,
    /// A write failed: the current segment may end in part of a frame, to be cut off
    /// (back to `file_len`) before the next write.
    torn_tail: bool,
    /// Frames written since the last successful sync.
    unsynced: bool,
    /// The directory changed (a segment made or removed) since it was last synced.
    dir_unsynced: bool,
    /// The reserve file is in place (see [`RESERVE_FILE`]).
    reserved: bool,
}

/// A freed segment file (`<id>.free`), kept to be reused as a new segment.
struct FreeFile {
    path: PathBuf,
    bytes: u64,
}

/// What reading an old segment (its id and file) gives at open.
type SegmentRead = Result<segment::Recovered, SpoolError>;

/// A Records frame's place on disk.
#[derive(Clone, Copy, Debug)]
struct RecordsAt {
    segment: u64,
    offset: u64,
    len: usize,
}

/// The records of a Records frame's data: `\n`-terminated lines.
fn lines(data: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    data.split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| data.slice_ref(l))
}

fn io_err(dir: &Path) -> impl Fn(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        dir: dir.to_owned(),
        source,
    }
}

fn segment_name(id: u64) -> String {
    format!("{id:020}.seg")
}

/// The segment files of `dir`, oldest first.
fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(id) = id {
            out.push((id, path));
        }
    }
    out.sort();
    Ok(out)
}

impl Spool {
    /// Opens (creating if needed) and recovers the spool in `dir`, whose disk use is
    /// capped at `max_bytes`.
    ///
    /// Segments are an eighth of the cap, or of the disk's free space if that is less: on
    /// a disk smaller than the cap, space still comes back in steps as batches load.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Spool, Replay), SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let room = max_bytes.min(free_space(dir).unwrap_or(u64::MAX));
        let segment_bytes = (room / 8).clamp(MIN_SEGMENT_BYTES, SEGMENT_BYTES);
        Self::open_with(dir, segment_bytes, max_bytes)
    }

    /// [`Spool::open`], with segments closed past `segment_bytes`.
    ///
    /// Memory stays bounded by one segment whatever the spool holds: a first pass
    /// ([`survey`]) reads each segment in turn and keeps only where records are and which
    /// batches are pending; [`plan`] decides what is kept and under which numbers; a second
    /// pass ([`Spool::copy_kept`]) copies the kept records, segment by segment, into fresh
    /// segments; then the pending batches are sealed again and the old segments retired.
    pub fn open_with(
        dir: &Path,
        segment_bytes: u64,
        max_bytes: u64,
    ) -> Result<(Spool, Replay), SpoolError> {
        let err = io_err(dir);
        fs::create_dir_all(dir).map_err(&err)?;
        let lock = lock(dir)?;
        remove_free(dir).map_err(&err)?;
        let old = list(dir).map_err(&err)?;
        let read_segment = |(id, path): &(u64, PathBuf)| -> SegmentRead {
            let bytes = Bytes::from(fs::read(path).map_err(&err)?);
            segment::read_shared(&bytes, *id).map_err(|source| SpoolError::Format {
                file: path.clone(),
                source,
            })
        };
        let survey = survey(&old, &read_segment)?;
        let (damage, corrupt) = (survey.damage.clone(), survey.corrupt.clone());
        let plan = plan(survey);
        let next_id = old.last().map_or(0, |(id, _)| id + 1);
        let mut spool = Spool::fresh(dir, lock, next_id, plan.next_seq, segment_bytes, max_bytes)
            .map_err(&err)?;
        let (rows, unsealed) = spool.copy_kept(&old, &read_segment, &plan)?;
        let sealed = spool.seal_again(plan.pending, &rows);
        spool.flush().map_err(&err)?;
        spool.file.sync_data().map_err(&err)?;
        retire(dir, &old, &corrupt).map_err(&err)?;
        sync_dir(dir).map_err(&err)?;
        spool.keep_reserve();
        let orphaned = plan.orphaned;
        Ok((
            spool,
            Replay {
                sealed,
                unsealed,
                damage,
                orphaned,
            },
        ))
    }

    /// An empty spool in `dir` writing to a new segment `id`, its next record `next_seq`.
    fn fresh(
        dir: &Path,
        lock: File,
        id: u64,
        next_seq: u64,
        segment_bytes: u64,
        max_bytes: u64,
    ) -> io::Result<Spool> {
        Ok(Spool {
            dir: dir.to_owned(),
            _lock: lock,
            segments: vec![Segment {
                id,
                path: dir.join(segment_name(id)),
                bytes: 0,
                records_end: 0,
                open_labels: HashSet::new(),
            }],
            file: Self::create_segment(dir, id)?,
            file_len: segment::HEADER_LEN as u64,
            file_disk: segment::HEADER_LEN as u64,
            free: Vec::new(),
            next_id: id + 1,
            next_seq,
            sealed: VecDeque::new(),
            done_below: 0,
            buf: Vec::new(),
            segment_bytes,
            max_bytes,
            closed_bytes: 0,
            index: BTreeMap::new(),
            torn_tail: false,
            unsynced: false,
            dir_unsynced: false,
            reserved: false,
        })
    }

    /// Pass 2: copies what `plan` keeps, one old segment at a time. Each record is copied
    /// once, even if a crash during an earlier open left it in two segments. Returns the
    /// rows of each pending batch (by its first seq) and the loose records, in order.
    fn copy_kept(
        &mut self,
        old: &[(u64, PathBuf)],
        read_segment: &impl Fn(&(u64, PathBuf)) -> SegmentRead,
        plan: &Plan,
    ) -> Result<(RowsByBatch, Vec<(u64, Bytes)>), SpoolError> {
        let mut rows = RowsByBatch::new();
        let mut unsealed: Vec<(u64, Bytes)> = Vec::new();
        let mut copied = SeqSet::default();
        for seg in old {
            for frame in read_segment(seg)?.frames {
                let Frame::Records {
                    first_seq, data, ..
                } = frame
                else {
                    continue;
                };
                let mut run = Run::default();
                for (seq, line) in (first_seq..).zip(lines(&data)) {
                    let target = if plan.is_pending(seq) {
                        *rows
                            .entry(batch_start(&plan.pending_ranges, seq))
                            .or_default() += 1;
                        Some(seq)
                    } else {
                        plan.renumber.get(&seq).copied()
                    };
                    let Some(target) = target.filter(|t| copied.insert(*t)) else {
                        continue;
                    };
                    if plan.renumber.contains_key(&seq) {
                        // A copy: a view would keep the whole segment's buffer alive.
                        unsealed.push((target, Bytes::copy_from_slice(&line)));
                    }
                    if !run.continues_at(target) {
                        self.write_run(std::mem::take(&mut run))?;
                    }
                    run.push(target, line);
                }
                self.write_run(run)?;
            }
        }
        unsealed.sort_by_key(|(s, _)| *s);
        Ok((rows, unsealed))
    }

    /// Writes a run of consecutive records copied at open, and rolls the segment if full.
    fn write_run(&mut self, run: Run) -> Result<(), SpoolError> {
        if run.lines.is_empty() {
            return Ok(());
        }
        self.write_records(run.start, &run.lines);
        let written = self.flush().and_then(|()| self.maybe_roll());
        written.map_err(io_err(&self.dir))
    }

    /// Seals the pending batches again, under their labels, in the new segments.
    fn seal_again(
        &mut self,
        pending: Vec<(String, Range<u64>)>,
        rows: &RowsByBatch,
    ) -> Vec<PendingBatch> {
        let mut out = Vec::with_capacity(pending.len());
        for (label, seqs) in pending {
            self.write_frame(&Frame::Sealed {
                first_seq: seqs.start,
                end_seq: seqs.end,
                label: label.clone(),
            });
            self.note_sealed(&label, seqs.end);
            out.push(PendingBatch {
                rows: rows.get(&seqs.start).copied().unwrap_or(0),
                label,
                seqs,
            });
        }
        out
    }

    /// Creates segment `id` with its header. `id` is past every segment on disk, so a
    /// file already there is what an earlier failed attempt left: it is started over.
    fn create_segment(dir: &Path, id: u64) -> io::Result<File> {
        use std::os::unix::fs::FileExt;
        let path = dir.join(segment_name(id));
        let f = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&path)?;
        if let Err(e) = f.write_all_at(&segment::header(), 0) {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(f)
    }

    /// A free file made segment `id`, with its size on disk; `None` if there is none or
    /// it cannot be reused (it is removed then). Its recycled header is synced before it
    /// takes the segment's name, so that after a crash the segment's old bytes are never
    /// reported as damage. (They could never be read as its frames: their checksums
    /// cover the id of the segment they were written to.)
    fn reuse_free(&mut self, id: u64) -> Option<(File, u64)> {
        use std::os::unix::fs::FileExt;
        let free = self.free.pop()?;
        let path = self.dir.join(segment_name(id));
        let reused = OpenOptions::new()
            .write(true)
            .open(&free.path)
            .and_then(|f| {
                f.write_all_at(&segment::recycled_header(), 0)?;
                f.sync_data()?;
                fs::rename(&free.path, &path)?;
                Ok(f)
            });
        match reused {
            Ok(f) => Some((f, free.bytes)),
            Err(_) => {
                // Still counted until it is gone (removing is tried again when room is
                // needed).
                match fs::remove_file(&free.path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => self.free.push(free),
                    _ => {}
                }
                None
            }
        }
    }

    /// The id of the segment being written.
    fn current_id(&self) -> u64 {
        self.next_id - 1
    }

    fn write_frame(&mut self, frame: &Frame) {
        frame.encode(self.current_id(), &mut self.buf);
    }

    fn write_records(&mut self, first_seq: u64, records: &[Bytes]) {
        let mut data = Vec::with_capacity(records.iter().map(|r| r.len() + 1).sum());
        for r in records {
            data.extend_from_slice(r);
            data.push(b'\n');
        }
        let offset = self.file_len + self.buf.len() as u64;
        self.write_frame(&Frame::Records {
            first_seq,
            count: u32::try_from(records.len()).unwrap_or(u32::MAX),
            data: data.into(),
        });
        let len = (self.file_len + self.buf.len() as u64 - offset) as usize;
        self.index.insert(
            first_seq,
            RecordsAt {
                segment: self.current_id(),
                offset,
                len,
            },
        );
        let end = first_seq + records.len() as u64;
        if let Some(seg) = self.segments.last_mut() {
            seg.records_end = seg.records_end.max(end);
        }
    }

    fn note_sealed(&mut self, label: &str, end: u64) {
        self.sealed.push_back((label.to_owned(), end, false));
        if let Some(seg) = self.segments.last_mut() {
            seg.open_labels.insert(label.to_owned());
        }
    }

    /// Writes buffered frames to the current segment (the page cache, not yet the disk).
    /// On failure (a full disk, say) the frames stay buffered, whole, and the next call
    /// writes them where the index expects them: a partly written tail is cut off first.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        use std::os::unix::fs::FileExt;
        if self.torn_tail {
            self.file.set_len(self.file_len)?;
            self.file_disk = self.file_len;
            self.torn_tail = false;
        }
        if let Err(e) = self.file.write_all_at(&self.buf, self.file_len) {
            self.torn_tail = true;
            return Err(e);
        }
        self.file_len += self.buf.len() as u64;
        self.buf.clear();
        self.unsynced = true;
        Ok(())
    }

    /// Makes everything written so far survive a power cut.
    pub fn sync(&mut self) -> io::Result<()> {
        self.flush()?;
        if self.unsynced {
            self.file.sync_data()?;
            self.unsynced = false;
        }
        if self.dir_unsynced {
            sync_dir(&self.dir)?;
            self.dir_unsynced = false;
        }
        Ok(())
    }

    /// Everything appended, sealed and decided so far is on disk and synced: nothing is
    /// buffered, and no earlier failure is left to repair.
    pub fn is_synced(&self) -> bool {
        self.buf.is_empty() && !self.unsynced && !self.dir_unsynced && !self.torn_tail
    }

    /// After a failed write, sync or removal: tries all of it again (write what is
    /// buffered, sync it, start a new segment or free old ones if that was due). The
    /// spool's state is whole after any failure; this only catches the disk up with it.
    /// On a full disk, the free files and the reserve are given back first.
    pub fn repair(&mut self) -> io::Result<()> {
        let mut attempt = || -> io::Result<()> {
            self.collect()?;
            self.sync()?;
            self.maybe_roll()
        };
        match attempt() {
            Err(e) if is_disk_full(&e) && (self.reserved || !self.free.is_empty()) => {
                self.remove_free_files(true);
                if self.reserved {
                    self.reserved = false;
                    fs::remove_file(self.dir.join(RESERVE_FILE))?;
                }
                self.collect()?;
                self.sync()?;
                self.maybe_roll()
            }
            other => other,
        }
    }

    /// Puts the reserve file back if it is not there (best effort: on a disk too full
    /// for it, the spool goes on without one, and tries again once it frees space).
    fn keep_reserve(&mut self) {
        if self.reserved {
            return;
        }
        let path = self.dir.join(RESERVE_FILE);
        let made = File::create(&path).and_then(|f| {
            use std::os::fd::AsRawFd;
            let len = reserve_bytes(self.max_bytes) as libc::off_t;
            // SAFETY: a plain syscall on a descriptor this function owns.
            match unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len) } {
                0 => Ok(()),
                errno => Err(io::Error::from_raw_os_error(errno)),
            }
        });
        match made {
            Ok(()) => self.reserved = true,
            Err(_) => {
                let _ = fs::remove_file(&path);
            }
        }
    }

    /// Appends accepted records (each without `\n`); returns their sequence numbers.
    #[cfg(test)]
    pub fn append(&mut self, records: &[Bytes]) -> io::Result<Range<u64>> {
        let first = self.next_seq;
        self.write_records(first, records);
        self.next_seq += records.len() as u64;
        self.flush()?;
        self.maybe_roll()?;
        Ok(first..self.next_seq)
    }

    /// Appends a chunk's records: `data` holds them each ending in `\n` (as every chunk
    /// does), record `i` ending at `ends[i]`. They are written from where they are, with
    /// their frame's head in one `pwritev`, unless earlier frames wait in the buffer.
    ///
    /// The records are the spool's (numbered, indexed) even when the write fails: the
    /// error means only that they are not on disk yet, and [`Spool::repair`] puts them there.
    pub fn append_chunk(&mut self, data: &[u8], ends: &[u32]) -> (Range<u64>, io::Result<()>) {
        let first = self.next_seq;
        let count = ends.len() as u64;
        let offset = self.file_len + self.buf.len() as u64;
        let Some(&last) = ends.last() else {
            return (first..first, Ok(()));
        };
        let body = &data[..last as usize];
        debug_assert!(ends.iter().all(|&end| body[end as usize - 1] == b'\n'));
        let head = Frame::records_head(self.current_id(), first, ends.len() as u32, body);
        let written = if self.buf.is_empty() && !self.torn_tail {
            self.write_records_direct(&head, body)
        } else {
            self.buf.extend_from_slice(&head);
            self.buf.extend_from_slice(body);
            self.flush()
        };
        self.index.insert(
            first,
            RecordsAt {
                segment: self.current_id(),
                offset,
                len: segment::RECORDS_DATA_AT + body.len(),
            },
        );
        if let Some(seg) = self.segments.last_mut() {
            seg.records_end = seg.records_end.max(first + count);
        }
        self.next_seq += count;
        let written = written.and_then(|()| self.maybe_roll());
        (first..self.next_seq, written)
    }

    /// Writes a Records frame, its `head` and `data`, from where they are in one
    /// `pwritev`: no copy into the write buffer. Only with nothing buffered. On failure
    /// the frame is buffered whole, as [`Spool::flush`] leaves a failed write, to be
    /// written again after the torn tail is cut.
    fn write_records_direct(&mut self, head: &[u8], data: &[u8]) -> io::Result<()> {
        match write_all_vectored_at(&self.file, self.file_len, head, data) {
            Ok(()) => {
                self.file_len += (head.len() + data.len()) as u64;
                self.unsynced = true;
                Ok(())
            }
            Err(e) => {
                self.torn_tail = true;
                self.buf.extend_from_slice(head);
                self.buf.extend_from_slice(data);
                Err(e)
            }
        }
    }

    /// Records that `seqs` form the batch `label`; synced before this returns, so the
    /// label survives anything that happens once the batch is sent. On failure the batch
    /// is sealed all the same, but must not be sent before a [`Spool::repair`] succeeds.
    pub fn seal(&mut self, label: &str, seqs: Range<u64>) -> io::Result<()> {
        self.write_frame(&Frame::Sealed {
            first_seq: seqs.start,
            end_seq: seqs.end,
            label: label.to_owned(),
        });
        self.note_sealed(label, seqs.end);
        self.sync()
    }

    /// Records a batch's verdict and removes the segments nothing refers to any more.
    /// The verdict counts at once; an error means only that the disk has not caught up
    /// (see [`Spool::repair`]). Losing an unwritten verdict in a crash costs no duplicate:
    /// the next start asks StarRocks for the label's state before any re-send.
    pub fn done(&mut self, label: &str, outcome: Disposition) -> io::Result<()> {
        self.write_frame(&Frame::Done {
            label: label.to_owned(),
            outcome,
        });
        if let Some(entry) = self.sealed.iter_mut().find(|(l, _, _)| l == label) {
            entry.2 = true;
        }
        while let Some((_, end, true)) = self.sealed.front() {
            self.done_below = self.done_below.max(*end);
            self.sealed.pop_front();
        }
        for seg in &mut self.segments {
            seg.open_labels.remove(label);
        }
        // Space is freed even when the verdict cannot be written: on a full disk that is
        // what lets the spool recover.
        if let Err(e) = self.flush() {
            let _ = self.collect();
            return Err(e);
        }
        // Everything has its verdict: start a fresh segment so that the current one can
        // go too (when it is big enough to be worth a new file, or the spool is full).
        let caught_up = self.done_below >= self.next_seq
            && self
                .segments
                .last()
                .is_some_and(|s| s.open_labels.is_empty());
        if caught_up && (self.file_len >= self.segment_bytes / 4 || self.is_full()) {
            self.roll()?;
        }
        self.collect()
    }

    /// Bytes the spool takes on disk (and in its write buffer), free files included.
    pub fn bytes(&self) -> u64 {
        self.live_bytes() + self.free.iter().map(|f| f.bytes).sum::<u64>()
    }

    /// Bytes of its segments on disk (and in its write buffer).
    fn live_bytes(&self) -> u64 {
        let current = (self.file_len + self.buf.len() as u64).max(self.file_disk);
        self.closed_bytes + current
    }

    /// Keeps a freed segment file for reuse if there is room for it: at most
    /// [`MAX_FREE`], and only while the segments, the free files and one more segment
    /// fit the cap, so that a segment filling up before it reuses a free file cannot take
    /// the spool past it either; and only while the reserve is in place (it is given back
    /// when the disk is full, and put back once the disk has room again). Otherwise the
    /// file is removed.
    fn free_or_remove(&mut self, seg: &Segment) -> io::Result<()> {
        let room = (self.bytes())
            .saturating_add(seg.bytes)
            .saturating_add(self.segment_bytes)
            <= self.max_bytes;
        if self.free.len() < MAX_FREE && room && self.reserved {
            let path = seg.path.with_extension("free");
            if fs::rename(&seg.path, &path).is_ok() {
                self.free.push(FreeFile {
                    path,
                    bytes: seg.bytes,
                });
                return Ok(());
            }
        }
        match fs::remove_file(&seg.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Removes the free files once the segments grow too close to the cap to leave room
    /// for them (see [`Spool::free_or_remove`]), or when the disk is full. Best effort: a
    /// file that cannot be removed stays counted, and is tried again next time; nothing
    /// the spool holds depends on it.
    fn remove_free_files(&mut self, disk_full: bool) {
        let room = self.bytes().saturating_add(self.segment_bytes) <= self.max_bytes;
        if self.free.is_empty() || (room && !disk_full) {
            return;
        }
        self.free.retain(|free| match fs::remove_file(&free.path) {
            Err(e) => e.kind() != io::ErrorKind::NotFound,
            Ok(()) => false,
        });
        self.dir_unsynced = true;
    }

    /// The spool holds `spoolMaxBytes` or more: take no more records until verdicts free
    /// some space.
    pub fn is_full(&self) -> bool {
        self.bytes() >= self.max_bytes
    }

    /// Frees closed segments whose records all have verdicts and whose labels are done:
    /// each is kept for reuse or removed (see [`Spool::free_or_remove`]).
    fn collect(&mut self) -> io::Result<()> {
        let mut removed = false;
        let mut i = 0;
        // Never the last one: it is the segment being written.
        while i + 1 < self.segments.len() {
            let seg = &self.segments[i];
            if seg.records_end <= self.done_below && seg.open_labels.is_empty() {
                let seg = self.segments.remove(i);
                self.closed_bytes -= seg.bytes;
                if let Err(e) = self.free_or_remove(&seg) {
                    self.closed_bytes += seg.bytes;
                    self.segments.insert(i, seg);
                    return Err(e);
                }
                self.index.retain(|_, at| at.segment != seg.id);
                removed = true;
            } else {
                i += 1;
            }
        }
        if removed {
            self.dir_unsynced = true;
            sync_dir(&self.dir)?;
            self.dir_unsynced = false;
            self.keep_reserve();
        }
        Ok(())
    }

    fn maybe_roll(&mut self) -> io::Result<()> {
        self.remove_free_files(false);
        if self.file_len < self.segment_bytes {
            return Ok(());
        }
        self.roll()
    }

    /// Closes the current segment (synced) and starts a new one. Nothing changes unless
    /// the new segment exists.
    fn roll(&mut self) -> io::Result<()> {
        self.sync()?;
        let id = self.next_id;
        let (file, disk) = match self.reuse_free(id) {
            Some(reused) => reused,
            None => (Self::create_segment(&self.dir, id)?, 0),
        };
        self.file = file;
        self.next_id += 1;
        self.dir_unsynced = true;
        let closed_disk = self.file_len.max(self.file_disk);
        if let Some(closed) = self.segments.last_mut() {
            closed.bytes = closed_disk;
            self.closed_bytes += closed_disk;
        }
        self.file_len = segment::HEADER_LEN as u64;
        self.file_disk = disk.max(self.file_len);
        self.segments.push(Segment {
            id,
            path: self.dir.join(segment_name(id)),
            bytes: 0,
            records_end: 0,
            open_labels: HashSet::new(),
        });
        sync_dir(&self.dir)?;
        self.dir_unsynced = false;
        Ok(())
    }

    /// Reads back the records `seqs` (each without `\n`), for a batch that waited on disk.
    /// Records the spool lost to damage before this run are not there: fewer come back.
    pub fn read(&mut self, seqs: Range<u64>) -> io::Result<Vec<Bytes>> {
        let mut records = Vec::new();
        self.read_into(seqs, &mut records, b'\n')?;
        let records = Bytes::from(records);
        Ok(lines(&records).collect())
    }

    /// Appends the records `seqs` to `body`, each followed by `delimiter`, and says how
    /// many there were: a batch that waited on disk, read back as its Stream Load body.
    /// A frame wholly inside `seqs` (the usual case) is copied in one piece. Records the
    /// spool lost to damage before this run are not there: fewer come back.
    ///
    /// Records already on disk are read without writing anything first, so a batch whose
    /// seal is synced can be read back (and loaded, freeing space) while writes fail.
    pub fn read_into(
        &mut self,
        seqs: Range<u64>,
        body: &mut Vec<u8>,
        delimiter: u8,
    ) -> io::Result<u64> {
        use std::os::unix::fs::FileExt;
        let from = self
            .index
            .range(..=seqs.start)
            .next_back()
            .map_or(seqs.start, |(first, _)| *first);
        let current = self.current_id();
        let buffered = self
            .index
            .range(from..seqs.end)
            .any(|(_, at)| at.segment == current && at.offset + at.len as u64 > self.file_len);
        if buffered {
            self.flush()?;
        }
        let mut open: Option<(u64, File)> = None;
        let mut rows = 0u64;
        let mut cut = Vec::new();
        for (_, at) in self.index.range(from..seqs.end) {
            let file = match &open {
                Some((id, f)) if *id == at.segment => f,
                _ => {
                    let f = File::open(self.dir.join(segment_name(at.segment)))?;
                    &open.insert((at.segment, f)).1
                }
            };
            let changed = || {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "segment {} changed under the spool at offset {}",
                        segment_name(at.segment),
                        at.offset
                    ),
                )
            };
            // The frame's head apart. A frame wholly in the batch is read straight into the
            // body; one the batch starts or ends inside goes through `cut`, so that the
            // body never holds more than the batch (it was reserved for exactly that).
            let mut head = [0u8; segment::RECORDS_DATA_AT];
            let data_len = at.len.checked_sub(head.len()).ok_or_else(changed)?;
            file.read_exact_at(&mut head, at.offset)?;
            let data_at = at.offset + head.len() as u64;
            let (claimed_first, claimed_count) = Frame::records_claimed(&head);
            let claimed_end = claimed_first.checked_add(u64::from(claimed_count));
            let whole = seqs.start <= claimed_first && claimed_end.is_some_and(|e| e <= seqs.end);
            let start = body.len();
            if whole {
                let read = read_exact_at_appending(file, body, data_len, data_at);
                if let Err(e) = read {
                    body.truncate(start);
                    return Err(e);
                }
                let Some((_, count)) = Frame::records_split(at.segment, &head, &body[start..])
                else {
                    body.truncate(start);
                    return Err(changed());
                };
                rows += u64::from(count);
            } else {
                cut.clear();
                read_exact_at_appending(file, &mut cut, data_len, data_at)?;
                let Some((first_seq, _)) = Frame::records_split(at.segment, &head, &cut) else {
                    return Err(changed());
                };
                let records = cut.split_inclusive(|&b| b == b'\n');
                for (seq, record) in (first_seq..).zip(records) {
                    if seqs.contains(&seq) {
                        body.extend_from_slice(record);
                        rows += 1;
                    }
                }
            }
            // Records are lines: every `\n` read back ends one.
            if delimiter != b'\n' {
                for b in &mut body[start..] {
                    if *b == b'\n' {
                        *b = delimiter;
                    }
                }
            }
        }
        Ok(rows)
    }

    /// Segment files currently on disk.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }
}

/// Writes `head` then `data` at `offset`, whole, with as few `pwritev` calls as the file
/// takes.
fn write_all_vectored_at(file: &File, mut offset: u64, head: &[u8], data: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut slices = [io::IoSlice::new(head), io::IoSlice::new(data)];
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let at = libc::off_t::try_from(offset).map_err(io::Error::other)?;
        let count = libc::c_int::try_from(rest.len()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `IoSlice` has the layout of `iovec` on Unix (std guarantees it); the
        // kernel reads `count` of them, each valid for its length, and writes none.
        let n = unsafe { libc::pwritev(file.as_raw_fd(), rest.as_ptr().cast(), count, at) };
        if let Some(n) = moved(n, io::ErrorKind::WriteZero)? {
            offset += n as u64;
            io::IoSlice::advance_slices(&mut rest, n);
        }
    }
    Ok(())
}

/// What a read or write call returned: the bytes it moved, `None` if it was interrupted
/// (to be tried again), or its error (`nothing` if it moved no byte).
fn moved(n: isize, nothing: io::ErrorKind) -> io::Result<Option<usize>> {
    match usize::try_from(n) {
        Ok(0) => Err(nothing.into()),
        Ok(n) => Ok(Some(n)),
        Err(_) => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(None)
            } else {
                Err(e)
            }
        }
    }
}

/// Reads `len` bytes of `file` at `offset` onto the end of `out`, into its spare
/// capacity (no zero-filling first).
fn read_exact_at_appending(
    file: &File,
    out: &mut Vec<u8>,
    len: usize,
    offset: u64,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    out.reserve(len);
    let mut done = 0;
    while done < len {
        let spare = &mut out.spare_capacity_mut()[..len - done];
        let at = libc::off_t::try_from(offset + done as u64).map_err(io::Error::other)?;
        // SAFETY: `pread` writes at most `spare.len()` bytes into `spare`, memory `out`
        // owns and does not read until its length covers it.
        let n =
            unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), at) };
        if let Some(n) = moved(n, io::ErrorKind::UnexpectedEof)? {
            // SAFETY: the kernel wrote `n` bytes just past the vector's length.
            unsafe { out.set_len(out.len() + n) };
            done += n;
        }
    }
    Ok(())
}

/// Bytes free for an unprivileged writer on the filesystem holding `dir`.
fn free_space(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: `stat` is a plain struct the call fills; `path` is a valid C string.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_bavail * stat.f_frsize)
}

/// What pass 1 of [`Spool::open_with`] found in the old segments.
struct Survey {
    /// Where records are, frame by frame.
    record_seqs: Vec<Range<u64>>,
    /// Sealed batches, first seal of each label, in the order found.
    sealed: Vec<(String, Range<u64>)>,
    /// Labels with a verdict.
    done: HashSet<String>,
    damage: Vec<(PathBuf, Damage)>,
    /// Segments with corrupt stretches or a bad header (moved aside afterwards).
    corrupt: Vec<PathBuf>,
}

/// What recovery keeps, decided from the survey alone: the pending batches (sealed, no
/// verdict) under their own numbers, and the loose records (in no readable batch: after
/// the last seal, or whose Sealed frame was lost to damage) under numbers that make them
/// consecutive after everything else.
struct Plan {
    pending: Vec<(String, Range<u64>)>,
    /// The pending batches' ranges, by start.
    pending_ranges: Vec<Range<u64>>,
    /// Each loose record's number: its own, or the next free ones when renumbering closes
    /// gaps or moves orphans (records of a lost batch) past every batch.
    renumber: BTreeMap<u64, u64>,
    /// The next record's number after recovery.
    next_seq: u64,
    /// Loose records that were inside a batch whose Sealed frame was lost: their fate is
    /// unknown, so they load again under a new label.
    orphaned: u64,
}

impl Plan {
    fn is_pending(&self, seq: u64) -> bool {
        let i = self.pending_ranges.partition_point(|r| r.end <= seq);
        i < self.pending_ranges.len() && self.pending_ranges[i].start <= seq
    }
}

/// Decides what [`Spool::open_with`] keeps (see [`Plan`]); pure.
fn plan(survey: Survey) -> Plan {
    let Survey {
        record_seqs,
        sealed,
        done,
        ..
    } = survey;
    let sealed_end = sealed.iter().map(|(_, r)| r.end).max().unwrap_or(0);
    let mut ranges: Vec<Range<u64>> = sealed.iter().map(|(_, r)| r.clone()).collect();
    ranges.sort_by_key(|r| r.start);
    let in_a_batch = |seq: u64| {
        let i = ranges.partition_point(|r| r.end <= seq);
        i < ranges.len() && ranges[i].start <= seq
    };
    let (mut loose, mut orphaned, mut last_seq) = (Vec::new(), 0u64, None);
    for seq in record_seqs.iter().flat_map(|r| r.clone()) {
        last_seq = Some(last_seq.map_or(seq, |l: u64| l.max(seq)));
        if !in_a_batch(seq) {
            orphaned += u64::from(seq < sealed_end);
            loose.push(seq);
        }
    }
    loose.sort_unstable();
    loose.dedup();
    let mut next_seq = last_seq.map_or(sealed_end, |s| (s + 1).max(sealed_end));
    let consecutive = loose.windows(2).all(|w| w[1] == w[0] + 1);
    let renumber: BTreeMap<u64, u64> = if orphaned == 0 && consecutive {
        loose.iter().map(|s| (*s, *s)).collect()
    } else {
        let base = next_seq;
        next_seq += loose.len() as u64;
        loose.iter().zip(base..).map(|(s, n)| (*s, n)).collect()
    };
    let pending: Vec<(String, Range<u64>)> = sealed
        .into_iter()
        .filter(|(label, _)| !done.contains(label))
        .collect();
    let mut pending_ranges: Vec<Range<u64>> = pending.iter().map(|(_, r)| r.clone()).collect();
    pending_ranges.sort_by_key(|r| r.start);
    Plan {
        pending,
        pending_ranges,
        renumber,
        next_seq,
        orphaned,
    }
}

/// Rows of each pending batch, by the batch's first seq.
type RowsByBatch = BTreeMap<u64, u64>;

/// Consecutive records being copied at open, written as one frame.
#[derive(Default)]
struct Run {
    start: u64,
    lines: Vec<Bytes>,
}

impl Run {
    /// Whether record `seq` may join this run (it is empty, or `seq` follows its end).
    fn continues_at(&self, seq: u64) -> bool {
        self.lines.is_empty() || self.start + self.lines.len() as u64 == seq
    }

    fn push(&mut self, seq: u64, line: Bytes) {
        if self.lines.is_empty() {
            self.start = seq;
        }
        self.lines.push(line);
    }
}

/// Pass 1: reads each old segment in turn and keeps only where records are and which
/// batches are sealed and done (memory bounded by one segment).
fn survey(
    old: &[(u64, PathBuf)],
    read_segment: &dyn Fn(&(u64, PathBuf)) -> SegmentRead,
) -> Result<Survey, SpoolError> {
    let mut record_seqs: Vec<Range<u64>> = Vec::new();
    let mut sealed: Vec<(String, Range<u64>)> = Vec::new();
    let mut seen_labels: HashSet<String> = HashSet::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut damage = Vec::new();
    let mut corrupt = Vec::new();
    for seg @ (_, path) in old {
        let r = read_segment(seg)?;
        for d in r.damage {
            if matches!(d, Damage::Corrupt { .. } | Damage::BadHeader) {
                corrupt.push(path.clone());
            }
            damage.push((path.clone(), d));
        }
        for frame in r.frames {
            match frame {
                Frame::Records {
                    first_seq, data, ..
                } => {
                    let n = lines(&data).count() as u64;
                    record_seqs.push(first_seq..first_seq + n);
                }
                Frame::Sealed {
                    first_seq,
                    end_seq,
                    label,
                } => {
                    if seen_labels.insert(label.clone()) {
                        sealed.push((label, first_seq..end_seq));
                    }
                }
                Frame::Done { label, .. } => {
                    done.insert(label);
                }
            }
        }
    }
    Ok(Survey {
        record_seqs,
        sealed,
        done,
        damage,
        corrupt,
    })
}

/// Once the pending state is in a fresh segment (synced): removes the old segments, and
/// moves corrupt ones into `corrupt/`.
fn retire(dir: &Path, old: &[(u64, PathBuf)], corrupt: &[PathBuf]) -> io::Result<()> {
    for (_, path) in old {
        if corrupt.contains(path) {
            let aside = dir.join("corrupt");
            fs::create_dir_all(&aside)?;
            let name = path.file_name().unwrap_or_default();
            fs::rename(path, aside.join(name))?;
        } else {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

/// Removes the free files an earlier run kept for reuse: they hold nothing, and a run
/// keeps its own as it frees segments.
fn remove_free(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "free") {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn survey_of(records: &[Range<u64>], sealed: &[(&str, Range<u64>)], done: &[&str]) -> Survey {
        Survey {
            record_seqs: records.to_vec(),
            sealed: sealed
                .iter()
                .map(|(l, r)| (l.to_string(), r.clone()))
                .collect(),
            done: done.iter().map(|l| l.to_string()).collect(),
            damage: Vec::new(),
            corrupt: Vec::new(),
        }
    }

    #[test]
    fn recovery_keeps_pending_batches_and_numbers_loose_records_after_them() {
        // Two batches, the first loaded; three records after the last seal keep theirs.
        let p = plan(survey_of(
            &[0..7, 7..13],
            &[("a", 0..5), ("b", 5..10)],
            &["a"],
        ));
        assert_eq!(p.pending, [("b".to_owned(), 5..10)]);
        assert!(!p.is_pending(4) && p.is_pending(5) && p.is_pending(9) && !p.is_pending(10));
        assert_eq!(p.renumber, BTreeMap::from([(10, 10), (11, 11), (12, 12)]));
        assert_eq!((p.next_seq, p.orphaned), (13, 0));

        // Batch 5..10's Sealed frame was lost: its records are orphans, numbered after
        // everything so they load again under a new label, with the records after them.
        let p = plan(survey_of(
            &[0..7, 7..13],
            &[("a", 0..5), ("c", 10..12)],
            &[],
        ));
        assert_eq!(p.orphaned, 5);
        let moved: Vec<(u64, u64)> = p.renumber.into_iter().collect();
        assert_eq!(moved, (5..10).chain(12..13).zip(13..19).collect::<Vec<_>>());
        assert_eq!(p.next_seq, 19);

        // Nothing at all: a fresh spool.
        let p = plan(survey_of(&[], &[], &[]));
        assert!(p.pending.is_empty() && p.renumber.is_empty());
        assert_eq!((p.next_seq, p.orphaned), (0, 0));
    }

    fn recs(range: Range<u64>) -> Vec<Bytes> {
        range
            .map(|i| Bytes::from(format!("{{\"id\":{i}}}")))
            .collect()
    }

    #[test]
    fn a_fresh_spool_replays_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (_, replay) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(replay, Replay::default());
    }

    #[test]
    fn reopening_gives_back_pending_batches_with_their_labels_and_unsealed_records() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
            assert_eq!(spool.append(&recs(0..3)).unwrap(), 0..3);
            assert_eq!(spool.append(&recs(3..5)).unwrap(), 3..5);
            spool.seal("p_s_1_0", 0..4).unwrap();
            spool.append(&recs(5..6)).unwrap();
            spool.seal("p_s_1_1", 4..6).unwrap();
            spool.done("p_s_1_0", Disposition::Committed).unwrap();
            spool.append(&recs(6..8)).unwrap();
            // A crash: nothing more is written.
        }
        let (mut spool, replay) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(
            replay.sealed,
            vec![PendingBatch {
                label: "p_s_1_1".into(),
                seqs: 4..6,
                rows: 2
            }]
        );
        assert_eq!(spool.read(4..6).unwrap(), recs(4..6));
        assert_eq!(replay.unsealed, (6..8).zip(recs(6..8)).collect::<Vec<_>>());
        assert!(replay.damage.is_empty());
        // New records continue the numbering.
        assert_eq!(spool.append(&recs(8..9)).unwrap(), 8..9);
        // And the recovered state survives a second crash too.
        drop(spool);
        let (_, again) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(again.sealed, replay.sealed);
        assert_eq!(again.unsealed.len(), 3);
    }

    #[test]
    fn a_torn_tail_loses_only_the_unfinished_write() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
            spool.append(&recs(0..10)).unwrap();
            spool.append(&recs(10..20)).unwrap();
        }
        let (_, seg) = list(dir.path()).unwrap().pop().unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.set_len(len - 7).unwrap();
        let (_, replay) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(replay.unsealed.len(), 10, "the first frame survives");
        assert!(matches!(replay.damage[..], [(_, Damage::TornTail { .. })]));
        assert!(!dir.path().join("corrupt").exists());
    }

    #[test]
    fn a_spool_directory_has_one_owner_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let (first, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        match Spool::open(dir.path(), 1 << 20) {
            Err(SpoolError::Locked { holder, .. }) => {
                assert_eq!(holder, Some(std::process::id()))
            }
            other => panic!("a second owner: {:?}", other.map(|_| ())),
        }
        drop(first);
        Spool::open(dir.path(), 1 << 20).expect("free again once the owner is gone");
    }

    #[test]
    fn a_corrupt_segment_is_moved_aside_and_what_is_readable_salvaged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
            spool.append(&recs(0..10)).unwrap();
            spool.append(&recs(10..20)).unwrap();
            spool.append(&recs(20..30)).unwrap();
        }
        let (_, seg) = list(dir.path()).unwrap().pop().unwrap();
        let mut bytes = fs::read(&seg).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xFF;
        fs::write(&seg, &bytes).unwrap();
        let (_, replay) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(replay.unsealed.len(), 20, "two of three frames salvaged");
        assert!(matches!(replay.damage[..], [(_, Damage::Corrupt { .. })]));
        let aside = fs::read_dir(dir.path().join("corrupt")).unwrap().count();
        assert_eq!(aside, 1, "the damaged segment is kept for inspection");
    }

    #[test]
    fn empty_and_foreign_files_do_not_stop_the_spool_but_a_newer_format_does() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(segment_name(0)), b"").unwrap();
        fs::write(dir.path().join(segment_name(1)), b"garbage garbage garbage").unwrap();
        let (_, replay) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(replay.damage.len(), 2);
        let mut newer = segment::header();
        newer[8] = 0xFF;
        fs::write(dir.path().join(segment_name(99)), newer).unwrap();
        let err = Spool::open(dir.path(), 1 << 30)
            .err()
            .expect("a newer format is refused");
        assert!(err.to_string().contains("newer"), "{err}");
    }

    #[test]
    fn segments_go_once_their_batches_have_verdicts() {
        let dir = tempfile::tempdir().unwrap();
        // Small segments: every append closes one.
        let (mut spool, _) = Spool::open_with(dir.path(), 64, u64::MAX).unwrap();
        let big: Vec<Bytes> = vec![Bytes::from(vec![b'x'; 100])];
        let a = spool.append(&big).unwrap();
        let b = spool.append(&big).unwrap();
        assert_eq!(spool.segment_count(), 3);
        spool.seal("l_0", a.clone()).unwrap();
        spool.seal("l_1", b.clone()).unwrap();
        spool.done("l_0", Disposition::Committed).unwrap();
        // The first segment's record has its verdict; the second's label (sealed in the
        // current segment) and record do not.
        assert_eq!(spool.segment_count(), 2);
        spool.done("l_1", Disposition::DeadLettered).unwrap();
        assert_eq!(spool.segment_count(), 1);
        assert_eq!(list(dir.path()).unwrap().len(), 1);
    }

    #[test]
    fn a_filesystem_without_locks_is_named_with_the_fix() {
        let dir = Path::new("/spool");
        for (errno, no_locks) in [
            (libc::ENOLCK, true),
            (libc::EOPNOTSUPP, true),
            (libc::ENOSYS, true),
            (libc::EIO, false),
        ] {
            let e = lock_failed(dir, io::Error::from_raw_os_error(errno));
            assert_eq!(matches!(e, SpoolError::NoLocks { .. }), no_locks, "{e}");
        }
        let e = lock_failed(dir, io::Error::from_raw_os_error(libc::ENOLCK));
        assert!(e.to_string().contains("without file locks"), "{e}");
    }

    #[test]
    fn a_verdict_out_of_seal_order_frees_space_once_the_earlier_batch_has_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open_with(dir.path(), 64, u64::MAX).unwrap();
        let big: Vec<Bytes> = vec![Bytes::from(vec![b'x'; 100])];
        let a = spool.append(&big).unwrap();
        let b = spool.append(&big).unwrap();
        spool.seal("l_0", a).unwrap();
        spool.seal("l_1", b).unwrap();
        // l_0 waits (its dead-letter file could not be written yet); l_1 is done.
        spool.done("l_1", Disposition::Committed).unwrap();
        assert_eq!(spool.segment_count(), 3, "l_0's records must stay");
        spool.done("l_0", Disposition::DeadLettered).unwrap();
        assert_eq!(spool.segment_count(), 1);
        drop(spool);
        let (_, replay) = Spool::open_with(dir.path(), 64, u64::MAX).unwrap();
        assert_eq!(replay, Replay::default());
    }

    /// The segment file behind the spool's back, for failures the tests cause.
    fn swap_file(spool: &mut Spool, file: File) {
        spool.file = file;
    }

    #[test]
    fn a_failed_write_stays_buffered_and_a_repair_puts_it_on_disk_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
        spool.append(&recs(0..2)).unwrap();
        let current = dir.path().join(segment_name(spool.next_id - 1));
        // A full disk: every write fails with ENOSPC.
        swap_file(
            &mut spool,
            OpenOptions::new().write(true).open("/dev/full").unwrap(),
        );
        // Written from where it is, and failing: the frame is buffered whole.
        let (seqs, written) = spool.append_chunk(b"{\"id\":2}\n", &[9]);
        assert_eq!(seqs, 2..3);
        assert_eq!(written.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        // Behind it in the buffer.
        let (seqs, written) = spool.append_chunk(b"{\"id\":3}\n", &[9]);
        assert_eq!(seqs, 3..4);
        assert!(written.is_err());
        assert!(spool.seal("l_0", 0..4).is_err());
        assert!(!spool.is_synced());
        assert!(spool.repair().is_err(), "the disk is still full");
        // The disk comes back, with part of the failed write on it.
        swap_file(
            &mut spool,
            OpenOptions::new().write(true).open(&current).unwrap(),
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(&current)
            .unwrap()
            .write_all(b"\x7fpartial")
            .unwrap();
        spool.repair().unwrap();
        assert!(spool.is_synced());
        assert_eq!(spool.read(0..4).unwrap(), recs(0..4));
        drop(spool);
        let (_, replay) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(
            replay.damage,
            vec![],
            "the torn tail was cut before the retry"
        );
        assert_eq!(replay.sealed.len(), 1);
        assert_eq!(replay.sealed[0].label, "l_0");
        assert_eq!(replay.sealed[0].rows, 4);
    }

    /// What the segment files and the free files take.
    fn disk_bytes(dir: &Path) -> u64 {
        let spool_file = |p: &Path| p.extension().is_some_and(|e| e == "seg" || e == "free");
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| spool_file(p))
            .map(|p| fs::metadata(p).unwrap().len())
            .sum()
    }

    fn free_files(dir: &Path) -> Vec<PathBuf> {
        let mut free: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "free"))
            .collect();
        free.sort();
        free
    }

    /// Appends `n` frames of three records, seals each as a batch, and gives every batch
    /// its verdict in the next segment: the segments they filled are freed, and each
    /// holds a batch whose verdict it does not (so that its frames, were they ever taken
    /// for a later segment's, would load that batch again).
    fn load_frames(spool: &mut Spool, n: u64) {
        for _ in 0..n {
            let first = spool.next_seq;
            let seqs = spool.append(&recs(first..first + 3)).unwrap();
            let label = format!("l_{first}");
            spool.seal(&label, seqs).unwrap();
            spool.roll().unwrap();
            spool.done(&label, Disposition::Committed).unwrap();
        }
    }

    /// A spool of 300-byte segments that has loaded six batches: it has free files.
    fn with_free_files(dir: &Path) -> Spool {
        let (mut spool, _) = Spool::open_with(dir, 300, 1 << 30).unwrap();
        load_frames(&mut spool, 6);
        spool
    }

    #[test]
    fn freed_segment_files_are_reused_and_their_old_frames_never_come_back() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open_with(dir.path(), 300, 1 << 30).unwrap();
        load_frames(&mut spool, 12);
        let free = free_files(dir.path());
        assert!(
            (1..=MAX_FREE).contains(&free.len()),
            "freed segments are kept for reuse: {free:?}"
        );
        let inodes: Vec<u64> = free
            .iter()
            .map(|p| fs::metadata(p).unwrap().ino())
            .collect();
        // The next segment is one of them, under its own name, with its old bytes past
        // what is written to it.
        let next = dir.path().join(segment_name(spool.next_id));
        load_frames(&mut spool, 1);
        spool.roll().unwrap();
        assert!(inodes.contains(&fs::metadata(&next).unwrap().ino()));
        assert_eq!(spool.bytes(), disk_bytes(dir.path()));
        // Pending work in reused files: a batch sealed, records not yet in one.
        let pending = spool
            .append(&recs(spool.next_seq..spool.next_seq + 2))
            .unwrap();
        spool.seal("l_pending", pending.clone()).unwrap();
        let loose = spool
            .append(&recs(spool.next_seq..spool.next_seq + 1))
            .unwrap();
        assert_eq!(spool.read(pending.clone()).unwrap(), recs(pending.clone()));
        let files = fs::read_dir(dir.path()).unwrap().count();
        drop(spool);
        assert!(
            files <= 2 + 2 + MAX_FREE,
            "LOCK, RESERVE, two segments, the free files: {files}"
        );
        // A crash: the next start gets back exactly what was pending, nothing of what
        // the reused files held before, and calls none of it damage.
        let (mut spool, replay) = Spool::open_with(dir.path(), 300, 1 << 30).unwrap();
        assert_eq!(
            replay.sealed,
            vec![PendingBatch {
                label: "l_pending".into(),
                seqs: pending.clone(),
                rows: 2
            }]
        );
        assert_eq!(
            replay.unsealed,
            loose.clone().zip(recs(loose)).collect::<Vec<_>>()
        );
        assert_eq!(replay.damage, vec![]);
        assert_eq!(spool.read(pending.clone()).unwrap(), recs(pending));
        assert!(
            free_files(dir.path()).is_empty(),
            "a start removes free files"
        );
    }

    #[test]
    fn a_freed_file_that_takes_a_segment_name_without_its_new_header_replays_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open_with(dir.path(), 300, 1 << 30).unwrap();
        // Batches sealed while earlier ones load, each in a segment of its own, and their
        // verdicts in a later one: the oldest freed file stays free the longest, and the
        // segment with its verdicts goes long before it.
        let mut labels = Vec::new();
        for i in 0..4 {
            let seqs = spool.append(&recs(i * 3..i * 3 + 3)).unwrap();
            labels.push(format!("l_{i}"));
            spool.seal(&labels[i as usize], seqs).unwrap();
            spool.roll().unwrap();
        }
        for label in &labels {
            spool.done(label, Disposition::Committed).unwrap();
        }
        load_frames(&mut spool, 6);
        let next = dir.path().join(segment_name(spool.next_id));
        drop(spool);
        // A crash between taking the next segment's name and writing anything to it.
        fs::rename(&free_files(dir.path())[0], &next).unwrap();
        let (_, replay) = Spool::open_with(dir.path(), 300, 1 << 30).unwrap();
        assert_eq!(replay.sealed, vec![]);
        assert_eq!(replay.unsealed, vec![]);
    }

    #[test]
    fn a_failed_write_to_a_reused_file_is_repaired_and_counted_as_what_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = with_free_files(dir.path());
        spool.roll().unwrap();
        assert!(
            spool.file_disk > spool.file_len,
            "the current segment is a reused file"
        );
        let current = dir.path().join(segment_name(spool.current_id()));
        let real = std::mem::replace(
            &mut spool.file,
            OpenOptions::new().write(true).open("/dev/full").unwrap(),
        );
        let first = spool.next_seq;
        let (seqs, written) = spool.append_chunk(b"{\"id\":1}\n", &[9]);
        assert!(written.is_err());
        swap_file(&mut spool, real);
        spool.repair().unwrap();
        // The torn tail was cut: the file is as long as what it holds.
        assert_eq!(fs::metadata(&current).unwrap().len(), spool.file_len);
        assert_eq!(spool.bytes(), disk_bytes(dir.path()));
        assert_eq!(
            spool.read(seqs.clone()).unwrap(),
            vec![Bytes::from("{\"id\":1}")]
        );
        drop(spool);
        let (_, replay) = Spool::open_with(dir.path(), 300, 1 << 30).unwrap();
        assert_eq!(replay.unsealed, vec![(first, Bytes::from("{\"id\":1}"))]);
        assert_eq!(replay.damage, vec![]);
    }

    #[test]
    fn on_a_full_disk_free_files_are_given_back_and_none_kept_until_it_has_room() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = with_free_files(dir.path());
        assert!(!free_files(dir.path()).is_empty());
        // A batch loading, in a closed segment of its own.
        let loading = spool.append(&recs(50..53)).unwrap();
        spool.seal("l_loading", loading).unwrap();
        spool.roll().unwrap();
        let current = dir.path().join(segment_name(spool.current_id()));
        swap_file(
            &mut spool,
            OpenOptions::new().write(true).open("/dev/full").unwrap(),
        );
        let (seqs, written) = spool.append_chunk(b"{\"id\":1}\n", &[9]);
        assert!(written.is_err());
        // `/dev/full` cannot be truncated: the repair's first write is what fails here
        // (with ENOSPC; its retry, after giving space back, fails to cut that write).
        spool.torn_tail = false;
        assert!(spool.repair().is_err(), "the disk is still full");
        assert!(free_files(dir.path()).is_empty(), "given back first");
        assert!(!dir.path().join(RESERVE_FILE).exists());
        // Its verdict frees its segment (though the verdict cannot be written yet): on a
        // full disk, the file goes.
        assert!(spool.done("l_loading", Disposition::Committed).is_err());
        assert_eq!(spool.segment_count(), 1);
        assert!(
            free_files(dir.path()).is_empty(),
            "none kept on a full disk"
        );
        // The disk has room again: the reserve comes back, then free files may.
        swap_file(
            &mut spool,
            OpenOptions::new().write(true).open(&current).unwrap(),
        );
        spool.repair().unwrap();
        spool.seal("l_last", seqs).unwrap();
        spool.roll().unwrap();
        spool.done("l_last", Disposition::Committed).unwrap();
        assert!(dir.path().join(RESERVE_FILE).exists());
        load_frames(&mut spool, 3);
        assert!(!free_files(dir.path()).is_empty());
        assert_eq!(spool.bytes(), disk_bytes(dir.path()));
    }

    #[test]
    fn a_free_file_that_cannot_be_reused_gives_way_to_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = with_free_files(dir.path());
        for free in free_files(dir.path()) {
            fs::remove_file(free).unwrap();
        }
        let seqs = spool.append(&recs(100..103)).unwrap();
        spool.roll().unwrap();
        assert_eq!(spool.file_disk, segment::HEADER_LEN as u64, "a new file");
        assert_eq!(spool.bytes(), disk_bytes(dir.path()));
        assert_eq!(spool.read(seqs).unwrap(), recs(100..103));
    }

    #[test]
    fn free_files_are_kept_only_while_the_cap_has_room_for_them() {
        let dir = tempfile::tempdir().unwrap();
        // A cap with no room for a freed file beside a segment and one more: none is kept.
        let (mut spool, _) = Spool::open_with(dir.path(), 300, 400).unwrap();
        load_frames(&mut spool, 12);
        assert!(free_files(dir.path()).is_empty());
        assert!(spool.bytes() <= 400);
        drop(spool);
        // Free files kept while there was room go once the segments need it.
        let (mut spool, _) = Spool::open_with(dir.path(), 300, 2000).unwrap();
        load_frames(&mut spool, 12);
        assert!(!free_files(dir.path()).is_empty());
        let mut held = Vec::new();
        while !spool.is_full() {
            held.push(spool.append(&recs(0..3)).unwrap());
            assert_eq!(spool.bytes(), disk_bytes(dir.path()));
        }
        assert!(free_files(dir.path()).is_empty());
        // Full once it holds the cap: the last append may pass it by its own size.
        assert!(spool.bytes() < 2000 + 300);
    }

    #[test]
    fn the_cap_counts_what_is_on_disk_and_verdicts_free_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open_with(dir.path(), 1000, 3000).unwrap();
        let record = vec![Bytes::from(vec![b'x'; 200])];
        let mut seqs = Vec::new();
        while !spool.is_full() {
            seqs.push(spool.append(&record).unwrap());
        }
        assert_eq!(spool.bytes(), disk_bytes(dir.path()));
        assert!(spool.bytes() >= 3000 && spool.bytes() < 3000 + 300);
        for (i, s) in seqs.iter().enumerate() {
            spool.seal(&format!("l_{i}"), s.clone()).unwrap();
        }
        for i in 0..seqs.len() {
            spool
                .done(&format!("l_{i}"), Disposition::Committed)
                .unwrap();
        }
        // All verdicts in: only a fresh segment is left, whatever the current one held,
        // beside the freed files kept for reuse within the cap.
        assert!(!spool.is_full());
        assert_eq!(spool.segment_count(), 1);
        assert_eq!(spool.live_bytes(), segment::HEADER_LEN as u64);
        assert_eq!(spool.bytes(), disk_bytes(dir.path()));
        assert!(spool.bytes() <= 3000);
    }

    /// A spool with records 0..30 in ten frames of three, over several 100-byte segments.
    fn ten_frames_over_segments(dir: &Path) -> Spool {
        let (mut spool, _) = Spool::open_with(dir, 100, u64::MAX).unwrap();
        for i in 0..10 {
            spool.append(&recs(i * 3..i * 3 + 3)).unwrap();
        }
        spool
    }

    #[test]
    fn batches_read_back_from_disk_across_frames_segments_and_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = ten_frames_over_segments(dir.path());
        assert!(spool.segment_count() > 3);
        assert_eq!(spool.read(0..30).unwrap(), recs(0..30));
        assert_eq!(spool.read(4..17).unwrap(), recs(4..17));
        spool.seal("l_0", 0..4).unwrap();
        spool.seal("l_1", 4..17).unwrap();
        spool.done("l_0", Disposition::Committed).unwrap();
        assert_eq!(spool.read(4..17).unwrap(), recs(4..17));
        drop(spool);
        // After a restart the pending batch is in the compacted segment, and still readable.
        let (mut spool, replay) = Spool::open_with(dir.path(), 100, u64::MAX).unwrap();
        assert_eq!(replay.sealed[0].seqs, 4..17);
        assert_eq!(spool.read(4..17).unwrap(), recs(4..17));
        assert_eq!(spool.read(17..30).unwrap(), recs(17..30));
    }

    #[test]
    fn a_batch_is_read_back_as_a_body_with_the_body_delimiter_from_whole_and_cut_frames() {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = ten_frames_over_segments(dir.path());
        let joined = |range: Range<u64>, delimiter: &str| {
            recs(range)
                .iter()
                .map(|r| format!("{}{delimiter}", String::from_utf8_lossy(r)))
                .collect::<String>()
        };
        // 4..17 starts and ends inside a frame; 3..18 is whole frames only.
        for range in [4..17, 3..18, 0..30] {
            let want = format!("[{}", joined(range.clone(), ","));
            // Room for exactly the batch, as a read-back body is reserved: a frame cut by
            // the batch's ends must not pass through the body whole (it would grow it).
            let mut body = Vec::with_capacity(want.len());
            body.push(b'[');
            let room = body.capacity();
            let rows = spool.read_into(range.clone(), &mut body, b',').unwrap();
            assert_eq!(rows, range.end - range.start);
            assert_eq!(String::from_utf8_lossy(&body), want);
            assert_eq!(body.capacity(), room, "the body grew past its batch");
            let mut csv = Vec::new();
            spool.read_into(range.clone(), &mut csv, b'\n').unwrap();
            assert_eq!(String::from_utf8_lossy(&csv), joined(range, "\n"));
        }
    }

    #[test]
    fn records_whose_label_was_lost_to_damage_load_again_renumbered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
            spool.append(&recs(0..3)).unwrap();
            spool.seal("label_zero", 0..3).unwrap();
            spool.append(&recs(3..5)).unwrap();
            spool.seal("label_one", 3..5).unwrap();
        }
        let (_, path) = list(dir.path()).unwrap().pop().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let at = memchr::memmem::find(&bytes, b"label_zero").unwrap();
        bytes[at] ^= 0xff;
        fs::write(&path, bytes).unwrap();

        let (mut spool, replay) = Spool::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(replay.sealed.len(), 1);
        assert_eq!(replay.sealed[0].label, "label_one");
        assert_eq!(replay.orphaned, 3);
        assert_eq!(replay.unsealed, (5..8).zip(recs(0..3)).collect::<Vec<_>>());
        assert!(matches!(replay.damage[0].1, Damage::Corrupt { .. }));
        // The renumbered records are where the spool says they are.
        assert_eq!(spool.read(5..8).unwrap(), recs(0..3));
        assert_eq!(spool.append(&recs(8..9)).unwrap(), 8..9);
    }

    #[test]
    fn a_chunk_is_spooled_as_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 30).unwrap();
        // A JSON chunk and a CSV one, as lines; the last record ends before the data does.
        let data = b"{\"id\":0}\n{\"id\":1}\n{\"id\":2}\n{\"id\":";
        let (seqs, written) = spool.append_chunk(data, &[9, 18, 27]);
        written.unwrap();
        assert_eq!(seqs, 0..3);
        // A CSV chunk: records each followed by `\n`.
        let (seqs, written) = spool.append_chunk(b"3,x\n4,y\n", &[4, 8]);
        written.unwrap();
        assert_eq!(seqs, 3..5);
        let mut want = recs(0..3);
        want.extend([Bytes::from("3,x"), Bytes::from("4,y")]);
        assert_eq!(spool.read(0..5).unwrap(), want);
        drop(spool);
        let (_, replay) = Spool::open(dir.path(), 1 << 30).unwrap();
        let unsealed: Vec<Bytes> = replay.unsealed.into_iter().map(|(_, r)| r).collect();
        assert_eq!(unsealed, want);
    }

    #[test]
    fn a_seq_set_keeps_runs() {
        let mut set = SeqSet::default();
        for s in [5, 6, 7, 3, 4, 9] {
            assert!(set.insert(s), "{s}");
        }
        for s in [3, 5, 7, 9] {
            assert!(!set.insert(s), "{s}");
        }
        assert_eq!(
            set.runs.into_iter().collect::<Vec<_>>(),
            vec![(3, 8), (9, 10)]
        );
    }
}
