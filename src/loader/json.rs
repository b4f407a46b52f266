//! A validating JSON scanner that answers one question fast: is this line exactly one
//! JSON object (RFC 8259, UTF-8)? It builds nothing, so checking every line costs little.

/// The most containers open at once; a line nesting deeper is refused, as serde_json
/// refuses it (its recursion limit of 128 fails on the 128th container).
const MAX_DEPTH: usize = 127;

/// Whether `line` is one JSON object, optionally surrounded by whitespace.
pub fn is_object(line: &[u8]) -> bool {
    indexed_is_object(line).unwrap_or_else(|| scalar_is_object(line))
}

/// The common line (no backslash, no control byte) checked from a structural index, as
/// simdjson does: 64 bytes at a time, masks say which bytes are quotes, structural
/// characters (`{}[]:,`), spaces, inside a string, or start a number or literal; a walk
/// over the set bits of those token starts checks the grammar with a small state machine,
/// so string contents and spaces cost no branch per byte.
///
/// `None` for a line with a backslash or a control byte (tab included), which the scalar
/// scanner checks: escapes make the quote mask wrong from that byte on. Blocks are indexed
/// and walked one after another, and the walk stops at the first block holding such a
/// byte, so every token it saw was indexed correctly; a grammar error found before it
/// is an error of the whole line (no continuation makes a wrong prefix valid).
///
/// Where the CPU has AVX-512 VBMI2, a flat object is first recognised by the order of its
/// tokens as a whole ([`avx512_flat_object`]), and only other lines are walked.
fn indexed_is_object(line: &[u8]) -> Option<bool> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("pclmulqdq") {
        if std::is_x86_feature_detected!("avx512bw") {
            // SAFETY: `flat_path` checks for what the function needs.
            if flat_path() && unsafe { avx512_flat_object(line) } {
                return Some(true);
            }
            // SAFETY: this CPU has AVX-512BW and PCLMULQDQ, checked just above.
            return unsafe { avx512_indexed_is_object(line) };
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: this CPU has AVX2 and PCLMULQDQ, checked just above.
            return unsafe { avx2_indexed_is_object(line) };
        }
    }
    index_and_walk(line, block_masks, prefix_xor)
}

/// [`indexed_is_object`] compiled for AVX-512BW: each mask of a block is one compare of
/// its 64 bytes into a mask register, with no gathering of bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bw,pclmulqdq")]
fn avx512_indexed_is_object(line: &[u8]) -> Option<bool> {
    index_and_walk(line, |b| avx512_block_masks(b), |q| clmul_prefix_xor(q))
}

/// Whether `line` is certainly one flat object, `{}` or `{"key": value, ...}` with no
/// value an object or array, found without a branch per token: the token starts of each
/// block (as [`Carry::tokens`] finds them) are packed together by one compress
/// instruction (AVX-512 VBMI2) and moved in behind the line's earlier tokens by one byte
/// permute (VBMI), all in a register, and the packed tokens are compared all at once
/// with the only order a flat object's tokens can come in: `{`, then `"` `:` value `,`
/// ... `"` `:` value, then `}`, where a value is a string or a number or literal (each
/// of which is checked where it starts, as the walk does). The rows services log are
/// mostly such objects, and the walk spends a few nanoseconds on each token.
///
/// `false` means "not known": a line with escapes or control bytes, brackets, a nested
/// object, 64 tokens or more (a flat object of 16 keys), or any error goes to the walk,
/// which gives its verdict.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bw,avx512vbmi,avx512vbmi2,pclmulqdq,popcnt,bmi1")]
fn avx512_flat_object(line: &[u8]) -> bool {
    use std::arch::x86_64::*;
    let splat = |b: u8| _mm512_set1_epi8(b as i8);
    // The tokens so far, in order, `n` of them; a block's are moved in after them.
    let mut packed = _mm512_setzero_si512();
    let iota = _mm512_set_epi8(
        63, 62, 61, 60, 59, 58, 57, 56, 55, 54, 53, 52, 51, 50, 49, 48, 47, 46, 45, 44, 43, 42, 41,
        40, 39, 38, 37, 36, 35, 34, 33, 32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18,
        17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
    );
    let mut n = 0usize;
    let mut opens = 0;
    let mut carry = Carry::default();
    let mut high = false;
    for (w, block) in line.chunks(64).enumerate() {
        // The last block is padded with spaces (never tokens).
        let present = u64::MAX >> (64 - block.len());
        // SAFETY: a masked load reads only the bytes its mask selects, all of `block`.
        let v = unsafe { _mm512_mask_loadu_epi8(splat(b' '), present, block.as_ptr().cast()) };
        let m = avx512_masks(v);
        if m.special {
            return false;
        }
        high |= m.high;
        let (tokens, mut scalars) = carry.tokens(&m, &|q| clmul_prefix_xor(q));
        if tokens == 0 {
            continue;
        }
        // A nested container is known at its first token: the walk takes the line.
        let is = |b: u8| _mm512_cmpeq_epi8_mask(v, splat(b)) & tokens;
        opens += is(b'{').count_ones();
        if opens > 1 || (is(b'[') | is(b']')) != 0 {
            return false;
        }
        // Byte i of the block's packed tokens goes to byte n + i (n < 64 here).
        let after = u64::MAX << n;
        let from = _mm512_sub_epi8(iota, splat(n as u8));
        let block_tokens = _mm512_maskz_compress_epi8(tokens, v);
        packed = _mm512_mask_permutexvar_epi8(packed, after, from, block_tokens);
        n += tokens.count_ones() as usize;
        if n >= 64 {
            return false;
        }
        while scalars != 0 {
            let at = w * 64 + scalars.trailing_zeros() as usize;
            scalars &= scalars - 1;
            if !scalar(line, at) {
                return false;
            }
        }
    }
    avx512_flat_shape(packed, n) && (!high || std::str::from_utf8(line).is_ok())
}

