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
//! Two layers go on top, as their extensions define them:
//!
//! - KHR_materials_sheen: `f = sheenColor * D_charlie * V_charlie + f_base * s`, where
//!   `D_charlie` is the Estevez-Kulla "Charlie" distribution with `alpha = sheenRoughness²`,
//!   `V_charlie` its height-correlated visibility with the fitted `Λ` the extension gives, and
//!   `s = min(1 - max(sheenColor) E(wo), 1 - max(sheenColor) E(wi))` the albedo scaling, `E`
//!   being the lobe's directional albedo (tabulated once by quadrature, [`sheen_albedo`]).
//! - KHR_materials_clearcoat: `f = f_below * (1 - clearcoat * F_c(n_c·wo)) + clearcoat * f_coat`,
//!   where `f_coat` is a GGX lobe with its own roughness and normal `n_c`, and `F_c` is Schlick's
//!   Fresnel with `f0 = 0.04`, `f90 = 1` (a coat of IOR 1.5).
//!
//! KHR_materials_volume turns the transmission lobe into refraction at a smooth interface
//! (`refract_eta`), with total internal reflection; absorption inside is the integrator's.
//!
//! Every lobe can be sampled (coat: VNDF in the coat's frame, sheen: cosine-weighted), and
//! `eval` returns the one-sample-MIS density of all of them, so sampling stays unbiased.
//!
//! Everything here works in the local shading frame (normal = +Z). No clamping or other bias:
//! the only concession to numerics is a minimum GGX alpha of 1e-3 (a near-perfect mirror).

use glam::Vec3A;
use std::f32::consts::{FRAC_1_PI, PI};
use std::sync::OnceLock;

pub const MIN_ALPHA: f32 = 1e-3;

/// Smallest sheen roughness we render. The Charlie distribution degenerates as its alpha goes
/// to 0 (all microfibres flat against the surface); 0.07 (alpha 0.0049) is visually a perfectly
/// tight sheen and keeps the albedo table smooth.
pub const SHEEN_MIN_ROUGHNESS: f32 = 0.07;

/// Normal-incidence reflectance of a clearcoat (IOR 1.5, as KHR_materials_clearcoat fixes it).
const CLEARCOAT_F0: f32 = 0.04;

#[derive(Clone, Copy, Debug)]
pub struct Bsdf {
    pub base: Vec3A,
    pub metallic: f32,
    /// GGX alpha = roughness².
    pub alpha: f32,
    pub f0_dielectric: Vec3A,
    pub f90_dielectric: f32,
    pub transmission: f32,
    /// KHR_materials_sheen colour (linear); zero means no sheen layer.
    pub sheen_color: Vec3A,
    /// Perceptual sheen roughness in `[SHEEN_MIN_ROUGHNESS, 1]`.
    pub sheen_roughness: f32,
    /// KHR_materials_clearcoat strength in `[0, 1]`; zero means no coat.
    pub clearcoat: f32,
    /// GGX alpha of the coat (clearcoatRoughness²).
    pub clearcoat_alpha: f32,
    /// The coat's normal in the local shading frame (`Vec3A::Z` when it is the shading normal).
    pub clearcoat_normal: Vec3A,
    /// KHR_materials_volume: the ratio of refractive indices `n_outgoing_side / n_other_side`
    /// for transmission that refracts into (or out of) a closed volume; 0 for thin glass.
    pub refract_eta: f32,
}

impl Bsdf {
    /// The base BSDF alone, without sheen or coat.
    pub const fn base(
        base: Vec3A,
        metallic: f32,
        alpha: f32,
        f0_dielectric: Vec3A,
        f90_dielectric: f32,
        transmission: f32,
    ) -> Bsdf {
        Bsdf {
            base,
            metallic,
            alpha,
            f0_dielectric,
            f90_dielectric,
            transmission,
            sheen_color: Vec3A::ZERO,
            sheen_roughness: 1.0,
            clearcoat: 0.0,
            clearcoat_alpha: 1.0,
            clearcoat_normal: Vec3A::Z,
            refract_eta: 0.0,
        }
    }
}

