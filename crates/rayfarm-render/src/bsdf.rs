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

use crate::math::{normalize, DetMath, DetMathVec};
use glam::Vec3A;
use std::f32::consts::{FRAC_1_PI, PI};
use std::sync::OnceLock;

pub const MIN_ALPHA: f32 = 1e-3;

/// Smallest sheen roughness we render. The Charlie distribution degenerates as its alpha goes
/// to 0 (all microfibres flat against the surface); 0.07 (alpha 0.0049) is visually a perfectly
/// tight sheen and keeps the albedo table smooth.
pub const SHEEN_MIN_ROUGHNESS: f32 = 0.07;

/// `(r cos phi, r sin phi, z)`, with one `sincos`.
#[inline(always)]
fn polar3(r: f32, phi: f32, z: f32) -> Vec3A {
    let (sin, cos) = phi.sin_cos_d();
    Vec3A::new(r * cos, r * sin, z)
}

/// [`polar3`] with the angle given in turns (`phi = 2π turns`), for sampled azimuths: without
/// branches ([`crate::math::sin_cos_turns`]).
#[inline(always)]
fn polar3_turns(r: f32, turns: f32, z: f32) -> Vec3A {
    let (sin, cos) = crate::math::sin_cos_turns(turns);
    Vec3A::new(r * cos, r * sin, z)
}

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
    /// KHR_materials_anisotropy: whether the specular lobe is anisotropic; then `alpha_t` and
    /// `alpha_b` replace `alpha` along `aniso_t` and `Z × aniso_t`.
    pub anisotropic: bool,
    pub alpha_t: f32,
    pub alpha_b: f32,
    /// The anisotropy direction in the local shading frame (unit, perpendicular to +Z).
    pub aniso_t: Vec3A,
    /// KHR_materials_iridescence strength in `[0, 1]`; zero means no thin film.
    pub iridescence: f32,
    /// The thin film's index of refraction.
    pub iridescence_ior: f32,
    /// The thin film's thickness in nanometres.
    pub iridescence_thickness_nm: f32,
    /// KHR_materials_diffuse_transmission strength in `[0, 1]`: the share of the diffuse base
    /// that passes to the other side as Lambertian transmission.
    pub diffuse_transmission: f32,
    /// Its colour (linear).
    pub diffuse_transmission_color: Vec3A,
    /// KHR_materials_dispersion: `20 / Abbe number` of a refracting volume; 0 for none.
    pub dispersion: f32,
    /// The colour channel (0, 1, 2) whose wavelength the path carries since it went through a
    /// dispersive refraction, or [`ALL_CHANNELS`]. Set by the integrator before `prepare`.
    pub channel: u8,
}

/// `Bsdf::channel` of a path that carries every wavelength.
pub const ALL_CHANNELS: u8 = 3;

/// The wavelengths (nm) a path takes for the red, green and blue channel when a dispersive
/// refraction splits it: the dominant wavelengths of the sRGB primaries.
pub const CHANNEL_WAVELENGTH_NM: [f32; 3] = [611.4, 549.1, 464.3];

/// KHR_materials_dispersion: the index of refraction at `lambda_nm` of a material with index
/// `ior` at the Fraunhofer d line (587.56 nm) and `dispersion = 20 / V_d`.
#[inline]
pub fn dispersed_ior(ior: f32, dispersion: f32, lambda_nm: f32) -> f32 {
    let abbe_inv = dispersion / 20.0;
    (ior + (ior - 1.0) * abbe_inv * (523_655.0 / (lambda_nm * lambda_nm) - 1.5168)).max(1.0)
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
            anisotropic: false,
            alpha_t: alpha,
            alpha_b: alpha,
            aniso_t: Vec3A::X,
            iridescence: 0.0,
            iridescence_ior: 1.3,
            iridescence_thickness_nm: 400.0,
            diffuse_transmission: 0.0,
            diffuse_transmission_color: Vec3A::ONE,
            dispersion: 0.0,
            channel: ALL_CHANNELS,
        }
    }

    /// Makes the specular lobe anisotropic (KHR_materials_anisotropy): `strength` in `[0, 1]`
    /// along the local direction `t` (perpendicular to +Z).
    pub fn set_anisotropy(&mut self, strength: f32, t: Vec3A) {
        if strength <= 0.0 {
            return;
        }
        self.anisotropic = true;
        self.alpha_t = (self.alpha + (1.0 - self.alpha) * strength * strength).max(MIN_ALPHA);
        self.alpha_b = self.alpha;
        self.aniso_t = t;
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

impl Layers {
    /// No layer.
    const NONE: Layers = Layers {
        active: false,
        sheen_wo: 0.0,
        sheen_norm: 1.0,
        coat_wo: 0.0,
        coat_t: Vec3A::X,
        coat_b: Vec3A::Y,
    };
}

/// Lobe selection probabilities, in sampling order.
#[derive(Clone, Copy, Debug, Default)]
struct Probs {
    trans: f32,
    coat: f32,
    sheen: f32,
    spec: f32,
    diff: f32,
    /// Diffuse transmission (KHR_materials_diffuse_transmission).
    dtrans: f32,
}

/// A BSDF with its lobe-selection probabilities worked out for one outgoing direction, which
/// both `eval` and `sample` need.
#[derive(Clone, Copy, Debug)]
pub struct PreparedBsdf<'a> {
    pub bsdf: &'a Bsdf,
    pub wo: Vec3A,
    probs: Probs,
    layers: Layers,
    /// A Lambertian BSDF: no specular (F0 = F90 = 0), metal, transmission or layers, and a
    /// non-black base. `eval` and `sample` then skip the other lobes, computing exactly the
    /// operations the full code does when they are zero (same bytes, less work).
    lambert: bool,
}

