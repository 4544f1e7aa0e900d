//! The glTF 2.0 metallic-roughness BSDF, as the glTF specification (Appendix B) defines it.
//!
//! `f = mix(dielectric, metal, metallic)` with
//! `dielectric = (1 - F_d) * diffuse + F_d * specular` and `metal = F_m * specular`, where
//! `specular` is GGX / Trowbridge-Reitz with the height-correlated Smith masking-shadowing term,
//! `F_d` is Schlick's Fresnel with `f0 = ((ior-1)/(ior+1))^2 * specularColor * specular` and
//! `f90 = specular` (KHR_materials_specular), `F_m` is Schlick's Fresnel with `f0 = baseColor`,
//! and `diffuse` is Lambert. KHR_materials_transmission is rendered as thin glass: the
//! transmitted part of the diffuse base passes straight through, tinted by the base colour.
//!
//! Everything here works in the local shading frame (normal = +Z). No clamping or other bias:
//! the only concession to numerics is a minimum GGX alpha of 1e-3 (a near-perfect mirror).

use glam::Vec3A;
use std::f32::consts::{FRAC_1_PI, PI};

pub const MIN_ALPHA: f32 = 1e-3;

#[derive(Clone, Copy, Debug)]
pub struct Bsdf {
    pub base: Vec3A,
    pub metallic: f32,
    /// GGX alpha = roughness².
    pub alpha: f32,
    pub f0_dielectric: Vec3A,
    pub f90_dielectric: f32,
    pub transmission: f32,
}

/// A BSDF with its lobe-selection probabilities worked out for one outgoing direction, which
/// both `eval` and `sample` need.
#[derive(Clone, Copy, Debug)]
pub struct PreparedBsdf {
    pub bsdf: Bsdf,
    pub wo: Vec3A,
    probs: [f32; 3],
}

