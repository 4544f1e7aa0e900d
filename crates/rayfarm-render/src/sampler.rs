//! Deterministic low-discrepancy sampling.
//!
//! Every random number of a sample is a pure function of (job seed, pixel or texel index,
//! sample index, dimension): padded 2-D Sobol points with hash-based Owen scrambling and
//! index shuffling (Burley, "Practical Hash-based Owen Scrambling", JCGT 2020). Nothing depends
//! on thread, tile or machine, which is what makes distributed renders bit-identical.

/// 64-bit finaliser (SplitMix64) used to derive independent seeds.
#[inline(always)]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

#[inline(always)]
fn laine_karras(mut x: u32, seed: u32) -> u32 {
    x = x.wrapping_add(seed);
    x ^= x.wrapping_mul(0x6c50b47c);
    x ^= x.wrapping_mul(0xb82f1e52);
    x ^= x.wrapping_mul(0xc7afe638);
    x ^= x.wrapping_mul(0x8d22f6e6);
    x
}

#[inline(always)]
fn owen(x: u32, seed: u32) -> u32 {
    laine_karras(x.reverse_bits(), seed).reverse_bits()
}

/// Generator matrix columns of one Sobol dimension from its Joe-Kuo direction numbers
/// (degree `s`, coefficients `a`, initial numbers `m`; "new-joe-kuo-6.21201"): column `k` is
/// the value of index `1 << k`, most significant bit first.
const fn sobol_columns(s: usize, a: u32, m: [u32; 3]) -> [u32; 32] {
    let mut v = [0u32; 32];
    let mut i = 0;
    while i < s {
        v[i] = m[i] << (31 - i);
        i += 1;
    }
    while i < 32 {
        let mut x = v[i - s] ^ (v[i - s] >> s);
        let mut k = 1;
        while k < s {
            if (a >> (s - 1 - k)) & 1 != 0 {
                x ^= v[i - k];
            }
            k += 1;
        }
        v[i] = x;
        i += 1;
    }
    v
}

/// The Sobol dimensions after the first (which is the bit-reversed index): Joe-Kuo's
/// dimensions 2, 3 and 4 (polynomials x + 1, x^2 + x + 1, x^3 + x + 1). The first 2^m points
/// of any two of the four dimensions are (0, m, 2)-nets.
const SOBOL_COLUMNS: [[u32; 32]; 3] = [
    sobol_columns(1, 0, [1, 0, 0]),
    sobol_columns(2, 1, [1, 3, 0]),
    sobol_columns(3, 1, [1, 3, 1]),
];

/// Value of index `i` in the dimension with generator `columns`, bit by bit (builds the tables).
const fn sobol_slow(columns: &[u32; 32], mut i: u32) -> u32 {
    let mut r = 0u32;
    let mut bit = 0;
    while i != 0 {
        if i & 1 != 0 {
            r ^= columns[bit];
        }
        i >>= 1;
        bit += 1;
    }
    r
}

/// The generator is linear over GF(2), so the value of a 32-bit index is the XOR of the
/// values of its four bytes in place: four lookups instead of a 32-step loop. The tables hold
/// the values bit-reversed, the form Owen scrambling works on.
const fn reversed_table(columns: &[u32; 32]) -> [[u32; 256]; 4] {
    let mut t = [[0u32; 256]; 4];
    let mut byte = 0;
    while byte < 4 {
        let mut v = 0;
        while v < 256 {
            t[byte][v] = sobol_slow(columns, (v as u32) << (8 * byte)).reverse_bits();
            v += 1;
        }
        byte += 1;
    }
    t
}

const SOBOL_TABLES: [[[u32; 256]; 4]; 3] = [
    reversed_table(&SOBOL_COLUMNS[0]),
    reversed_table(&SOBOL_COLUMNS[1]),
    reversed_table(&SOBOL_COLUMNS[2]),
];

/// Bit-reversed value of index `i` in Sobol dimension `d + 1`.
#[inline(always)]
fn sobol_reversed(d: usize, i: u32) -> u32 {
    let t = &SOBOL_TABLES[d];
    t[0][(i & 255) as usize]
        ^ t[1][((i >> 8) & 255) as usize]
        ^ t[2][((i >> 16) & 255) as usize]
        ^ t[3][(i >> 24) as usize]
}

