//! Spool segment recovery: any bytes read without panicking, and whatever is recovered
//! re-encodes into a segment that reads back the same, with no damage; as a recycled
//! segment, its own frames read back first, whatever the bytes after them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starsink::loader::spool::segment::{header, read, recycled_header};

/// The id the fuzzed segments are named by.
const ID: u64 = 7;

fuzz_target!(|data: &[u8]| {
    for candidate in [data.to_vec(), [&header()[..], data].concat()] {
        let Ok(recovered) = read(&candidate, ID) else {
            continue;
        };
        assert!(recovered.end <= candidate.len().max(16));
        let mut again = header().to_vec();
        for f in &recovered.frames {
            f.encode(ID, &mut again);
        }
        let reread = read(&again, ID).expect("our own version");
        assert_eq!(reread.frames, recovered.frames);
        assert!(reread.damage.is_empty());
        // Written over the start of the same bytes as a recycled segment: its own frames.
        let mut reused = candidate.clone();
        let mut own = recycled_header().to_vec();
        for f in &recovered.frames {
            f.encode(ID + 1, &mut own);
        }
        reused.resize(reused.len().max(own.len()), 0);
        reused[..own.len()].copy_from_slice(&own);
        let reread = read(&reused, ID + 1).expect("our own version");
        assert_eq!(reread.frames[..recovered.frames.len()], recovered.frames[..]);
    }
});