/// The parts of a layered evaluation that depend only on the outgoing direction.
#[derive(Clone, Copy, Debug)]
struct Layers {
    /// Whether there is any layer (else the other fields are neutral).
    active: bool,
    /// `max(sheenColor) * E(wo)`: the sheen's share of the energy at `wo` (0 without sheen).
    sheen_wo: f32,
    /// `1 / max(1, E(wo))`: keeps the sheen lobe's albedo at most 1 (see `layers`).
    sheen_norm: f32,
    /// `clearcoat * F_c(n_c·wo)`: the coat's share at `wo` (0 without coat).
    coat_wo: f32,
    /// The coat's frame (tangent, bitangent) in the local shading frame.
    coat_t: Vec3A,
    coat_b: Vec3A,
}

/// Lobe selection probabilities, in sampling order.
#[derive(Clone, Copy, Debug, Default)]
struct Probs {
    trans: f32,
    coat: f32,
    sheen: f32,
    spec: f32,
    diff: f32,
}

/// A BSDF with its lobe-selection probabilities worked out for one outgoing direction, which
/// both `eval` and `sample` need.
#[derive(Clone, Copy, Debug)]
pub struct PreparedBsdf<'a> {
    pub bsdf: &'a Bsdf,
    pub wo: Vec3A,
    probs: Probs,
    layers: Layers,
}

impl PreparedBsdf<'_> {
    #[inline]
    pub fn eval(&self, wi: Vec3A) -> (Vec3A, f32) {
        self.bsdf.eval_with(self.wo, wi, &self.probs, &self.layers)
    }
    #[inline]
    pub fn sample(&self, u_lobe: f32, u1: f32, u2: f32) -> Option<BsdfSample> {
        self.bsdf
            .sample_with(self.wo, u_lobe, u1, u2, &self.probs, &self.layers)
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

/// The Charlie sheen distribution (Estevez & Kulla 2017) for `alpha = sheenRoughness²`.
#[inline(always)]
fn charlie_d(nh: f32, alpha: f32) -> f32 {
    let inv = 1.0 / alpha;
    let sin2 = (1.0 - nh * nh).max(0.0);
    (2.0 + inv) * sin2.powf(0.5 * inv) / (2.0 * PI)
}

/// The fitted exponent of the Charlie `Λ` (KHR_materials_sheen, "Sheen visibility"): two
/// parameter sets, for alpha 0 and 1, interpolated by `(1 - alpha)²`.
#[inline(always)]
fn charlie_l(x: f32, alpha: f32) -> f32 {
    let t = (1.0 - alpha) * (1.0 - alpha);
    let mix = |one: f32, zero: f32| one + (zero - one) * t;
    let a = mix(21.5473, 25.3245);
    let b = mix(3.82987, 3.32435);
    let c = mix(0.19823, 0.16801);
    let d = mix(-1.97760, -1.27393);
    let e = mix(-4.32054, -4.85967);
    a / (1.0 + b * x.powf(c)) + d * x + e
}

#[inline(always)]
fn charlie_lambda(cos: f32, alpha: f32) -> f32 {
    if cos < 0.5 {
        charlie_l(cos, alpha).exp()
    } else {
        (2.0 * charlie_l(0.5, alpha) - charlie_l(1.0 - cos, alpha)).exp()
    }
}

/// The Charlie lobe `D * V` (without colour), for both cosines positive.
#[inline(always)]
fn sheen_lobe(wo: Vec3A, wi: Vec3A, alpha: f32) -> f32 {
    let h = (wo + wi).normalize_or(Vec3A::Z);
    let v = 1.0
        / ((1.0 + charlie_lambda(wo.z, alpha) + charlie_lambda(wi.z, alpha)) * 4.0 * wo.z * wi.z);
    charlie_d(h.z, alpha) * v
}

/// Grid of the sheen albedo table: viewing cosines (cell centres) by roughness (from
/// [`SHEEN_MIN_ROUGHNESS`] to 1, inclusive).
const SHEEN_TABLE_MU: usize = 32;
const SHEEN_TABLE_R: usize = 24;

fn sheen_table_roughness(j: usize) -> f32 {
    SHEEN_MIN_ROUGHNESS + (1.0 - SHEEN_MIN_ROUGHNESS) * j as f32 / (SHEEN_TABLE_R - 1) as f32
}

/// Directional albedo `E(mu)` of the Charlie lobe (sheen colour 1), by a midpoint rule in
/// (theta, phi) over the hemisphere, in f64.
pub fn sheen_albedo_quadrature(mu: f32, roughness: f32) -> f32 {
    let alpha = roughness * roughness;
    let wo = Vec3A::new((1.0 - mu * mu).max(0.0).sqrt(), 0.0, mu);
    let (nt, np) = (64, 48);
    let mut sum = 0.0f64;
    for i in 0..nt {
        let theta = (i as f32 + 0.5) / nt as f32 * 0.5 * PI;
        let (st, ct) = theta.sin_cos();
        let mut row = 0.0f64;
        // The lobe is symmetric about the plane of wo and the normal: integrate half of phi.
        for j in 0..np {
            let phi = (j as f32 + 0.5) / np as f32 * PI;
            let wi = Vec3A::new(st * phi.cos(), st * phi.sin(), ct);
            row += sheen_lobe(wo, wi, alpha) as f64;
        }
        sum += row * (ct * st) as f64;
    }
    (sum * 2.0 * (0.5 * PI as f64 / nt as f64) * (PI as f64 / np as f64)) as f32
}

fn sheen_table() -> &'static [f32] {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Vec::with_capacity(SHEEN_TABLE_MU * SHEEN_TABLE_R);
        for j in 0..SHEEN_TABLE_R {
            let r = sheen_table_roughness(j);
            for i in 0..SHEEN_TABLE_MU {
                let mu = (i as f32 + 0.5) / SHEEN_TABLE_MU as f32;
                t.push(sheen_albedo_quadrature(mu, r));
            }
        }
        t
    })
}