/// Whether the first `n` bytes of `packed`, a line's tokens in order, come in a flat
/// object's order, given that every number or literal among them has been checked.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bw")]
fn avx512_flat_shape(packed: std::arch::x86_64::__m512i, n: usize) -> bool {
    use std::arch::x86_64::*;
    let all = u64::MAX >> (64 - n.clamp(1, 64));
    let is = |b: u8| _mm512_cmpeq_epi8_mask(packed, _mm512_set1_epi8(b as i8)) & all;
    if n == 2 {
        is(b'{') == 0b01 && is(b'}') == 0b10
    } else if n >= 5 && n % 4 == 1 {
        // Token 0 is `{`, token n-1 `}`; between them, by position mod 4: `,` `"` `:` value.
        let last = 1u64 << (n - 1);
        let between = all & !1 & !last;
        let every4 = |k: u32| (0x1111_1111_1111_1111u64 << k) & between;
        let (commas, keys, colons, values) = (every4(0), every4(1), every4(2), every4(3));
        // What is left at a value's place is a quote or the start of a number or
        // literal, each checked above. (A string left open would be the last token, not
        // `}`.)
        is(b'{') == 1
            && is(b'}') == last
            && is(b':') == colons
            && is(b',') == commas
            && is(b'"') & !values == keys
    } else {
        false
    }
}

/// Whether this CPU has what [`avx512_flat_object`] needs (asked once: every line asks).
#[cfg(target_arch = "x86_64")]
fn flat_path() -> bool {
    static FLAT: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vbmi")
            && std::is_x86_feature_detected!("avx512vbmi2")
            && std::is_x86_feature_detected!("pclmulqdq")
            && std::is_x86_feature_detected!("popcnt")
            && std::is_x86_feature_detected!("bmi1")
    });
    *FLAT
}

/// [`indexed_is_object`] compiled for AVX2, masks and walk together, so that the masks
/// (32 bytes per instruction) are inlined into the loop. The prefix XOR is one carry-less
/// multiplication, as simdjson does it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,pclmulqdq")]
fn avx2_indexed_is_object(line: &[u8]) -> Option<bool> {
    index_and_walk(line, |b| avx2_block_masks(b), |q| clmul_prefix_xor(q))
}

/// [`prefix_xor`] as a carry-less multiplication by all ones.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "pclmulqdq")]
fn clmul_prefix_xor(x: u64) -> u64 {
    use std::arch::x86_64::*;
    let product = _mm_clmulepi64_si128(_mm_set_epi64x(0, x as i64), _mm_set1_epi8(-1), 0);
    _mm_cvtsi128_si64(product) as u64
}

