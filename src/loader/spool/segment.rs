//! The spool's on-disk segment format, and its recovery. Pure: bytes in, frames out.
//!
//! ```text
//! segment = header frame*
//! header  = "STSKSPL\0" version:u16le flags:u8 reserved:[u8; 5]              (16 bytes)
//! frame   = marker:[F5 FF 53 4B] len:u32le crc:u32le kind:u8 payload:[u8; len-1]
//!           crc = CRC-32 (IEEE) of the segment's id (u64le, from its file name), kind
//!           and payload; in format 1, of kind and payload only
//! flags   = 1: recycled
//! ```
//! The marker bytes can never start valid UTF-8, so a JSON record cannot contain them;
//! after damage in the middle of a segment, recovery finds the next frame by its marker
//! and a valid checksum, and salvages everything readable.
//!
//! A recycled segment is a file that held an earlier segment, reused (as write-ahead logs
//! reuse theirs) so that the kernel need not allocate its pages and blocks again. Past
//! the frames written this time it still holds the earlier segment's, whose checksums
//! cover another id and so fail: in a recycled segment, the first frame that is not
//! valid, with none after it, is where the segment ends, not damage. (A write cut short
//! there, or the last frame damaged on the medium, cannot be told from the old bytes, so
//! neither is reported: the frame is lost as a torn tail would be, without the count.)

use bytes::{BufMut, Bytes};

/// The segment format this build writes; it reads format 1 too.
pub const VERSION: u16 = 2;
/// The header flag of a recycled segment.
const RECYCLED: u8 = 1;
const MAGIC: &[u8; 8] = b"STSKSPL\0";
pub const HEADER_LEN: usize = 16;
const MARKER: [u8; 4] = [0xF5, 0xFF, 0x53, 0x4B];
const FRAME_HEAD: usize = 12;
/// Where a Records frame's data starts: after the frame head, its kind, `first_seq`
/// and `count`.
pub const RECORDS_DATA_AT: usize = FRAME_HEAD + 1 + 8 + 4;
/// Larger length fields are damage, not frames.
const MAX_FRAME: usize = 1 << 30;

/// One entry of a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// Accepted records with consecutive sequence numbers from `first_seq`; `data` is
    /// the records, each ending in `\n`.
    Records {
        first_seq: u64,
        count: u32,
        data: Bytes,
    },
    /// Records `first_seq..end_seq` were sealed into a batch with this label, written
    /// before the batch's first send.
    Sealed {
        first_seq: u64,
        end_seq: u64,
        label: String,
    },
    /// The batch with this label has its verdict: its records need nothing more.
    Done { label: String, outcome: Disposition },
}

/// How a batch ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    Committed,
    DeadLettered,
}

/// Damage found while reading a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Damage {
    /// The segment ends inside a frame (a crash mid-write): truncate to `at`.
    TornTail { at: usize, dropped: usize },
    /// Unreadable bytes at `at` followed by readable frames: the segment is moved aside
    /// and what could be read is salvaged.
    Corrupt { at: usize, skipped: usize },
    /// The header is damaged (or the file is not a segment): the frames found by their
    /// markers and checksums are salvaged, the file set aside.
    BadHeader,
    /// A zero-length file (created, never written).
    Empty,
}

impl Damage {
    /// Its `kind` in `starsink_spool_damage_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Damage::TornTail { .. } => "torn_tail",
            Damage::Corrupt { .. } => "corrupt",
            Damage::BadHeader => "bad_header",
            Damage::Empty => "empty",
        }
    }
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Damage::TornTail { at, dropped } => write!(f, "torn tail: {dropped} bytes of an unfinished write at offset {at} cut off (a crash mid-write; every whole record kept)"),
            Damage::Corrupt { at, skipped } => write!(f, "corrupt: {skipped} unreadable bytes at offset {at} skipped, the readable records salvaged; the file is kept in corrupt/ for inspection"),
            Damage::BadHeader => write!(f, "bad header (damaged, or not a spool segment): every frame found by its marker and checksum salvaged; the file is kept in corrupt/ for inspection"),
            Damage::Empty => write!(f, "empty file (created, never written); removed"),
        }
    }
}