/// Directional albedo of the sheen lobe at viewing cosine `mu`: the `E` of the albedo scaling,
/// interpolated bilinearly in the table (computed on first use, about 1.5M lobe evaluations).
pub fn sheen_albedo(mu: f32, roughness: f32) -> f32 {
    let t = sheen_table();
    let x = (mu * SHEEN_TABLE_MU as f32 - 0.5).clamp(0.0, (SHEEN_TABLE_MU - 1) as f32);
    let y = ((roughness - SHEEN_MIN_ROUGHNESS) / (1.0 - SHEEN_MIN_ROUGHNESS)
        * (SHEEN_TABLE_R - 1) as f32)
        .clamp(0.0, (SHEEN_TABLE_R - 1) as f32);
    let (x0, y0) = (x as usize, y as usize);
    let (x1, y1) = (
        (x0 + 1).min(SHEEN_TABLE_MU - 1),
        (y0 + 1).min(SHEEN_TABLE_R - 1),
    );
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let at = |i: usize, j: usize| t[j * SHEEN_TABLE_MU + i];
    let a = at(x0, y0) + (at(x1, y0) - at(x0, y0)) * fx;
    let b = at(x0, y1) + (at(x1, y1) - at(x0, y1)) * fx;
    a + (b - a) * fy
}

impl Bsdf {
    #[inline(always)]
    fn has_sheen(&self) -> bool {
        self.sheen_color.max_element() > 0.0
    }

    #[inline(always)]
    fn has_coat(&self) -> bool {
        self.clearcoat > 0.0
    }

    /// A local direction in the coat's frame.
    #[inline(always)]
    fn in_coat_frame(&self, l: &Layers, v: Vec3A) -> Vec3A {
        Vec3A::new(
            v.dot(l.coat_t),
            v.dot(l.coat_b),
            v.dot(self.clearcoat_normal),
        )
    }

    #[inline(always)]
    fn layers(&self, wo: Vec3A) -> Layers {
        if !self.has_sheen() && !self.has_coat() {
            return Layers {
                active: false,
                sheen_wo: 0.0,
                sheen_norm: 1.0,
                coat_wo: 0.0,
                coat_t: Vec3A::X,
                coat_b: Vec3A::Y,
            };
        }
        self.layers_slow(wo)
    }