/// Indexes `line` one block after another with `masks` and walks each block's tokens.
#[inline(always)]
fn index_and_walk(
    line: &[u8],
    masks: impl Fn(&[u8; 64]) -> BlockMasks,
    prefix_xor: impl Fn(u64) -> u64,
) -> Option<bool> {
    let mut walk = Walk::default();
    let mut carry = Carry::default();
    let mut high = false;
    for (w, block) in line.chunks(64).enumerate() {
        let m = match <&[u8; 64]>::try_from(block) {
            Ok(full) => masks(full),
            Err(_) => {
                // The last, partial block, padded with spaces (never tokens).
                let mut padded = [b' '; 64];
                padded[..block.len()].copy_from_slice(block);
                masks(&padded)
            }
        };
        if m.special {
            return None;
        }
        high |= m.high;
        let (mut tokens, _) = carry.tokens(&m, &prefix_xor);
        while tokens != 0 {
            let at = w * 64 + tokens.trailing_zeros() as usize;
            tokens &= tokens - 1;
            if !walk.token(line, at) {
                return Some(false);
            }
        }
    }
    if carry.in_string != 0 || walk.expect != Expect::Done {
        return Some(false);
    }
    Some(!high || std::str::from_utf8(line).is_ok())
}

/// What one block's tokens depend on in the block before it.
#[derive(Default)]
struct Carry {
    /// All ones when the block before ended inside a string.
    in_string: u64,
    /// Bit 0 set when the block before ended in a number or literal byte.
    scalar: u64,
}

impl Carry {
    /// The block's token starts (structural characters outside strings, opening quotes,
    /// the first byte of each number or literal), and of those the numbers' and
    /// literals'; carries what the next block needs.
    #[inline(always)]
    fn tokens(&mut self, m: &BlockMasks, prefix_xor: &impl Fn(u64) -> u64) -> (u64, u64) {
        // An opening quote and a string's contents are inside; its closing quote is not.
        let inside = prefix_xor(m.quotes) ^ self.in_string;
        self.in_string = ((inside as i64) >> 63) as u64;
        let scalars = !(m.ops | m.spaces | m.quotes | inside);
        let scalar_starts = scalars & !((scalars << 1) | self.scalar);
        self.scalar = scalars >> 63;
        let tokens = (m.ops & !inside) | (m.quotes & inside) | scalar_starts;
        (tokens, scalar_starts)
    }
}

/// Bit `i` of the result is the XOR of bits `0..=i` of `x`: over a quote mask, the bytes
/// from an opening quote up to (not including) its closing quote.
#[inline]
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// What the indexed walk expects next.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Expect {
    /// The line's first token, which must open the object.
    #[default]
    Start,
    /// After `{`: a key or `}`.
    KeyOrEnd,
    /// After `,` in an object.
    Key,
    /// After a key.
    Colon,
    /// After `:`, or after `,` in an array.
    Value,
    /// After `[`: a value or `]`.
    ValueOrEnd,
    /// After a value: `,` or the close of its container.
    CommaOrEnd,
    /// The top object is closed: no token may follow.
    Done,
}

/// The grammar of one line, token by token. Strings arrive whole (the index found their
/// ends); numbers and literals are checked where they start.
#[derive(Default)]
struct Walk {
    expect: Expect,
    /// Containers open.
    depth: usize,
    /// Bit `d` set when the container at depth `d + 1` is an object (else an array).
    objects: u128,
}