/// The first two coordinates of a point with dimension hash `h` at index `shuffled`.
#[inline(always)]
fn head(h: u64, shuffled: u32) -> (f32, f32) {
    // Owen scrambling is reverse(LK(reverse(x))); the first dimension is reverse(i), so its
    // scramble is reverse(LK(i)), and the table already holds the second reversed.
    let x = laine_karras(shuffled, (h >> 32) as u32).reverse_bits();
    let y = laine_karras(sobol_reversed(0, shuffled), seed_y(h)).reverse_bits();
    (to_unit(x), to_unit(y))
}

/// The third and fourth coordinates of the same point.
#[inline(always)]
fn tail(h: u64, shuffled: u32) -> (f32, f32) {
    let h2 = mix64(h ^ 0x2545f4914f6cdd1d);
    let z = laine_karras(sobol_reversed(1, shuffled), h2 as u32).reverse_bits();
    let w = laine_karras(sobol_reversed(2, shuffled), (h2 >> 32) as u32).reverse_bits();
    (to_unit(z), to_unit(w))
}

/// The scrambling seed of a point's second coordinate, from its dimension's hash.
#[inline(always)]
fn seed_y(h: u64) -> u32 {
    (h as u32) ^ ((h >> 32) as u32).rotate_left(16) ^ 0x5bd1e995
}

