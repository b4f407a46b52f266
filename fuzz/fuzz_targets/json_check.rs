//! The JSON line check against serde_json: any bytes, the same verdict, except where
//! serde_json refuses only a number out of an f64's range (which the grammar allows).
#![no_main]

use libfuzzer_sys::fuzz_target;
use starsink::loader::json::is_object;

fuzz_target!(|line: &[u8]| {
    let ours = is_object(line);
    let value = serde_json::from_slice::<serde_json::Value>(line).is_ok_and(|v| v.is_object());
    if ours == value {
        return;
    }
    // The one difference allowed: serde_json parses into `IgnoredAny` without computing
    // numbers, so it accepts what only a number's range kept out of a `Value`.
    assert!(ours, "serde_json takes this as an object and the check does not");
    let starts_an_object = line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    let grammar = std::str::from_utf8(line).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok();
    assert!(starts_an_object && grammar, "the check takes this as an object and serde_json does not");
});
