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

/// Second Sobol dimension (primitive polynomial x + 1), bit by bit; used to build the table.
const fn sobol1_slow(mut i: u32) -> u32 {
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

/// The generator is linear over GF(2), so the value of a 32-bit index is the XOR of the
/// values of its four bytes in place: four lookups instead of a 32-step loop. The table holds
/// the values bit-reversed, the form Owen scrambling works on.
const SOBOL1_TABLE: [[u32; 256]; 4] = {
    let mut t = [[0u32; 256]; 4];
    let mut byte = 0;
    while byte < 4 {
        let mut v = 0;
        while v < 256 {
            t[byte][v] = sobol1_slow((v as u32) << (8 * byte)).reverse_bits();
            v += 1;
        }
        byte += 1;
    }
    t
};

/// Bit-reversed second Sobol dimension.
#[inline(always)]
fn sobol1_reversed(i: u32) -> u32 {
    SOBOL1_TABLE[0][(i & 255) as usize]
        ^ SOBOL1_TABLE[1][((i >> 8) & 255) as usize]
        ^ SOBOL1_TABLE[2][((i >> 16) & 255) as usize]
        ^ SOBOL1_TABLE[3][(i >> 24) as usize]
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

    /// The next `N` 2-D points, the same as `N` calls of [`Sampler::next_2d`]. Their hash chains
    /// do not depend on each other, so the CPU overlaps them: one call of this is much cheaper
    /// than `N` calls spread over a bounce, each of which waits for its own chain.
    #[inline(always)]
    pub fn next_2d_n<const N: usize>(&mut self) -> [(f32, f32); N] {
        let first = self.dim;
        self.dim += N as u32;
        std::array::from_fn(|k| {
            let mut s = Sampler {
                dim: first + k as u32,
                ..*self
            };
            s.next_2d_inline()
        })
    }

    #[inline(always)]
    fn next_2d_inline(&mut self) -> (f32, f32) {
        let h = mix64(self.pixel_seed ^ (self.dim as u64).wrapping_mul(0xd1b54a32d192ed03));
        self.dim += 1;
        let shuffled = owen(self.index, h as u32);
        // Owen scrambling is reverse(LK(reverse(x))); the first dimension is reverse(i), so
        // its scramble is reverse(LK(i)), and the table already holds the second reversed.
        let x = laine_karras(shuffled, (h >> 32) as u32).reverse_bits();
        let seed_y = (h as u32) ^ ((h >> 32) as u32).rotate_left(16) ^ 0x5bd1e995;
        let y = laine_karras(sobol1_reversed(shuffled), seed_y).reverse_bits();
        (to_unit(x), to_unit(y))
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

    #[test]
    fn next_2d_n_is_n_calls_of_next_2d() {
        let mut a = Sampler::new(9, 1234, 77);
        let mut b = a.clone();
        a.set_dimension(4);
        b.set_dimension(4);
        let three = a.next_2d_n::<3>();
        let one_by_one = [b.next_2d(), b.next_2d(), b.next_2d()];
        assert_eq!(three, one_by_one);
        assert_eq!(a.next_2d(), b.next_2d());
    }

    #[test]
    fn sobol_table_matches_definition() {
        for i in [0u32, 1, 2, 3, 255, 256, 65535, 0x1234_5678, u32::MAX] {
            assert_eq!(sobol1_reversed(i), sobol1_slow(i).reverse_bits());
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
