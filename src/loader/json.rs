//! A validating JSON scanner that answers one question fast: is this line exactly one
//! JSON object (RFC 8259, UTF-8)? It builds nothing, so checking every line costs little.

/// Nesting deeper than this is refused (the same limit serde_json applies).
const MAX_DEPTH: usize = 128;

/// Lines up to this long may take the indexed path: one quote bitmap word per 64 bytes,
/// on the stack.
const INDEXED_MAX: usize = 64 * 64;

/// Whether `line` is one JSON object, optionally surrounded by whitespace.
pub fn is_object(line: &[u8]) -> bool {
    if line.len() <= INDEXED_MAX {
        if let Some(verdict) = indexed_is_object(line) {
            return verdict;
        }
    }
    scalar_is_object(line)
}

/// The common line (no backslash, no control byte) checked from a structural index: a
/// bitmap of its quotes, built 64 bytes at a time without a branch per byte, so a
/// string's end is the next set bit rather than the end of a byte loop. `None` for a line
/// with a backslash or a control byte (tab included), which the scalar scanner checks.
fn indexed_is_object(line: &[u8]) -> Option<bool> {
    let mut quotes = [0u64; INDEXED_MAX / 64];
    let mut special = false;
    let mut high = false;
    for (w, block) in line.chunks(64).enumerate() {
        let masks = match <&[u8; 64]>::try_from(block) {
            Ok(full) => block_masks(full),
            Err(_) => {
                // The last, partial block, padded with spaces (plain bytes).
                let mut padded = [b' '; 64];
                padded[..block.len()].copy_from_slice(block);
                block_masks(&padded)
            }
        };
        quotes[w] = masks.quotes;
        special |= masks.special;
        high |= masks.high;
    }
    if special {
        return None;
    }
    if high && std::str::from_utf8(line).is_err() {
        return Some(false);
    }
    let mut s = Scanner {
        s: line,
        i: 0,
        quotes: Some(&quotes[..line.len().div_ceil(64)]),
    };
    Some(s.top_object())
}

/// What the indexed path needs of 64 bytes.
#[derive(Debug, PartialEq, Eq)]
struct BlockMasks {
    /// Bit `i` set when byte `i` is a quote.
    quotes: u64,
    /// Some byte is a backslash or a control byte (< 0x20).
    special: bool,
    /// Some byte is not ASCII.
    high: bool,
}

/// The block's masks, 16 bytes per SSE2 instruction (SSE2 is part of every x86-64).
#[cfg(target_arch = "x86_64")]
fn block_masks(block: &[u8; 64]) -> BlockMasks {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is in the x86-64 baseline, so these intrinsics are always available;
    // each unaligned load reads 16 bytes at offsets 0, 16, 32 and 48 of a 64-byte array.
    unsafe {
        let quote = _mm_set1_epi8(b'"' as i8);
        let backslash = _mm_set1_epi8(b'\\' as i8);
        let below_space = _mm_set1_epi8(0x1f);
        let mut quotes = 0u64;
        let mut special = _mm_setzero_si128();
        let mut high = 0i32;
        for k in 0..4 {
            let v = _mm_loadu_si128(block.as_ptr().add(16 * k).cast::<__m128i>());
            let q = _mm_movemask_epi8(_mm_cmpeq_epi8(v, quote)) as u16;
            quotes |= u64::from(q) << (16 * k);
            // A control byte is one no greater than 0x1f, unsigned: max(v, 0x1f) == 0x1f.
            let control = _mm_cmpeq_epi8(_mm_max_epu8(v, below_space), below_space);
            special = _mm_or_si128(special, _mm_or_si128(control, _mm_cmpeq_epi8(v, backslash)));
            high |= _mm_movemask_epi8(v);
        }
        BlockMasks {
            quotes,
            special: _mm_movemask_epi8(special) != 0,
            high: high != 0,
        }
    }
}

/// The block's masks, 8 bytes at a time in a word (SWAR).
#[cfg(not(target_arch = "x86_64"))]
fn block_masks(block: &[u8; 64]) -> BlockMasks {
    swar_block_masks(block)
}

