//! The JSON line check on its own: nanoseconds per line for `is_object` on a few line
//! shapes, beside serde_json parsing the same line into `IgnoredAny` (the cheapest thing
//! serde_json does with a line) as a yardstick.
//!
//! ```text
//! cargo bench --bench json_check
//! ```
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it only checks, a few times
//! per shape, that every line gets the verdict serde_json gives it.

use std::hint::black_box;
use std::time::Instant;

use starsink::loader::json::is_object;

/// The shapes measured: the loader benchmark's 128-byte row, and lines that take the
/// other paths (escapes, nesting, numbers, a long line).
fn shapes() -> Vec<(&'static str, Vec<u8>)> {
    let bench_row = br#"{"id":1234567,"user":"user-34567","event":"page_view","url":"/products/7894","ts":"2026-11-24T15:30:00.123Z","pad":"xxxxx"}"#;
    let escapes =
        br#"{"id":1234567,"msg":"a \"quoted\" word\tand a tab","path":"C:\\temp\\x","u":"\u00e9"}"#;
    let nested = br#"{"id":1,"tags":["a","b","c"],"geo":{"lat":52.52,"lon":13.405,"alt":null},"ok":true,"n":[1,2,3,4]}"#;
    let numbers =
        br#"{"a":1,"b":-2.5,"c":3e10,"d":0,"e":12345678901,"f":-0.001,"g":7,"h":8,"i":9,"j":10}"#;
    let mut long = br#"{"id":1,"body":""#.to_vec();
    long.extend(std::iter::repeat_n(b'x', 1500));
    long.extend_from_slice(br#"","end":true}"#);
    vec![
        ("bench row, 122 B", bench_row.to_vec()),
        ("escapes", escapes.to_vec()),
        ("nested", nested.to_vec()),
        ("numbers", numbers.to_vec()),
        ("long string, 1.5 KiB", long),
    ]
}

/// Nanoseconds per call of `f` over `n` calls.
fn per_call(n: u32, mut f: impl FnMut() -> bool) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        black_box(f());
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let n = if bench { 2_000_000 } else { 10 };
    if bench {
        println!("| line | bytes | is_object ns | MB/s | serde_json IgnoredAny ns |");
        println!("|---|---|---|---|---|");
    }
    for (name, line) in shapes() {
        let serde_ok =
            serde_json::from_slice::<serde_json::Value>(&line).is_ok_and(|v| v.is_object());
        assert!(serde_ok, "{name} is a valid object");
        assert!(is_object(&line), "{name}");
        let ours = per_call(n, || is_object(black_box(&line)));
        let serde = per_call(n, || {
            serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&line)).is_ok()
        });
        if bench {
            let mbs = line.len() as f64 / ours * 1e3;
            println!(
                "| {name} | {} | {ours:.1} | {mbs:.0} | {serde:.1} |",
                line.len()
            );
        }
    }
}
