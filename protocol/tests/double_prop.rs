//! `format_double` against an independent oracle of the canonical form of `[VAP-VAL-014]`
//! (spec §4.2): the output parses back to the same bits, is laid out as steps 3–4 say, uses the
//! fewest digits that round-trip, and among those the closest, ties to the even last digit.
//!
//! The oracle works on the exact decimal expansion of the value (`{:.1100e}` is exact for every
//! `f64`) and rounds it to `k` significant digits half-to-even, so it shares no logic with the
//! tie handling in `value.rs`.

// The tie literals below are written with every digit of the exact binary value on purpose.
#![allow(clippy::excessive_precision)]

use proptest::prelude::*;
use vertebra_protocol::value::{format_double, parse_double};

/// Exact decimal expansion of a positive finite `v`: digits without trailing zeros, and the
/// exponent of the first digit.
fn exact(v: f64) -> (Vec<u8>, i32) {
    let text = format!("{v:.1100e}");
    let (mant, exp) = text.split_once('e').unwrap();
    let mut digits: Vec<u8> = mant
        .bytes()
        .filter(|b| *b != b'.')
        .map(|b| b - b'0')
        .collect();
    while digits.last() == Some(&0) {
        digits.pop();
    }
    (digits, exp.parse().unwrap())
}

/// `v` rounded to `k` significant digits, half to even, as (digits without trailing zeros,
/// exponent), plus the other of the two `k`-digit strings that bracket `v` (equal to the first
/// when `v` has at most `k` digits).
fn round_k(digits: &[u8], exp: i32, k: usize) -> ((Vec<u8>, i32), (Vec<u8>, i32)) {
    let mut low: Vec<u8> = digits.iter().copied().take(k).collect();
    low.resize(k, 0);
    let rest = digits.get(k..).unwrap_or(&[]);
    if rest.is_empty() {
        let n = normalize(low, exp);
        return (n.clone(), n);
    }
    let mut high = low.clone();
    let mut high_exp = exp;
    let mut i = k;
    loop {
        if i == 0 {
            high.insert(0, 1);
            high.pop();
            high_exp += 1;
            break;
        }
        i -= 1;
        if high[i] == 9 {
            high[i] = 0;
        } else {
            high[i] += 1;
            break;
        }
    }
    let up = match rest[0].cmp(&5) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal if rest.len() > 1 => true,
        std::cmp::Ordering::Equal => low[k - 1] % 2 == 1,
    };
    let low = normalize(low, exp);
    let high = normalize(high, high_exp);
    if up {
        (high, low)
    } else {
        (low, high)
    }
}

fn normalize(mut digits: Vec<u8>, exp: i32) -> (Vec<u8>, i32) {
    while digits.len() > 1 && digits.last() == Some(&0) {
        digits.pop();
    }
    (digits, exp)
}

fn to_f64(d: &(Vec<u8>, i32)) -> f64 {
    let s: String = d.0.iter().map(|b| char::from(b'0' + b)).collect();
    format!("{s}e{}", d.1 - (d.0.len() as i32 - 1))
        .parse()
        .unwrap()
}

/// The layout of steps 3 and 4, written independently from `value.rs`.
fn layout(neg: bool, d: &(Vec<u8>, i32)) -> String {
    let digits: String = d.0.iter().map(|b| char::from(b'0' + b)).collect();
    let (k, e) = (digits.len() as i32, d.1);
    let body = if (-4..=15).contains(&e) {
        if e < 0 {
            format!("0.{}{digits}", "0".repeat((-e - 1) as usize))
        } else if k <= e + 1 {
            format!("{digits}{}", "0".repeat((e + 1 - k) as usize))
        } else {
            let (a, b) = digits.split_at((e + 1) as usize);
            format!("{a}.{b}")
        }
    } else {
        let (a, b) = digits.split_at(1);
        let frac = if b.is_empty() {
            String::new()
        } else {
            format!(".{b}")
        };
        format!("{a}{frac}e{}{}", if e < 0 { '-' } else { '+' }, e.abs())
    };
    if neg {
        format!("-{body}")
    } else {
        body
    }
}

/// The canonical form of `v` by the oracle.
fn canonical(v: f64) -> String {
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let a = v.abs();
    let (digits, exp) = exact(a);
    for k in 1..=17 {
        let (nearest, other) = round_k(&digits, exp, k);
        let nearest_ok = to_f64(&nearest).to_bits() == a.to_bits();
        let other_ok = to_f64(&other).to_bits() == a.to_bits();
        if nearest_ok {
            return layout(v < 0.0, &nearest);
        }
        if other_ok {
            return layout(v < 0.0, &other);
        }
    }
    panic!("no round-tripping 17-digit string for {v:e}");
}

fn check(v: f64) {
    let out = format_double(v);
    let back = parse_double(&out).unwrap();
    assert_eq!(
        back.to_bits(),
        v.to_bits(),
        "{v:e} -> {out} does not round-trip"
    );
    assert_eq!(out, canonical(v), "{v:e}");
}

/// Values `m / 2^j` with a 53-bit `m`: many of them lie exactly halfway between two shortest
/// candidates.
fn tie_prone() -> impl Strategy<Value = f64> {
    (1u64 << 52..1u64 << 53, -80i32..=80, any::<bool>()).prop_map(|(m, j, neg)| {
        let v = m as f64 / 2f64.powi(j);
        if neg {
            -v
        } else {
            v
        }
    })
}

fn any_finite() -> impl Strategy<Value = f64> {
    any::<u64>()
        .prop_map(f64::from_bits)
        .prop_filter("finite", |v| v.is_finite())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_double_is_canonical(v in any_finite()) {
        check(v);
    }

    #[test]
    fn tie_prone_doubles_are_canonical(v in tie_prone()) {
        check(v);
    }
}

#[test]
fn spec_examples_and_ties() {
    for (v, text) in [
        (1.0, "1"),
        (0.25, "0.25"),
        (-42.42, "-42.42"),
        (0.1 + 0.2, "0.30000000000000004"),
        (0.0001, "0.0001"),
        (0.00001, "1e-5"),
        (1.5e-7, "1.5e-7"),
        (1e15, "1000000000000000"),
        (1e16, "1e+16"),
        (123456789012345678.0, "1.2345678901234568e+17"),
        (f64::MAX, "1.7976931348623157e+308"),
        (f64::from_bits(1), "5e-324"),
        (-0.0, "-0"),
        // Exact ties: Rust's `{:e}` rounds these up to an odd last digit.
        (1059438285926254.25, "1059438285926254.2"),
        (-1059438285926254.25, "-1059438285926254.2"),
        // Tie whose even candidate is the upper one: `{:e}` already gives it.
        (1059438285926254.75, "1059438285926254.8"),
    ] {
        assert_eq!(format_double(v), text, "{v:e}");
        check(v);
    }
}

#[test]
fn the_oracle_sees_the_tie() {
    // The oracle's own premise: 1059438285926254.25 is exactly representable and exactly
    // halfway between the two 17-digit candidates.
    let (digits, exp) = exact(1059438285926254.25);
    assert_eq!(exp, 15);
    assert_eq!(
        digits,
        [1, 0, 5, 9, 4, 3, 8, 2, 8, 5, 9, 2, 6, 2, 5, 4, 2, 5]
    );
    assert_eq!(
        format!("{:e}", 1059438285926254.25),
        "1.0594382859262543e15"
    );
}
