//! Transcendental functions that give the same bits on every CPU.
//!
//! The platform's `f32::sin`, `exp`, `powf`, ... call the C library, and glibc picks among
//! several builds of each at run time (`__sincosf_fma` on a CPU with FMA, another without), so a
//! farm of mixed CPUs could render different bytes from one job. These call the `libm` crate
//! instead: plain Rust, compiled into the binary, the same IEEE operations whatever the CPU or
//! the code path ([`crate::isa`]) that runs them. `sqrt`, `abs`, `min`, `max` and the basic
//! arithmetic are exact in IEEE 754 and stay as they are.
//!
//! Everything in the renderer that decides a pixel uses these (`clippy.toml` of this crate
//! forbids the `f32` methods).

/// The cross product, component by component with separate multiplies and subtractions.
///
/// glam's `Vec3A::cross` fuses a multiply and a subtraction on aarch64 (`vfmsq_f32`) and on
/// x86-64 builds with FMA enabled, and not on plain x86-64, so the same triangle had different
/// normals and hits on different CPUs. This gives x86-64's (SSE2) bits everywhere.
#[inline(always)]
pub fn cross(a: glam::Vec3A, b: glam::Vec3A) -> glam::Vec3A {
    glam::Vec3A::new(
        a.y * b.z - a.z * b.y,
        a.z * b.x - a.x * b.z,
        a.x * b.y - a.y * b.x,
    )
}

/// `v` divided by its length, the way glam's SSE2 `normalize` does it. glam's NEON
/// `normalize` multiplies by the reciprocal length instead, which rounds differently.
#[inline(always)]
pub fn normalize(v: glam::Vec3A) -> glam::Vec3A {
    v / v.length()
}

/// The Taylor coefficients after the first term of [`sin_cos_turns`]'s sine and cosine on
/// [0, π/4] (shared with the wavefront kernel's 16-lane copy, which must compute the same bits).
pub(crate) const SIN_TAYLOR: [f32; 4] = [-1.0 / 6.0, 1.0 / 120.0, -1.0 / 5040.0, 1.0 / 362_880.0];
pub(crate) const COS_TAYLOR: [f32; 5] = [
    -1.0 / 2.0,
    1.0 / 24.0,
    -1.0 / 720.0,
    1.0 / 40_320.0,
    -1.0 / 3_628_800.0,
];

/// `(sin 2πt, cos 2πt)`: the sine and cosine of `t` turns, for the azimuth of a sampled
/// direction (`t` a sample coordinate in `[0, 1)`; any finite `t` works).
///
/// libm's `sincosf` reduces its argument with a chain of range tests that a uniformly random
/// angle defeats: one mispredicted branch per call, a tenth of the Cornell box's mispredictions.
/// This takes the octant of the turn from its integer part, the angle within it by reflection
/// (so it lies in `[0, π/4]`), Taylor polynomials that are exact there to below half an ulp
/// before rounding, and swaps and signs the pair by the octant with bit masks: no branch, and
/// only multiplications and additions, which are the same IEEE operations on every CPU. Within
/// 2 ulps of the true values (tested against f64).
#[inline(always)]
pub fn sin_cos_turns(t: f32) -> (f32, f32) {
    const S: [f32; 4] = SIN_TAYLOR;
    const C: [f32; 5] = COS_TAYLOR;
    let t8 = t * 8.0;
    let whole = floor(t8);
    let f = t8 - whole;
    let octant = (whole as i64 & 7) as u32;
    // Odd octants run backwards from their upper end: the angle from the nearest multiple of
    // π/2, in [0, π/4].
    // |f - 0| is f, and |f - 1| is 1 - f exactly (rounding is symmetric in sign). Not a
    // select between the two bit patterns: LLVM made that a branch on the octant's parity,
    // mispredicted every other azimuth.
    let g = (f - (octant & 1) as f32).abs();
    let a = g * std::f32::consts::FRAC_PI_4;
    let a2 = a * a;
    let sin_a = a + a * (a2 * (S[0] + a2 * (S[1] + a2 * (S[2] + a2 * S[3]))));
    let cos_a = 1.0 + a2 * (C[0] + a2 * (C[1] + a2 * (C[2] + a2 * (C[3] + a2 * C[4]))));
    // Octants 1, 2, 5, 6 are nearer π/2 or 3π/2: sine and cosine trade places.
    let swap = 0u32.wrapping_sub(((octant + 1) >> 1) & 1);
    let (sb, cb) = (sin_a.to_bits(), cos_a.to_bits());
    let x = (sb & !swap) | (cb & swap);
    let y = (cb & !swap) | (sb & swap);
    // The sine is negative in octants 4-7, the cosine in octants 2-5.
    let sin_sign = (octant >> 2) << 31;
    let cos_sign = (((octant + 2) >> 2) & 1) << 31;
    (f32::from_bits(x ^ sin_sign), f32::from_bits(y ^ cos_sign))
}

