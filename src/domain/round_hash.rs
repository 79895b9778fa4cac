//! The codec's Feistel round function: SipHash-1-3 of a 9-byte message (the round's index, then
//! a half's 8 little-endian bytes), written out for exactly that message.
//!
//! Why not `siphasher` here, which the rest of the codec uses: its one-shot `hash` takes any
//! message, and pays for that (the key set up again, the bytes gathered into words, the tail
//! handled in a loop) on each of the 10 to 20 calls a number costs. That was 15% of tracknum's
//! CPU in batches of 1000 (`perf`, 2026-12-05). This one starts from the keyed state, worked
//! out once, and takes the message as two known words. `the_same_as_siphasher` checks that it
//! answers exactly as `siphasher::sip::SipHasher13::hash` does: the numbers depend on it.

/// SipHash-1-3 keyed and ready: the four state words after the key is set.
#[derive(Clone, Copy)]
pub struct RoundKey {
    v: [u64; 4],
}

impl RoundKey {
    /// The state SipHash starts from under a 16-byte key (its two little-endian halves).
    pub fn new(key: &[u8; 16]) -> RoundKey {
        let half = |at: usize| {
            let mut word = [0; 8];
            word.copy_from_slice(&key[at..at + 8]);
            u64::from_le_bytes(word)
        };
        let (k0, k1) = (half(0), half(8));
        RoundKey {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f6d,
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
        }
    }

    /// SipHash-1-3 of the 9 bytes `index`, `r.to_le_bytes()`.
    #[inline]
    pub fn hash(&self, index: u8, r: u64) -> u64 {
        let [mut v0, mut v1, mut v2, mut v3] = self.v;
        let compress = |v0: &mut u64, v1: &mut u64, v2: &mut u64, v3: &mut u64| {
            *v0 = v0.wrapping_add(*v1);
            *v1 = v1.rotate_left(13) ^ *v0;
            *v0 = v0.rotate_left(32);
            *v2 = v2.wrapping_add(*v3);
            *v3 = v3.rotate_left(16) ^ *v2;
            *v0 = v0.wrapping_add(*v3);
            *v3 = v3.rotate_left(21) ^ *v0;
            *v2 = v2.wrapping_add(*v1);
            *v1 = v1.rotate_left(17) ^ *v2;
            *v2 = v2.rotate_left(32);
        };
        // The first word: the index, then r's low 7 bytes. The last: r's top byte, and the
        // message's length (9) in the top byte, as SipHash ends every message.
        for word in [u64::from(index) | r << 8, r >> 56 | 9 << 56] {
            v3 ^= word;
            compress(&mut v0, &mut v1, &mut v2, &mut v3);
            v0 ^= word;
        }
        v2 ^= 0xff;
        for _ in 0..3 {
            compress(&mut v0, &mut v1, &mut v2, &mut v3);
        }
        v0 ^ v1 ^ v2 ^ v3
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use siphasher::sip::SipHasher13;

    fn siphasher(key: &[u8; 16], index: u8, r: u64) -> u64 {
        let mut msg = [0u8; 9];
        msg[0] = index;
        msg[1..].copy_from_slice(&r.to_le_bytes());
        SipHasher13::new_with_key(key).hash(&msg)
    }

    #[test]
    fn the_same_as_siphasher() {
        // A cheap generator (xorshift) walks keys, indices and halves of every size.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut key = [0u8; 16];
        for _ in 0..200 {
            key[..8].copy_from_slice(&next().to_le_bytes());
            key[8..].copy_from_slice(&next().to_le_bytes());
            let ready = RoundKey::new(&key);
            for index in 0..20u8 {
                for r in [
                    0,
                    1,
                    35,
                    36u64.pow(5) - 1,
                    36u64.pow(6) - 1,
                    u64::MAX,
                    next(),
                ] {
                    assert_eq!(
                        ready.hash(index, r),
                        siphasher(&key, index, r),
                        "{index} {r}"
                    );
                }
                let r = next() >> (next() % 64);
                assert_eq!(
                    ready.hash(index, r),
                    siphasher(&key, index, r),
                    "{index} {r}"
                );
            }
        }
    }

    #[test]
    fn every_bit_of_the_message_and_key_counts() {
        let key = [7u8; 16];
        let ready = RoundKey::new(&key);
        let base = ready.hash(3, 0x0123_4567_89ab_cdef);
        assert_ne!(ready.hash(2, 0x0123_4567_89ab_cdef), base);
        for bit in 0..64 {
            assert_ne!(
                ready.hash(3, 0x0123_4567_89ab_cdef ^ 1 << bit),
                base,
                "bit {bit}"
            );
        }
        let mut other = key;
        other[15] ^= 0x80;
        assert_ne!(RoundKey::new(&other).hash(3, 0x0123_4567_89ab_cdef), base);
    }
}

#[cfg(test)]
mod known_answers {
    use crate::domain::codec::{Codec, Layout, NODE_SERIALS};

    /// Computed by the codec before this module existed: the numbers depend on these values.
    #[test]
    fn the_codec_maps_serials_as_it_always_did() {
        let shared = Codec::new(b"known-answer-secret");
        let nodes = Codec::with_layout(
            b"known-answer-secret",
            Layout::Nodes {
                legacy_below: 0,
                skip_below: 0,
            },
        );
        let expected: [(u64, u64, u64); 4] = [
            (0, 108_499_936_138_439_175, 13_641_189_521_663_396),
            (1, 31_051_501_988_263_462, 15_678_028_869_681_399),
            (
                12_345_678_901,
                126_425_899_013_695_217,
                15_765_336_495_364_059,
            ),
            (
                131_621_703_842_267_135,
                7_189_310_071_839_689,
                13_433_583_829_221_718,
            ),
        ];
        for (serial, whole_space, in_partition_3) in expected {
            assert_eq!(shared.permute(serial), whole_space, "{serial}");
            assert_eq!(shared.unpermute(whole_space), serial);
            let serial = serial % NODE_SERIALS + 3 * NODE_SERIALS;
            assert_eq!(nodes.scramble(serial), in_partition_3, "{serial}");
            assert_eq!(nodes.unscramble(in_partition_3), serial);
        }
    }
}
