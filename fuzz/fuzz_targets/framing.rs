//! Line framing: any byte stream, split at fuzzer-chosen points, frames the same as the
//! stream read whole, and never holds much more than the line limit.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use starsink::loader::framing::{Line, LineFramer};

fn frame(max: usize, pieces: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
    let mut f = LineFramer::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut push = |l: Line<'_>, _: Option<std::ops::Range<usize>>| {
        out.push(match l {
            Line::Record(r) => Some(r.to_vec()),
            Line::TooLong(_) => None,
        })
    };
    for p in pieces {
        buf.extend_from_slice(p);
        f.drain(&mut buf, &mut push);
        assert!(
            buf.len() <= max + 1,
            "the framer held {} bytes over a limit of {max}",
            buf.len()
        );
    }
    f.finish(&mut buf, &mut push);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let max = usize::from(control % 64) + 1;
    // Split wherever a byte equals the control byte.
    let pieces: Vec<&[u8]> = input.split_inclusive(|&b| b == control).collect();
    assert_eq!(frame(max, &pieces), frame(max, &[input]));
});