/// What a segment holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    pub frames: Vec<Frame>,
    /// The end of the last good frame: a torn segment is truncated here.
    pub end: usize,
    pub damage: Vec<Damage>,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("spool segment format version {found} is newer than this starsink reads ({VERSION}); run the newer starsink on this spool, or move the spool directory aside")]
    Newer { found: u16 },
}

/// The 16-byte header of a segment written to a new file.
pub fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// The header of a segment written over a file that held an earlier one.
pub fn recycled_header() -> [u8; HEADER_LEN] {
    let mut h = header();
    h[10] = RECYCLED;
    h
}

/// What a frame's checksum covers besides the frame itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// Format 1: nothing.
    Format1,
    /// The id of the segment the frame was written to.
    Segment(u64),
}

impl Owner {
    fn hasher(self) -> crc32fast::Hasher {
        let mut crc = crc32fast::Hasher::new();
        if let Owner::Segment(id) = self {
            crc.update(&id.to_le_bytes());
        }
        crc
    }
}

impl Frame {
    fn kind(&self) -> u8 {
        match self {
            Frame::Records { .. } => 1,
            Frame::Sealed { .. } => 2,
            Frame::Done { .. } => 3,
        }
    }

    /// Appends this frame, ready to write to segment `segment`, to `out`. A Records
    /// frame's data is copied once, straight into `out`.
    pub fn encode(&self, segment: u64, out: &mut Vec<u8>) {
        self.encode_for(Owner::Segment(segment), out);
    }

    fn encode_for(&self, owner: Owner, out: &mut Vec<u8>) {
        let mut head = Vec::with_capacity(32);
        head.push(self.kind());
        let data: &[u8] = match self {
            Frame::Records {
                first_seq,
                count,
                data,
            } => {
                head.put_u64_le(*first_seq);
                head.put_u32_le(*count);
                data
            }
            Frame::Sealed {
                first_seq,
                end_seq,
                label,
            } => {
                head.put_u64_le(*first_seq);
                head.put_u64_le(*end_seq);
                put_str(&mut head, label);
                &[]
            }
            Frame::Done { label, outcome } => {
                put_str(&mut head, label);
                head.push(match outcome {
                    Disposition::Committed => 0,
                    Disposition::DeadLettered => 1,
                });
                &[]
            }
        };
        let mut crc = owner.hasher();
        crc.update(&head);
        crc.update(data);
        out.reserve(FRAME_HEAD + head.len() + data.len());
        out.extend_from_slice(&MARKER);
        out.put_u32_le(u32::try_from(head.len() + data.len()).unwrap_or(u32::MAX));
        out.put_u32_le(crc.finalize());
        out.extend_from_slice(&head);
        out.extend_from_slice(data);
    }

    /// The first [`RECORDS_DATA_AT`] bytes of the Records frame holding `data` (records
    /// each ending in `\n`) in segment `segment`: written before `data`, they make the
    /// frame, so the data can be written from where it is without a copy.
    pub fn records_head(
        segment: u64,
        first_seq: u64,
        count: u32,
        data: &[u8],
    ) -> [u8; RECORDS_DATA_AT] {
        let len = RECORDS_DATA_AT - FRAME_HEAD + data.len();
        let mut head = [0u8; RECORDS_DATA_AT];
        head[..4].copy_from_slice(&MARKER);
        head[4..8].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
        head[FRAME_HEAD] = 1;
        head[FRAME_HEAD + 1..FRAME_HEAD + 9].copy_from_slice(&first_seq.to_le_bytes());
        head[FRAME_HEAD + 9..].copy_from_slice(&count.to_le_bytes());
        let mut crc = Owner::Segment(segment).hasher();
        crc.update(&head[FRAME_HEAD..]);
        crc.update(data);
        head[8..12].copy_from_slice(&crc.finalize().to_le_bytes());
        head
    }