impl PreparedBsdf {
    #[inline]
    pub fn eval(&self, wi: Vec3A) -> (Vec3A, f32) {
        self.bsdf.eval_with(self.wo, wi, self.probs)
    }
    #[inline]
    pub fn sample(&self, u_lobe: f32, u1: f32, u2: f32) -> Option<BsdfSample> {
        self.bsdf.sample_with(self.wo, u_lobe, u1, u2, self.probs)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct BsdfSample {
    /// Local incident direction (where light comes from).
    pub wi: Vec3A,
    /// `f * |cos| / pdf`.
    pub weight: Vec3A,
    /// Solid-angle density (meaningless for delta samples).
    pub pdf: f32,
    pub delta: bool,
}

#[inline(always)]
pub fn luminance(c: Vec3A) -> f32 {
    0.2126 * c.x + 0.7152 * c.y + 0.0722 * c.z
}

#[inline(always)]
fn schlick_weight(c: f32) -> f32 {
    let m = (1.0 - c).clamp(0.0, 1.0);
    let m2 = m * m;
    m2 * m2 * m
}

#[inline(always)]
fn ggx_d(nh: f32, a2: f32) -> f32 {
    let d = nh * nh * (a2 - 1.0) + 1.0;
    a2 / (PI * d * d)
}

#[inline(always)]
fn ggx_lambda(cos: f32, a2: f32) -> f32 {
    let c2 = cos * cos;
    let tan2 = ((1.0 - c2) / c2).max(0.0);
    0.5 * ((1.0 + a2 * tan2).sqrt() - 1.0)
}

/// Samples a visible normal (Dupuy & Benyoub 2023, spherical caps) for `wo` in the upper hemisphere.
#[inline(always)]
fn sample_vndf(wo: Vec3A, alpha: f32, u1: f32, u2: f32) -> Vec3A {
    let wi_std = Vec3A::new(wo.x * alpha, wo.y * alpha, wo.z).normalize();
    let phi = 2.0 * PI * u1;
    let z = (1.0 - u2) * (1.0 + wi_std.z) - wi_std.z;
    let sin_theta = (1.0 - z * z).clamp(0.0, 1.0).sqrt();
    let c = Vec3A::new(sin_theta * phi.cos(), sin_theta * phi.sin(), z);
    let h = c + wi_std;
    Vec3A::new(h.x * alpha, h.y * alpha, h.z.max(0.0)).normalize_or(Vec3A::Z)
}

impl Bsdf {
    #[inline(always)]
    fn fresnel_dielectric(&self, c: f32) -> Vec3A {
        let w = schlick_weight(c);
        self.f0_dielectric + (Vec3A::splat(self.f90_dielectric) - self.f0_dielectric) * w
    }

    #[inline(always)]
    fn fresnel_metal(&self, c: f32) -> Vec3A {
        self.base + (Vec3A::ONE - self.base) * schlick_weight(c)
    }

    /// Lobe selection probabilities (specular, diffuse, transmission), from the Fresnel at `wo`.
    #[inline(always)]
    fn lobe_probs(&self, wo_z: f32) -> [f32; 3] {
        let m = self.metallic;
        let fd = luminance(self.fresnel_dielectric(wo_z)).clamp(0.0, 1.0);
        let base = luminance(self.base).max(0.0);
        let spec = (1.0 - m) * fd + m * luminance(self.fresnel_metal(wo_z)).max(0.0);
        let rest = (1.0 - m) * (1.0 - fd) * base;
        let diff = rest * (1.0 - self.transmission);
        let trans = rest * self.transmission;
        let sum = spec + diff + trans;
        if sum <= 0.0 || !sum.is_finite() {
            return [0.0; 3];
        }
        [spec / sum, diff / sum, trans / sum]
    }

    /// Fixes the outgoing direction (local frame).
    #[inline]
    pub fn prepare(&self, wo: Vec3A) -> PreparedBsdf {
        PreparedBsdf {
            bsdf: *self,
            wo,
            probs: self.lobe_probs(wo.z),
        }
    }

    /// The BSDF value (without cosine) and the density `sample` has for `wi`.
    #[inline]
    pub fn eval(&self, wo: Vec3A, wi: Vec3A) -> (Vec3A, f32) {
        self.eval_with(wo, wi, self.lobe_probs(wo.z))
    }

    #[inline(always)]
    fn eval_with(&self, wo: Vec3A, wi: Vec3A, probs: [f32; 3]) -> (Vec3A, f32) {
        if wo.z <= 0.0 || wi.z <= 0.0 {
            return (Vec3A::ZERO, 0.0);
        }
        let h = (wo + wi).normalize_or(Vec3A::Z);
        let voh = wo.dot(h).clamp(0.0, 1.0);
        let a2 = self.alpha * self.alpha;
        let d = ggx_d(h.z, a2);
        let lo = ggx_lambda(wo.z, a2);
        let li = ggx_lambda(wi.z, a2);
        let spec = d / ((1.0 + lo + li) * 4.0 * wo.z * wi.z);
        let fd = self.fresnel_dielectric(voh);
        let fm = self.fresnel_metal(voh);
        let diffuse = self.base * (FRAC_1_PI * (1.0 - self.transmission));
        let m = self.metallic;
        let f = ((Vec3A::ONE - fd) * diffuse + fd * spec) * (1.0 - m) + fm * (spec * m);
        let [ps, pd, _] = probs;
        let pdf_spec = d / ((1.0 + lo) * 4.0 * wo.z);
        let pdf = ps * pdf_spec + pd * wi.z * FRAC_1_PI;
        (f, pdf)
    }

    /// Samples an incident direction. `u_lobe` picks the lobe, `(u1, u2)` the direction.
    #[inline]
    pub fn sample(&self, wo: Vec3A, u_lobe: f32, u1: f32, u2: f32) -> Option<BsdfSample> {
        self.sample_with(wo, u_lobe, u1, u2, self.lobe_probs(wo.z))
    }

    #[inline(always)]
    fn sample_with(
        &self,
        wo: Vec3A,
        u_lobe: f32,
        u1: f32,
        u2: f32,
        probs: [f32; 3],
    ) -> Option<BsdfSample> {
        if wo.z <= 0.0 {
            return None;
        }
        let [ps, pd, pt] = probs;
        if u_lobe < pt {
            // Thin-glass transmission: straight through, a delta lobe.
            let t = (Vec3A::ONE - self.fresnel_dielectric(wo.z))
                * self.base
                * ((1.0 - self.metallic) * self.transmission);
            return Some(BsdfSample {
                wi: -wo,
                weight: t / pt,
                pdf: pt,
                delta: true,
            });
        }
        let wi = if u_lobe < pt + ps {
            let h = sample_vndf(wo, self.alpha, u1, u2);
            2.0 * wo.dot(h) * h - wo
        } else if pd > 0.0 {
            cosine_hemisphere(u1, u2)
        } else {
            return None;
        };
        if wi.z <= 0.0 {
            return None;
        }
        let (f, pdf) = self.eval_with(wo, wi, probs);
        if pdf <= 0.0 || !pdf.is_finite() {
            return None;
        }
        Some(BsdfSample {
            wi,
            weight: f * (wi.z / pdf),
            pdf,
            delta: false,
        })
    }

    /// What fraction of light passes straight through (for shadow rays through thin glass).
    #[inline]
    pub fn straight_transmittance(&self, cos: f32) -> Vec3A {
        (Vec3A::ONE - self.fresnel_dielectric(cos.abs()))
            * self.base
            * ((1.0 - self.metallic) * self.transmission)
    }
}

#[inline(always)]
pub fn cosine_hemisphere(u1: f32, u2: f32) -> Vec3A {
    let r = u1.sqrt();
    let phi = 2.0 * PI * u2;
    Vec3A::new(r * phi.cos(), r * phi.sin(), (1.0 - u1).max(0.0).sqrt())
}

/// An orthonormal basis around `n` (Duff et al. 2017).
#[inline(always)]
pub fn onb(n: Vec3A) -> (Vec3A, Vec3A) {
    let sign = 1.0f32.copysign(n.z);
    let a = -1.0 / (sign + n.z);
    let b = n.x * n.y * a;
    (
        Vec3A::new(1.0 + sign * n.x * n.x * a, sign * b, -sign * n.x),
        Vec3A::new(b, sign + n.y * n.y * a, -n.y),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metal(roughness: f32) -> Bsdf {
        Bsdf {
            base: Vec3A::ONE,
            metallic: 1.0,
            alpha: (roughness * roughness).max(MIN_ALPHA),
            f0_dielectric: Vec3A::splat(0.04),
            f90_dielectric: 1.0,
            transmission: 0.0,
        }
    }

    /// Sampling weights must agree with eval/pdf, and pdf must integrate to at most 1.
    #[test]
    fn sample_matches_eval() {
        for &r in &[0.1f32, 0.5, 1.0] {
            let mut b = metal(r);
            b.metallic = 0.5;
            b.base = Vec3A::new(0.8, 0.5, 0.2);
            let wo = Vec3A::new(0.3, 0.1, 0.9).normalize();
            let n = 64;
            for i in 0..n {
                for j in 0..n {
                    let (u1, u2) = ((i as f32 + 0.5) / n as f32, (j as f32 + 0.5) / n as f32);
                    if let Some(s) = b.sample(wo, (i * 7 % n) as f32 / n as f32, u1, u2) {
                        let (f, pdf) = b.eval(wo, s.wi);
                        assert!((pdf - s.pdf).abs() <= 1e-3 * pdf.max(1.0));
                        let w = f * s.wi.z / pdf;
                        assert!(
                            (w - s.weight).abs().max_element() < 1e-3 * w.max_element().max(1.0)
                        );
                    }
                }
            }
        }
    }
}
