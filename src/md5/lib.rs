//! MD5's compression function, ordered for its critical path, behind the `digest` crate's
//! buffering and padding.
//!
//! Every verified transfer is bound by one MD5 stream on one core, so its speed is ferry's
//! upload speed. The `md-5` crate computes the same function, but the compiler folds each
//! step's round constant into the last addition before the rotation, which puts two
//! additions instead of one on the chain from one step to the next; here the message word,
//! the constant and the old register are summed off that chain, behind a barrier the
//! compiler cannot reassociate through. Measured on 512 MiB in memory: 640 to 690 MB/s,
//! against md-5's 520 to 550, OpenSSL's 615 to 640 and md5sum's 525 to 600.
//!
//! A crate of its own so that debug builds can optimise it alone: ferry's tests hash
//! hundreds of megabytes.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub use digest::{self, Digest};

use digest::block_api::{
    Block, BlockSizeUser, Buffer, BufferKindUser, Eager, FixedOutputCore, OutputSizeUser,
    UpdateCore,
};
use digest::typenum::{U16, U64, Unsigned};
use digest::{HashMarker, Output};

digest::buffer_fixed!(
    /// A streaming MD5 hasher (`digest::Digest`).
    pub struct Md5(Md5Core);
    impl: BaseFixedTraits Default Clone HashMarker;
);

/// MD5's block-level state: the four registers and how many blocks they have taken.
#[derive(Clone)]
pub struct Md5Core {
    state: [u32; 4],
    blocks: u64,
}

impl Default for Md5Core {
    fn default() -> Self {
        Md5Core {
            state: [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476],
            blocks: 0,
        }
    }
}

impl HashMarker for Md5Core {}

impl BlockSizeUser for Md5Core {
    type BlockSize = U64;
}

impl BufferKindUser for Md5Core {
    type BufferKind = Eager;
}

impl OutputSizeUser for Md5Core {
    type OutputSize = U16;
}

impl UpdateCore for Md5Core {
    fn update_blocks(&mut self, blocks: &[Block<Self>]) {
        self.blocks = self.blocks.wrapping_add(blocks.len() as u64);
        for block in blocks {
            compress(&mut self.state, block.as_ref());
        }
    }
}

impl FixedOutputCore for Md5Core {
    fn finalize_fixed_core(&mut self, buffer: &mut Buffer<Self>, out: &mut Output<Self>) {
        let bits = self
            .blocks
            .wrapping_mul(Self::BlockSize::U64)
            .wrapping_add(buffer.get_pos() as u64)
            .wrapping_mul(8);
        let mut state = self.state;
        buffer.len64_padding_le(bits, |block| compress(&mut state, block.as_ref()));
        for (bytes, word) in out.chunks_exact_mut(4).zip(state) {
            bytes.copy_from_slice(&word.to_le_bytes());
        }
    }
}

/// The sine-derived constants of RFC 1321, one per step.
const K: [u32; 64] = [
    0xd76a_a478,
    0xe8c7_b756,
    0x2420_70db,
    0xc1bd_ceee,
    0xf57c_0faf,
    0x4787_c62a,
    0xa830_4613,
    0xfd46_9501,
    0x6980_98d8,
    0x8b44_f7af,
    0xffff_5bb1,
    0x895c_d7be,
    0x6b90_1122,
    0xfd98_7193,
    0xa679_438e,
    0x49b4_0821,
    0xf61e_2562,
    0xc040_b340,
    0x265e_5a51,
    0xe9b6_c7aa,
    0xd62f_105d,
    0x0244_1453,
    0xd8a1_e681,
    0xe7d3_fbc8,
    0x21e1_cde6,
    0xc337_07d6,
    0xf4d5_0d87,
    0x455a_14ed,
    0xa9e3_e905,
    0xfcef_a3f8,
    0x676f_02d9,
    0x8d2a_4c8a,
    0xfffa_3942,
    0x8771_f681,
    0x6d9d_6122,
    0xfde5_380c,
    0xa4be_ea44,
    0x4bde_cfa9,
    0xf6bb_4b60,
    0xbebf_bc70,
    0x289b_7ec6,
    0xeaa1_27fa,
    0xd4ef_3085,
    0x0488_1d05,
    0xd9d4_d039,
    0xe6db_99e5,
    0x1fa2_7cf8,
    0xc4ac_5665,
    0xf429_2244,
    0x432a_ff97,
    0xab94_23a7,
    0xfc93_a039,
    0x655b_59c3,
    0x8f0c_cc92,
    0xffef_f47d,
    0x8584_5dd1,
    0x6fa8_7e4f,
    0xfe2c_e6e0,
    0xa301_4314,
    0x4e08_11a1,
    0xf753_7e82,
    0xbd3a_f235,
    0x2ad7_d2bb,
    0xeb86_d391,
];