/// [`block_masks`] without SIMD instructions: each byte-equality mask is exact (no
/// borrow between bytes), and its eight high bits are gathered into a byte by one
/// multiplication.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn swar_block_masks(block: &[u8; 64]) -> BlockMasks {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // High bit of each byte of `x` that is zero.
    let zero = |x: u64| !(((x & LOW7).wrapping_add(LOW7)) | x | LOW7);
    let mut quotes = 0u64;
    let mut special = 0u64;
    let mut high = 0u64;
    for (k, w) in block.chunks_exact(8).enumerate() {
        let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        let q = zero(x ^ (ONES * u64::from(b'"')));
        quotes |= ((q >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * k);
        // A byte below 0x20 (ASCII only: bytes with the high bit set are not control
        // bytes) has its three bits 5-7 clear.
        let control = zero(x & (ONES * 0xe0));
        special |= zero(x ^ (ONES * u64::from(b'\\'))) | control;
        high |= x & HIGH;
    }
    BlockMasks {
        quotes,
        special: special != 0,
        high: high != 0,
    }
}

/// The line checked byte by byte: any line, escapes and all.
fn scalar_is_object(line: &[u8]) -> bool {
    if std::str::from_utf8(line).is_err() {
        return false;
    }
    let mut s = Scanner {
        s: line,
        i: 0,
        quotes: None,
    };
    s.top_object()
}

/// The offset of the first byte in `s` that ends a run of plain string content: a quote,
/// a backslash or a control byte (< 0x20). Eight bytes at a time: in each mask below the
/// lowest set high bit marks the first matching byte exactly (borrows only run upwards).
#[inline]
fn string_special(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut words = s.chunks_exact(8);
    let mut at = 0;
    for w in words.by_ref() {
        let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        let quote = x ^ (ONES * u64::from(b'"'));
        let backslash = x ^ (ONES * u64::from(b'\\'));
        let found = (quote.wrapping_sub(ONES) & !quote)
            | (backslash.wrapping_sub(ONES) & !backslash)
            | (x.wrapping_sub(ONES * 0x20) & !x);
        let found = found & HIGH;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        .map(|p| at + p)
}

struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
    /// The indexed path's quote bitmap (bit `i % 64` of word `i / 64` is set when byte
    /// `i` is a quote); only for lines without backslashes or control bytes.
    quotes: Option<&'a [u64]>,
}

impl Scanner<'_> {
    /// The whole line is one object, with whitespace around it at most.
    fn top_object(&mut self) -> bool {
        self.ws();
        if self.peek() != Some(b'{') || !self.value(0) {
            return false;
        }
        self.ws();
        self.i == self.s.len()
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn value(&mut self, depth: usize) -> bool {
        match self.peek() {
            Some(b'{') => self.object(depth + 1),
            Some(b'[') => self.array(depth + 1),
            Some(b'"') => self.string(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    fn object(&mut self, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return true;
        }
        loop {
            if self.peek() != Some(b'"') || !self.string() {
                return false;
            }
            self.ws();
            if self.peek() != Some(b':') {
                return false;
            }
            self.i += 1;
            self.ws();
            if !self.value(depth) {
                return false;
            }
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.i += 1;
                    return true;
                }
                _ => return false,
            }
        }
    }

    fn array(&mut self, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return true;
        }
        loop {
            if !self.value(depth) {
                return false;
            }
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.ws();
                }
                Some(b']') => {
                    self.i += 1;
                    return true;
                }
                _ => return false,
            }
        }
    }

    fn string(&mut self) -> bool {
        self.i += 1;
        if let Some(quotes) = self.quotes {
            // No backslash or control byte anywhere: the string ends at the next quote.
            return match next_bit(quotes, self.i) {
                Some(end) => {
                    self.i = end + 1;
                    true
                }
                None => false,
            };
        }
        let s = self.s;
        loop {
            // Skip plain bytes quickly; stop at a quote, a backslash or a control byte.
            let Some(off) = string_special(&s[self.i..]) else {
                return false;
            };
            self.i += off;
            match s[self.i] {
                b'"' => {
                    self.i += 1;
                    return true;
                }
                b'\\' => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            let Some(cp) = hex4(s, self.i + 1) else {
                                return false;
                            };
                            self.i += 5;
                            // A UTF-16 surrogate must come as a high-low pair.
                            if (0xDC00..0xE000).contains(&cp) {
                                return false;
                            }
                            if (0xD800..0xDC00).contains(&cp) {
                                if !s[self.i..].starts_with(b"\\u") {
                                    return false;
                                }
                                match hex4(s, self.i + 2) {
                                    Some(lo) if (0xDC00..0xE000).contains(&lo) => self.i += 6,
                                    _ => return false,
                                }
                            }
                        }
                        _ => return false,
                    }
                }
                _ => return false,
            }
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.s[self.i..].starts_with(word) {
            self.i += word.len();
            true
        } else {
            false
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> bool {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return false,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if self.digits() == 0 {
                return false;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return false;
            }
        }
        true
    }
}