#[inline(always)]
fn to_unit(x: u32) -> f32 {
    // 24 bits so the result is exactly representable and strictly below 1.
    (x >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
}

/// The sample stream of one (pixel, sample index).
#[derive(Clone, Debug)]
pub struct Sampler {
    pixel_seed: u64,
    index: u32,
    dim: u32,
}

impl Sampler {
    /// `pixel` is the pixel (or texel) index in the whole image, `index` the sample number.
    #[inline]
    pub fn new(job_seed: u64, pixel: u64, index: u32) -> Sampler {
        Sampler {
            pixel_seed: mix64(job_seed ^ mix64(pixel.wrapping_add(0x9e3779b97f4a7c15))),
            index,
            dim: 0,
        }
    }

    /// Skips to a fixed dimension so each bounce uses the same dimensions whatever came before.
    #[inline]
    pub fn set_dimension(&mut self, dim: u32) {
        self.dim = dim;
    }

    #[inline]
    pub fn next_2d(&mut self) -> (f32, f32) {
        self.next_2d_inline()
    }

    #[inline(always)]
    fn next_2d_inline(&mut self) -> (f32, f32) {
        let p = self.point_2d(self.dim);
        self.dim += 1;
        p
    }

    /// The hash of dimension `dim`: its index shuffle and scrambling seeds.
    #[inline(always)]
    fn dim_hash(&self, dim: u32) -> u64 {
        mix64(self.pixel_seed ^ (dim as u64).wrapping_mul(0xd1b54a32d192ed03))
    }

    /// The 2-D point of dimension `dim` (what [`Sampler::next_2d`] returns there): Sobol
    /// dimensions 1 and 2, Owen-scrambled, at this sample's shuffled index.
    #[inline(always)]
    pub fn point_2d(&self, dim: u32) -> (f32, f32) {
        let (h, shuffled) = self.shuffled(dim);
        head(h, shuffled)
    }

    /// The 4-D point of dimension `dim`: Sobol dimensions 1 to 4, each Owen-scrambled, at one
    /// shuffled index, so that a pixel's samples are stratified in all four at once, not only
    /// pair by pair. Its first two coordinates are [`Sampler::point_2d`]`(dim)`. The path
    /// tracer pairs a bounce's BSDF direction with the next vertex's light point this way:
    /// indirect light is an integral over both.
    #[inline(always)]
    pub fn point_4d(&self, dim: u32) -> [f32; 4] {
        let (h, shuffled) = self.shuffled(dim);
        let ((x, y), (z, w)) = (head(h, shuffled), tail(h, shuffled));
        [x, y, z, w]
    }

    /// The last two coordinates of [`Sampler::point_4d`]`(dim)` alone.
    #[inline(always)]
    pub fn point_4d_tail(&self, dim: u32) -> (f32, f32) {
        let (h, shuffled) = self.shuffled(dim);
        tail(h, shuffled)
    }

    /// Dimension `dim`'s hash and this sample's index shuffled by it.
    #[inline(always)]
    fn shuffled(&self, dim: u32) -> (u64, u32) {
        let h = self.dim_hash(dim);
        (h, owen(self.index, h as u32))
    }

    #[inline]
    pub fn next_1d(&mut self) -> f32 {
        self.next_2d().0
    }

    /// A uniform number for a discrete choice (light pick, lobe, roulette, alpha), from a
    /// plain hash of (pixel, sample, `slot`) rather than the scrambled Sobol sequence: such
    /// choices gain little from stratification and the hash is several times cheaper. `slot`
    /// must be unique per use within a sample.
    #[inline]
    pub fn hashed(&self, slot: u32) -> f32 {
        let h = mix64(
            self.pixel_seed
                ^ ((self.index as u64) << 32 | slot as u64).wrapping_mul(0x9e3779b97f4a7c15),
        );
        to_unit((h >> 32) as u32)
    }
}

/// Lanes of [`Sampler`]s (one path each), for the wavefront kernel: the same numbers as the
/// scalar sampler, computed lane by lane in loops the compiler vectorises.
pub mod lanes {
    use super::*;
    pub const W: usize = 16;

    /// The `pixel_seed` of `Sampler::new(job_seed, pixel, _)`.
    #[inline(always)]
    pub fn pixel_seed(job_seed: u64, pixel: u64) -> u64 {
        mix64(job_seed ^ mix64(pixel.wrapping_add(0x9e3779b97f4a7c15)))
    }

    use crate::lanes::{F, U, U64};

    #[inline(always)]
    fn mix64v(z: U64) -> U64 {
        let z = (z ^ z.shr(30)).wrapping_mul(0xbf58476d1ce4e5b9);
        let z = (z ^ z.shr(27)).wrapping_mul(0x94d049bb133111eb);
        z ^ z.shr(31)
    }

    #[inline(always)]
    fn lk(x: U, seed: U) -> U {
        let mut x = x.wrapping_add(seed);
        x = x ^ x.wrapping_mul(0x6c50b47c);
        x = x ^ x.wrapping_mul(0xb82f1e52);
        x = x ^ x.wrapping_mul(0xc7afe638);
        x = x ^ x.wrapping_mul(0x8d22f6e6);
        x
    }

    #[inline(always)]
    fn sobol_rev(d: usize, i: U) -> U {
        let t = &SOBOL_TABLES[d];
        i.lookup(&t[0]) ^ (i >> 8).lookup(&t[1]) ^ (i >> 16).lookup(&t[2]) ^ (i >> 24).lookup(&t[3])
    }

    #[inline(always)]
    fn unit(x: U) -> F {
        F::from_i32(x >> 8) * F::splat(1.0 / (1u32 << 24) as f32)
    }

    /// `Sampler::point_4d(dims[i])` of each lane `i`, and `point_2d(dims[i] + 1).1` when `rr`.
    #[inline(always)]
    pub fn point_4d_dims(
        seed: &[u64; W],
        index: &[u32; W],
        dims: &[u32; W],
        rr: bool,
    ) -> ([[f32; W]; 4], [f32; W]) {
        let seed = U64(*seed);
        let index = U(*index);
        let dims = U(*dims);
        let h = mix64v(seed ^ U64::from_u32(dims).wrapping_mul(0xd1b54a32d192ed03));
        let sh = lk(index.reverse_bits(), h.lo()).reverse_bits();
        let seed_y = |h: U64| {
            let hi = h.hi();
            h.lo() ^ ((hi << 16) | (hi >> 16)) ^ U::splat(0x5bd1e995)
        };
        let x = lk(sh, h.hi()).reverse_bits();
        let y = lk(sobol_rev(0, sh), seed_y(h)).reverse_bits();
        let h2 = mix64v(h ^ U64([0x2545f4914f6cdd1d; W]));
        let z = lk(sobol_rev(1, sh), h2.lo()).reverse_bits();
        let w = lk(sobol_rev(2, sh), h2.hi()).reverse_bits();
        let out = [unit(x).0, unit(y).0, unit(z).0, unit(w).0];
        let mut urr = [0f32; W];
        if rr {
            let h = mix64v(
                seed ^ U64::from_u32(dims.wrapping_add(U::splat(1)))
                    .wrapping_mul(0xd1b54a32d192ed03),
            );
            let sh = lk(index.reverse_bits(), h.lo()).reverse_bits();
            urr = unit(lk(sobol_rev(0, sh), seed_y(h)).reverse_bits()).0;
        }
        (out, urr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_in_range() {
        let mut a = Sampler::new(1, 42, 7);
        let mut b = Sampler::new(1, 42, 7);
        for _ in 0..100 {
            let (x, y) = a.next_2d();
            assert_eq!((x, y), b.next_2d());
            assert!((0.0..1.0).contains(&x) && (0.0..1.0).contains(&y));
        }
    }

    /// Second Sobol dimension (primitive polynomial x + 1), bit by bit: an oracle written
    /// without direction numbers.
    fn sobol1_slow(mut i: u32) -> u32 {
        let mut v = 1u32 << 31;
        let mut r = 0u32;
        while i != 0 {
            if i & 1 != 0 {
                r ^= v;
            }
            i >>= 1;
            v ^= v >> 1;
        }
        r
    }

    #[test]
    fn sobol_dimensions_follow_their_direction_numbers() {
        // The first eight points of Joe-Kuo dimensions 2-4 in index (not Gray-code) order, in
        // eighths, worked out by hand from v1 = m1 / 2, v2 = m2 / 4 and the recurrence.
        let expect: [[u32; 8]; 3] = [
            [0, 4, 6, 2, 5, 1, 3, 7],
            [0, 4, 6, 2, 3, 7, 5, 1],
            [0, 4, 6, 2, 1, 5, 7, 3],
        ];
        for (d, e) in expect.iter().enumerate() {
            let got: Vec<u32> = (0..8)
                .map(|i| sobol_slow(&SOBOL_COLUMNS[d], i) >> 29)
                .collect();
            assert_eq!(&got[..], &e[..], "dimension {}", d + 2);
            for i in [0u32, 1, 77, 0x00ff_ff00, 0x1234_5678, u32::MAX] {
                assert_eq!(
                    sobol_reversed(d, i),
                    sobol_slow(&SOBOL_COLUMNS[d], i).reverse_bits()
                );
            }
        }
    }

    #[test]
    fn a_pixels_4d_points_are_stratified_in_every_pair_of_coordinates() {
        // 64 samples of one pixel: each pair of coordinates falls once into each of the 8x8
        // cells (Owen scrambling keeps the nets of the unscrambled points), for any dimension.
        for dim in [0u32, 1, 7] {
            let pts: Vec<[f32; 4]> = (0..64)
                .map(|i| Sampler::new(5, 321, i).point_4d(dim))
                .collect();
            for a in 0..4 {
                for b in a + 1..4 {
                    let mut cells = [false; 64];
                    for p in &pts {
                        cells[(p[a] * 8.0) as usize * 8 + (p[b] * 8.0) as usize] = true;
                    }
                    assert!(
                        cells.iter().all(|&c| c),
                        "dim {dim}, coordinates {a} and {b}"
                    );
                }
            }
            // And jointly: 2x2x4x4 cells, each holding at most two points (t <= 1).
            let mut count = [0u8; 64];
            for p in &pts {
                let cell = (p[0] * 2.0) as usize * 32
                    + (p[1] * 2.0) as usize * 16
                    + (p[2] * 4.0) as usize * 4
                    + (p[3] * 4.0) as usize;
                count[cell] += 1;
            }
            assert!(count.iter().all(|&c| c <= 2), "dim {dim}: {count:?}");
        }
    }

    #[test]
    fn point_4d_starts_with_point_2d() {
        let mut s = Sampler::new(2, 99, 13);
        let p = s.point_4d(6);
        assert_eq!((p[0], p[1]), s.point_2d(6));
        assert_eq!((p[2], p[3]), s.point_4d_tail(6));
        s.set_dimension(6);
        assert_eq!((p[0], p[1]), s.next_2d());
    }

    #[test]
    fn sobol_table_matches_definition() {
        for i in [0u32, 1, 2, 3, 255, 256, 65535, 0x1234_5678, u32::MAX] {
            assert_eq!(sobol_reversed(0, i), sobol1_slow(i).reverse_bits());
        }
    }

    #[test]
    fn stratified_mean() {
        // 256 samples of one pixel: the 2-D points should integrate x*y well.
        let mut sum = 0.0f64;
        for i in 0..256 {
            let mut s = Sampler::new(3, 11, i);
            s.set_dimension(5);
            let (x, y) = s.next_2d();
            sum += (x * y) as f64;
        }
        let mean = sum / 256.0;
        assert!((mean - 0.25).abs() < 0.005, "mean {mean}");
    }
}