impl PreparedBsdf<'_> {
    #[inline(always)]
    pub fn eval(&self, wi: Vec3A) -> (Vec3A, f32) {
        if self.lambert {
            if self.wo.z <= 0.0 || wi.z <= 0.0 {
                return (Vec3A::ZERO, 0.0);
            }
            return (self.lambert_f(), self.probs.diff * wi.z * FRAC_1_PI);
        }
        self.bsdf.eval_with(self.wo, wi, &self.probs, &self.layers)
    }
    /// Always inlined: the path loop and the split samples both call it, and LLVM then kept
    /// it out of line, costing the path loop a call per vertex (3% of the Cornell box's
    /// instructions).
    #[inline(always)]
    pub fn sample(&self, u_lobe: f32, u1: f32, u2: f32) -> Option<BsdfSample> {
        if self.lambert {
            if self.wo.z <= 0.0 {
                return None;
            }
            let wi = cosine_hemisphere(u1, u2);
            if wi.z <= 0.0 {
                return None;
            }
            let pdf = self.probs.diff * wi.z * FRAC_1_PI;
            if pdf <= 0.0 || !pdf.is_finite() {
                return None;
            }
            return Some(BsdfSample {
                wi,
                weight: self.lambert_f() * (wi.z.abs() / pdf),
                pdf,
                delta: false,
                channel: ALL_CHANNELS,
            });
        }
        self.bsdf
            .sample_with(self.wo, u_lobe, u1, u2, &self.probs, &self.layers)
    }

    /// The share of samples that go to the specular and coat lobes (0 for a Lambertian BSDF).
    #[inline(always)]
    pub fn glossy_share(&self) -> f32 {
        self.probs.spec + self.probs.coat
    }

    /// Whether `sample` reads its `u_lobe` (it does unless the BSDF is Lambertian).
    #[inline(always)]
    pub fn chooses_a_lobe(&self) -> bool {
        !self.lambert
    }

    /// The diffuse term of `eval_with` with transmission and diffuse transmission at zero.
    #[inline(always)]
    fn lambert_f(&self) -> Vec3A {
        self.bsdf.base * (FRAC_1_PI * ((1.0 - 0.0) * (1.0 - 0.0)))
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
    /// The colour channel a dispersive refraction chose for the rest of the path (its weight
    /// is zero in the others), or [`ALL_CHANNELS`].
    pub channel: u8,
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
    sample_vndf_aniso(wo, alpha, alpha, u1, u2)
}

/// [`sample_vndf`] with different roughness along x and y (`wo` in the lobe's frame).
#[inline(always)]
fn sample_vndf_aniso(wo: Vec3A, ax: f32, ay: f32, u1: f32, u2: f32) -> Vec3A {
    let wi_std = normalize(Vec3A::new(wo.x * ax, wo.y * ay, wo.z));
    let z = (1.0 - u2) * (1.0 + wi_std.z) - wi_std.z;
    let sin_theta = (1.0 - z * z).clamp(0.0, 1.0).sqrt();
    let c = polar3_turns(sin_theta, u1, z);
    let h = c + wi_std;
    Vec3A::new(h.x * ax, h.y * ay, h.z.max(0.0)).normalize_or(Vec3A::Z)
}

/// Anisotropic GGX distribution for a half vector in the lobe's frame.
#[inline(always)]
fn ggx_d_aniso(h: Vec3A, ax: f32, ay: f32) -> f32 {
    let (x, y) = (h.x / ax, h.y / ay);
    let d = x * x + y * y + h.z * h.z;
    1.0 / (PI * ax * ay * d * d)
}

/// Smith `Λ` of anisotropic GGX for a direction in the lobe's frame.
#[inline(always)]
fn ggx_lambda_aniso(w: Vec3A, ax: f32, ay: f32) -> f32 {
    let (x, y) = (w.x * ax, w.y * ay);
    let t2 = ((x * x + y * y) / (w.z * w.z)).max(0.0);
    0.5 * ((1.0 + t2).sqrt() - 1.0)
}

/// Thin-film interference (KHR_materials_iridescence; Belcour & Barla 2017, as the
/// extension's reference implementation evaluates it): the Fresnel reflectance of a film of
/// index `film_ior` and thickness `thickness_nm` in air over a base of normal-incidence
/// reflectance `base_f0`, at incidence cosine `cos1`, in linear sRGB.
pub fn iridescence_fresnel(film_ior: f32, cos1: f32, thickness_nm: f32, base_f0: Vec3A) -> Vec3A {
    let outside = 1.0f32;
    // The film fades into the outside medium as it gets thinner than 30 nm.
    let t = (thickness_nm / 30.0).clamp(0.0, 1.0);
    let smooth = t * t * (3.0 - 2.0 * t);
    let film = outside + (film_ior - outside) * smooth;
    let sin2_sq = (outside / film) * (outside / film) * (1.0 - cos1 * cos1);
    let cos2_sq = 1.0 - sin2_sq;
    if cos2_sq < 0.0 {
        return Vec3A::ONE;
    }
    let cos2 = cos2_sq.sqrt();
    let ior_to_f0 = |n_t: f32, n_i: f32| ((n_t - n_i) / (n_t + n_i)).powi(2);
    // First interface: air to film.
    let r0 = ior_to_f0(film, outside);
    let r12 = r0 + (1.0 - r0) * schlick_weight(cos1);
    let t121 = 1.0 - r12;
    let phi12 = if film < outside { PI } else { 0.0 };
    let phi21 = PI - phi12;
    // Second interface: film to base, with the base's index recovered from its F0.
    let f0 = base_f0.clamp(Vec3A::ZERO, Vec3A::splat(0.9999));
    let sq = f0.powf_d(0.5);
    let base_ior = (Vec3A::ONE + sq) / (Vec3A::ONE - sq);
    let r1 = ((base_ior - Vec3A::splat(film)) / (base_ior + Vec3A::splat(film))).powf_d(2.0);
    let r23 = r1 + (Vec3A::ONE - r1) * schlick_weight(cos2);
    let phi23 = Vec3A::new(
        if base_ior.x < film { PI } else { 0.0 },
        if base_ior.y < film { PI } else { 0.0 },
        if base_ior.z < film { PI } else { 0.0 },
    );
    let opd = 2.0 * film * thickness_nm * cos2;
    let phi = Vec3A::splat(phi21) + phi23;
    let r123 = (r12 * r23).clamp(Vec3A::splat(1e-5), Vec3A::splat(0.9999));
    let rr123 = r123.powf_d(0.5);
    let rs = t121 * t121 * r23 / (Vec3A::ONE - r123);
    let mut i = Vec3A::splat(r12) + rs;
    let mut cm = rs - Vec3A::splat(t121);
    for m in 1..=2 {
        cm *= rr123;
        let sm = 2.0 * iridescence_sensitivity(m as f32 * opd, m as f32 * phi);
        i += cm * sm;
    }
    i.max(Vec3A::ZERO)
}