/// The first set bit at or after position `from` of a bitmap kept in words.
#[inline]
fn next_bit(words: &[u64], from: usize) -> Option<usize> {
    let mut w = from / 64;
    let mut bits = *words.get(w)? & (!0u64 << (from % 64));
    while bits == 0 {
        w += 1;
        bits = *words.get(w)?;
    }
    Some(w * 64 + bits.trailing_zeros() as usize)
}

fn hex4(s: &[u8], at: usize) -> Option<u32> {
    let h = s.get(at..at + 4)?;
    let text = std::str::from_utf8(h).ok()?;
    if !h.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_special_finds_the_first_quote_backslash_or_control_byte() {
        let naive = |s: &[u8]| s.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
        let mut rng = fastrand::Rng::with_seed(7);
        // Plain bytes include 0x20, 0x7f and UTF-8 bytes >= 0x80 (none is special); the
        // special ones are dropped in at random, often right after another or at the ends.
        let plain = [
            b' ', b'a', b'~', 0x7f, 0x80, 0xc3, 0xff, b'!', b'#', b'[', b']',
        ];
        let special = [b'"', b'\\', 0x00, 0x01, 0x1f, b'\n', b'\t'];
        for _ in 0..20_000 {
            let len = rng.usize(0..40);
            let mut s: Vec<u8> = (0..len).map(|_| plain[rng.usize(..plain.len())]).collect();
            for _ in 0..rng.usize(0..3) {
                if len > 0 {
                    s[rng.usize(..len)] = special[rng.usize(..special.len())];
                }
            }
            assert_eq!(string_special(&s), naive(&s), "{s:?}");
        }
    }

    fn serde_says(line: &[u8]) -> bool {
        serde_json::from_slice::<serde_json::Value>(line).is_ok_and(|v| v.is_object())
    }

    /// Both paths, where each applies, give serde_json's verdict.
    fn check_against_serde(line: &[u8]) {
        let want = serde_says(line);
        let shown = String::from_utf8_lossy(line);
        assert_eq!(is_object(line), want, "{shown}");
        assert_eq!(scalar_is_object(line), want, "scalar: {shown}");
        if let Some(indexed) = indexed_is_object(line) {
            assert_eq!(indexed, want, "indexed: {shown}");
        }
    }

    #[test]
    fn block_masks_find_every_quote_and_flag_escapes_controls_and_non_ascii() {
        let naive = |b: &[u8; 64]| BlockMasks {
            quotes: b
                .iter()
                .enumerate()
                .map(|(i, &c)| u64::from(c == b'"') << i)
                .sum(),
            special: b.iter().any(|&c| c == b'\\' || c < 0x20),
            high: b.iter().any(|&c| c >= 0x80),
        };
        // Bytes near every boundary the masks draw: a quote beside 0x21 and 0x23, 0x1f
        // and 0x20, 0x7f and 0x80, and bytes that differ from a quote or a backslash by
        // one bit.
        let bytes = [
            b'"', b'\\', 0x00, 0x01, 0x1f, 0x20, 0x21, 0x23, 0x02, 0xa2, 0x5d, 0x7f, 0x80, 0xe0,
            0xff, b'a', b'{',
        ];
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..20_000 {
            let mut b = [b'a'; 64];
            for _ in 0..rng.usize(0..12) {
                b[rng.usize(..64)] = bytes[rng.usize(..bytes.len())];
            }
            assert_eq!(block_masks(&b), naive(&b), "{b:?}");
            assert_eq!(swar_block_masks(&b), naive(&b), "swar: {b:?}");
        }
    }

    #[test]
    fn next_bit_finds_the_first_set_bit_at_or_after_a_position_across_words() {
        let words = [1u64 << 63, 0, 0b101];
        assert_eq!(next_bit(&words, 0), Some(63));
        assert_eq!(next_bit(&words, 63), Some(63));
        assert_eq!(next_bit(&words, 64), Some(128));
        assert_eq!(next_bit(&words, 129), Some(130));
        assert_eq!(next_bit(&words, 131), None);
        assert_eq!(next_bit(&words, 192), None);
    }

    #[test]
    fn lines_without_escapes_take_the_indexed_path_and_others_do_not() {
        assert_eq!(indexed_is_object(br#"{"a":"b"}"#), Some(true));
        assert_eq!(indexed_is_object(br#"{"a":"b\"c"}"#), None);
        assert_eq!(indexed_is_object(b"{\"a\":\t1}"), None);
        let long = format!(r#"{{"a":"{}"}}"#, "x".repeat(INDEXED_MAX));
        assert!(is_object(long.as_bytes()));
    }

    #[test]
    fn agrees_with_serde_json_on_hand_picked_cases() {
        let cases: &[&[u8]] = &[
            br#"{}"#,
            br#" { } "#,
            br#"{"a":1,"b":[true,false,null],"c":{"d":-0.5e+10}}"#,
            br#"{"s":"esc \" \\ \/ \b \f \n \r \t \u00e9 \uD83D\uDE00"}"#,
            "{\"utf8\":\"caf\u{e9} \u{1F600}\"}".as_bytes(),
            br#"{"a":01}"#,
            br#"{"a":1.}"#,
            br#"{"a":.5}"#,
            br#"{"a":-}"#,
            br#"{"a":1e}"#,
            br#"{"a":tru}"#,
            br#"{"a":1,}"#,
            br#"{,}"#,
            br#"{"a" 1}"#,
            br#"{a:1}"#,
            br#"{"a":"\x"}"#,
            br#"{"a":"\u12G4"}"#,
            br#"{"a":"\uD83D"}"#,
            br#"{"a":"\uDE00"}"#,
            br#"{"a":"\uD83D\u0041"}"#,
            b"{\"a\":\"tab\tinside\"}",
            br#"{"a":1}}"#,
            br#"{"a":[1,2}"#,
            br#"["not","object"]"#,
            br#""string""#,
            b"{\"bad utf8\":\"\xff\"}",
        ];
        for c in cases {
            check_against_serde(c);
        }
    }

    #[test]
    fn refuses_nesting_deeper_than_serde_json_accepts() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        assert!(!is_object(deep.as_bytes()));
        let ok = format!("{{\"a\":{}1{}}}", "[".repeat(100), "]".repeat(100));
        assert!(is_object(ok.as_bytes()));
    }

    #[test]
    fn agrees_with_serde_json_on_random_mutations() {
        // Differential check: mutate valid objects byte by byte and compare verdicts.
        // Seeds without escapes take the indexed path until a mutation adds a backslash;
        // the long ones put strings and quotes across its 64-byte words.
        let seeds: &[&[u8]] = &[
            br#"{"id":12,"name":"x\"y","tags":["a","b"],"n":-1.5e3,"ok":true,"z":null}"#,
            br#"{"a":{"b":{"c":[1,{"d":"\u0041"}]}}}"#,
            br#"{"id":12,"user":"user-00012","event":"page_view","url":"/products/12","ts":"2026-11-24T15:30:00.123Z","pad":"xx"}"#,
            br#"{"a":"","b":[{},[],"x",0,-0.0,1e5],"c":{"d":{"e":"f"}},"g":"0123456789012345678901234567890123456789012345678901234567890123456789"}"#,
            "{\"caf\u{e9}\":\"\u{1F600} \u{4e2d}\u{6587}\",\"n\":1}".as_bytes(),
        ];
        let alphabet = b"{}[]\":,\\.-+eE0123456789tfnul \tabx\xc3\xa9\xff";
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..20_000 {
            let mut s = seeds[rng.usize(..seeds.len())].to_vec();
            for _ in 0..rng.usize(1..4) {
                let i = rng.usize(..s.len());
                match rng.u8(..3) {
                    0 => s[i] = alphabet[rng.usize(..alphabet.len())],
                    1 => {
                        s.remove(i);
                    }
                    _ => s.insert(i, alphabet[rng.usize(..alphabet.len())]),
                }
                if s.is_empty() {
                    break;
                }
            }
            check_against_serde(&s);
        }
    }
}
