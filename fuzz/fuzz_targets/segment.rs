//! Spool segment recovery: any bytes read without panicking, and whatever is recovered
//! re-encodes into a segment that reads back the same, with no damage.
#![no_main]

use libfuzzer_sys::fuzz_target;
use starsink::loader::spool::segment::{header, read};

fuzz_target!(|data: &[u8]| {
    for candidate in [data.to_vec(), [&header()[..], data].concat()] {
        let Ok(recovered) = read(&candidate) else {
            continue;
        };
        assert!(recovered.end <= candidate.len().max(16));
        let mut again = header().to_vec();
        for f in &recovered.frames {
            f.encode(&mut again);
        }
        let reread = read(&again).expect("our own version");
        assert_eq!(reread.frames, recovered.frames);
        assert!(reread.damage.is_empty());
    }
});
