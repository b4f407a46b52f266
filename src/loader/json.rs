//! A validating JSON scanner that answers one question fast: is this line exactly one
//! JSON object (RFC 8259, UTF-8)? It builds nothing, so checking every line costs little.

/// Nesting deeper than this is refused (the same limit serde_json applies).
const MAX_DEPTH: usize = 128;

/// Whether `line` is one JSON object, optionally surrounded by whitespace.
pub fn is_object(line: &[u8]) -> bool {
    if std::str::from_utf8(line).is_err() {
        return false;
    }
    let mut s = Scanner { s: line, i: 0 };
    s.ws();
    if s.peek() != Some(b'{') {
        return false;
    }
    if !s.value(0) {
        return false;
    }
    s.ws();
    s.i == line.len()
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
}

impl Scanner<'_> {
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
            assert_eq!(
                is_object(c),
                serde_says(c),
                "{}",
                String::from_utf8_lossy(c)
            );
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
        let seeds: &[&[u8]] = &[
            br#"{"id":12,"name":"x\"y","tags":["a","b"],"n":-1.5e3,"ok":true,"z":null}"#,
            br#"{"a":{"b":{"c":[1,{"d":"\u0041"}]}}}"#,
        ];
        let alphabet = b"{}[]\":,\\.-+eE0123456789tfnul \tabx";
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
            assert_eq!(
                is_object(&s),
                serde_says(&s),
                "{}",
                String::from_utf8_lossy(&s)
            );
        }
    }
}