    /// The one whole, valid Records frame of segment `segment` that `bytes` holds: its
    /// first sequence number, its record count and its data, borrowed from `bytes`.
    #[cfg(test)]
    fn records_exact(segment: u64, bytes: &[u8]) -> Option<(u64, u32, &[u8])> {
        match frame_at(bytes, 0, Owner::Segment(segment), &|_| Bytes::new()) {
            Some((
                Frame::Records {
                    first_seq, count, ..
                },
                end,
            )) if end == bytes.len() => Some((first_seq, count, &bytes[RECORDS_DATA_AT..])),
            _ => None,
        }
    }

    /// The first sequence number and record count a Records frame's head claims, before
    /// its checksum is known (to decide where to read its data; [`Frame::records_split`]
    /// then says whether the frame is valid).
    pub fn records_claimed(head: &[u8; RECORDS_DATA_AT]) -> (u64, u32) {
        let mut first_seq = [0u8; 8];
        first_seq.copy_from_slice(&head[FRAME_HEAD + 1..FRAME_HEAD + 9]);
        let mut count = [0u8; 4];
        count.copy_from_slice(&head[FRAME_HEAD + 9..]);
        (u64::from_le_bytes(first_seq), u32::from_le_bytes(count))
    }

    /// A Records frame of segment `segment` read in two parts, its first
    /// [`RECORDS_DATA_AT`] bytes and its data (so that the data can be read straight to
    /// where it is wanted): its first sequence number and record count, if the two make
    /// one whole, valid frame.
    pub fn records_split(
        segment: u64,
        head: &[u8; RECORDS_DATA_AT],
        data: &[u8],
    ) -> Option<(u64, u32)> {
        let word =
            |at: usize| u32::from_le_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
        let len = word(4) as usize;
        if head[..4] != MARKER || head[FRAME_HEAD] != 1 {
            return None;
        }
        if len != RECORDS_DATA_AT - FRAME_HEAD + data.len() || len > MAX_FRAME {
            return None;
        }
        let mut crc = Owner::Segment(segment).hasher();
        crc.update(&head[FRAME_HEAD..]);
        crc.update(data);
        if crc.finalize() != word(8) {
            return None;
        }
        let mut first_seq = [0u8; 8];
        first_seq.copy_from_slice(&head[FRAME_HEAD + 1..FRAME_HEAD + 9]);
        Some((u64::from_le_bytes(first_seq), word(FRAME_HEAD + 9)))
    }