/// The spectral sensitivity of the thin film's Fourier term at optical path difference `opd`
/// (nm) and phase `shift`, in linear sRGB (the extension's fitted Gaussians in XYZ).
#[allow(clippy::excessive_precision)]
fn iridescence_sensitivity(opd: f32, shift: Vec3A) -> Vec3A {
    let phase = 2.0 * PI * opd * 1.0e-9;
    let val = [5.4856e-13f32, 4.4201e-13, 5.2481e-13];
    let pos = [1.6810e+06f32, 1.7953e+06, 2.2084e+06];
    let var = [4.3278e+09f32, 9.3046e+09, 6.6121e+09];
    let shift = [shift.x, shift.y, shift.z];
    let mut xyz = [0.0f32; 3];
    for k in 0..3 {
        xyz[k] = val[k]
            * (2.0 * PI * var[k]).sqrt()
            * (pos[k] * phase + shift[k]).cos_d()
            * (-(phase * phase) * var[k]).exp_d();
    }
    xyz[0] += 9.7470e-14
        * (2.0 * PI * 4.5282e+09f32).sqrt()
        * (2.2399e+06 * phase + shift[0]).cos_d()
        * (-4.5282e+09 * phase * phase).exp_d();
    let [x, y, z] = xyz.map(|c| c / 1.0685e-7);
    Vec3A::new(
        3.2404542 * x - 1.5371385 * y - 0.4985314 * z,
        -0.9692660 * x + 1.8760108 * y + 0.0415560 * z,
        0.0556434 * x - 0.2040259 * y + 1.0572252 * z,
    )
}

/// The Charlie sheen distribution (Estevez & Kulla 2017) for `alpha = sheenRoughness²`.
#[inline(always)]
fn charlie_d(nh: f32, alpha: f32) -> f32 {
    let inv = 1.0 / alpha;
    let sin2 = (1.0 - nh * nh).max(0.0);
    (2.0 + inv) * sin2.powf_d(0.5 * inv) / (2.0 * PI)
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
    a / (1.0 + b * x.powf_d(c)) + d * x + e
}