    #[inline(never)]
    fn layers_slow(&self, wo: Vec3A) -> Layers {
        let (sheen_wo, sheen_norm) = if self.has_sheen() {
            let e = sheen_albedo(wo.z, self.sheen_roughness);
            // The fitted visibility lets the lobe reflect more than arrives at grazing views of
            // smooth sheens (E up to about 1.1); there the lobe is scaled back to albedo 1.
            let norm = 1.0 / e.max(1.0);
            (self.sheen_color.max_element() * e * norm, norm)
        } else {
            (0.0, 1.0)
        };
        let (coat_t, coat_b, coat_wo) = if self.has_coat() {
            let (t, b) = onb(self.clearcoat_normal);
            let c = wo.dot(self.clearcoat_normal).clamp(0.0, 1.0);
            let f = CLEARCOAT_F0 + (1.0 - CLEARCOAT_F0) * schlick_weight(c);
            (t, b, self.clearcoat * f)
        } else {
            (Vec3A::X, Vec3A::Y, 0.0)
        };
        Layers {
            active: true,
            sheen_wo,
            sheen_norm,
            coat_wo,
            coat_t,
            coat_b,
        }
    }

    #[inline(always)]
    fn fresnel_dielectric(&self, c: f32) -> Vec3A {
        let w = schlick_weight(c);
        self.f0_dielectric + (Vec3A::splat(self.f90_dielectric) - self.f0_dielectric) * w
    }

    #[inline(always)]
    fn fresnel_metal(&self, c: f32) -> Vec3A {
        self.base + (Vec3A::ONE - self.base) * schlick_weight(c)
    }

    /// Lobe selection probabilities, from the Fresnel and the layers' albedos at `wo`.
    #[inline(always)]
    fn lobe_probs(&self, wo_z: f32, l: &Layers) -> Probs {
        let m = self.metallic;
        let fd = luminance(self.fresnel_dielectric(wo_z)).clamp(0.0, 1.0);
        let base = luminance(self.base).max(0.0);
        // What the layers above leave for the base.
        let below = (1.0 - l.coat_wo) * (1.0 - l.sheen_wo).max(0.0);
        let spec = ((1.0 - m) * fd + m * luminance(self.fresnel_metal(wo_z)).max(0.0)) * below;
        let rest = (1.0 - m) * (1.0 - fd) * base * below;
        let diff = rest * (1.0 - self.transmission);
        let trans = rest * self.transmission;
        let sheen = l.sheen_wo * (1.0 - l.coat_wo);
        let coat = l.coat_wo;
        let sum = spec + diff + trans + sheen + coat;
        if sum <= 0.0 || !sum.is_finite() {
            return Probs::default();
        }
        Probs {
            trans: trans / sum,
            coat: coat / sum,
            sheen: sheen / sum,
            spec: spec / sum,
            diff: diff / sum,
        }
    }