    /// `share` makes the Bytes of a Records frame's data from its slice of `body`.
    fn decode(body: &[u8], share: Share<'_>) -> Option<Frame> {
        let (&kind, mut rest) = body.split_first()?;
        match kind {
            1 => {
                let first_seq = take_u64(&mut rest)?;
                let count = take_u32(&mut rest)?;
                Some(Frame::Records {
                    first_seq,
                    count,
                    data: share(rest),
                })
            }
            2 => {
                let first_seq = take_u64(&mut rest)?;
                let end_seq = take_u64(&mut rest)?;
                let label = take_str(&mut rest)?;
                (rest.is_empty() && end_seq >= first_seq).then_some(Frame::Sealed {
                    first_seq,
                    end_seq,
                    label,
                })
            }
            3 => {
                let label = take_str(&mut rest)?;
                let outcome = match rest {
                    [0] => Disposition::Committed,
                    [1] => Disposition::DeadLettered,
                    _ => return None,
                };
                Some(Frame::Done { label, outcome })
            }
            _ => None,
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.put_u16_le(u16::try_from(s.len()).unwrap_or(u16::MAX));
    out.extend_from_slice(&s.as_bytes()[..s.len().min(u16::MAX as usize)]);
}

fn take_u64(b: &mut &[u8]) -> Option<u64> {
    let (head, rest) = b.split_first_chunk::<8>()?;
    *b = rest;
    Some(u64::from_le_bytes(*head))
}

fn take_u32(b: &mut &[u8]) -> Option<u32> {
    let (head, rest) = b.split_first_chunk::<4>()?;
    *b = rest;
    Some(u32::from_le_bytes(*head))
}

fn take_str(b: &mut &[u8]) -> Option<String> {
    let (head, rest) = b.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_le_bytes(*head));
    if rest.len() < len {
        return None;
    }
    let s = String::from_utf8(rest[..len].to_vec()).ok()?;
    *b = &rest[len..];
    Some(s)
}

/// Makes a Records frame's data from its slice of the segment: a copy, or a view.
type Share<'a> = &'a dyn Fn(&[u8]) -> Bytes;

/// A whole, valid frame at `at` whose checksum is `owner`'s: the frame and where it ends.
fn frame_at(seg: &[u8], at: usize, owner: Owner, share: Share<'_>) -> Option<(Frame, usize)> {
    let head = seg.get(at..at + FRAME_HEAD)?;
    if head[..4] != MARKER {
        return None;
    }
    let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    let crc = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if len == 0 || len > MAX_FRAME {
        return None;
    }
    let body = seg.get(at + FRAME_HEAD..at + FRAME_HEAD + len)?;
    let mut hasher = owner.hasher();
    hasher.update(body);
    if hasher.finalize() != crc {
        return None;
    }
    Some((Frame::decode(body, share)?, at + FRAME_HEAD + len))
}

/// The next offset after `from` where a whole valid frame of `owner` starts.
fn resync(seg: &[u8], from: usize, owner: Owner) -> Option<usize> {
    let mut at = from;
    while let Some(i) = memchr::memmem::find(&seg[at..], &MARKER) {
        let candidate = at + i;
        if frame_at(seg, candidate, owner, &|_| Bytes::new()).is_some() {
            return Some(candidate);
        }
        at = candidate + 1;
    }
    None
}

/// Reads segment `id` (the number its file is named by), tolerating damage: a torn tail
/// is cut off, corrupt bytes in the middle are skipped to the next readable frame. Only
/// a newer format is an error.
pub fn read(seg: &[u8], id: u64) -> Result<Recovered, FormatError> {
    read_with(seg, id, &|s| Bytes::copy_from_slice(s))
}

/// [`read`], with the Records frames' data sharing `seg`'s memory (no copy).
pub fn read_shared(seg: &Bytes, id: u64) -> Result<Recovered, FormatError> {
    read_with(seg, id, &|s| seg.slice_ref(s))
}

fn read_with(seg: &[u8], id: u64, share: Share<'_>) -> Result<Recovered, FormatError> {
    let mut out = Recovered::default();
    if seg.is_empty() {
        out.damage.push(Damage::Empty);
        return Ok(out);
    }
    let mut at = HEADER_LEN;
    let mut owner = Owner::Segment(id);
    let mut recycled = false;
    if seg.len() < HEADER_LEN || &seg[..8] != MAGIC {
        // A damaged header (or a foreign file): every intact frame is still found by its
        // marker and checksum, of either format. Format 1 is tried only if none of this
        // segment's own is found; its frames are never in a reused file (files are reused
        // only by the run that wrote them, in format 2), and one of an earlier segment
        // passes as format 1 only if that segment's id leaves the CRC where it began
        // (one id below 2^32 does).
        out.damage.push(Damage::BadHeader);
        let found = [Owner::Segment(id), Owner::Format1]
            .into_iter()
            .find_map(|o| Some((resync(seg, 0, o)?, o)));
        match found {
            Some((first, o)) => (at, owner) = (first, o),
            None => return Ok(out),
        }
    } else {
        let version = u16::from_le_bytes([seg[8], seg[9]]);
        if version > VERSION {
            return Err(FormatError::Newer { found: version });
        }
        if version < 2 {
            owner = Owner::Format1;
        }
        recycled = seg[10] & RECYCLED != 0;
    }
    out.end = at;
    while at < seg.len() {
        if let Some((frame, next)) = frame_at(seg, at, owner, share) {
            out.frames.push(frame);
            at = next;
            out.end = at;
            continue;
        }
        match resync(seg, at + 1, owner) {
            Some(next) => {
                out.damage.push(Damage::Corrupt {
                    at,
                    skipped: next - at,
                });
                at = next;
            }
            None if recycled => break,
            None => {
                out.damage.push(Damage::TornTail {
                    at,
                    dropped: seg.len() - at,
                });
                break;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The id the tests' segments are named by.
    const ID: u64 = 7;

    /// A Records frame of segment [`ID`] with records from 41 on.
    fn records_frame(count: u32, data: &'static [u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        Frame::Records {
            first_seq: 41,
            count,
            data: Bytes::from_static(data),
        }
        .encode(ID, &mut frame);
        frame
    }

    #[test]
    fn a_records_frame_read_in_two_parts_is_valid_exactly_when_it_is_read_whole() {
        let frame = records_frame(2, b"{\"a\":1}\n{\"b\":2}\n");
        let split = |f: &[u8]| {
            let (head, data) = f.split_at(RECORDS_DATA_AT);
            Frame::records_split(ID, head.try_into().unwrap(), data)
        };
        assert_eq!(split(&frame), Some((41, 2)));
        assert_eq!(
            Frame::records_exact(ID, &frame).map(|(s, c, _)| (s, c)),
            Some((41, 2))
        );
        // Any byte changed, or the data cut short, and neither accepts it.
        for i in 0..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 0x01;
            assert_eq!(split(&bad), None, "byte {i} changed");
            assert_eq!(Frame::records_exact(ID, &bad), None, "byte {i} changed");
        }
        assert_eq!(split(&frame[..frame.len() - 1]), None);
        let mut sealed = Vec::new();
        Frame::Sealed {
            first_seq: 0,
            end_seq: 1,
            label: "x".repeat(20),
        }
        .encode(ID, &mut sealed);
        assert_eq!(split(&sealed), None, "a Sealed frame is not records");
    }

    #[test]
    fn a_frame_is_valid_only_in_the_segment_it_was_written_for() {
        let frame = records_frame(1, b"{}\n");
        let (head, data) = frame.split_at(RECORDS_DATA_AT);
        let head: &[u8; RECORDS_DATA_AT] = head.try_into().unwrap();
        assert_eq!(Frame::records_split(ID, head, data), Some((41, 1)));
        for other in [0, ID - 1, ID + 1, ID | 1 << 40] {
            assert_eq!(Frame::records_split(other, head, data), None, "{other}");
            assert_eq!(Frame::records_exact(other, &frame), None, "{other}");
        }
        let seg = [&header()[..], &frame].concat();
        assert_eq!(read(&seg, ID).unwrap().frames.len(), 1);
        let elsewhere = read(&seg, ID + 1).unwrap();
        assert!(elsewhere.frames.is_empty());
        assert_eq!(elsewhere.damage.len(), 1, "{:?}", elsewhere.damage);
    }

    #[test]
    fn a_segment_of_format_1_still_reads() {
        let frames = [
            Frame::Sealed {
                first_seq: 3,
                end_seq: 9,
                label: "l_0".into(),
            },
            Frame::Done {
                label: "l_0".into(),
                outcome: Disposition::Committed,
            },
        ];
        let mut seg = header().to_vec();
        seg[8..10].copy_from_slice(&1u16.to_le_bytes());
        for f in &frames {
            f.encode_for(Owner::Format1, &mut seg);
        }
        let r = read(&seg, ID).unwrap();
        assert_eq!(r.frames, frames);
        assert!(r.damage.is_empty());
        // Its header damaged, its frames are still found by their checksums.
        seg[0] ^= 1;
        let r = read(&seg, ID).unwrap();
        assert_eq!(r.frames, frames);
        assert_eq!(r.damage, vec![Damage::BadHeader]);
    }

    fn segment(frames: &[Frame]) -> (Vec<u8>, Vec<usize>) {
        let mut seg = header().to_vec();
        let mut ends = Vec::new();
        for f in frames {
            f.encode(ID, &mut seg);
            ends.push(seg.len());
        }
        (seg, ends)
    }

    /// A file that held segment `old` with `before`, reused for segment `ID`: its
    /// recycled header and `after` written over the start, the rest left as it was.
    fn recycled(old: u64, before: &[Frame], after: &[Frame]) -> (Vec<u8>, usize) {
        let mut file = header().to_vec();
        for f in before {
            f.encode(old, &mut file);
        }
        let mut new = recycled_header().to_vec();
        for f in after {
            f.encode(ID, &mut new);
        }
        let end = new.len();
        if file.len() < end {
            file.resize(end, 0);
        }
        file[..end].copy_from_slice(&new);
        (file, end)
    }

    fn frame() -> impl Strategy<Value = Frame> {
        let label = "[-_a-zA-Z0-9]{1,40}";
        prop_oneof![
            (
                any::<u64>(),
                1u32..50,
                proptest::collection::vec(any::<u8>(), 0..300)
            )
                .prop_map(|(first_seq, count, data)| Frame::Records {
                    first_seq,
                    count,
                    data: data.into()
                }),
            (0u64..1 << 40, 0u64..1000, label).prop_map(|(first_seq, n, label)| Frame::Sealed {
                first_seq,
                end_seq: first_seq + n,
                label
            }),
            (label, any::<bool>()).prop_map(|(label, dl)| Frame::Done {
                label,
                outcome: if dl {
                    Disposition::DeadLettered
                } else {
                    Disposition::Committed
                }
            }),
        ]
    }

    proptest! {
        #[test]
        fn frames_read_back_as_written(frames in proptest::collection::vec(frame(), 0..20)) {
            let (seg, _) = segment(&frames);
            let r = read(&seg, ID).unwrap();
            prop_assert_eq!(r.frames, frames);
            prop_assert!(r.damage.is_empty());
            prop_assert_eq!(r.end, seg.len());
        }

        #[test]
        fn a_cut_anywhere_keeps_every_whole_frame_before_it(
            frames in proptest::collection::vec(frame(), 1..12),
            cut in any::<proptest::sample::Index>(),
        ) {
            let (seg, ends) = segment(&frames);
            let cut = HEADER_LEN + cut.index(seg.len() - HEADER_LEN);
            let r = read(&seg[..cut], ID).unwrap();
            let whole = ends.iter().filter(|&&e| e <= cut).count();
            prop_assert_eq!(&r.frames[..], &frames[..whole]);
            let boundary = if whole == 0 { HEADER_LEN } else { ends[whole - 1] };
            prop_assert_eq!(r.end, boundary);
            if cut == boundary {
                prop_assert!(r.damage.is_empty());
            } else {
                prop_assert_eq!(r.damage, vec![Damage::TornTail { at: boundary, dropped: cut - boundary }]);
            }
        }

        #[test]
        fn a_flipped_byte_loses_only_its_own_frame(
            frames in proptest::collection::vec(frame(), 2..12),
            which in any::<proptest::sample::Index>(),
            offset in any::<proptest::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let (mut seg, ends) = segment(&frames);
            // Damage any frame but the last, so readable frames follow it.
            let k = which.index(frames.len() - 1);
            let start = if k == 0 { HEADER_LEN } else { ends[k - 1] };
            let at = start + offset.index(ends[k] - start);
            seg[at] ^= flip;
            let r = read(&seg, ID).unwrap();
            let mut expected = frames.clone();
            expected.remove(k);
            prop_assert_eq!(r.frames, expected);
            prop_assert_eq!(r.damage, vec![Damage::Corrupt { at: start, skipped: ends[k] - start }]);
        }
    }

    proptest! {
        #[test]
        fn a_damaged_header_loses_no_frame(frames in proptest::collection::vec(frame(), 1..8), byte in 0usize..8, bit in 0u8..8) {
            let (mut seg, _) = segment(&frames);
            seg[byte] ^= 1 << bit;
            let r = read(&seg, ID).unwrap();
            prop_assert_eq!(r.damage, vec![Damage::BadHeader]);
            prop_assert_eq!(r.frames, frames);
        }
    }

    proptest! {
        #[test]
        fn a_recycled_segment_ends_where_its_own_frames_end(
            before in proptest::collection::vec(frame(), 0..12),
            after in proptest::collection::vec(frame(), 0..12),
            old in 0..ID,
        ) {
            let (file, end) = recycled(old, &before, &after);
            let r = read(&file, ID).unwrap();
            prop_assert_eq!(r.frames, after);
            prop_assert!(r.damage.is_empty(), "{:?}", r.damage);
            prop_assert_eq!(r.end, end);
        }

        #[test]
        fn a_recycled_segment_whose_last_write_was_cut_keeps_every_whole_frame(
            before in proptest::collection::vec(frame(), 0..12),
            after in proptest::collection::vec(frame(), 1..12),
            cut in any::<proptest::sample::Index>(),
        ) {
            // The last frame only partly written over the old bytes.
            let (whole, end) = recycled(ID - 1, &before, &after);
            let (old, _) = recycled(ID - 1, &before, &after[..after.len() - 1]);
            let last_start = end - (segment(&after).0.len() - segment(&after[..after.len() - 1]).0.len());
            let cut = last_start + cut.index(end - last_start);
            let mut file = old;
            file.resize(file.len().max(cut), 0);
            file[..cut].copy_from_slice(&whole[..cut]);
            // Unless the old bytes past the cut happen to be the frame's own.
            let whole_anyway = file.get(last_start..end) == Some(&whole[last_start..end]);
            let kept = if whole_anyway { after.len() } else { after.len() - 1 };
            let r = read(&file, ID).unwrap();
            prop_assert_eq!(&r.frames[..], &after[..kept]);
            prop_assert!(r.damage.is_empty(), "{:?}", r.damage);
            prop_assert_eq!(r.end, if whole_anyway { end } else { last_start });
        }

        #[test]
        fn in_a_recycled_segment_damage_before_its_last_frame_is_still_found(
            before in proptest::collection::vec(frame(), 0..12),
            after in proptest::collection::vec(frame(), 2..12),
            offset in any::<proptest::sample::Index>(),
        ) {
            let (mut file, _) = recycled(ID - 1, &before, &after);
            let (_, ends) = segment(&after);
            let at = HEADER_LEN + offset.index(ends[0] - HEADER_LEN);
            file[at] ^= 0x40;
            let r = read(&file, ID).unwrap();
            prop_assert_eq!(&r.frames[..], &after[1..]);
            prop_assert_eq!(r.damage, vec![Damage::Corrupt { at: HEADER_LEN, skipped: ends[0] - HEADER_LEN }]);
        }
    }

    #[test]
    fn a_segment_not_marked_recycled_reports_what_follows_its_frames_as_a_torn_tail() {
        let before = [Frame::Done {
            label: "l_0".into(),
            outcome: Disposition::Committed,
        }];
        let (mut file, end) = recycled(ID - 1, &before, &[]);
        file[10] = 0;
        let r = read(&file, ID).unwrap();
        assert!(r.frames.is_empty());
        assert_eq!(
            r.damage,
            vec![Damage::TornTail {
                at: end,
                dropped: file.len() - end
            }]
        );
    }

    #[test]
    fn empty_foreign_and_newer_segments_are_told_apart() {
        assert_eq!(read(b"", ID).unwrap().damage, vec![Damage::Empty]);
        assert_eq!(
            read(b"not a spool segment at all", ID).unwrap().damage,
            vec![Damage::BadHeader]
        );
        let mut newer = header();
        newer[8..10].copy_from_slice(&(VERSION + 1).to_le_bytes());
        let err = read(&newer, ID).unwrap_err();
        assert_eq!(err, FormatError::Newer { found: VERSION + 1 });
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
