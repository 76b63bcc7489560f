//! The user space: U phone numbers generated on the fly, never stored.
//!
//! A keyed Feistel network with cycle-walking gives a bijection of `0..U`, so
//! request `n` can compute its user from `n` alone and two fresh requests never
//! collide. Repeats (the same user trying again) are also derived from `n`: a
//! seeded coin decides whether request `n` repeats, and if so which earlier
//! request it repeats. Nothing here allocates per call.

use std::fmt;

/// SplitMix64 finaliser: a cheap, well-mixing 64-bit hash.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash of `(seed, stream, n)`: independent streams from one seed.
pub fn hash3(seed: u64, stream: u64, n: u64) -> u64 {
    mix64(mix64(seed ^ stream.wrapping_mul(0xD6E8_FEB8_6659_FD93)) ^ n)
}

const ROUNDS: usize = 6;

/// A seeded bijection of `0..n`.
#[derive(Debug, Clone)]
pub struct Permutation {
    n: u64,
    half_bits: u32,
    mask: u64,
    keys: [u64; ROUNDS],
}

impl Permutation {
    pub fn new(n: u64, seed: u64) -> Self {
        assert!(n > 0, "permutation of an empty range");
        // Smallest even bit width whose domain covers 0..n: the domain is at
        // most 4n, so cycle-walking takes fewer than 4 rounds on average.
        let bits = 64 - (n - 1).leading_zeros();
        let half_bits = bits.div_ceil(2).max(1);
        let mut keys = [0u64; ROUNDS];
        for (i, k) in keys.iter_mut().enumerate() {
            *k = hash3(seed, 0x5EED_0000 + i as u64, 0);
        }
        Permutation {
            n,
            half_bits,
            mask: (1u64 << half_bits) - 1,
            keys,
        }
    }

    fn feistel(&self, x: u64) -> u64 {
        let (mut l, mut r) = (x >> self.half_bits, x & self.mask);
        for k in self.keys {
            let f = mix64(r ^ k) & self.mask;
            (l, r) = (r, l ^ f);
        }
        (l << self.half_bits) | r
    }

    /// Maps `x < n` to its image in `0..n`.
    pub fn apply(&self, x: u64) -> u64 {
        debug_assert!(x < self.n);
        // The Feistel network permutes the power-of-two domain; walking the
        // cycle until we land back inside 0..n restricts it to a bijection of
        // 0..n (the classic cycle-walking construction).
        let mut y = self.feistel(x);
        while y >= self.n {
            y = self.feistel(y);
        }
        y
    }
}

/// A phone number formatted into a stack buffer (no heap allocation).
#[derive(Clone, Copy)]
pub struct Phone {
    buf: [u8; 16],
    len: u8,
}

impl Phone {
    pub fn as_str(&self) -> &str {
        // Only ASCII '+' and digits are ever written.
        std::str::from_utf8(&self.buf[..self.len as usize]).expect("ASCII phone")
    }
}

impl fmt::Display for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Phone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Phone({})", self.as_str())
    }
}

/// The `U` users: index `i` in `0..U` is the phone `prefix` + zero-padded `perm(i)`.
#[derive(Debug, Clone)]
pub struct UserSpace {
    perm: Permutation,
    prefix: Vec<u8>,
    width: usize,
}

