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
    let f = if t > x { t - 1.0 } else { t };
    if f == 0.0 {
        // floor(-0.0) is -0.0, floor of [0, 1) is +0.0.
        0.0f32.copysign(x)
    } else {
        f
    }
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