impl Walk {
    /// Takes the token starting at `line[at]`; false when the line cannot be an object.
    #[inline(always)]
    fn token(&mut self, line: &[u8], at: usize) -> bool {
        use Expect::*;
        let b = line[at];
        match (self.expect, b) {
            (Start, b'{') => self.open(true),
            (KeyOrEnd | Key, b'"') => {
                self.expect = Colon;
                true
            }
            (Colon, b':') => {
                self.expect = Value;
                true
            }
            (KeyOrEnd, b'}') | (ValueOrEnd, b']') => self.close(),
            (Value | ValueOrEnd, b'{') => self.open(true),
            (Value | ValueOrEnd, b'[') => self.open(false),
            (Value | ValueOrEnd, b'"') => {
                self.expect = CommaOrEnd;
                true
            }
            (Value | ValueOrEnd, b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {
                self.expect = CommaOrEnd;
                scalar(line, at)
            }
            (CommaOrEnd, b',') => {
                self.expect = if self.in_object() { Key } else { Value };
                true
            }
            (CommaOrEnd, b'}') if self.in_object() => self.close(),
            (CommaOrEnd, b']') if !self.in_object() => self.close(),
            _ => false,
        }
    }

    fn in_object(&self) -> bool {
        self.depth > 0 && (self.objects >> (self.depth - 1)) & 1 == 1
    }

    fn open(&mut self, object: bool) -> bool {
        if self.depth == MAX_DEPTH {
            return false;
        }
        self.objects = (self.objects & !(1 << self.depth)) | (u128::from(object) << self.depth);
        self.depth += 1;
        self.expect = if object {
            Expect::KeyOrEnd
        } else {
            Expect::ValueOrEnd
        };
        true
    }

    fn close(&mut self) -> bool {
        self.depth -= 1;
        self.expect = if self.depth == 0 {
            Expect::Done
        } else {
            Expect::CommaOrEnd
        };
        true
    }
}

/// A number or literal starts at `line[at]` and ends where a space, a structural
/// character, a quote or the line's end follows it.
fn scalar(line: &[u8], at: usize) -> bool {
    let mut s = Scanner { s: line, i: at };
    let ok = match line[at] {
        b't' => s.literal(b"true"),
        b'f' => s.literal(b"false"),
        b'n' => s.literal(b"null"),
        _ => s.number(),
    };
    ok && matches!(
        s.peek(),
        None | Some(b' ' | b'\t' | b'\n' | b'\r' | b',' | b'}' | b']' | b':' | b'"' | b'{' | b'[')
    )
}

/// What the indexed path needs of 64 bytes, one bit per byte.
#[derive(Debug, PartialEq, Eq)]
struct BlockMasks {
    quotes: u64,
    /// `{ } [ ] : ,`
    ops: u64,
    spaces: u64,
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
        let splat = |b: u8| _mm_set1_epi8(b as i8);
        let below_space = splat(0x1f);
        let mut quotes = 0u64;
        let mut ops = 0u64;
        let mut spaces = 0u64;
        let mut special = _mm_setzero_si128();
        let mut high = 0i32;
        for k in 0..4 {
            let v = _mm_loadu_si128(block.as_ptr().add(16 * k).cast::<__m128i>());
            let bits = |m: __m128i| u64::from(_mm_movemask_epi8(m) as u16) << (16 * k);
            quotes |= bits(_mm_cmpeq_epi8(v, splat(b'"')));
            spaces |= bits(_mm_cmpeq_epi8(v, splat(b' ')));
            // `[` and `]` are `{` and `}` with bit 5 clear, and no other byte is.
            let folded = _mm_or_si128(v, splat(0x20));
            let braces = _mm_or_si128(
                _mm_cmpeq_epi8(folded, splat(b'{')),
                _mm_cmpeq_epi8(folded, splat(b'}')),
            );
            let punct = _mm_or_si128(
                _mm_cmpeq_epi8(v, splat(b':')),
                _mm_cmpeq_epi8(v, splat(b',')),
            );
            ops |= bits(_mm_or_si128(braces, punct));
            // A control byte is one no greater than 0x1f, unsigned: max(v, 0x1f) == 0x1f.
            let control = _mm_cmpeq_epi8(_mm_max_epu8(v, below_space), below_space);
            special = _mm_or_si128(
                special,
                _mm_or_si128(control, _mm_cmpeq_epi8(v, splat(b'\\'))),
            );
            high |= _mm_movemask_epi8(v);
        }
        BlockMasks {
            quotes,
            ops,
            spaces,
            special: _mm_movemask_epi8(special) != 0,
            high: high != 0,
        }
    }
}

