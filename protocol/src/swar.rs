//! Byte tests eight bytes at a time on a `u64` ("SIMD within a register"), shared by the codec,
//! tokens and resources. Every test here is exact for words whose bytes are all below 0x80;
//! callers check `w & HI8 == 0` first.

/// A byte of ones in every lane.
pub(crate) const LO8: u64 = 0x0101_0101_0101_0101;
/// The high bit of every lane.
pub(crate) const HI8: u64 = 0x8080_8080_8080_8080;

/// Lanes of `w` (all below 0x80) in `lo..=hi`: the high bit of each such lane. `x + (0x80 - lo)`
/// has its high bit set exactly when `x >= lo`, `(0x80 + hi) - x` exactly when `x <= hi`; no
/// lane carries or borrows into its neighbour.
#[inline(always)]
pub(crate) fn bytes_in(w: u64, lo: u8, hi: u8) -> u64 {
    w.wrapping_add(LO8 * u64::from(0x80 - lo)) & (LO8 * u64::from(0x80 + hi)).wrapping_sub(w) & HI8
}

/// The 8 bytes at `i` when they are all there, as a little-endian word.
#[inline(always)]
pub(crate) fn word_at(b: &[u8], i: usize) -> Option<u64> {
    let chunk: [u8; 8] = b.get(i..i.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// A xorshift64 generator for the randomized unit tests of this crate (deterministic, no
/// dependency).
#[cfg(test)]
pub(crate) fn test_rng(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_in_is_exact_below_0x80() {
        for (lo, hi) in [
            (0x20, 0x7e),
            (b'/', b'/'),
            (b'0', b'9'),
            (b'a', b'f'),
            (0, 0x7f),
        ] {
            for x in 0..0x80u8 {
                for lane in 0..8 {
                    let mut bytes = [lo; 8];
                    bytes[lane] = x;
                    let got = bytes_in(u64::from_le_bytes(bytes), lo, hi);
                    let hit = u64::from(x >= lo && x <= hi) * (0x80 << (8 * lane));
                    let want = hit | (HI8 & !(0xff << (8 * lane)));
                    assert_eq!(got, want, "{x:#x} in {lo:#x}..={hi:#x} at {lane}");
                }
            }
        }
    }
}