#[inline(always)]
fn charlie_lambda(cos: f32, alpha: f32) -> f32 {
    if cos < 0.5 {
        charlie_l(cos, alpha).exp_d()
    } else {
        (2.0 * charlie_l(0.5, alpha) - charlie_l(1.0 - cos, alpha)).exp_d()
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
        let (st, ct) = theta.sin_cos_d();
        let mut row = 0.0f64;
        // The lobe is symmetric about the plane of wo and the normal: integrate half of phi.
        for j in 0..np {
            let phi = (j as f32 + 0.5) / np as f32 * PI;
            let wi = polar3(st, phi, ct);
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
            return Layers::NONE;
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
        if self.iridescence > 0.0 {
            return self.fresnel_dielectric_iridescent(c);
        }
        let w = schlick_weight(c);
        self.f0_dielectric + (Vec3A::splat(self.f90_dielectric) - self.f0_dielectric) * w
    }

    #[inline(always)]
    fn fresnel_metal(&self, c: f32) -> Vec3A {
        if self.iridescence > 0.0 {
            return self.fresnel_metal_iridescent(c);
        }
        self.base + (Vec3A::ONE - self.base) * schlick_weight(c)
    }

    /// KHR_materials_iridescence on the dielectric: the thin film's reflectance replaces
    /// Schlick's in proportion to `iridescence`; the specular factor (`f90_dielectric`) still
    /// scales the result, as it scales the plain Fresnel.
    #[inline(never)]
    fn fresnel_dielectric_iridescent(&self, c: f32) -> Vec3A {
        let k = self.f90_dielectric;
        if k <= 0.0 {
            return Vec3A::ZERO;
        }
        let f0 = self.f0_dielectric / k;
        let schlick = f0 + (Vec3A::ONE - f0) * schlick_weight(c);
        let film = iridescence_fresnel(self.iridescence_ior, c, self.iridescence_thickness_nm, f0);
        (schlick + (film - schlick) * self.iridescence) * k
    }

    #[inline(never)]
    fn fresnel_metal_iridescent(&self, c: f32) -> Vec3A {
        let schlick = self.base + (Vec3A::ONE - self.base) * schlick_weight(c);
        let film = iridescence_fresnel(
            self.iridescence_ior,
            c,
            self.iridescence_thickness_nm,
            self.base,
        );
        schlick + (film - schlick) * self.iridescence
    }

    /// The specular microfacet lobe `D / ((1 + Λo + Λi) 4 cos_o cos_i)` and its sampling
    /// density `D / ((1 + Λo) 4 cos_o)`, isotropic or anisotropic.
    #[inline(always)]
    fn spec_lobe(&self, wo: Vec3A, wi: Vec3A, h: Vec3A) -> (f32, f32) {
        if self.anisotropic {
            return self.spec_lobe_aniso(wo, wi, h);
        }
        let a2 = self.alpha * self.alpha;
        let d = ggx_d(h.z, a2);
        let lo = ggx_lambda(wo.z, a2);
        let li = ggx_lambda(wi.z, a2);
        (
            d / ((1.0 + lo + li) * 4.0 * wo.z * wi.z),
            d / ((1.0 + lo) * 4.0 * wo.z),
        )
    }

    /// A local direction in the anisotropy frame (`aniso_t`, `Z × aniso_t`, `Z`).
    #[inline(always)]
    fn in_aniso_frame(&self, v: Vec3A) -> Vec3A {
        let t = self.aniso_t;
        Vec3A::new(v.dot(t), v.y * t.x - v.x * t.y, v.z)
    }

    #[inline(never)]
    fn spec_lobe_aniso(&self, wo: Vec3A, wi: Vec3A, h: Vec3A) -> (f32, f32) {
        let (d, lo, li) = self.ggx_terms(wo, wi, h);
        (
            d / ((1.0 + lo + li) * 4.0 * wo.z * wi.z),
            d / ((1.0 + lo) * 4.0 * wo.z),
        )
    }

    /// The GGX distribution at the half vector `h` and Smith's `Λ` of `wo` and `wi` (either
    /// side), isotropic or anisotropic.
    #[inline]
    fn ggx_terms(&self, wo: Vec3A, wi: Vec3A, h: Vec3A) -> (f32, f32, f32) {
        if self.anisotropic {
            let (ax, ay) = (self.alpha_t, self.alpha_b);
            (
                ggx_d_aniso(self.in_aniso_frame(h), ax, ay),
                ggx_lambda_aniso(self.in_aniso_frame(wo), ax, ay),
                ggx_lambda_aniso(self.in_aniso_frame(wi), ax, ay),
            )
        } else {
            let a2 = self.alpha * self.alpha;
            (ggx_d(h.z, a2), ggx_lambda(wo.z, a2), ggx_lambda(wi.z, a2))
        }
    }

    /// Whether transmission into a volume goes through a rough interface (a microfacet BTDF)
    /// rather than the smooth, delta one (roughness 0 gives `MIN_ALPHA`).
    #[inline(always)]
    fn rough_refraction(&self) -> bool {
        self.refract_eta > 0.0 && (self.alpha > MIN_ALPHA || self.anisotropic)
    }

    /// Whether `eval` has a (non-delta) lobe on the far side of the surface: diffuse
    /// transmission, or rough refraction with a known wavelength.
    #[inline(always)]
    pub fn transmits_nondelta(&self) -> bool {
        self.diffuse_transmission > 0.0
            || (self.transmission > 0.0
                && self.rough_refraction()
                && (self.dispersion <= 0.0 || self.channel < ALL_CHANNELS))
    }

    /// The refraction ratio `n_wo_side / n_wi_side` for the path's channel (dispersion), from
    /// `refract_eta`, which is 1/n entering the volume and n leaving it.
    #[inline]
    fn channel_eta(&self, channel: u8) -> f32 {
        let eta = self.refract_eta;
        if self.dispersion <= 0.0 || channel >= ALL_CHANNELS {
            return eta;
        }
        let entering = eta < 1.0;
        let n = if entering { 1.0 / eta } else { eta };
        let n = dispersed_ior(n, self.dispersion, CHANNEL_WAVELENGTH_NM[channel as usize]);
        if entering {
            1.0 / n
        } else {
            n
        }
    }

    /// The microfacet BTDF of a rough interface (Walter et al. 2007, as pbrt-v4 writes it)
    /// for `wo` above and `wi` below, without Fresnel and without the `1/η²` radiance factor
    /// (the smooth lobe leaves it out too: it cancels over the two crossings of a closed
    /// volume). Returns the BTDF, its density under VNDF sampling, and the cosine for the
    /// Fresnel term (on the optically thinner side).
    #[inline(never)]
    fn rough_btdf(&self, wo: Vec3A, wi: Vec3A, eta: f32) -> Option<(f32, f32, f32)> {
        let etap = 1.0 / eta;
        let mut wm = (wi * etap + wo).normalize_or_zero();
        if wm == Vec3A::ZERO {
            return None;
        }
        if wm.z < 0.0 {
            wm = -wm;
        }
        let (dwo, dwi) = (wo.dot(wm), wi.dot(wm));
        if dwo <= 0.0 || dwi >= 0.0 {
            return None;
        }
        let sqrt_denom = dwi + dwo / etap;
        let denom = sqrt_denom * sqrt_denom;
        if denom <= 0.0 || !denom.is_finite() {
            return None;
        }
        let (d, lo, li) = self.ggx_terms(wo, wi, wm);
        let btdf = d * (dwi * dwo).abs() / ((1.0 + lo + li) * denom * (-wi.z) * wo.z);
        let pdf = d * dwo * (-dwi) / ((1.0 + lo) * wo.z * denom);
        let cos_f = if eta > 1.0 { -dwi } else { dwo };
        Some((btdf, pdf, cos_f))
    }

    /// The share of light the transmission lobe carries at `wo` (before Fresnel).
    #[inline(always)]
    fn transmission_share(&self, wo_z: f32) -> Vec3A {
        self.base * ((1.0 - self.metallic) * self.transmission * self.straight_layers(wo_z))
    }

    /// Samples a visible normal of the specular lobe (local frame).
    #[inline(always)]
    fn sample_spec_normal(&self, wo: Vec3A, u1: f32, u2: f32) -> Vec3A {
        if !self.anisotropic {
            return sample_vndf(wo, self.alpha, u1, u2);
        }
        let h = sample_vndf_aniso(self.in_aniso_frame(wo), self.alpha_t, self.alpha_b, u1, u2);
        let t = self.aniso_t;
        let b = Vec3A::new(-t.y, t.x, 0.0);
        t * h.x + b * h.y + Vec3A::Z * h.z
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
        let diff = rest * (1.0 - self.transmission) * (1.0 - self.diffuse_transmission);
        let trans = rest * self.transmission;
        let dtrans = if self.diffuse_transmission > 0.0 {
            (1.0 - m)
                * (1.0 - fd)
                * below
                * (1.0 - self.transmission)
                * self.diffuse_transmission
                * luminance(self.diffuse_transmission_color).max(0.0)
        } else {
            0.0
        };
        let sheen = l.sheen_wo * (1.0 - l.coat_wo);
        let coat = l.coat_wo;
        let sum = spec + diff + trans + sheen + coat + dtrans;
        if sum <= 0.0 || !sum.is_finite() {
            return Probs::default();
        }
        Probs {
            trans: trans / sum,
            coat: coat / sum,
            sheen: sheen / sum,
            spec: spec / sum,
            diff: diff / sum,
            dtrans: dtrans / sum,
        }
    }

    /// Fixes the outgoing direction (local frame).
    #[inline(always)]
    pub fn prepare(&self, wo: Vec3A) -> PreparedBsdf<'_> {
        if let Some(p) = self.prepare_lambert(wo) {
            return p;
        }
        let layers = self.layers(wo);
        let probs = self.lobe_probs(wo.z, &layers);
        let lambert = !layers.active
            && self.metallic == 0.0
            && self.transmission == 0.0
            && self.diffuse_transmission == 0.0
            && self.f90_dielectric == 0.0
            && self.f0_dielectric == Vec3A::ZERO
            && probs.diff == 1.0;
        PreparedBsdf {
            bsdf: self,
            wo,
            probs,
            layers,
            lambert,
        }
    }

    /// [`Bsdf::prepare`] of a Lambertian BSDF without working out the other lobes: where every
    /// other lobe is zero, `lobe_probs` gives exactly `diff = base / base = 1` and zeros (for a
    /// positive finite base luminance), and `prepare` sets `lambert`. `None` for any other BSDF.
    #[inline(always)]
    fn prepare_lambert(&self, wo: Vec3A) -> Option<PreparedBsdf<'_>> {
        let only_diffuse = !self.has_sheen()
            && !self.has_coat()
            && self.metallic == 0.0
            && self.transmission == 0.0
            && self.diffuse_transmission == 0.0
            && self.f90_dielectric == 0.0
            && self.f0_dielectric == Vec3A::ZERO;
        let base = luminance(self.base);
        if !(only_diffuse && base > 0.0 && base.is_finite()) {
            return None;
        }
        Some(PreparedBsdf {
            bsdf: self,
            wo,
            probs: Probs {
                diff: 1.0,
                ..Probs::default()
            },
            layers: Layers::NONE,
            lambert: true,
        })
    }

    /// The BSDF value (without cosine) and the density `sample` has for `wi`.
    #[inline]
    pub fn eval(&self, wo: Vec3A, wi: Vec3A) -> (Vec3A, f32) {
        self.prepare(wo).eval(wi)
    }

    #[inline(always)]
    fn eval_with(&self, wo: Vec3A, wi: Vec3A, probs: &Probs, l: &Layers) -> (Vec3A, f32) {
        if wo.z <= 0.0 || wi.z <= 0.0 {
            if wo.z > 0.0 && wi.z < 0.0 && self.transmits_nondelta() {
                return self.eval_transmission(wo, wi, probs, l);
            }
            return (Vec3A::ZERO, 0.0);
        }
        let h = (wo + wi).normalize_or(Vec3A::Z);
        let voh = wo.dot(h).clamp(0.0, 1.0);
        let (spec, pdf_spec) = self.spec_lobe(wo, wi, h);
        let fd = self.fresnel_dielectric(voh);
        let fm = self.fresnel_metal(voh);
        let diffuse = self.base
            * (FRAC_1_PI * ((1.0 - self.transmission) * (1.0 - self.diffuse_transmission)));
        let m = self.metallic;
        let f = ((Vec3A::ONE - fd) * diffuse + fd * spec) * (1.0 - m) + fm * (spec * m);
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

    /// The lobes into the other hemisphere (`wi.z < 0`): diffuse transmission and rough
    /// refraction into or out of a volume.
    #[inline(never)]
    fn eval_transmission(&self, wo: Vec3A, wi: Vec3A, probs: &Probs, l: &Layers) -> (Vec3A, f32) {
        let (mut f, mut pdf) = if self.diffuse_transmission > 0.0 {
            self.eval_diffuse_transmission(wo, wi, probs, l)
        } else {
            (Vec3A::ZERO, 0.0)
        };
        if probs.trans > 0.0
            && self.rough_refraction()
            && (self.dispersion <= 0.0 || self.channel < ALL_CHANNELS)
        {
            if let Some((btdf, p, cos_f)) = self.rough_btdf(wo, wi, self.channel_eta(self.channel))
            {
                let t =
                    (Vec3A::ONE - self.fresnel_dielectric(cos_f)) * self.transmission_share(wo.z);
                f += t * btdf;
                pdf += probs.trans * p;
            }
        }
        (f, pdf)
    }

    /// KHR_materials_diffuse_transmission: the Lambertian lobe into the other hemisphere
    /// (`wi.z < 0`), `diffuseTransmissionColor / pi`, weighted like the diffuse base it
    /// replaces: by what the dielectric's Fresnel and the layers above leave at `wo`.
    #[inline(never)]
    fn eval_diffuse_transmission(
        &self,
        wo: Vec3A,
        wi: Vec3A,
        probs: &Probs,
        l: &Layers,
    ) -> (Vec3A, f32) {
        let fd = self.fresnel_dielectric(wo.z);
        let below = (1.0 - l.coat_wo) * (1.0 - l.sheen_wo).max(0.0);
        let k = (1.0 - self.metallic)
            * (1.0 - self.transmission)
            * self.diffuse_transmission
            * below
            * FRAC_1_PI;
        let f = (Vec3A::ONE - fd) * self.diffuse_transmission_color * k;
        (f, probs.dtrans * (-wi.z) * FRAC_1_PI)
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
            let share = self.transmission_share(wo.z);
            let mut eta = self.refract_eta;
            if eta <= 0.0 {
                // Thin-glass transmission: straight through, a delta lobe.
                let t = (Vec3A::ONE - self.fresnel_dielectric(wo.z)) * share;
                return Some(BsdfSample {
                    wi: -wo,
                    weight: t / pt,
                    pdf: pt,
                    delta: true,
                    channel: ALL_CHANNELS,
                });
            }
            let mut share = share;
            let mut channel = ALL_CHANNELS;
            if self.dispersion > 0.0 {
                // A dispersive interface bends each wavelength its own way: the path goes on
                // with one channel's wavelength (chosen uniformly by reusing `u_lobe` within
                // this lobe, unless an earlier refraction chose already), its weight times 3
                // there and 0 in the others, which keeps the estimate unbiased.
                channel = self.channel;
                if channel >= ALL_CHANNELS {
                    channel = ((u_lobe / pt * 3.0) as u8).min(2);
                    let mut mask = Vec3A::ZERO;
                    mask[channel as usize] = 3.0;
                    share *= mask;
                }
                eta = self.channel_eta(channel);
            }
            if self.rough_refraction() {
                return self.sample_rough_refraction(wo, eta, share, channel, u1, u2, probs, l);
            }
            // Refraction into or out of a volume (a smooth interface: Snell's law, a delta
            // lobe). Beyond the critical angle the transmitted share is totally reflected.
            let sin2_t = eta * eta * (1.0 - wo.z * wo.z).max(0.0);
            if sin2_t >= 1.0 {
                return Some(total_internal_reflection(wo, share, pt, channel));
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
                channel,
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
            let h = self.sample_spec_normal(wo, u1, u2);
            2.0 * wo.dot(h) * h - wo
        } else if probs.dtrans > 0.0 && u >= probs.coat + probs.sheen + probs.spec + probs.diff {
            let c = cosine_hemisphere(u1, u2);
            Vec3A::new(c.x, c.y, -c.z)
        } else if probs.diff > 0.0 {
            cosine_hemisphere(u1, u2)
        } else {
            return None;
        };
        if wi.z == 0.0 || (wi.z < 0.0 && probs.dtrans <= 0.0) {
            return None;
        }
        let (f, pdf) = self.eval_with(wo, wi, probs, l);
        if pdf <= 0.0 || !pdf.is_finite() {
            return None;
        }
        Some(BsdfSample {
            wi,
            weight: f * (wi.z.abs() / pdf),
            pdf,
            delta: false,
            channel: ALL_CHANNELS,
        })
    }

    /// Samples the rough refraction lobe: a visible microfacet normal, then Snell's law at
    /// it. Where that microfacet totally reflects, the share is mirrored about the shading
    /// normal as on a smooth interface (a delta sample), so no energy is lost inside the
    /// volume.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn sample_rough_refraction(
        &self,
        wo: Vec3A,
        eta: f32,
        share: Vec3A,
        channel: u8,
        u1: f32,
        u2: f32,
        probs: &Probs,
        l: &Layers,
    ) -> Option<BsdfSample> {
        let pt = probs.trans;
        let h = self.sample_spec_normal(wo, u1, u2);
        let c_o = wo.dot(h);
        if c_o <= 0.0 {
            return None;
        }
        let sin2_t = eta * eta * (1.0 - c_o * c_o).max(0.0);
        if sin2_t >= 1.0 {
            return Some(total_internal_reflection(wo, share, pt, channel));
        }
        let cos_t = (1.0 - sin2_t).sqrt();
        let wi = (-eta * wo + (eta * c_o - cos_t) * h).normalize_or_zero();
        if wi.z >= 0.0 {
            return None;
        }
        if self.dispersion > 0.0 && self.channel >= ALL_CHANNELS {
            // The channel was chosen just now: `eval` (which knows no channel yet) cannot
            // give this sample's density, so it is weighted on its own, like a delta sample,
            // and next-event estimation skips this lobe (`transmits_nondelta`).
            let (btdf, p, cos_f) = self.rough_btdf(wo, wi, eta)?;
            if p <= 0.0 || !p.is_finite() {
                return None;
            }
            let t = (Vec3A::ONE - self.fresnel_dielectric(cos_f)) * share;
            return Some(BsdfSample {
                wi,
                weight: t * (btdf * -wi.z / (pt * p)),
                pdf: pt * p,
                delta: true,
                channel,
            });
        }
        let mut with_channel = *self;
        with_channel.channel = channel;
        let (f, pdf) = with_channel.eval_with(wo, wi, probs, l);
        if pdf <= 0.0 || !pdf.is_finite() {
            return None;
        }
        Some(BsdfSample {
            wi,
            weight: f * (-wi.z / pdf),
            pdf,
            delta: false,
            channel,
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

/// The transmitted `share` totally reflected (a mirror about the shading normal), for a
/// transmission lobe picked with probability `pt`.
#[inline]
fn total_internal_reflection(wo: Vec3A, share: Vec3A, pt: f32, channel: u8) -> BsdfSample {
    BsdfSample {
        wi: Vec3A::new(-wo.x, -wo.y, wo.z),
        weight: share / pt,
        pdf: pt,
        delta: true,
        channel,
    }
}

#[inline(always)]
pub fn cosine_hemisphere(u1: f32, u2: f32) -> Vec3A {
    let r = u1.sqrt();
    polar3_turns(r, u2, (1.0 - u1).max(0.0).sqrt())
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
    #![allow(clippy::disallowed_methods)] // test vectors need not be the same bits everywhere
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

    /// The Lambertian shortcut of `PreparedBsdf` gives the full code's bytes, and is taken only
    /// where it applies.
    #[test]
    fn lambert_shortcut_matches_the_full_code_bit_for_bit() {
        let bits = |v: Vec3A| v.to_array().map(f32::to_bits);
        let mut b = Bsdf::base(Vec3A::new(0.8, 0.5, 0.2), 0.0, 1.0, Vec3A::ZERO, 0.0, 0.0);
        for wo in [
            Vec3A::new(0.3, 0.1, 0.9).normalize(),
            Vec3A::new(-0.9, 0.2, 0.05).normalize(),
            Vec3A::new(0.1, 0.1, -0.5).normalize(),
        ] {
            let p = b.prepare(wo);
            assert!(p.lambert);
            // `prepare_lambert`'s probabilities are the full code's, bit for bit.
            let layers = b.layers(wo);
            let probs = b.lobe_probs(wo.z, &layers);
            let pb =
                |p: &Probs| [p.trans, p.coat, p.sheen, p.spec, p.diff, p.dtrans].map(f32::to_bits);
            assert_eq!(pb(&p.probs), pb(&probs));
            assert!(!layers.active);
            let n = 32;
            for i in 0..n {
                for j in 0..n {
                    let (u1, u2) = ((i as f32 + 0.37) / n as f32, (j as f32 + 0.61) / n as f32);
                    let wi = Vec3A::new(u1 - 0.5, u2 - 0.5, (i as f32 - 8.0) / 16.0);
                    let (f, pdf) = p.eval(wi);
                    let (g, qdf) = b.eval_with(wo, wi, &probs, &layers);
                    assert_eq!((bits(f), pdf.to_bits()), (bits(g), qdf.to_bits()));
                    let u_lobe = (i * 7 % n) as f32 / n as f32;
                    let s = p.sample(u_lobe, u1, u2);
                    let t = b.sample_with(wo, u_lobe, u1, u2, &probs, &layers);
                    assert_eq!(s.is_some(), t.is_some());
                    if let (Some(s), Some(t)) = (s, t) {
                        assert_eq!(bits(s.wi), bits(t.wi));
                        assert_eq!(bits(s.weight), bits(t.weight));
                        assert_eq!(s.pdf.to_bits(), t.pdf.to_bits());
                    }
                }
            }
        }
        // Any specular, metal, transmission or black base takes the full code.
        b.f0_dielectric = Vec3A::splat(0.04);
        b.f90_dielectric = 1.0;
        assert!(!b.prepare(Vec3A::Z).lambert);
        let mut c = Bsdf::base(Vec3A::ZERO, 0.0, 1.0, Vec3A::ZERO, 0.0, 0.0);
        assert!(!c.prepare(Vec3A::Z).lambert);
        c.base = Vec3A::ONE;
        c.transmission = 0.5;
        assert!(!c.prepare(Vec3A::Z).lambert);
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
                let wi = polar3(st, phi, ct);
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

    /// Random-ish but fixed BSDFs with each of the new lobes.
    fn new_lobes() -> Vec<(&'static str, Bsdf)> {
        let mut aniso = metal(0.4);
        aniso.base = Vec3A::new(0.9, 0.6, 0.3);
        aniso.set_anisotropy(0.8, Vec3A::new(0.6, 0.8, 0.0));
        let mut irid = Bsdf::base(
            Vec3A::new(0.5, 0.5, 0.5),
            0.3,
            0.2,
            Vec3A::splat(0.04),
            1.0,
            0.0,
        );
        irid.iridescence = 1.0;
        irid.iridescence_thickness_nm = 420.0;
        let mut dt = Bsdf::base(Vec3A::splat(0.8), 0.0, 0.3, Vec3A::splat(0.04), 1.0, 0.0);
        dt.diffuse_transmission = 0.6;
        dt.diffuse_transmission_color = Vec3A::new(0.9, 0.5, 0.2);
        dt.sheen_color = Vec3A::splat(0.5);
        dt.sheen_roughness = 0.5;
        let mut rough_in = Bsdf::base(Vec3A::ONE, 0.0, 0.09, Vec3A::splat(0.04), 1.0, 1.0);
        rough_in.refract_eta = 1.0 / 1.5;
        let mut rough_out = rough_in;
        rough_out.refract_eta = 1.5;
        let mut rough_disp = rough_in;
        rough_disp.dispersion = 0.8;
        rough_disp.channel = 2;
        rough_disp.diffuse_transmission = 0.3;
        vec![
            ("anisotropic", aniso),
            ("iridescent", irid),
            ("diffuse transmission", dt),
            ("rough glass, entering", rough_in),
            ("rough glass, leaving", rough_out),
            ("rough dispersive glass, blue", rough_disp),
        ]
    }

    /// The new lobes keep sampling consistent with eval (including directions below the
    /// surface for diffuse transmission).
    #[test]
    fn new_lobes_sample_matches_eval() {
        for (name, b) in new_lobes() {
            let wo = Vec3A::new(0.4, -0.2, 0.8).normalize();
            let n = 48;
            let mut below = 0;
            let transmits = name.contains("transmission") || name.contains("glass");
            for i in 0..n {
                for j in 0..n {
                    let (u1, u2) = ((i as f32 + 0.5) / n as f32, (j as f32 + 0.5) / n as f32);
                    let Some(s) = b.sample(wo, ((i * 7 + j) % n) as f32 / n as f32, u1, u2) else {
                        continue;
                    };
                    below += (s.wi.z < 0.0) as usize;
                    if s.delta {
                        continue;
                    }
                    let (f, pdf) = b.eval(wo, s.wi);
                    assert!((pdf - s.pdf).abs() <= 1e-3 * pdf.max(1.0), "{name}");
                    let w = f * s.wi.z.abs() / pdf;
                    assert!(
                        (w - s.weight).abs().max_element() < 1e-3 * w.max_element().max(1.0),
                        "{name}: {w} vs {}",
                        s.weight
                    );
                }
            }
            assert_eq!(below > 0, transmits, "{name}: {below}");
        }
    }

    /// `∫ f |cos| dwi` over the whole sphere, per channel, by a midpoint rule.
    fn albedo_sphere(b: &Bsdf, wo: Vec3A) -> Vec3A {
        let (nt, np) = (400, 400);
        let mut sum = [0.0f64; 3];
        for i in 0..2 * nt {
            let ct = (i as f32 + 0.5) / nt as f32 - 1.0;
            let st = (1.0 - ct * ct).max(0.0).sqrt();
            for j in 0..np {
                let phi = (j as f32 + 0.5) / np as f32 * 2.0 * PI;
                let wi = polar3(st, phi, ct);
                let f = b.eval(wo, wi).0 * ct.abs();
                for c in 0..3 {
                    sum[c] += f[c] as f64;
                }
            }
        }
        let k = 2.0 * std::f64::consts::PI / (nt * np) as f64;
        Vec3A::new(
            (sum[0] * k) as f32,
            (sum[1] * k) as f32,
            (sum[2] * k) as f32,
        )
    }

    /// White furnace of the BSDF alone. Diffuse transmission splits the white Lambertian base
    /// into reflection and transmission and conserves it exactly; an anisotropic white metal
    /// loses what single-scattering GGX loses (more as it gets rougher), never gains.
    #[test]
    fn new_lobes_conserve_energy() {
        for dt in [0.3f32, 1.0] {
            let mut b = Bsdf::base(Vec3A::ONE, 0.0, 1.0, Vec3A::ZERO, 0.0, 0.0);
            b.diffuse_transmission = dt;
            for mu in [0.1f32, 0.5, 1.0] {
                let wo = Vec3A::new((1.0 - mu * mu).sqrt(), 0.0, mu);
                let a = albedo_sphere(&b, wo);
                eprintln!("diffuse transmission {dt}, mu {mu}: albedo {a}");
                assert!((a - Vec3A::ONE).abs().max_element() < 2e-3, "{a}");
            }
        }
        for (strength, mu) in [(0.5f32, 0.3f32), (0.9, 0.7), (1.0, 1.0)] {
            let mut b = metal(0.3);
            b.set_anisotropy(strength, Vec3A::new(0.0, 1.0, 0.0));
            let wo = Vec3A::new((1.0 - mu * mu).sqrt(), 0.0, mu);
            let a = albedo_sphere(&b, wo);
            // The same albedo by importance sampling: the mean sample weight.
            let n = 256;
            let mut mc = 0.0f64;
            for i in 0..n {
                for j in 0..n {
                    let (u1, u2) = ((i as f32 + 0.5) / n as f32, (j as f32 + 0.5) / n as f32);
                    if let Some(s) = b.sample(wo, 0.5, u1, u2) {
                        mc += s.weight.x as f64;
                    }
                }
            }
            let mc = mc / (n * n) as f64;
            eprintln!(
                "anisotropic metal, strength {strength}, mu {mu}: albedo {a} (sampled {mc:.4})"
            );
            assert!((a.x as f64 - mc).abs() < 0.01, "{a} vs {mc}");
            assert!(a.max_element() <= 1.005 && a.min_element() > 0.5, "{a}");
        }
    }

    /// Anisotropy stretches the highlight along its direction: a half vector tilted along
    /// `aniso_t` is more likely than one tilted as far across it, and strength 0 is isotropic.
    #[test]
    fn anisotropy_stretches_along_its_direction() {
        let mut b = metal(0.3);
        let iso = b;
        b.set_anisotropy(0.0, Vec3A::X);
        assert!(!b.anisotropic);
        b.set_anisotropy(0.7, Vec3A::X);
        let wo = Vec3A::Z;
        let along = Vec3A::new(0.5, 0.0, 1.0).normalize();
        let across = Vec3A::new(0.0, 0.5, 1.0).normalize();
        let wi_along = 2.0 * wo.dot(along) * along - wo;
        let wi_across = 2.0 * wo.dot(across) * across - wo;
        let (fa, _) = b.eval(wo, wi_along);
        let (fc, _) = b.eval(wo, wi_across);
        assert!(fa.x > 2.0 * fc.x, "{fa} vs {fc}");
        // Straight up the stretched lobe is lower than the isotropic one (it spreads wider).
        let (fi, _) = iso.eval(wo, wo);
        let (fs, _) = b.eval(wo, wo);
        assert!(fs.x < fi.x, "{fs} vs {fi}");
    }

    /// KHR_materials_iridescence: the film fades out below 30 nm (leaving the base's Fresnel),
    /// stays a reflectance, and colours the reflection as the thickness changes.
    #[test]
    fn iridescence_behaves_like_a_thin_film() {
        let f0 = Vec3A::splat(0.04);
        let bare = iridescence_fresnel(1.3, 1.0, 0.0, f0);
        assert!((bare - f0).abs().max_element() < 0.01, "{bare}");
        let mut hues = Vec::new();
        for nm in [100.0f32, 250.0, 400.0, 550.0, 700.0] {
            for c in [0.05f32, 0.3, 0.7, 1.0] {
                let f = iridescence_fresnel(1.3, c, nm, f0);
                assert!(
                    f.min_element() >= 0.0 && f.max_element() <= 1.0,
                    "{nm} {c}: {f}"
                );
            }
            let f = iridescence_fresnel(1.3, 1.0, nm, f0);
            hues.push(f / f.element_sum().max(1e-6));
        }
        let spread = hues
            .iter()
            .map(|h| (*h - hues[0]).abs().max_element())
            .fold(0.0f32, f32::max);
        assert!(
            spread > 0.05,
            "thickness does not change the colour: {hues:?}"
        );
        // Strength 0 leaves the plain Fresnel bytes untouched.
        let plain = metal(0.3);
        let mut zero = plain;
        zero.iridescence = 0.0;
        let wi = Vec3A::new(0.3, 0.1, 0.9).normalize();
        assert_eq!(plain.eval(Vec3A::Z, wi).0, zero.eval(Vec3A::Z, wi).0);
    }

    /// KHR_materials_dispersion: the d-line index is the material's, blue bends more than red,
    /// and a path through a dispersive interface picks one channel, weighted 3 there.
    #[test]
    fn dispersion_splits_channels() {
        assert!((dispersed_ior(1.5, 1.0, 587.56) - 1.5).abs() < 1e-4);
        let (r, b) = (
            dispersed_ior(1.5, 1.0, CHANNEL_WAVELENGTH_NM[0]),
            dispersed_ior(1.5, 1.0, CHANNEL_WAVELENGTH_NM[2]),
        );
        assert!(b > 1.5 && r < 1.5, "{r} {b}");
        let mut glass = Bsdf::base(Vec3A::ONE, 0.0, MIN_ALPHA, Vec3A::splat(0.04), 1.0, 1.0);
        glass.refract_eta = 1.0 / 1.5;
        glass.dispersion = 1.0;
        let wo = Vec3A::new(0.6, 0.0, 0.8);
        let mut seen = [0usize; 3];
        let mut bends = [0.0f32; 3];
        for k in 0..30 {
            let u = (k as f32 + 0.5) / 30.0;
            let s = glass.sample(wo, u, 0.5, 0.5).unwrap();
            if s.wi.z >= 0.0 {
                continue;
            }
            let c = s.channel as usize;
            assert!(c < 3);
            seen[c] += 1;
            assert_eq!(s.weight[(c + 1) % 3], 0.0);
            assert!(s.weight[c] > 2.0);
            bends[c] = s.wi.x.abs();
        }
        assert!(seen.iter().all(|&n| n > 0), "{seen:?}");
        // Refraction bends towards the normal, blue the most.
        assert!(bends[2] < bends[1] && bends[1] < bends[0], "{bends:?}");
        // A path that already carries one channel keeps it.
        glass.channel = 1;
        let s = glass.sample(wo, 0.01, 0.5, 0.5).unwrap();
        assert_eq!(s.channel, 1);
        // Its weight is not masked again (the path's throughput already is).
        assert!(
            s.weight.min_element() > 0.0 && s.weight.max_element() < 2.0,
            "{}",
            s.weight
        );
    }
}