/// The block's masks, 32 bytes per AVX2 instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2_block_masks(block: &[u8; 64]) -> BlockMasks {
    use std::arch::x86_64::*;
    // SAFETY: unaligned loads of 32 bytes at offsets 0 and 32 of a 64-byte array.
    let (lo, hi) = unsafe {
        (
            _mm256_loadu_si256(block.as_ptr().cast::<__m256i>()),
            _mm256_loadu_si256(block.as_ptr().add(32).cast::<__m256i>()),
        )
    };
    let (lo, hi) = (avx2_half_masks(lo), avx2_half_masks(hi));
    let join = |lo: i32, hi: i32| {
        let mut mask = u64::from(lo as u32) | (u64::from(hi as u32) << 32);
        // An empty asm statement keeps the mask an integer in a register: without it,
        // LLVM rewrites the bit operations on masks into byte-vector operations and
        // rebuilds the integers byte by byte, six times slower.
        // SAFETY: the statement has no instructions; it only passes `mask` through.
        unsafe {
            std::arch::asm!("/* {0} */", inout(reg) mask, options(pure, nomem, nostack, preserves_flags))
        };
        mask
    };
    BlockMasks {
        quotes: join(lo[0], hi[0]),
        ops: join(lo[1], hi[1]),
        spaces: join(lo[2], hi[2]),
        special: (lo[3] | hi[3]) != 0,
        high: (lo[4] | hi[4]) != 0,
    }
}

/// The block's masks, 64 bytes per AVX-512BW instruction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bw")]
fn avx512_block_masks(block: &[u8; 64]) -> BlockMasks {
    // SAFETY: an unaligned load of the 64 bytes of the array.
    avx512_masks(unsafe { std::arch::x86_64::_mm512_loadu_si512(block.as_ptr().cast()) })
}

/// [`avx512_block_masks`] of a block already loaded.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bw")]
fn avx512_masks(v: std::arch::x86_64::__m512i) -> BlockMasks {
    use std::arch::x86_64::*;
    let splat = |b: u8| _mm512_set1_epi8(b as i8);
    let is = |b: u8| _mm512_cmpeq_epi8_mask(v, splat(b));
    // `[` and `]` are `{` and `}` with bit 5 clear, and no other byte is.
    let folded = _mm512_or_si512(v, splat(0x20));
    let braces =
        _mm512_cmpeq_epi8_mask(folded, splat(b'{')) | _mm512_cmpeq_epi8_mask(folded, splat(b'}'));
    let control = _mm512_cmple_epu8_mask(v, splat(0x1f));
    BlockMasks {
        quotes: is(b'"'),
        ops: braces | is(b':') | is(b','),
        spaces: is(b' '),
        special: (control | is(b'\\')) != 0,
        high: _mm512_movepi8_mask(v) != 0,
    }
}

/// The masks of 32 bytes, each as `_mm256_movemask_epi8` gives it: quotes, structural
/// characters, spaces, backslashes or control bytes, and bytes not ASCII.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn avx2_half_masks(v: std::arch::x86_64::__m256i) -> [i32; 5] {
    use std::arch::x86_64::*;
    let is = |b: u8| _mm256_cmpeq_epi8(v, _mm256_set1_epi8(b as i8));
    // `[` and `]` are `{` and `}` with bit 5 clear, and no other byte is.
    let folded = _mm256_or_si256(v, _mm256_set1_epi8(0x20));
    let braces = _mm256_or_si256(
        _mm256_cmpeq_epi8(folded, _mm256_set1_epi8(b'{' as i8)),
        _mm256_cmpeq_epi8(folded, _mm256_set1_epi8(b'}' as i8)),
    );
    let ops = _mm256_or_si256(braces, _mm256_or_si256(is(b':'), is(b',')));
    // A control byte is one no greater than 0x1f, unsigned: max(v, 0x1f) == 0x1f.
    let below_space = _mm256_set1_epi8(0x1f);
    let control = _mm256_cmpeq_epi8(_mm256_max_epu8(v, below_space), below_space);
    [
        _mm256_movemask_epi8(is(b'"')),
        _mm256_movemask_epi8(ops),
        _mm256_movemask_epi8(is(b' ')),
        _mm256_movemask_epi8(_mm256_or_si256(control, is(b'\\'))),
        _mm256_movemask_epi8(v),
    ]
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
    let is = |x: u64, b: u8| zero(x ^ (ONES * u64::from(b)));
    let gather = |m: u64| (m >> 7).wrapping_mul(0x0102_0408_1020_4080) >> 56;
    let mut masks = BlockMasks {
        quotes: 0,
        ops: 0,
        spaces: 0,
        special: false,
        high: false,
    };
    let mut special = 0u64;
    let mut high = 0u64;
    for (k, w) in block.chunks_exact(8).enumerate() {
        let x = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
        masks.quotes |= gather(is(x, b'"')) << (8 * k);
        masks.spaces |= gather(is(x, b' ')) << (8 * k);
        let folded = x | (ONES * 0x20);
        let ops = is(folded, b'{') | is(folded, b'}') | is(x, b':') | is(x, b',');
        masks.ops |= gather(ops) << (8 * k);
        // A byte below 0x20 (ASCII only: bytes with the high bit set are not control
        // bytes) has its three bits 5-7 clear.
        let control = zero(x & (ONES * 0xe0));
        special |= is(x, b'\\') | control;
        high |= x & HIGH;
    }
    masks.special = special != 0;
    masks.high = high != 0;
    masks
}