    /// Fixes the outgoing direction (local frame).
    #[inline]
    pub fn prepare(&self, wo: Vec3A) -> PreparedBsdf<'_> {
        let layers = self.layers(wo);
        PreparedBsdf {
            bsdf: self,
            wo,
            probs: self.lobe_probs(wo.z, &layers),
            layers,
        }
    }

    /// The BSDF value (without cosine) and the density `sample` has for `wi`.
    #[inline]
    pub fn eval(&self, wo: Vec3A, wi: Vec3A) -> (Vec3A, f32) {
        self.prepare(wo).eval(wi)
    }

    #[inline(always)]
    fn eval_with(&self, wo: Vec3A, wi: Vec3A, probs: &Probs, l: &Layers) -> (Vec3A, f32) {
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
        let pdf_spec = d / ((1.0 + lo) * 4.0 * wo.z);
        let pdf = probs.spec * pdf_spec + probs.diff * wi.z * FRAC_1_PI;
        if l.active {
            self.eval_layers(wo, wi, f, pdf, probs, l)
        } else {
            (f, pdf)
        }
    }

    /// Adds the sheen and coat layers to the base's `(f, pdf)`. Kept out of line so that
    /// materials without layers run the base code alone.
    #[inline(never)]
    fn eval_layers(
        &self,
        wo: Vec3A,
        wi: Vec3A,
        mut f: Vec3A,
        mut pdf: f32,
        probs: &Probs,
        l: &Layers,
    ) -> (Vec3A, f32) {
        if self.has_sheen() {
            let c = self.sheen_color.max_element();
            let e_wi = c * sheen_albedo(wi.z, self.sheen_roughness).min(1.0);
            let scale = (1.0 - l.sheen_wo.max(e_wi)).clamp(0.0, 1.0);
            let alpha = self.sheen_roughness * self.sheen_roughness;
            f = f * scale + self.sheen_color * (sheen_lobe(wo, wi, alpha) * l.sheen_norm);
            pdf += probs.sheen * wi.z * FRAC_1_PI;
        }
        if self.has_coat() {
            f *= 1.0 - l.coat_wo;
            let (cwo, cwi) = (self.in_coat_frame(l, wo), self.in_coat_frame(l, wi));
            if cwo.z > 0.0 && cwi.z > 0.0 {
                let hc = (cwo + cwi).normalize_or(Vec3A::Z);
                let voh = cwo.dot(hc).clamp(0.0, 1.0);
                let a2 = self.clearcoat_alpha * self.clearcoat_alpha;
                let d = ggx_d(hc.z, a2);
                let lo = ggx_lambda(cwo.z, a2);
                let li = ggx_lambda(cwi.z, a2);
                let fc = CLEARCOAT_F0 + (1.0 - CLEARCOAT_F0) * schlick_weight(voh);
                let coat = fc * d / ((1.0 + lo + li) * 4.0 * cwo.z * cwi.z);
                // The coat's cosine is with its own normal; `f` is used with the shading
                // normal's cosine `wi.z`, so convert.
                f += Vec3A::splat(self.clearcoat * coat * cwi.z / wi.z);
                pdf += probs.coat * d / ((1.0 + lo) * 4.0 * cwo.z);
            }
        }
        (f, pdf)
    }

    /// The factor the layers apply to light passing straight through the base at cosine `cos`
    /// (both directions at the same angle, coat taken along the shading normal).
    #[inline(always)]
    fn straight_layers(&self, cos: f32) -> f32 {
        let mut k = 1.0;
        if self.has_sheen() {
            let e =
                self.sheen_color.max_element() * sheen_albedo(cos, self.sheen_roughness).min(1.0);
            k *= (1.0 - e).clamp(0.0, 1.0);
        }
        if self.has_coat() {
            k *= 1.0 - self.clearcoat * (CLEARCOAT_F0 + (1.0 - CLEARCOAT_F0) * schlick_weight(cos));
        }
        k
    }

    /// Samples an incident direction. `u_lobe` picks the lobe, `(u1, u2)` the direction.
    #[inline]
    pub fn sample(&self, wo: Vec3A, u_lobe: f32, u1: f32, u2: f32) -> Option<BsdfSample> {
        self.prepare(wo).sample(u_lobe, u1, u2)
    }

    #[inline(always)]
    fn sample_with(
        &self,
        wo: Vec3A,
        u_lobe: f32,
        u1: f32,
        u2: f32,
        probs: &Probs,
        l: &Layers,
    ) -> Option<BsdfSample> {
        if wo.z <= 0.0 {
            return None;
        }
        let pt = probs.trans;
        if u_lobe < pt {
            let share = self.base
                * ((1.0 - self.metallic) * self.transmission * self.straight_layers(wo.z));
            let eta = self.refract_eta;
            if eta <= 0.0 {
                // Thin-glass transmission: straight through, a delta lobe.
                let t = (Vec3A::ONE - self.fresnel_dielectric(wo.z)) * share;
                return Some(BsdfSample {
                    wi: -wo,
                    weight: t / pt,
                    pdf: pt,
                    delta: true,
                });
            }
            // Refraction into or out of a volume (a smooth interface: Snell's law, a delta
            // lobe). Beyond the critical angle the transmitted share is totally reflected.
            let sin2_t = eta * eta * (1.0 - wo.z * wo.z).max(0.0);
            if sin2_t >= 1.0 {
                return Some(BsdfSample {
                    wi: Vec3A::new(-wo.x, -wo.y, wo.z),
                    weight: share / pt,
                    pdf: pt,
                    delta: true,
                });
            }
            let cos_t = (1.0 - sin2_t).sqrt();
            // Schlick's approximation wants the cosine on the optically thinner side.
            let cos_f = if eta > 1.0 { cos_t } else { wo.z };
            let t = (Vec3A::ONE - self.fresnel_dielectric(cos_f)) * share;
            return Some(BsdfSample {
                wi: Vec3A::new(-eta * wo.x, -eta * wo.y, -cos_t),
                weight: t / pt,
                pdf: pt,
                delta: true,
            });
        }
        let u = u_lobe - pt;
        let wi = if u < probs.coat {
            let cwo = self.in_coat_frame(l, wo);
            if cwo.z <= 0.0 {
                return None;
            }
            let h = sample_vndf(cwo, self.clearcoat_alpha, u1, u2);
            let c = 2.0 * cwo.dot(h) * h - cwo;
            l.coat_t * c.x + l.coat_b * c.y + self.clearcoat_normal * c.z
        } else if u < probs.coat + probs.sheen {
            cosine_hemisphere(u1, u2)
        } else if u < probs.coat + probs.sheen + probs.spec {
            let h = sample_vndf(wo, self.alpha, u1, u2);
            2.0 * wo.dot(h) * h - wo
        } else if probs.diff > 0.0 {
            cosine_hemisphere(u1, u2)
        } else {
            return None;
        };
        if wi.z <= 0.0 {
            return None;
        }
        let (f, pdf) = self.eval_with(wo, wi, probs, l);
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
        // A refracting surface bends light: nothing passes straight through. Light reaches
        // what lies behind it along paths continued through the refraction lobe instead.
        if self.refract_eta > 0.0 {
            return Vec3A::ZERO;
        }
        let cos = cos.abs();
        let k = if self.transmission > 0.0 {
            self.straight_layers(cos)
        } else {
            1.0
        };
        (Vec3A::ONE - self.fresnel_dielectric(cos))
            * self.base
            * ((1.0 - self.metallic) * self.transmission * k)
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
        Bsdf::base(
            Vec3A::ONE,
            1.0,
            (roughness * roughness).max(MIN_ALPHA),
            Vec3A::splat(0.04),
            1.0,
            0.0,
        )
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

    /// A white Lambertian base (no specular) with the given layers on top.
    fn layered(sheen: f32, sheen_r: f32, coat: f32, coat_r: f32, coat_n: Vec3A) -> Bsdf {
        let mut b = Bsdf::base(Vec3A::ONE, 0.0, 1.0, Vec3A::ZERO, 0.0, 0.0);
        b.sheen_color = Vec3A::splat(sheen);
        b.sheen_roughness = sheen_r.max(SHEEN_MIN_ROUGHNESS);
        b.clearcoat = coat;
        b.clearcoat_alpha = (coat_r * coat_r).max(MIN_ALPHA);
        b.clearcoat_normal = coat_n.normalize();
        b
    }

    /// Directional albedo `∫ f(wo, wi) cos dwi` by a midpoint rule in (cos theta, phi).
    fn albedo(b: &Bsdf, wo: Vec3A) -> f64 {
        let (nt, np) = (400, 400);
        let mut sum = 0.0f64;
        for i in 0..nt {
            let ct = (i as f32 + 0.5) / nt as f32;
            let st = (1.0 - ct * ct).sqrt();
            for j in 0..np {
                let phi = (j as f32 + 0.5) / np as f32 * 2.0 * PI;
                let wi = Vec3A::new(st * phi.cos(), st * phi.sin(), ct);
                sum += (b.eval(wo, wi).0.x * ct) as f64;
            }
        }
        sum * 2.0 * std::f64::consts::PI / (nt * np) as f64
    }

    /// Layered lobes: sampling weights agree with eval/pdf (one-sample MIS stays unbiased).
    #[test]
    fn layered_sample_matches_eval() {
        let tilted = Vec3A::new(0.2, -0.1, 1.0);
        for b in [
            layered(1.0, 0.3, 0.0, 0.0, Vec3A::Z),
            layered(0.0, 0.0, 1.0, 0.1, Vec3A::Z),
            layered(0.7, 0.8, 0.5, 0.4, tilted),
        ] {
            let wo = Vec3A::new(0.5, 0.1, 0.7).normalize();
            let n = 48;
            for i in 0..n {
                for j in 0..n {
                    let (u1, u2) = ((i as f32 + 0.5) / n as f32, (j as f32 + 0.5) / n as f32);
                    let Some(s) = b.sample(wo, ((i * 7 + j) % n) as f32 / n as f32, u1, u2) else {
                        continue;
                    };
                    let (f, pdf) = b.eval(wo, s.wi);
                    assert!((pdf - s.pdf).abs() <= 1e-3 * pdf.max(1.0), "{b:?}");
                    let w = f * s.wi.z / pdf;
                    assert!((w - s.weight).abs().max_element() < 1e-3 * w.max_element().max(1.0));
                }
            }
        }
    }

    /// The sheen lobe's albedo table matches direct quadrature. The fitted visibility makes
    /// it exceed 1 only at grazing views of smooth sheens (which `layers` scales back).
    #[test]
    fn sheen_albedo_table_is_sane() {
        let t = sheen_table();
        for (i, mu) in [(0, "1/64"), (2, "5/64"), (6, "13/64")] {
            let col: Vec<f32> = (0..SHEEN_TABLE_R)
                .map(|j| t[j * SHEEN_TABLE_MU + i])
                .collect();
            let worst = col.iter().cloned().fold(0.0f32, f32::max);
            eprintln!("largest sheen albedo at mu = {mu}: {worst}");
        }
        assert!(t.iter().all(|e| e.is_finite() && *e >= 0.0));
        for &r in &[SHEEN_MIN_ROUGHNESS, 0.3, 0.5, 1.0] {
            for &mu in &[0.05f32, 0.3, 0.7, 1.0] {
                let e = sheen_albedo(mu, r);
                assert!(e >= 0.0, "E({mu}, {r}) = {e}");
                if mu >= 0.3 {
                    assert!(e <= 1.0, "E({mu}, {r}) = {e}");
                }
                let q = sheen_albedo_quadrature(mu.min(1.0 - 0.5 / 32.0), r);
                assert!((e - q).abs() < 0.02, "E({mu}, {r}) = {e}, quadrature {q}");
            }
        }
    }

    /// White furnace of the BSDF alone: a white sheen or clearcoat over a white Lambertian base
    /// reflects at most what arrives, at every viewing angle.
    #[test]
    fn layers_do_not_gain_energy() {
        let mut worst = 0.0f64;
        for b in [
            layered(1.0, SHEEN_MIN_ROUGHNESS, 0.0, 0.0, Vec3A::Z),
            layered(1.0, 0.5, 0.0, 0.0, Vec3A::Z),
            layered(1.0, 1.0, 0.0, 0.0, Vec3A::Z),
            layered(0.0, 0.0, 1.0, 0.05, Vec3A::Z),
            layered(0.0, 0.0, 1.0, 0.5, Vec3A::Z),
            layered(1.0, 0.5, 1.0, 0.3, Vec3A::Z),
        ] {
            for &mu in &[0.02f32, 0.05, 0.1, 0.4, 0.8, 1.0] {
                let wo = Vec3A::new((1.0 - mu * mu).sqrt(), 0.0, mu);
                let a = albedo(&b, wo);
                worst = worst.max(a);
                assert!(a <= 1.005, "albedo {a} at mu {mu} for {b:?}");
            }
        }
        eprintln!("largest layered albedo: {worst:.4}");
        assert!(worst > 0.9, "worst {worst}");
    }
}