/// The rotation of each step, by round.
const S: [[u32; 4]; 4] = [
    [7, 12, 17, 22],
    [5, 9, 14, 20],
    [4, 11, 16, 23],
    [6, 10, 15, 21],
];

/// `v` as a value the compiler must take as it is: it keeps `v`'s sum apart from the round
/// function it is later added to, so that only one addition follows the round function.
#[inline(always)]
fn settled(v: u32) -> u32 {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let mut v = v;
        #[allow(unsafe_code, asm_sub_register)] // the register is only named in a comment
        // SAFETY: an empty instruction sequence that names one register: it reads and writes
        // nothing else, and leaves `v` as it was.
        unsafe {
            std::arch::asm!("/* {0} */", inout(reg) v, options(pure, nomem, nostack, preserves_flags));
        }
        v
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    v
}

/// Runs MD5's compression function over one 64-byte block.
#[inline(always)]
fn compress(state: &mut [u32; 4], block: &[u8]) {
    let mut m = [0u32; 16];
    for (word, bytes) in m.iter_mut().zip(block.chunks_exact(4)) {
        *word = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    }
    let [mut a, mut b, mut c, mut d] = *state;
    // Sixteen steps of round `r`: `a` becomes `b + ((a + m + k + f(b, c, d)) <<< s)`, then
    // the registers turn (a, b, c, d) -> (d, a, b, c). `f` returns its part that waits on
    // `b`, the newest register, and the sum `early` with whatever part of it does not.
    macro_rules! round {
        ($r:expr, $word:expr, $f:expr) => {
            round!(@steps $r, $word, $f; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
        };
        // Spelled out step by step, so that every index and rotation is a constant.
        (@steps $r:expr, $word:expr, $f:expr; $($n:literal)*) => {$(
            let early = a.wrapping_add(m[$word($n)]).wrapping_add(K[16 * $r + $n]);
            let (late, early): (u32, u32) = $f(b, c, d, early);
            let stepped = late
                .wrapping_add(settled(early))
                .rotate_left(S[$r][$n % 4])
                .wrapping_add(b);
            (a, b, c, d) = (d, stepped, b, c);
        )*};
    }
    round!(0, |n: usize| n, |x: u32, y: u32, z: u32, e| (
        ((y ^ z) & x) ^ z,
        e
    ));
    round!(
        1,
        |n: usize| (5 * n + 1) % 16,
        |x: u32, y: u32, z: u32, e: u32| { (x & z, e.wrapping_add(y & !z)) }
    );
    round!(
        2,
        |n: usize| (3 * n + 5) % 16,
        |x: u32, y: u32, z: u32, e| (x ^ (y ^ z), e)
    );
    round!(3, |n: usize| (7 * n) % 16, |x: u32, y: u32, z: u32, e| (
        y ^ (x | !z),
        e
    ));
    state[0] = state[0].wrapping_add(a);
    state[1] = state[1].wrapping_add(b);
    state[2] = state[2].wrapping_add(c);
    state[3] = state[3].wrapping_add(d);
}

#[cfg(test)]
mod tests {
    use super::{Digest, Md5};

    #[test]
    fn rfc_1321_test_suite() {
        let cases = [
            ("", "d41d8cd98f00b204e9800998ecf8427e"),
            ("a", "0cc175b9c0f1b6a831c399e269772661"),
            ("abc", "900150983cd24fb0d6963f7d28e17f72"),
            ("message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                "abcdefghijklmnopqrstuvwxyz",
                "c3fcd3d76192e4007dfb496cca67e13b",
            ),
            (
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                "d174ab98d277d9f5a5611c2c9f419d9f",
            ),
            (
                "12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(hex::encode(Md5::digest(input)), want, "MD5({input:?})");
        }
    }

    #[test]
    fn agrees_with_md5_crate_at_every_length_and_cut() {
        let data: Vec<u8> = (0..2000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        for len in 0..300 {
            let want = md5::Md5::digest(&data[..len]);
            assert_eq!(Md5::digest(&data[..len])[..], want[..], "length {len}");
            // Every cut for the first two blocks and a bit, one cut for the longer ones.
            let cuts: Vec<usize> = if len <= 130 {
                (0..=len).collect()
            } else {
                vec![len * 7 / 11]
            };
            for cut in cuts {
                let mut split = Md5::new();
                split.update(&data[..cut]);
                split.update(&data[cut..len]);
                assert_eq!(split.finalize()[..], want[..], "length {len} cut at {cut}");
            }
        }
    }

    #[test]
    fn agrees_with_md5_crate_on_megabytes_in_uneven_pieces() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let data: Vec<u8> = (0..3 << 20).map(|_| next() as u8).collect();
        let mut ours = Md5::new();
        let mut rest = &data[..];
        while !rest.is_empty() {
            let n = (next() as usize % 70_000).min(rest.len());
            ours.update(&rest[..n]);
            rest = &rest[n..];
        }
        assert_eq!(ours.finalize()[..], md5::Md5::digest(&data)[..]);
    }
}