/// The line checked byte by byte: any line, escapes and all.
fn scalar_is_object(line: &[u8]) -> bool {
    if std::str::from_utf8(line).is_err() {
        return false;
    }
    let mut s = Scanner { s: line, i: 0 };
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

/// A recursive-descent check of any line, escapes and all.
struct Scanner<'a> {
    s: &'a [u8],
    i: usize,
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

    /// Whether serde_json takes `line` as one object: parsed into a `Value`, or `None`
    /// when only a number out of an f64's range stops it (serde_json refuses one; the
    /// grammar, and so this check, allows it): parsed into `IgnoredAny`, which never
    /// computes a number, and valid UTF-8.
    fn serde_says(line: &[u8]) -> Option<bool> {
        if serde_json::from_slice::<serde_json::Value>(line).is_ok_and(|v| v.is_object()) {
            return Some(true);
        }
        let starts_an_object = line.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        let grammar = std::str::from_utf8(line).is_ok()
            && serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok();
        if starts_an_object && grammar {
            None
        } else {
            Some(false)
        }
    }

    /// `verdict` is serde_json's for `line`, or either where only a number's range differs.
    fn agrees(verdict: bool, line: &[u8]) -> bool {
        serde_says(line).is_none_or(|want| want == verdict)
    }

    /// Both paths, where each applies, give serde_json's verdict.
    fn check_against_serde(line: &[u8]) {
        let shown = String::from_utf8_lossy(line);
        assert!(agrees(is_object(line), line), "{shown}");
        assert!(agrees(scalar_is_object(line), line), "scalar: {shown}");
        if let Some(indexed) = indexed_is_object(line) {
            assert!(agrees(indexed, line), "indexed: {shown}");
            assert_eq!(indexed, scalar_is_object(line), "both paths: {shown}");
        }
    }

    #[test]
    fn block_masks_find_quotes_structurals_and_spaces_and_flag_escapes_controls_and_non_ascii() {
        let bits = |b: &[u8; 64], f: fn(u8) -> bool| -> u64 {
            b.iter()
                .enumerate()
                .map(|(i, &c)| u64::from(f(c)) << i)
                .sum()
        };
        let naive = |b: &[u8; 64]| BlockMasks {
            quotes: bits(b, |c| c == b'"'),
            ops: bits(b, |c| b"{}[]:,".contains(&c)),
            spaces: bits(b, |c| c == b' '),
            special: b.iter().any(|&c| c == b'\\' || c < 0x20),
            high: b.iter().any(|&c| c >= 0x80),
        };
        // Bytes near every boundary the masks draw: a quote beside 0x21 and 0x23, 0x1f
        // and 0x20, 0x7f and 0x80, bytes that differ from a quote, a backslash or a
        // structural character by one bit (`{` 0x7b and `[` 0x5b differ by 0x20; 0x3b,
        // 0xfb, 0x7a, 0x2d, 0x3a ...), and every structural character.
        let bytes = [
            b'"', b'\\', 0x00, 0x01, 0x1f, 0x20, 0x21, 0x23, 0x02, 0xa2, 0x5d, 0x7f, 0x80, 0xe0,
            0xff, b'a', b'{', b'}', b'[', b']', b':', b',', 0x3b, 0xfb, 0x7a, 0x7c, 0x5c, 0x1b,
            0x1d, 0x2d, 0x0c, 0x1a, 0xdb, 0xdd, 0x60,
        ];
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..20_000 {
            let mut b = [b'a'; 64];
            for _ in 0..rng.usize(0..12) {
                b[rng.usize(..64)] = bytes[rng.usize(..bytes.len())];
            }
            assert_eq!(block_masks(&b), naive(&b), "{b:?}");
            assert_eq!(swar_block_masks(&b), naive(&b), "swar: {b:?}");
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: this CPU has AVX2, checked just above.
                assert_eq!(unsafe { avx2_block_masks(&b) }, naive(&b), "avx2: {b:?}");
            }
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx512bw") {
                // SAFETY: this CPU has AVX-512BW, checked just above.
                let masks = unsafe { avx512_block_masks(&b) };
                assert_eq!(masks, naive(&b), "avx512: {b:?}");
            }
        }
    }

    #[test]
    fn lines_without_escapes_take_the_indexed_path_and_others_do_not() {
        assert_eq!(indexed_is_object(br#"{"a":"b"}"#), Some(true));
        assert_eq!(indexed_is_object(br#"{"a":"b\"c"}"#), None);
        assert_eq!(indexed_is_object(b"{\"a\":\t1}"), None);
        let long = format!(r#"{{"a":"{}","b":[1,{{}}]}}"#, "x".repeat(10_000));
        assert_eq!(indexed_is_object(long.as_bytes()), Some(true));
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
    fn agrees_with_serde_json_at_the_nesting_limit_on_both_paths() {
        for containers in 125..=131 {
            let inner = containers - 1;
            let line = format!("{{\"a\":{}1{}}}", "[".repeat(inner), "]".repeat(inner));
            check_against_serde(line.as_bytes());
            let objects = format!("{}{{}}{}", "{\"a\":".repeat(inner), "}".repeat(inner));
            check_against_serde(objects.as_bytes());
        }
    }

    /// One to three random edits of `line`: a byte replaced, removed or inserted.
    fn mutate(rng: &mut fastrand::Rng, alphabet: &[u8], line: &mut Vec<u8>) {
        for _ in 0..rng.usize(1..4) {
            if line.is_empty() {
                return;
            }
            let i = rng.usize(..line.len());
            match rng.u8(..3) {
                0 => line[i] = alphabet[rng.usize(..alphabet.len())],
                1 => {
                    line.remove(i);
                }
                _ => line.insert(i, alphabet[rng.usize(..alphabet.len())]),
            }
        }
    }

    /// A random object of `depth` levels at most, with spaces and values of every kind,
    /// long enough that tokens, strings and numbers fall across 64-byte blocks.
    fn random_object(rng: &mut fastrand::Rng, depth: u32, out: &mut Vec<u8>) {
        let space = |rng: &mut fastrand::Rng, out: &mut Vec<u8>| {
            out.extend(std::iter::repeat_n(b' ', rng.usize(0..3).saturating_sub(1)));
        };
        out.push(b'{');
        for k in 0..rng.usize(0..6) {
            if k > 0 {
                out.push(b',');
            }
            space(rng, out);
            out.extend_from_slice(format!("\"k{}\"", "é".repeat(rng.usize(0..3))).as_bytes());
            space(rng, out);
            out.push(b':');
            space(rng, out);
            match rng.u8(..8) {
                0 if depth > 0 => random_object(rng, depth - 1, out),
                1 if depth > 0 => {
                    out.push(b'[');
                    for i in 0..rng.usize(0..4) {
                        if i > 0 {
                            out.push(b',');
                        }
                        random_object(rng, depth - 1, out);
                    }
                    out.push(b']');
                }
                2 => out.extend_from_slice(b"true"),
                3 => out.extend_from_slice(b"null"),
                4 => out.extend_from_slice(b"-12.5e+3"),
                5 => out.extend_from_slice(rng.u64(..).to_string().as_bytes()),
                _ => {
                    let text: String = (0..rng.usize(0..90))
                        .map(|_| ['x', ' ', '{', ']', ':', ',', '\'', 'é'][rng.usize(..8)])
                        .collect();
                    out.extend_from_slice(format!("\"{text}\"").as_bytes());
                }
            }
            space(rng, out);
        }
        out.push(b'}');
    }

    #[test]
    fn the_indexed_path_agrees_with_serde_json_on_random_objects_and_their_mutations() {
        // No backslash or control byte is ever written, so every line takes the indexed
        // path: it must give serde_json's verdict, valid lines and broken ones.
        let alphabet = b"{}[]\":, .-+eE019tfnulx\xc3\xa9\xff";
        let mut rng = fastrand::Rng::with_seed(23);
        for round in 0..20_000 {
            let mut line = Vec::new();
            random_object(&mut rng, 3, &mut line);
            if round % 2 == 1 {
                mutate(&mut rng, alphabet, &mut line);
            }
            let shown = String::from_utf8_lossy(&line);
            let Some(verdict) = indexed_is_object(&line) else {
                panic!("not indexed: {shown}");
            };
            assert!(agrees(verdict, &line), "{shown}");
            assert_eq!(verdict, scalar_is_object(&line), "both paths: {shown}");
            // The masks this CPU does not dispatch to, walked the same way.
            let sse2 = index_and_walk(&line, block_masks, prefix_xor);
            assert_eq!(sse2, Some(verdict), "sse2: {shown}");
            let swar = index_and_walk(&line, swar_block_masks, prefix_xor);
            assert_eq!(swar, Some(verdict), "swar: {shown}");
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("pclmulqdq") {
                // SAFETY: this CPU has AVX2 and PCLMULQDQ, checked just above.
                let avx2 = unsafe { avx2_indexed_is_object(&line) };
                assert_eq!(avx2, Some(verdict), "avx2: {shown}");
            }
        }
    }

    #[test]
    fn flat_objects_are_known_by_their_shape_and_nothing_else_is_taken_for_one() {
        // Objects whose values are strings (holding structural characters and spaces),
        // numbers and literals, of 0 to 5 keys, across blocks: every one is known without
        // the walk; after random edits, whatever the shape check still takes must be an
        // object for serde_json, and every line keeps serde_json's verdict.
        let alphabet = b"{}[]\":, .-+eE019tfnulx\\\t\xc3\xa9\xff";
        let mut rng = fastrand::Rng::with_seed(31);
        for round in 0..40_000 {
            let mut line = Vec::new();
            random_object(&mut rng, 0, &mut line);
            let edited = round % 2 == 1;
            if edited {
                mutate(&mut rng, alphabet, &mut line);
            }
            let shown = String::from_utf8_lossy(&line);
            assert!(agrees(is_object(&line), &line), "{shown}");
            #[cfg(target_arch = "x86_64")]
            if flat_path() {
                // SAFETY: this CPU has what the function needs, checked by `flat_path`.
                let flat = unsafe { avx512_flat_object(&line) };
                if !edited {
                    assert!(flat, "a flat object not known as one: {shown}");
                }
                if flat {
                    assert!(agrees(true, &line), "taken for an object: {shown}");
                }
            }
        }
        // Shapes the check must leave to the walk (its `false` is "not known").
        #[cfg(target_arch = "x86_64")]
        if flat_path() {
            let others: &[&[u8]] = &[
                br#"{"a":{}}"#,
                br#"{"a":[1]}"#,
                br#"{"a":1,}"#,
                br#"{"a":1 "b":2}"#,
                br#"{"a"::1}"#,
                br#"{"a":01}"#,
                br#"{"a":tru}"#,
                br#"{"a":"b"}}"#,
                br#"{"a":"b}"#,
                br#"{"a":"b\"c"}"#,
                b"{\"a\":\"\xff\"}",
                br#"{1:2}"#,
                br#"{"a":x}"#,
                // Five tokens in a flat object's order, refused for an escape or a bracket.
                br#"{"a":"\"}"#,
                br#"{"a":[}"#,
                br#"{"a":]}"#,
            ];
            for line in others {
                // SAFETY: this CPU has what the function needs, checked by `flat_path`.
                let flat = unsafe { avx512_flat_object(line) };
                assert!(!flat, "{}", String::from_utf8_lossy(line));
            }
            // 15 keys are 61 tokens, the most one register holds; 16 keys go to the walk.
            let keys = |n: usize, pad: usize| {
                let pairs: Vec<String> = (0..n)
                    .map(|i| format!("\"k{i}\":\"{}\"", "x".repeat(i * pad)))
                    .collect();
                format!("{{{}}}", pairs.join(","))
            };
            for pad in [0, 7, 30] {
                // SAFETY: as above.
                assert!(unsafe { avx512_flat_object(keys(15, pad).as_bytes()) });
                assert!(!unsafe { avx512_flat_object(keys(16, pad).as_bytes()) });
                assert!(is_object(keys(16, pad).as_bytes()));
            }
        }
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
            mutate(&mut rng, alphabet, &mut s);
            check_against_serde(&s);
        }
    }
}
