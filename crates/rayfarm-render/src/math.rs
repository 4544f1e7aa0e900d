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