/// `x.floor()`, without the C library call that `f32::floor` is on x86-64 without SSE4.1 (a
/// texture lookup makes two): truncation, one down for negative non-integers, and the sign of
/// zero kept. The same value for every `f32`, NaN and infinities included (tested).
#[inline(always)]
pub fn floor(x: f32) -> f32 {
    // At and above 2^23 every f32 is an integer; NaN and infinities stay as they are.
    if x.is_nan() || x.abs() >= 8_388_608.0 {
        return x;
    }
    let t = x as i32 as f32;
    // `t - 1` or `t - 0` (which is `t`): a select, not a branch (the octant of a sampled
    // azimuth is 0 one time in eight, which the CPU mispredicted).
    let f = t - f32::from(u8::from(t > x));
    // The result has the sign of `x`: a nonzero `f` has it already, and a zero is +0.0 for
    // `x` in [0, 1) and -0.0 for `x` = -0.0 (floor of (-1, 0) is -1).
    f32::from_bits(f.to_bits() | (x.to_bits() & 0x8000_0000))
}

/// `i.rem_euclid(n)` for `n > 0`, without the division when `i` is already in `[0, n)` (the
/// usual case for a texel index).
#[inline(always)]
pub fn wrap_index(i: i64, n: i64) -> i64 {
    if (0..n).contains(&i) {
        i
    } else {
        i.rem_euclid(n)
    }
}

/// Deterministic transcendental functions on `f32` (see the module documentation).
pub trait DetMath: Copy {
    fn sin_d(self) -> Self;
    fn cos_d(self) -> Self;
    fn sin_cos_d(self) -> (Self, Self);
    fn tan_d(self) -> Self;
    fn acos_d(self) -> Self;
    fn atan2_d(self, x: Self) -> Self;
    fn exp_d(self) -> Self;
    fn ln_d(self) -> Self;
    fn log2_d(self) -> Self;
    fn powf_d(self, e: Self) -> Self;
}

impl DetMath for f32 {
    #[inline]
    fn sin_d(self) -> f32 {
        libm::sinf(self)
    }
    #[inline]
    fn cos_d(self) -> f32 {
        libm::cosf(self)
    }
    #[inline]
    fn sin_cos_d(self) -> (f32, f32) {
        libm::sincosf(self)
    }
    #[inline]
    fn tan_d(self) -> f32 {
        libm::tanf(self)
    }
    #[inline]
    fn acos_d(self) -> f32 {
        libm::acosf(self)
    }
    #[inline]
    fn atan2_d(self, x: f32) -> f32 {
        libm::atan2f(self, x)
    }
    #[inline]
    fn exp_d(self) -> f32 {
        libm::expf(self)
    }
    #[inline]
    fn ln_d(self) -> f32 {
        libm::logf(self)
    }
    #[inline]
    fn log2_d(self) -> f32 {
        libm::log2f(self)
    }
    #[inline]
    fn powf_d(self, e: f32) -> f32 {
        libm::powf(self, e)
    }
}

/// The same, lane by lane, for vectors.
pub trait DetMathVec: Copy {
    fn exp_d(self) -> Self;
    fn powf_d(self, e: f32) -> Self;
}