/// True if `s` is E.164 as the API defines it: `+`, then 8–15 digits, the first non-zero.
pub fn is_e164(s: &str) -> bool {
    let Some(digits) = s.strip_prefix('+') else {
        return false;
    };
    (8..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

impl UserSpace {
    pub fn new(users: u64, seed: u64, prefix: &str) -> Result<Self, String> {
        if users == 0 {
            return Err("--users must be at least 1".into());
        }
        let pdigits = prefix
            .strip_prefix('+')
            .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
            .filter(|d| !d.starts_with('0'))
            .ok_or_else(|| {
                format!("phone prefix {prefix:?} must be '+' and digits, first non-zero")
            })?;
        // Seven digits after +98912 is a real Iranian mobile number; larger
        // spaces widen the suffix rather than wrap around.
        let width = decimal_digits(users - 1).max(7);
        let total = pdigits.len() + width;
        if !(8..=15).contains(&total) {
            return Err(format!(
                "phone prefix {prefix:?} with {width} generated digits gives {total} digits; E.164 allows 8-15"
            ));
        }
        let space = UserSpace {
            perm: Permutation::new(users, seed),
            prefix: prefix.as_bytes().to_vec(),
            width,
        };
        // Every phone has the same shape, so checking one checks them all.
        let sample = space.phone(users - 1);
        if !is_e164(sample.as_str()) {
            return Err(format!("generated phone {sample} is not E.164"));
        }
        Ok(space)
    }

    /// The phone of user `index` (taken modulo U, so any index is valid).
    pub fn phone(&self, index: u64) -> Phone {
        let mut v = self.perm.apply(index % self.perm.n);
        let mut buf = [0u8; 16];
        let p = self.prefix.len();
        buf[..p].copy_from_slice(&self.prefix);
        for slot in buf[p..p + self.width].iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
        Phone {
            buf,
            len: (p + self.width) as u8,
        }
    }
}

fn decimal_digits(mut v: u64) -> usize {
    let mut d = 1;
    while v >= 10 {
        v /= 10;
        d += 1;
    }
    d
}

/// Decides, per request number, whether it is a fresh attempt or a repeat.
#[derive(Debug, Clone)]
pub struct Crowd {
    seed: u64,
    /// `repeat_share * 2^64`: request n repeats iff its coin is below this.
    threshold: u64,
}

/// The largest repeat share accepted: chains of repeats have expected length
/// 1/(1-share), so values near 1 would make resolution unbounded in practice.
pub const MAX_REPEAT_SHARE: f64 = 0.99;

impl Crowd {
    pub fn new(seed: u64, repeat_share: f64) -> Result<Self, String> {
        if !(0.0..=MAX_REPEAT_SHARE).contains(&repeat_share) {
            return Err(format!(
                "--repeat-share {repeat_share} must be within 0..={MAX_REPEAT_SHARE}"
            ));
        }
        Ok(Crowd {
            seed,
            threshold: (repeat_share * 2f64.powi(64)) as u64,
        })
    }

    pub fn is_repeat(&self, n: u64) -> bool {
        n > 0 && hash3(self.seed, 1, n) < self.threshold
    }

    /// The fresh request that request `n` ultimately repeats (itself if fresh).
    /// A repeat picks a uniformly random earlier request; if that one was
    /// itself a repeat we follow it, so a repeat always re-sends exactly an
    /// attempt (same user, same voucher) that was made before.
    pub fn origin(&self, mut n: u64) -> u64 {
        while self.is_repeat(n) {
            n = hash3(self.seed, 2, n) % n;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn permutation_is_a_bijection() {
        for n in [1u64, 2, 3, 7, 1000, 4097, 65_536] {
            let p = Permutation::new(n, 42);
            let seen: HashSet<u64> = (0..n).map(|i| p.apply(i)).collect();
            assert_eq!(seen.len() as u64, n, "n={n}");
            assert!(seen.iter().all(|&v| v < n));
        }
    }

    #[test]
    fn large_odd_sized_permutation_is_a_bijection() {
        // 1,000,003 needs 20 bits, so the domain barely exceeds n; 1,500,007
        // needs 21, rounded up to 22, so most Feistel outputs fall outside
        // 0..n and cycle-walking does real work.
        for n in [1_000_003u64, 1_500_007] {
            let p = Permutation::new(n, 11);
            let mut hit = vec![false; n as usize];
            for i in 0..n {
                let v = p.apply(i) as usize;
                assert!(!hit[v], "n={n}: {v} reached twice");
                hit[v] = true;
            }
        }
    }

    #[test]
    fn users_are_distinct_over_a_range_and_deterministic() {
        let u = UserSpace::new(40_000_000, 7, "+98912").expect("valid");
        let phones: HashSet<String> = (0..200_000).map(|i| u.phone(i).to_string()).collect();
        assert_eq!(phones.len(), 200_000);
        let again = UserSpace::new(40_000_000, 7, "+98912").expect("valid");
        for i in [0u64, 1, 12_345, 39_999_999] {
            assert_eq!(u.phone(i).as_str(), again.phone(i).as_str());
        }
        let other = UserSpace::new(40_000_000, 8, "+98912").expect("valid");
        let differ = (0..100)
            .filter(|&i| u.phone(i).as_str() != other.phone(i).as_str())
            .count();
        assert!(differ > 90, "another seed should give another order");
    }

    #[test]
    fn every_index_maps_to_a_valid_e164_phone() {
        let u = UserSpace::new(40_000_000, 3, "+98912").expect("valid");
        let step = 9_973; // prime stride samples the whole range, ends included
        let mut i = 0;
        while i < 40_000_000 {
            let p = u.phone(i);
            assert!(is_e164(p.as_str()), "{p:?}");
            assert_eq!(p.as_str().len(), "+98912".len() + 8);
            i += step;
        }
        assert!(is_e164(u.phone(39_999_999).as_str()));
        // A small space keeps the real 7-digit suffix.
        let small = UserSpace::new(1000, 3, "+98912").expect("valid");
        assert_eq!(small.phone(5).as_str().len(), 13);
        let all: HashSet<String> = (0..1000).map(|i| small.phone(i).to_string()).collect();
        assert_eq!(all.len(), 1000);
        assert!(all.iter().all(|p| is_e164(p)));
    }

    #[test]
    fn rejects_bad_prefixes() {
        assert!(UserSpace::new(10, 1, "98912").is_err());
        assert!(UserSpace::new(10, 1, "+0891").is_err());
        assert!(UserSpace::new(10, 1, "+98a").is_err());
        assert!(UserSpace::new(10, 1, "+123456789").is_err()); // 9 + 7 = 16 digits
        assert!(UserSpace::new(0, 1, "+98912").is_err());
    }

    #[test]
    fn e164_checker() {
        assert!(is_e164("+989371209055"));
        assert!(!is_e164("989371209055"));
        assert!(!is_e164("+0123456789"));
        assert!(!is_e164("+1234567"));
        assert!(!is_e164("+1234567890123456"));
    }

    #[test]
    fn repeats_point_backwards_at_the_requested_share() {
        let c = Crowd::new(9, 0.1).expect("valid");
        let n = 100_000u64;
        let repeats = (0..n).filter(|&i| c.is_repeat(i)).count() as f64 / n as f64;
        assert!((repeats - 0.1).abs() < 0.01, "share {repeats}");
        for i in 0..n {
            let o = c.origin(i);
            assert!(o <= i && !c.is_repeat(o));
        }
        assert!(!c.is_repeat(0));
        let none = Crowd::new(9, 0.0).expect("valid");
        assert!((0..10_000).all(|i| none.origin(i) == i));
        assert!(Crowd::new(9, 1.0).is_err());
        assert!(Crowd::new(9, -0.1).is_err());
    }
}