impl DetMathVec for glam::Vec3A {
    #[inline]
    fn exp_d(self) -> Self {
        glam::Vec3A::new(self.x.exp_d(), self.y.exp_d(), self.z.exp_d())
    }
    #[inline]
    fn powf_d(self, e: f32) -> Self {
        glam::Vec3A::new(self.x.powf_d(e), self.y.powf_d(e), self.z.powf_d(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sin_cos_turns_is_within_two_ulps_and_exact_at_the_axes() {
        let ulp = |v: f64| {
            let v = (v.abs() as f32).max(f32::MIN_POSITIVE);
            (f32::from_bits(v.to_bits() + 1) - v) as f64
        };
        let mut worst = 0.0f64;
        let n = 1 << 20;
        for i in 0..=n {
            // Every 2^-20 of a turn, and each one's neighbours a float away.
            let base = i as f32 / n as f32;
            for t in [
                base,
                f32::from_bits(base.to_bits().saturating_sub(1)),
                f32::from_bits(base.to_bits() + 1),
            ] {
                if !(0.0..=1.0).contains(&t) {
                    continue;
                }
                let (s, c) = sin_cos_turns(t);
                let angle = std::f64::consts::TAU * t as f64;
                let (es, ec) = (angle.sin(), angle.cos());
                for (got, want) in [(s, es), (c, ec)] {
                    // Near a zero of sin or cos the error is measured against 1 ulp of the
                    // argument's scale (2^-24): the reduced angle carries that rounding.
                    let err = (got as f64 - want).abs() / ulp(want).max(6e-8);
                    worst = worst.max(err);
                    assert!(err <= 2.0, "t {t}: got {got}, want {want}, {err} ulps");
                }
                assert!(s.abs() <= 1.0 && c.abs() <= 1.0, "t {t}: ({s}, {c})");
            }
        }
        assert!(worst > 0.0);
        for (t, s, c) in [
            (0.0f32, 0.0f32, 1.0f32),
            (0.25, 1.0, 0.0),
            (0.5, 0.0, -1.0),
            (0.75, -1.0, 0.0),
            (1.0, 0.0, 1.0),
        ] {
            let (gs, gc) = sin_cos_turns(t);
            // Exactly (a zero may carry either sign).
            assert!(gs == s && gc == c, "t {t}: ({gs}, {gc})");
        }
        // Outside [0, 1] it is periodic.
        assert_eq!(sin_cos_turns(1.125), sin_cos_turns(0.125));
        assert_eq!(sin_cos_turns(-0.875), sin_cos_turns(0.125));
    }

    /// The reflection of an odd octant's fraction, `|f - 1|`, is the `1 - f` that the bit
    /// select computed before (the images depend on it), for every `f` in [0, 1).
    #[test]
    fn the_odd_octants_reflection_is_one_minus_f_for_every_f() {
        let mut checked = 0u32;
        for bits in 0..1.0f32.to_bits() {
            let f = f32::from_bits(bits);
            assert_eq!((f - 1.0).abs().to_bits(), (1.0 - f).to_bits(), "f {f}");
            assert_eq!((f - 0.0).abs().to_bits(), f.to_bits(), "f {f}");
            checked += 1;
        }
        assert_eq!(checked, 0x3f80_0000);
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // the comparison with glam is the point
    fn cross_is_glams_on_x86_64() {
        let v = |i: u32| {
            let f = |k: u32| {
                (i.wrapping_mul(2654435761)
                    .wrapping_add(k.wrapping_mul(40503))
                    >> 8) as f32
                    / 1e5
                    - 80.0
            };
            glam::Vec3A::new(f(1), f(2), f(3))
        };
        for i in 0..1000 {
            let (a, b) = (v(i), v(i + 7919));
            let ours = cross(a, b);
            if cfg!(all(target_arch = "x86_64", not(target_feature = "fma"))) {
                assert_eq!(
                    ours.to_array().map(f32::to_bits),
                    a.cross(b).to_array().map(f32::to_bits)
                );
            } else {
                assert!(
                    (ours - a.cross(b)).abs().max_element()
                        <= 1e-3 * (1.0 + ours.abs().max_element())
                );
            }
        }
    }

    #[test]
    fn floor_is_f32_floor_bit_for_bit() {
        let mut values = vec![
            0.0f32,
            -0.0,
            0.5,
            -0.5,
            1.0,
            -1.0,
            -1.5,
            8_388_607.5,
            -8_388_607.5,
            8_388_608.0,
            -8_388_609.0,
            1e30,
            -1e30,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
        ];
        let mut x = 0x2545_f491u32;
        for _ in 0..1_000_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            values.push(f32::from_bits(x));
            values.push((x as i32) as f32 / 65536.0);
        }
        for v in values {
            let (a, b) = (floor(v), v.floor());
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{v:e}"
            );
        }
        for (i, n) in [
            (-7i64, 3i64),
            (0, 3),
            (2, 3),
            (3, 3),
            (-1, 1),
            (i64::MIN, 5),
            (9, 4),
        ] {
            assert_eq!(wrap_index(i, n), i.rem_euclid(n));
        }
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // the comparison with the platform is the point
    fn agrees_with_the_platform_within_an_ulp_or_two() {
        for i in 0..2000 {
            let x = i as f32 * 0.0137 - 12.0;
            let close = |a: f32, b: f32| (a - b).abs() <= 4.0 * f32::EPSILON * b.abs().max(1e-6);
            assert!(close(x.sin_d(), x.sin()), "sin {x}");
            assert!(close(x.cos_d(), x.cos()), "cos {x}");
            assert!(close(x.exp_d(), x.exp()) || x.exp() > 1e38, "exp {x}");
            if x > 0.0 {
                assert!(close(x.ln_d(), x.ln()), "ln {x}");
                assert!(close(x.powf_d(2.2), x.powf(2.2)), "pow {x}");
            }
        }
    }
}
