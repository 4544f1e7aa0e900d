//! The render-ready scene: a compiled scene plus everything derived from it once per process
//! (BVH, light distributions, texture tables). Building it is deterministic.

use crate::bsdf::{luminance, onb, Bsdf, MIN_ALPHA, SHEEN_MIN_ROUGHNESS};
use crate::bvh::{Bvh, Hit};
use crate::lighttree::{LightBounds, LightTree};
use crate::math::{cross, DetMath};
use crate::texture::{texture_uv, Footprint, LuminancePyramid, Textures};
use glam::{Vec2, Vec3A};
use rayfarm_scene::{AlphaMode, CompiledScene, Environment, LightKind, TextureRef};
use std::f32::consts::PI;

/// A piecewise-constant 1-D distribution.
#[derive(Clone, Debug, Default)]
pub struct Distribution1D {
    /// `func.len() + 1` bounds: 0, then the normalised running sums (the last exactly 1), so
    /// that bin `i` spans `cdf[i]..cdf[i + 1]` with no test for the first bin (a branch the
    /// CPU mispredicted on every light pick between two lights).
    cdf: Vec<f32>,
    func: Vec<f32>,
    total: f32,
    /// A guide table (the cutpoint method): `guide[j]` is the bin [`Distribution1D::sample`]
    /// picks for `u = j / G`, `G = guide.len() - 1` a power of two, so the bin of any `u` in
    /// `[j / G, (j + 1) / G)` lies in `guide[j]..=guide[j + 1]` and the binary search runs over
    /// those few bins instead of all of them: the same bin, with fewer dependent loads (an
    /// environment map's rows and columns are searched at random, each step a cache miss).
    guide: Vec<u32>,
    /// With at most [`SMALL_BINS`] bins, `cdf[1..]` padded with infinity.
    small: Option<[f32; SMALL_BINS]>,
}

/// Distributions of at most this many bins find their bin by counting ([`Distribution1D::bin`]).
const SMALL_BINS: usize = 8;

impl Distribution1D {
    pub fn new(func: Vec<f32>) -> Distribution1D {
        let mut cdf = Vec::with_capacity(func.len() + 1);
        cdf.push(0.0);
        let mut acc = 0.0f64;
        for &f in &func {
            acc += f.max(0.0) as f64;
            cdf.push(acc as f32);
        }
        let total = acc as f32;
        if total > 0.0 {
            for c in &mut cdf[1..] {
                *c /= total;
            }
        }
        if !func.is_empty() {
            if let Some(last) = cdf.last_mut() {
                *last = 1.0;
            }
        }
        let guide = if func.is_empty() {
            Vec::new()
        } else {
            // About four bins per slot: an environment map's tables grow by a quarter.
            let g = (func.len() / 4).max(1).next_power_of_two().min(1 << 16);
            let last = func.len() - 1;
            (0..=g)
                .map(|j| {
                    let t = j as f32 / g as f32;
                    cdf[1..].partition_point(|&c| c <= t).min(last) as u32
                })
                .collect()
        };
        // Counting equals the search only over a sorted table (no NaN: an infinite weight).
        let sorted = cdf.iter().all(|c| !c.is_nan());
        let small = (sorted && !func.is_empty() && func.len() <= SMALL_BINS).then(|| {
            let mut b = [f32::INFINITY; SMALL_BINS];
            b[..func.len()].copy_from_slice(&cdf[1..]);
            b
        });
        Distribution1D {
            cdf,
            func,
            total,
            guide,
            small,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.total <= 0.0 || self.func.is_empty()
    }
    /// Picks an index; returns it, its probability and `u` remapped to [0, 1) within the bin.
    #[inline(always)]
    pub fn sample(&self, u: f32) -> (usize, f32, f32) {
        let i = self.bin(u);
        let (lo, hi) = (self.cdf[i], self.cdf[i + 1]);
        let p = hi - lo;
        let ur = if p > 0.0 {
            ((u - lo) / p).clamp(0.0, 0.99999994)
        } else {
            0.5
        };
        (i, p, ur)
    }
    /// The bin of `u`: the number of bounds after the first that are at most `u`, at most the
    /// last bin. Through the guide table for `u` in `[0, inf)`; `u * G` and `j / G` are exact
    /// (powers of two), so `j / G <= u < (j + 1) / G` holds exactly.
    #[inline(always)]
    fn bin(&self, u: f32) -> usize {
        let last = self.func.len() - 1;
        // A few bins (a light picker's: a quad light's two triangles, or the tree and the
        // environment): count the bounds at most `u`, which is what the search counts in a
        // sorted table, without its branches or the guide's loads. The padding (infinity)
        // counts only for `u` infinite, where the count is clamped to `last` anyway.
        if let Some(bounds) = &self.small {
            let n = bounds.iter().fold(0, |n, &c| n + usize::from(c <= u));
            return n.min(last);
        }
        let g = self.guide.len() - 1;
        // Below 0, or NaN: the whole search (what the guide assumes does not hold).
        if u.is_nan() || u < 0.0 {
            return self.cdf[1..].partition_point(|&c| c <= u).min(last);
        }
        let j = ((u * g as f32) as usize).min(g - 1);
        let (lo, hi) = (self.guide[j] as usize, self.guide[j + 1] as usize);
        (lo + self.cdf[1 + lo..1 + hi].partition_point(|&c| c <= u)).min(last)
    }

    /// [`Distribution1D::bin`] without the guide table; for tests.
    #[cfg(test)]
    fn bin_by_search(&self, u: f32) -> usize {
        self.cdf[1..]
            .partition_point(|&c| c <= u)
            .min(self.func.len() - 1)
    }

    #[inline]
    pub fn prob(&self, i: usize) -> f32 {
        if self.total <= 0.0 {
            0.0
        } else {
            self.func[i].max(0.0) / self.total
        }
    }
}

/// Scenes with at least this many lights with a place (emissive triangles, point and spot
/// lights) pick among them by importance through a [`LightTree`]; fewer (a quad light's two
/// triangles) are picked by power alone, which costs nothing per sample.
pub const LIGHT_TREE_MIN: usize = 4;

/// How a light sample picks a light: by power among the directional lights, the environment
/// and, as one entry holding all their power, the lights with a place; among those by their
/// importance at the shading point, through the light tree. Without a tree, by power among all.
#[derive(Clone, Debug)]
pub struct LightPicker {
    /// With a tree, entry 0 is the tree and entry `k > 0` light `tree_lights + k - 1`;
    /// without, entry `k` is light `k`.
    top: Distribution1D,
    tree: Option<LightTree>,
    /// The first `tree_lights` lights are the tree's (0 without a tree).
    tree_lights: usize,
}

impl LightPicker {
    /// `power` of every light, `bounds` of the first `bounds.len()` (those with a place); a
    /// tree over them when `tree`.
    pub fn new(power: &[f32], bounds: &[LightBounds], tree: bool) -> LightPicker {
        let tree = if tree { LightTree::build(bounds) } else { None };
        Self::with_tree(power, bounds.len(), tree)
    }

    /// [`LightPicker::new`] with the tree over the first `bounded` lights already built (or
    /// none: every light by power).
    pub fn with_tree(power: &[f32], bounded: usize, tree: Option<LightTree>) -> LightPicker {
        match tree {
            Some(tree) => {
                let inside: f64 = power[..bounded].iter().map(|&p| p as f64).sum();
                let mut top = vec![inside as f32];
                top.extend_from_slice(&power[bounded..]);
                LightPicker {
                    top: Distribution1D::new(top),
                    tree: Some(tree),
                    tree_lights: bounded,
                }
            }
            None => LightPicker {
                top: Distribution1D::new(power.to_vec()),
                tree: None,
                tree_lights: 0,
            },
        }
    }

    pub fn is_empty(&self) -> bool {
        self.top.is_empty()
    }

    /// Whether the picker chooses through a light tree.
    pub fn has_tree(&self) -> bool {
        self.tree.is_some()
    }

    /// Picks a light for a point `p` with geometric normal `n` with `u`: (light, its
    /// probability, `u` rescaled within the choice).
    #[inline(always)]
    pub fn pick(&self, p: Vec3A, n: Vec3A, u: f32) -> Option<(usize, f32, f32)> {
        let (k, sel, u) = self.top.sample(u);
        match &self.tree {
            Some(tree) if k == 0 => {
                let (li, pmf, u) = tree.sample(p, n, u)?;
                Some((li, sel * pmf, u))
            }
            Some(_) => Some((self.tree_lights + k - 1, sel, u)),
            None => Some((k, sel, u)),
        }
    }

    /// Without a light tree: the bounds [`LightPicker::pick`] counts `u` against (`cdf`, the
    /// first 0) and each light's probability, for the wavefront kernel; `None` with a tree.
    pub(crate) fn flat(&self) -> Option<(&[f32], Vec<f32>)> {
        if self.tree.is_some() || self.top.is_empty() {
            return None;
        }
        let probs = (0..self.top.func.len()).map(|i| self.top.prob(i)).collect();
        Some((&self.top.cdf, probs))
    }

    /// The probability with which [`LightPicker::pick`] picks `light` at (`p`, `n`).
    #[inline]
    pub fn prob(&self, p: Vec3A, n: Vec3A, light: usize) -> f32 {
        match &self.tree {
            Some(tree) if light < self.tree_lights => self.top.prob(0) * tree.pmf(p, n, light),
            Some(_) => self.top.prob(light - self.tree_lights + 1),
            None => self.top.prob(light),
        }
    }
}

/// Bilinear lookup in an equirectangular map at `(u, v)` in `[0, 1]²`: texel centres sit at
/// `(x + 0.5) / width`; it wraps around in `u` (longitude) and clamps in `v` (at the poles).
#[inline(always)]
fn bilinear(texels: &[[f32; 3]], width: usize, height: usize, u: f32, v: f32) -> Vec3A {
    let x = u * width as f32 - 0.5;
    let y = (v * height as f32 - 0.5).clamp(0.0, (height - 1) as f32);
    if !x.is_finite() || !y.is_finite() {
        return Vec3A::from(texels[0]);
    }
    let x0 = crate::math::floor(x);
    let fx = x - x0;
    let x0 = crate::math::wrap_index(x0 as i64, width as i64) as usize;
    // Not `(x0 + 1) % width`: a 64-bit division on every environment lookup.
    let x1 = if x0 + 1 >= width { 0 } else { x0 + 1 };
    let y0 = y as usize;
    let y1 = (y0 + 1).min(height - 1);
    let fy = y - y0 as f32;
    let t = |i: usize| Vec3A::from(texels[i]);
    let row = |yy: usize| t(yy * width + x0).lerp(t(yy * width + x1), fx);
    row(y0).lerp(row(y1), fy)
}

/// Where a direction falls on the environment map, (u, v) in [0, 1]² (from
/// [`EnvLight::look`]; unused for a constant environment).
#[derive(Clone, Copy, Debug)]
pub struct EnvPoint(f32, f32);

/// The unit normal of the triangle with corners `p0`, `p1`, `p2` (counter-clockwise is its
/// front), +Z for a degenerate one: which side a ray meets decides whether it sees emission,
/// in [`RenderScene::fill_surface`] and [`RenderScene::emission_seen`] alike.
#[inline(always)]
fn geometric_normal(p0: Vec3A, p1: Vec3A, p2: Vec3A) -> Vec3A {
    cross(p1 - p0, p2 - p0).normalize_or(Vec3A::Z)
}

/// An environment prepared for lookups and importance sampling.
pub enum EnvLight {
    Black,
    Constant(Vec3A),
    Map {
        width: usize,
        height: usize,
        texels: Vec<[f32; 3]>,
        rows: Distribution1D,
        cols: Vec<Distribution1D>,
        /// Sum of luminance x sin(theta) over the texels (the map's power; `rows` sums the
        /// sampling weights, which are larger).
        luminance_total: f32,
    },
}

impl EnvLight {
    fn new(env: Environment) -> EnvLight {
        match env {
            Environment::Black => EnvLight::Black,
            Environment::Color(c) => {
                let c = Vec3A::from(c);
                if c.max_element() > 0.0 {
                    EnvLight::Constant(c)
                } else {
                    EnvLight::Black
                }
            }
            Environment::Map {
                width,
                height,
                texels,
            } => {
                let (w, h) = (width as usize, height as usize);
                // The scene's texels themselves (12 bytes each), not a copy: an 8k map is 400 MB
                // of them. Lookups read them as fast as 16-byte `Vec3A`s (measured on the water
                // bottle), and a smaller map misses the cache less.
                // Luminances and rows side by side (an 8k map is 33M texels): every row's
                // numbers are made as one thread would make them, and the rows joined in order.
                use rayon::prelude::*;
                let lum: Vec<f32> = texels
                    .par_iter()
                    .map(|&t| luminance(Vec3A::from(t)).max(0.0))
                    .collect();
                // Each texel is sampled in proportion to the largest luminance of its 3x3
                // neighbourhood (wrapping in longitude, clamped at the poles): the radiance is
                // bilinear, so a texel next to the sun shows up to most of the sun's radiance,
                // and with its own (dark) luminance as weight it was almost never sampled and
                // became a firefly when reached (radiance / density). The max bounds that ratio.
                let neighbourhood_max = |x: usize, y: usize| {
                    // x - 1, x, x + 1 wrapped (in that order), without a division per texel.
                    let left = if x == 0 { w - 1 } else { x - 1 };
                    let right = if x + 1 == w { 0 } else { x + 1 };
                    let mut m = 0.0f32;
                    for yy in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                        for xx in [left, x, right] {
                            m = m.max(lum[yy * w + xx]);
                        }
                    }
                    m
                };
                let rows: Vec<(Distribution1D, f32)> = (0..h)
                    .into_par_iter()
                    .map(|y| {
                        let sin_t = ((y as f32 + 0.5) / h as f32 * PI).sin_d();
                        let f: Vec<f32> = (0..w).map(|x| neighbourhood_max(x, y) * sin_t).collect();
                        let row_lum = (0..w).map(|x| lum[y * w + x]).sum::<f32>() * sin_t;
                        (Distribution1D::new(f), row_lum)
                    })
                    .collect();
                let mut cols = Vec::with_capacity(h);
                let mut row_w = Vec::with_capacity(h);
                // Summed in row order, as one thread summed them.
                let mut luminance_total = 0.0f32;
                for (d, row_lum) in rows {
                    luminance_total += row_lum;
                    row_w.push(d.total);
                    cols.push(d);
                }
                let rows = Distribution1D::new(row_w);
                if rows.is_empty() {
                    return EnvLight::Black;
                }
                EnvLight::Map {
                    width: w,
                    height: h,
                    texels,
                    rows,
                    cols,
                    luminance_total,
                }
            }
        }
    }

    /// Direction to equirectangular coordinates: `u = 0.5` looks down -Z, `v = 0` is +Y.
    #[inline(always)]
    pub fn dir_to_uv(d: Vec3A) -> (f32, f32) {
        let u = 0.5 + d.x.atan2_d(-d.z) / (2.0 * PI);
        let v = d.y.clamp(-1.0, 1.0).acos_d() / PI;
        (u, v)
    }

    #[inline]
    pub fn uv_to_dir(u: f32, v: f32) -> Vec3A {
        let phi = (u - 0.5) * 2.0 * PI;
        let theta = v * PI;
        let st = theta.sin_d();
        Vec3A::new(st * phi.sin_d(), theta.cos_d(), -st * phi.cos_d())
    }

    /// Radiance arriving along `-d` (i.e. seen when looking in direction `d`).
    #[inline]
    pub fn radiance(&self, d: Vec3A) -> Vec3A {
        self.look(d).0
    }

    /// Radiance arriving along `-d`, and where `d` falls on the map, for [`EnvLight::pdf_at`]:
    /// a ray that escapes needs both, and the map coordinates cost an `atan2` and an `acos`.
    #[inline(always)]
    pub fn look(&self, d: Vec3A) -> (Vec3A, EnvPoint) {
        match self {
            EnvLight::Black => (Vec3A::ZERO, EnvPoint(0.0, 0.0)),
            EnvLight::Constant(c) => (*c, EnvPoint(0.0, 0.0)),
            EnvLight::Map {
                width,
                height,
                texels,
                ..
            } => {
                let (u, v) = Self::dir_to_uv(d);
                (bilinear(texels, *width, *height, u, v), EnvPoint(u, v))
            }
        }
    }

    /// Solid-angle density of `sample` for direction `d`.
    #[inline]
    pub fn pdf(&self, d: Vec3A) -> f32 {
        match self {
            EnvLight::Map { .. } => {
                let (u, v) = Self::dir_to_uv(d);
                self.pdf_at(&EnvPoint(u, v))
            }
            _ => self.pdf_at(&EnvPoint(0.0, 0.0)),
        }
    }

    /// [`EnvLight::pdf`] at a point [`EnvLight::look`] found (the same bits).
    #[inline(always)]
    pub fn pdf_at(&self, &EnvPoint(u, v): &EnvPoint) -> f32 {
        match self {
            EnvLight::Black => 0.0,
            EnvLight::Constant(_) => 1.0 / (4.0 * PI),
            EnvLight::Map {
                width,
                height,
                rows,
                cols,
                ..
            } => {
                let x = ((u * *width as f32) as usize).min(width - 1);
                let y = ((v * *height as f32) as usize).min(height - 1);
                let sin_t = (v * PI).sin_d();
                if sin_t <= 0.0 {
                    return 0.0;
                }
                let p = rows.prob(y) * cols[y].prob(x) * (*width * *height) as f32;
                p / (2.0 * PI * PI * sin_t)
            }
        }
    }

    /// Samples a direction towards the environment: (direction, radiance, pdf).
    #[inline(always)]
    pub fn sample(&self, u1: f32, u2: f32) -> Option<(Vec3A, Vec3A, f32)> {
        match self {
            EnvLight::Black => None,
            EnvLight::Constant(c) => {
                let z = 1.0 - 2.0 * u1;
                let r = (1.0 - z * z).max(0.0).sqrt();
                let phi = 2.0 * PI * u2;
                Some((
                    Vec3A::new(r * phi.cos_d(), z, r * phi.sin_d()),
                    *c,
                    1.0 / (4.0 * PI),
                ))
            }
            EnvLight::Map {
                width,
                height,
                texels,
                rows,
                cols,
                ..
            } => {
                let (y, py, jy) = rows.sample(u1);
                let (x, px, jx) = cols[y].sample(u2);
                let u = (x as f32 + jx) / *width as f32;
                let v = (y as f32 + jy) / *height as f32;
                let sin_t = (v * PI).sin_d();
                if sin_t <= 0.0 {
                    return None;
                }
                let pdf = py * px * (*width * *height) as f32 / (2.0 * PI * PI * sin_t);
                // The radiance is filtered exactly as `radiance` filters it, so light samples and
                // BSDF samples that reach the environment see the same function (MIS stays
                // unbiased; the density stays piecewise constant per texel).
                Some((
                    Self::uv_to_dir(u, v),
                    bilinear(texels, *width, *height, u, v),
                    pdf,
                ))
            }
        }
    }

    /// A rough total power estimate used to balance light selection.
    fn power(&self, scene_radius: f32) -> f32 {
        let avg = match self {
            EnvLight::Black => 0.0,
            EnvLight::Constant(c) => luminance(*c),
            EnvLight::Map {
                luminance_total,
                width,
                height,
                ..
            } => luminance_total / (*width * *height) as f32 * 4.0 / PI,
        };
        PI * scene_radius * scene_radius * avg * PI
    }
}

#[derive(Clone, Copy, Debug)]
pub enum LightRef {
    /// An emissive triangle, with its area, corners and unit geometric normal (kept here so that
    /// sampling it does not gather them again).
    Triangle {
        prim: u32,
        area: f32,
        corners: [Vec3A; 3],
        normal: Vec3A,
    },
    Punctual(u32),
    Environment,
}

/// A light sample seen from a shading point.
pub struct LightSample {
    pub wi: Vec3A,
    /// Distance to the sampled point (infinite for directional and environment light).
    pub dist: f32,
    /// Incident radiance (or for delta lights, irradiance-like intensity / d²).
    pub li: Vec3A,
    /// Solid-angle density including the selection probability; for delta lights, the selection
    /// probability alone.
    pub pdf: f32,
    pub delta: bool,
}

/// Per-triangle shading data at a hit.
pub struct Surface {
    pub p: Vec3A,
    /// Geometric normal turned towards the incoming ray.
    pub ng: Vec3A,
    /// Shading normal turned towards the incoming ray.
    pub ns: Vec3A,
    /// Whether the ray hit the front (counter-clockwise) side.
    pub front: bool,
    pub bsdf: Bsdf,
    /// Emitted radiance towards the ray origin.
    pub emission: Vec3A,
    pub material: u32,
}

impl Surface {
    /// A placeholder to be overwritten ([`RenderScene::fill_surface`]).
    pub fn blank() -> Surface {
        Surface {
            p: Vec3A::ZERO,
            ng: Vec3A::Z,
            ns: Vec3A::Z,
            front: true,
            bsdf: Bsdf::base(Vec3A::ZERO, 0.0, 1.0, Vec3A::ZERO, 0.0, 0.0),
            emission: Vec3A::ZERO,
            material: 0,
        }
    }
}

pub struct RenderScene {
    /// The compiled scene, except its environment, which [`RenderScene::new`] moves into
    /// `env` (texels and all: an 8k map is 400 MB); `scene.environment` is black here.
    pub scene: CompiledScene,
    pub bvh: Bvh,
    pub textures: Textures,
    pub env: EnvLight,
    /// What light samples choose from (`light_pick`): emissive triangles (weighed by
    /// their emission texture's mean around them; black ones are left out), punctual lights and
    /// the environment.
    pub lights: Vec<LightRef>,
    /// How a light sample picks among `lights`.
    pub light_pick: LightPicker,
    /// Each light's power (what the top-level choice weighs), and the bounds of those with a
    /// place (the first `light_bounds.len()` of `lights`), kept to rebuild `light_pick`.
    light_power: Vec<f32>,
    light_bounds: Vec<LightBounds>,
    /// Index into `lights` of each emissive triangle, `u32::MAX` for the others.
    pub light_of_triangle: Vec<u32>,
    pub env_light_index: Option<usize>,
    /// Whether each triangle's material needs an alpha test.
    pub alpha_tested: Vec<bool>,
    /// Whether any triangle needs an alpha test.
    pub any_alpha_tested: bool,
    /// Whether each material samples any texture (else UVs need not be interpolated).
    pub material_textured: Vec<bool>,
    /// Whether each material has KHR_materials_iridescence, _diffuse_transmission,
    /// _dispersion or _anisotropy (one load per hit instead of four checks).
    pub material_extension_lobes: Vec<bool>,
    /// Whether any material lets shadow rays through (blend alpha or transmission).
    pub has_translucency: bool,
    /// Whether the path tracer traces a vertex's shadow ray together with the next
    /// continuation ray (`Bvh::occluded_and_intersect`); true unless `has_translucency`, whose
    /// shadow rays go through layers one at a time. The same bytes either way (tested).
    pub paired_shadow_rays: bool,
    /// BSDF samples a glossy first vertex takes ([`crate::integrator::FIRST_SPLIT`]; 1 turns
    /// splitting off, for tests that compare the two). A power of two. Part of what an image
    /// is: every node of a render must use the same value.
    pub first_split: u32,
    /// Whether scenes the wavefront kernel can render take it (`integrator::wavefront`): the
    /// same bytes either way (tested), so only tests and measurements turn it off.
    pub wavefront: bool,
    /// The wavefront kernel's tables, made at the first render (`None`: the scene needs the
    /// scalar path).
    pub(crate) wave_tables: std::sync::OnceLock<Option<crate::integrator::wavefront::WaveTables>>,
    /// Beer-Lambert absorption coefficient inside each material's volume (KHR_materials_volume);
    /// zero for materials without one.
    pub absorption: Vec<Vec3A>,
    pub center: Vec3A,
    pub radius: f32,
}

/// Coordinates from which the products of the ray-triangle test overflow f32 (its terms are
/// products of two edge lengths): triangles reaching farther than this cannot be hit reliably.
pub const LARGEST_SAFE_COORDINATE: f32 = 1e18;

/// Warns when a scene's numbers are beyond what single precision renders: triangles with a NaN
/// or infinite corner (no ray hits them), or coordinates beyond [`LARGEST_SAFE_COORDINATE`].
/// The render goes on either way, safely; the user learns why the image is black or has holes.
fn warn_about_numbers(corners: &[[Vec3A; 3]]) {
    let mut non_finite = 0usize;
    let mut reach = 0.0f32;
    for tri in corners {
        if tri.iter().all(|p| p.is_finite()) {
            reach = tri.iter().fold(reach, |r, p| r.max(p.abs().max_element()));
        } else {
            non_finite += 1;
        }
    }
    if non_finite > 0 {
        tracing::warn!(
            "{non_finite} of {} triangles have a corner that is not a finite number (NaN or \
             infinity) and cannot be hit; check the exporter's output",
            corners.len()
        );
    }
    if reach > LARGEST_SAFE_COORDINATE {
        tracing::warn!(
            "the scene reaches {reach:.1e} units from the origin; beyond about \
             {LARGEST_SAFE_COORDINATE:.0e} the ray-triangle test overflows single precision and \
             rays miss triangles: scale the scene down (glTF and OBJ units are metres)"
        );
    }
}

/// Radiance (or a punctual light's colour times intensity) beyond which a light's samples can
/// overflow single precision on their way to the film: a path multiplies it by the BSDF (up to
/// about 1e6 for a mirror-like GGX lobe), by one over a density and by one over a squared
/// distance, and f32 ends at 3.4e38. Real scenes stay far below (the sun of an HDR map: about
/// 1e5; a glTF point light: 1e2 to 1e5 candela).
pub const LARGEST_SAFE_RADIANCE: f32 = 1e20;

/// The largest component of `c`, or infinity when one is NaN or infinite.
fn brightest(c: [f32; 3]) -> f32 {
    if c.iter().all(|v| v.is_finite()) {
        c.iter().fold(0.0f32, |m, v| m.max(v.abs()))
    } else {
        f32::INFINITY
    }
}

/// Warns about each light, emissive material and environment brighter than
/// [`LARGEST_SAFE_RADIANCE`] (or not a finite number), by name: their samples overflow and are
/// dropped, and the image comes out dark or speckled. The render goes on; the user learns which
/// light to fix and how.
fn warn_about_radiance(scene: &CompiledScene) {
    let limit = LARGEST_SAFE_RADIANCE;
    // `what` names the culprit; it is only worked out for one that is too bright.
    let warn = |v: f32, what: &dyn Fn() -> String| {
        if v > limit {
            let what = what();
            tracing::warn!(
                "{what} reaches {v:.1e}, above the {limit:.0e} rayfarm renders safely: its \
                 samples can overflow single precision and be dropped; lower it (and raise \
                 --exposure to keep the image as bright)"
            );
        }
    };
    let named = |kind: &str, name: &str, i: usize| {
        if name.is_empty() {
            format!("{kind} number {i}")
        } else {
            format!("{kind} {name:?} (number {i})")
        }
    };
    for (i, l) in scene.lights.iter().enumerate() {
        let v = brightest(l.color.map(|c| c * l.intensity));
        warn(v, &|| {
            format!("{}: colour x intensity", named("light", &l.name, i))
        });
    }
    for (i, m) in scene.materials.iter().enumerate() {
        warn(brightest(m.emissive), &|| {
            let what = named("material", &m.name, i);
            format!("{what}: its emission (factor x strength)")
        });
    }
    let env = match &scene.environment {
        Environment::Black => 0.0,
        Environment::Color(c) => brightest(*c),
        // `brightest` is never NaN, so the largest is the same whichever way it is reduced.
        Environment::Map { texels, .. } => {
            use rayon::prelude::*;
            texels
                .par_iter()
                .map(|&t| brightest(t))
                .reduce(|| 0.0, f32::max)
        }
    };
    warn(env, &|| "the environment's radiance".into());
}

/// The lights of a scene with a place (emissive triangles, point and spot lights) and the
/// directional ones, in that order, with their powers, the bounds of those with a place and
/// their tree ([`LIGHT_TREE_MIN`] of them or more); the environment is added after.
struct Lights {
    lights: Vec<LightRef>,
    power: Vec<f32>,
    bounds: Vec<LightBounds>,
    light_of_triangle: Vec<u32>,
    tree: Option<LightTree>,
}

impl Lights {
    fn gather(scene: &CompiledScene, corners: &[[Vec3A; 3]], radius: f32) -> Lights {
        let emission_textures = emission_texture_means(scene);
        let mut lights = Vec::new();
        let mut power = Vec::new();
        // The lights with a place first (the light tree's), then directional lights and the
        // environment.
        let mut bounds = Vec::new();
        let mut light_of_triangle = vec![u32::MAX; scene.triangles.len()];
        for (i, tri) in corners.iter().enumerate() {
            let m = &scene.materials[scene.triangle_materials[i] as usize];
            if !m.is_emissive() {
                continue;
            }
            let area = 0.5 * cross(tri[1] - tri[0], tri[2] - tri[0]).length();
            if area <= 0.0 || !area.is_finite() {
                continue;
            }
            let sides = if m.double_sided { 2.0 } else { 1.0 };
            let p = luminance(Vec3A::from(m.emissive)) * emission_textures[i] * area * PI * sides;
            if !(p > 0.0 && p.is_finite()) {
                // Black under its emission texture (or no light at all): not a light. A path
                // that hits it anyway counts its emission in full (no light sample competes).
                continue;
            }
            let normal = cross(tri[1] - tri[0], tri[2] - tri[0]).normalize_or(Vec3A::Z);
            light_of_triangle[i] = lights.len() as u32;
            lights.push(LightRef::Triangle {
                prim: i as u32,
                area,
                corners: *tri,
                normal,
            });
            power.push(p);
            bounds.push(LightBounds::triangle(*tri, normal, p, m.double_sided));
        }
        for directional in [false, true] {
            for (i, l) in scene.lights.iter().enumerate() {
                if (l.kind == LightKind::Directional) != directional {
                    continue;
                }
                let i_lum = luminance(Vec3A::from(l.color)) * l.intensity;
                let at = Vec3A::from(l.position);
                let (p, b) = match l.kind {
                    LightKind::Point => (4.0 * PI * i_lum, Some(LightBounds::point(at, i_lum))),
                    LightKind::Spot { outer_cone, .. } => (
                        2.0 * PI * (1.0 - outer_cone.cos_d()) * i_lum,
                        Some(LightBounds::spot(
                            at,
                            Vec3A::from(l.direction),
                            outer_cone,
                            i_lum,
                        )),
                    ),
                    LightKind::Directional => (PI * radius * radius * i_lum, None),
                };
                // A light with no finite place or direction lights nothing (and would make the
                // light tree's bounds NaN).
                let placed = at.is_finite() && Vec3A::from(l.direction).is_finite();
                if p > 0.0 && p.is_finite() && placed {
                    lights.push(LightRef::Punctual(i as u32));
                    power.push(p);
                    bounds.extend(b);
                }
            }
        }
        let tree = if bounds.len() >= LIGHT_TREE_MIN {
            LightTree::build(&bounds)
        } else {
            None
        };
        Lights {
            lights,
            power,
            bounds,
            light_of_triangle,
            tree,
        }
    }
}

/// For each triangle, the mean luminance of its material's emission texture around the
/// triangle's UV rectangle (see [`LuminancePyramid::region_mean`]); 1 for triangles without one
/// (and 0 where the texture or image is missing). Images one at a time, each pyramid dropped
/// before the next is built.
fn emission_texture_means(scene: &CompiledScene) -> Vec<f32> {
    let mut means = vec![1.0f32; scene.triangles.len()];
    let mut by_image: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for (i, &mi) in scene.triangle_materials.iter().enumerate() {
        let m = &scene.materials[mi as usize];
        let Some(r) = m.emissive_texture.as_ref().filter(|_| m.is_emissive()) else {
            continue;
        };
        match scene.textures.get(r.texture as usize) {
            Some(t) if (t.image as usize) < scene.images.len() => {
                by_image.entry(t.image).or_default().push(i)
            }
            _ => means[i] = 0.0,
        }
    }
    for (image, tris) in by_image {
        let img = &scene.images[image as usize];
        let pyramid = LuminancePyramid::new(&img.rgba8, img.width, img.height, true);
        for i in tris {
            let m = &scene.materials[scene.triangle_materials[i] as usize];
            let Some(r) = &m.emissive_texture else {
                continue;
            };
            let tex = &scene.textures[r.texture as usize];
            let set = if r.uv_set == 0 {
                &scene.uv0
            } else {
                &scene.uv1
            };
            let corners = scene.triangles[i].map(|v| {
                let uv = set.get(v as usize).copied().unwrap_or([0.0; 2]);
                texture_uv(r, Vec2::from(uv))
            });
            means[i] = if corners.iter().any(|c| !c.is_finite()) {
                // Lookups inside read texel (0, 0) or anything: the image's mean (`min` and
                // `max` would drop a NaN corner).
                pyramid.region_mean(tex, Vec2::NAN, Vec2::NAN)
            } else {
                let lo = corners[0].min(corners[1]).min(corners[2]);
                let hi = corners[0].max(corners[1]).max(corners[2]);
                pyramid.region_mean(tex, lo, hi)
            };
        }
    }
    means
}

impl RenderScene {
    /// The scene prepared for rendering; texture MIP pyramids are built on first use (see
    /// [`RenderScene::for_images`]).
    pub fn new(scene: CompiledScene) -> RenderScene {
        Self::prepare(scene, false)
    }

    /// [`RenderScene::new`], and every MIP pyramid too when `pyramids`.
    ///
    /// The slow parts of set-up run side by side on the current thread pool: the BVH (its own
    /// one-thread build), the emission textures' luminance pyramids, the environment's
    /// sampling tables and the MIP pyramids. Each is a pure function of the scene: the same
    /// result whichever thread makes it.
    fn prepare(scene: CompiledScene, pyramids: bool) -> RenderScene {
        let corners: Vec<[Vec3A; 3]> = scene
            .triangles
            .iter()
            .map(|t| t.map(|i| Vec3A::from(scene.positions[i as usize])))
            .collect();
        let textures = Textures::build(&scene);
        warn_about_numbers(&corners);
        warn_about_radiance(&scene);
        // The environment moves into the renderer's own tables (`EnvLight`), texels and all:
        // `scene.environment` is black from here on.
        let mut scene = scene;
        let environment = std::mem::take(&mut scene.environment);
        let (lo, hi) = scene.bounds().unwrap_or(([0.0; 3], [0.0; 3]));
        let (lo, hi) = (Vec3A::from(lo), Vec3A::from(hi));
        let center = (lo + hi) * 0.5;
        let radius = ((hi - lo).length() * 0.5).max(1e-3);
        // The lights and their tree beside the BVH, which scenes of fewer than 262,144
        // triangles build on one thread.
        let ((bvh, lights), (env, ())) = rayon::join(
            || {
                rayon::join(
                    || Bvh::build(&corners),
                    || Lights::gather(&scene, &corners, radius),
                )
            },
            || {
                rayon::join(
                    || EnvLight::new(environment),
                    || {
                        if pyramids {
                            textures.build_all_levels(&scene)
                        }
                    },
                )
            },
        );

        let alpha_tested: Vec<bool> = scene
            .triangle_materials
            .iter()
            .map(|&m| scene.materials[m as usize].alpha_mode != AlphaMode::Opaque)
            .collect();
        let has_translucency = scene
            .materials
            .iter()
            .any(|m| m.alpha_mode == AlphaMode::Blend || m.transmission > 0.0);

        let Lights {
            mut lights,
            mut power,
            bounds,
            light_of_triangle,
            tree,
        } = lights;
        let mut env_light_index = None;
        let ep = env.power(radius);
        if ep > 0.0 && ep.is_finite() {
            env_light_index = Some(lights.len());
            lights.push(LightRef::Environment);
            power.push(ep);
        }
        let light_pick = LightPicker::with_tree(&power, bounds.len(), tree);
        tracing::debug!(
            lights = lights.len(),
            with_a_place = bounds.len(),
            tree = light_pick.has_tree(),
            "light sampling"
        );
        let material_extension_lobes = scene
            .materials
            .iter()
            .map(|m| {
                m.has_iridescence()
                    || m.has_diffuse_transmission()
                    || m.has_dispersion()
                    || m.has_anisotropy()
            })
            .collect();
        let material_textured = scene
            .materials
            .iter()
            .map(|m| {
                [
                    &m.base_color_texture,
                    &m.metallic_roughness_texture,
                    &m.normal_texture,
                    &m.emissive_texture,
                    &m.specular_texture,
                    &m.specular_color_texture,
                    &m.transmission_texture,
                    &m.sheen_color_texture,
                    &m.sheen_roughness_texture,
                    &m.clearcoat_texture,
                    &m.clearcoat_roughness_texture,
                    &m.clearcoat_normal_texture,
                ]
                .iter()
                .any(|t| t.is_some())
            })
            .collect();
        let absorption = scene
            .materials
            .iter()
            .map(|m| {
                if m.has_volume() {
                    Vec3A::from(m.absorption())
                } else {
                    Vec3A::ZERO
                }
            })
            .collect();
        RenderScene {
            absorption,
            any_alpha_tested: alpha_tested.iter().any(|&a| a),
            material_textured,
            material_extension_lobes,
            bvh,
            textures,
            env,
            lights,
            light_pick,
            light_power: power,
            light_bounds: bounds,
            light_of_triangle,
            env_light_index,
            alpha_tested,
            has_translucency,
            paired_shadow_rays: !has_translucency,
            first_split: crate::integrator::FIRST_SPLIT,
            wavefront: true,
            wave_tables: std::sync::OnceLock::new(),
            center,
            radius,
            scene,
        }
    }

    /// [`RenderScene::new`] for rendering images: every texture's MIP pyramid is built now, on
    /// all threads at once (camera rays minify textures almost always), instead of by the
    /// first render thread that needs it while the others wait. Baking, which reads textures at
    /// full resolution, uses `new`.
    pub fn for_images(scene: CompiledScene) -> RenderScene {
        Self::prepare(scene, true)
    }

    #[inline(always)]
    fn uvs(&self, prim: u32, b1: f32, b2: f32) -> [Vec2; 2] {
        let t = self.scene.triangles[prim as usize];
        let b0 = 1.0 - b1 - b2;
        let get = |arr: &Vec<[f32; 2]>| -> Vec2 {
            if arr.is_empty() {
                return Vec2::ZERO;
            }
            let [a, b, c] = t.map(|i| Vec2::from(arr[i as usize]));
            a * b0 + b * b1 + c * b2
        };
        [get(&self.scene.uv0), get(&self.scene.uv1)]
    }

    /// Twice the area of triangle `prim` in each UV set (zero without the set): the chapter's
    /// `t_a` before the texture's size.
    #[inline(always)]
    fn uv_areas(&self, prim: usize) -> [f32; 2] {
        let t = self.scene.triangles[prim];
        let area = |arr: &Vec<[f32; 2]>| -> f32 {
            if arr.is_empty() {
                return 0.0;
            }
            let [a, b, c] = t.map(|i| Vec2::from(arr[i as usize]));
            (b - a).perp_dot(c - a).abs()
        };
        [area(&self.scene.uv0), area(&self.scene.uv1)]
    }

    /// Opacity of a triangle at barycentrics (base colour alpha times texture alpha).
    #[inline]
    pub fn alpha(&self, prim: u32, b1: f32, b2: f32) -> f32 {
        let m = &self.scene.materials[self.scene.triangle_materials[prim as usize] as usize];
        let mut a = m.base_color[3];
        if let Some(t) = &m.base_color_texture {
            let uvs = self.uvs(prim, b1, b2);
            // Alpha tests see the full-resolution image: visibility must not depend on how
            // far the ray travelled.
            a *= self
                .textures
                .sample(&self.scene, t, &uvs, true, &Footprint::FULL_RESOLUTION)
                .w;
        }
        a
    }

    /// Whether an alpha-tested hit counts. Masked materials compare with the cutoff; blended
    /// ones are kept with probability alpha, decided by a hash of `u` and the triangle so the
    /// choice is deterministic per sample.
    #[inline]
    pub fn alpha_accept(&self, prim: u32, b1: f32, b2: f32, u: f32) -> bool {
        let m = &self.scene.materials[self.scene.triangle_materials[prim as usize] as usize];
        let a = self.alpha(prim, b1, b2);
        match m.alpha_mode {
            AlphaMode::Opaque => true,
            AlphaMode::Mask => a >= m.alpha_cutoff,
            AlphaMode::Blend => {
                let h = crate::sampler::mix64((u.to_bits() as u64) << 32 | prim as u64);
                ((h >> 40) as f32 / (1u64 << 24) as f32) < a
            }
        }
    }

    /// Emitted radiance of triangle `prim` at barycentrics, towards a viewer on the `front` side,
    /// with emission textures at full resolution (light sampling).
    #[inline]
    pub fn emission(&self, prim: u32, b1: f32, b2: f32, front: bool) -> Vec3A {
        self.emission_filtered(prim, b1, b2, front, &Footprint::FULL_RESOLUTION)
    }

    /// The emission a ray travelling along `dir` sees at `hit` after a non-delta bounce:
    /// what [`RenderScene::fill_surface`] gives such a ray (full resolution, the side from the
    /// triangle's winding), without the rest of the surface.
    #[inline]
    pub fn emission_seen(&self, hit: &Hit, dir: Vec3A) -> Vec3A {
        let s = &self.scene;
        let t = s.triangles[hit.prim as usize];
        let [p0, p1, p2] = t.map(|i| Vec3A::from(s.positions[i as usize]));
        let front = geometric_normal(p0, p1, p2).dot(dir) < 0.0;
        self.emission(hit.prim, hit.u, hit.v, front)
    }

    /// [`RenderScene::emission`] with emission textures filtered for the footprint `fp`.
    #[inline(always)]
    fn emission_filtered(&self, prim: u32, b1: f32, b2: f32, front: bool, fp: &Footprint) -> Vec3A {
        let m = &self.scene.materials[self.scene.triangle_materials[prim as usize] as usize];
        if !m.is_emissive() || (!front && !m.double_sided) {
            return Vec3A::ZERO;
        }
        let mut e = Vec3A::from(m.emissive);
        if let Some(t) = &m.emissive_texture {
            let uvs = self.uvs(prim, b1, b2);
            let s = self.textures.sample(&self.scene, t, &uvs, true, fp);
            e *= Vec3A::new(s.x, s.y, s.z);
        }
        e
    }

    /// The shading normal `ns` (interpolated, unit) perturbed by the tangent-space normal map
    /// `nt` at the hit; unchanged when the mesh has no tangents.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn normal_mapped(
        &self,
        prim: usize,
        b0: f32,
        b1: f32,
        b2: f32,
        ns: Vec3A,
        nt: &TextureRef,
        scale: f32,
        uvs: &[Vec2; 2],
        fp: &Footprint,
    ) -> Vec3A {
        let s = &self.scene;
        let Some((tan, bit)) = self.tangent_frame(prim, b0, b1, b2, ns) else {
            return ns;
        };
        let c = self.textures.sample(s, nt, uvs, false, fp);
        let local = Vec3A::new(
            (c.x * 2.0 - 1.0) * scale,
            (c.y * 2.0 - 1.0) * scale,
            c.z * 2.0 - 1.0,
        );
        (tan * local.x + bit * local.y + ns * local.z).normalize_or(ns)
    }

    /// The KHR_materials_iridescence, _diffuse_transmission, _dispersion and _anisotropy
    /// parameters at a hit. Kept out of line so that `surface` stays small for the materials
    /// without them.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn extension_lobes(
        &self,
        bsdf: &mut Bsdf,
        m: &rayfarm_scene::Material,
        prim: usize,
        [b0, b1, b2]: [f32; 3],
        ns: Vec3A,
        front: bool,
        uvs: &[Vec2; 2],
        fp: &Footprint,
    ) {
        let s = &self.scene;
        if m.has_iridescence() {
            let mut f = m.iridescence;
            if let Some(tr) = &m.iridescence_texture {
                f *= self.textures.sample(s, tr, uvs, false, fp).x;
            }
            let mut nm = m.iridescence_thickness_max;
            if let Some(tr) = &m.iridescence_thickness_texture {
                let g = self.textures.sample(s, tr, uvs, false, fp).y;
                let lo = m.iridescence_thickness_min;
                nm = lo + (nm - lo) * g;
            }
            bsdf.iridescence = f.clamp(0.0, 1.0);
            bsdf.iridescence_ior = m.iridescence_ior.max(1.0);
            bsdf.iridescence_thickness_nm = nm.max(0.0);
        }
        if m.has_diffuse_transmission() {
            let mut f = m.diffuse_transmission;
            if let Some(tr) = &m.diffuse_transmission_texture {
                f *= self.textures.sample(s, tr, uvs, false, fp).w;
            }
            let mut color = Vec3A::from(m.diffuse_transmission_color);
            if let Some(tr) = &m.diffuse_transmission_color_texture {
                let c = self.textures.sample(s, tr, uvs, true, fp);
                color *= Vec3A::new(c.x, c.y, c.z);
            }
            bsdf.diffuse_transmission = f.clamp(0.0, 1.0);
            bsdf.diffuse_transmission_color = color.clamp(Vec3A::ZERO, Vec3A::ONE);
        }
        if m.has_dispersion() {
            bsdf.dispersion = m.dispersion;
        }
        if m.has_anisotropy() {
            let (strength, t) = self.anisotropy(prim, b0, b1, b2, ns, front, m, uvs, fp);
            bsdf.set_anisotropy(strength, t);
        }
    }

    /// The tangent and bitangent at barycentrics `(b0, b1, b2)` of triangle `prim`, made
    /// orthogonal to the unit normal `n`; `None` when the scene has no tangents or the tangent
    /// is parallel to `n`.
    #[inline]
    fn tangent_frame(
        &self,
        prim: usize,
        b0: f32,
        b1: f32,
        b2: f32,
        n: Vec3A,
    ) -> Option<(Vec3A, Vec3A)> {
        let s = &self.scene;
        if s.tangents.is_empty() {
            return None;
        }
        let t = s.triangles[prim];
        let [t0, t1, t2] = t.map(|i| s.tangents[i as usize]);
        let tv = Vec3A::new(
            t0[0] * b0 + t1[0] * b1 + t2[0] * b2,
            t0[1] * b0 + t1[1] * b1 + t2[1] * b2,
            t0[2] * b0 + t1[2] * b1 + t2[2] * b2,
        );
        let tan = (tv - n * n.dot(tv)).normalize_or_zero();
        if tan == Vec3A::ZERO {
            return None;
        }
        let bit = cross(n, tan) * if t0[3] < 0.0 { -1.0 } else { 1.0 };
        Some((tan, bit))
    }

    /// KHR_materials_anisotropy at a hit: the strength and the direction in the local shading
    /// frame the integrator builds around `ns` (the final, side-corrected shading normal).
    /// The direction is `(cos r, sin r)` (or the texture's, rotated by `r`) in the tangent
    /// frame; without tangents it falls back to an arbitrary direction in the tangent plane.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn anisotropy(
        &self,
        prim: usize,
        b0: f32,
        b1: f32,
        b2: f32,
        ns: Vec3A,
        front: bool,
        m: &rayfarm_scene::Material,
        uvs: &[Vec2; 2],
        fp: &Footprint,
    ) -> (f32, Vec3A) {
        let s = &self.scene;
        let mut strength = m.anisotropy_strength;
        let (mut dx, mut dy) = (1.0f32, 0.0f32);
        if let Some(tr) = &m.anisotropy_texture {
            let c = self.textures.sample(s, tr, uvs, false, fp);
            let d = Vec2::new(c.x * 2.0 - 1.0, c.y * 2.0 - 1.0);
            let d = d.normalize_or(Vec2::X);
            (dx, dy) = (d.x, d.y);
            strength *= c.z;
        }
        let (sr, cr) = m.anisotropy_rotation.sin_cos_d();
        let (dx, dy) = (cr * dx - sr * dy, sr * dx + cr * dy);
        let (tx, ty) = onb(ns);
        // The tangent frame belongs to the front face; `ns` is already turned to the ray.
        let n = if front { ns } else { -ns };
        let dir = self
            .tangent_frame(prim, b0, b1, b2, n)
            .map(|(tan, bit)| tan * dx + bit * dy);
        let local = match dir {
            Some(d) => Vec3A::new(d.dot(tx), d.dot(ty), 0.0).normalize_or(Vec3A::X),
            None => Vec3A::new(dx, dy, 0.0).normalize_or(Vec3A::X),
        };
        (strength.clamp(0.0, 1.0), local)
    }

    /// Shading data at a hit of a ray with direction `dir`, textures at full resolution.
    pub fn surface(&self, hit: &Hit, org: Vec3A, dir: Vec3A) -> Surface {
        self.surface_filtered(hit, org, dir, 0.0)
    }

    /// Shading data at a hit of a ray with direction `dir` whose cone is `cone_width` wide at the
    /// hit: minified textures are filtered over the footprint (ray cones, Ray Tracing Gems ch.
    /// 20); a width of zero reads every texture at full resolution, as [`RenderScene::surface`].
    #[inline(always)]
    pub fn surface_filtered(&self, hit: &Hit, org: Vec3A, dir: Vec3A, cone_width: f32) -> Surface {
        let mut surf = Surface::blank();
        self.fill_surface(&mut surf, hit, org, dir, cone_width);
        surf
    }

    /// [`RenderScene::surface_filtered`] written into `out`: the path loop reuses one `Surface`
    /// (a large struct) instead of having each hit's copied into place.
    #[inline(always)]
    pub fn fill_surface(
        &self,
        out: &mut Surface,
        hit: &Hit,
        org: Vec3A,
        dir: Vec3A,
        cone_width: f32,
    ) {
        let s = &self.scene;
        let prim = hit.prim as usize;
        let t = s.triangles[prim];
        let (b1, b2) = (hit.u, hit.v);
        let b0 = 1.0 - b1 - b2;
        let [p0, p1, p2] = t.map(|i| Vec3A::from(s.positions[i as usize]));
        let p = org + dir * hit.t;
        let ng_raw = geometric_normal(p0, p1, p2);
        let front = ng_raw.dot(dir) < 0.0;
        // Selects, not branches: which side a ray meets is a coin toss the CPU mispredicted
        // (rooms, the Cornell box's walls seen from both sides).
        let facing = glam::BVec3A::splat(front);
        let ng = Vec3A::select(facing, ng_raw, -ng_raw);
        let [n0, n1, n2] = t.map(|i| Vec3A::from(s.normals[i as usize]));
        let mut ns = (n0 * b0 + n1 * b1 + n2 * b2).normalize_or(ng_raw);
        let mat_idx = s.triangle_materials[prim];
        let m = &s.materials[mat_idx as usize];
        let (uvs, fp) = if self.material_textured[mat_idx as usize] {
            let fp = if cone_width > 0.0 {
                let e = cross(p1 - p0, p2 - p0);
                Footprint::new(
                    cone_width,
                    e.normalize_or_zero().dot(dir),
                    e.length(),
                    self.uv_areas(prim),
                )
            } else {
                Footprint::FULL_RESOLUTION
            };
            (self.uvs(hit.prim, b1, b2), fp)
        } else {
            ([Vec2::ZERO; 2], Footprint::FULL_RESOLUTION)
        };

        // The coat follows the interpolated normal unless it has its own normal map.
        let ns_mesh = ns;
        if let Some(nt) = &m.normal_texture {
            ns = self.normal_mapped(prim, b0, b1, b2, ns, nt, m.normal_scale, &uvs, &fp);
        }
        ns = Vec3A::select(facing, ns, -ns);
        if ns.dot(-dir) <= 0.0 {
            ns = ng;
        }
        let coat_n = if m.clearcoat > 0.0 {
            let mut n = match &m.clearcoat_normal_texture {
                Some(nt) => self.normal_mapped(
                    prim,
                    b0,
                    b1,
                    b2,
                    ns_mesh,
                    nt,
                    m.clearcoat_normal_scale,
                    &uvs,
                    &fp,
                ),
                None => ns_mesh,
            };
            if !front {
                n = -n;
            }
            if n.dot(-dir) <= 0.0 {
                n = ns;
            }
            // In the local frame the integrator builds around `ns`.
            let (tx, ty) = onb(ns);
            Vec3A::new(n.dot(tx), n.dot(ty), n.dot(ns)).normalize_or(Vec3A::Z)
        } else {
            Vec3A::Z
        };

        let mut base = Vec3A::new(m.base_color[0], m.base_color[1], m.base_color[2]);
        if let Some(tr) = &m.base_color_texture {
            let c = self.textures.sample(s, tr, &uvs, true, &fp);
            base *= Vec3A::new(c.x, c.y, c.z);
        }
        let (mut metallic, mut roughness) = (m.metallic, m.roughness);
        if let Some(tr) = &m.metallic_roughness_texture {
            let c = self.textures.sample(s, tr, &uvs, false, &fp);
            roughness *= c.y;
            metallic *= c.z;
        }
        let mut specular = m.specular;
        if let Some(tr) = &m.specular_texture {
            specular *= self.textures.sample(s, tr, &uvs, false, &fp).w;
        }
        let mut spec_color = Vec3A::from(m.specular_color);
        if let Some(tr) = &m.specular_color_texture {
            let c = self.textures.sample(s, tr, &uvs, true, &fp);
            spec_color *= Vec3A::new(c.x, c.y, c.z);
        }
        let mut transmission = m.transmission;
        if let Some(tr) = &m.transmission_texture {
            transmission *= self.textures.sample(s, tr, &uvs, false, &fp).x;
        }
        let r0 = ((m.ior - 1.0) / (m.ior + 1.0)).powi(2);
        let f0 = (spec_color * r0).min(Vec3A::ONE) * specular;
        let roughness = roughness.clamp(0.0, 1.0);
        *out = Surface {
            p,
            ng,
            ns,
            front,
            bsdf: Bsdf::base(
                base.clamp(Vec3A::ZERO, Vec3A::ONE),
                metallic.clamp(0.0, 1.0),
                (roughness * roughness).max(MIN_ALPHA),
                f0,
                specular.clamp(0.0, 1.0),
                transmission.clamp(0.0, 1.0),
            ),
            emission: Vec3A::ZERO,
            material: mat_idx,
        };
        let surf = out;
        let bsdf = &mut surf.bsdf;
        if m.has_sheen() {
            let mut color = Vec3A::from(m.sheen_color);
            if let Some(tr) = &m.sheen_color_texture {
                let c = self.textures.sample(s, tr, &uvs, true, &fp);
                color *= Vec3A::new(c.x, c.y, c.z);
            }
            let mut r = m.sheen_roughness;
            if let Some(tr) = &m.sheen_roughness_texture {
                r *= self.textures.sample(s, tr, &uvs, false, &fp).w;
            }
            bsdf.sheen_color = color.clamp(Vec3A::ZERO, Vec3A::ONE);
            bsdf.sheen_roughness = r.clamp(SHEEN_MIN_ROUGHNESS, 1.0);
        }
        if m.has_volume() {
            let ior = m.ior.max(1.0);
            bsdf.refract_eta = if front { 1.0 / ior } else { ior };
        }
        if m.has_clearcoat() {
            let mut c = m.clearcoat;
            if let Some(tr) = &m.clearcoat_texture {
                c *= self.textures.sample(s, tr, &uvs, false, &fp).x;
            }
            let mut r = m.clearcoat_roughness;
            if let Some(tr) = &m.clearcoat_roughness_texture {
                r *= self.textures.sample(s, tr, &uvs, false, &fp).y;
            }
            let r = r.clamp(0.0, 1.0);
            bsdf.clearcoat = c.clamp(0.0, 1.0);
            bsdf.clearcoat_alpha = (r * r).max(MIN_ALPHA);
            bsdf.clearcoat_normal = coat_n;
        }
        if self.material_extension_lobes[mat_idx as usize] {
            self.extension_lobes(bsdf, m, prim, [b0, b1, b2], ns, front, &uvs, &fp);
        }
        if m.is_emissive() {
            surf.emission = self.emission_filtered(hit.prim, b1, b2, front, &fp);
        }
    }

    /// Turns the light tree on or off (for tests and measurements that compare the two; a
    /// scene uses it when it has [`LIGHT_TREE_MIN`] lights with a place or more). Part of
    /// what an image is, as `first_split` is.
    pub fn use_light_tree(&mut self, on: bool) {
        self.light_pick = LightPicker::new(&self.light_power, &self.light_bounds, on);
        self.wave_tables = std::sync::OnceLock::new();
    }

    /// Solid-angle density with which `sample_light` at the point `from` with geometric normal
    /// `n` would pick the point `dist` along `dir` on emissive triangle `prim`.
    #[inline(always)]
    pub fn triangle_light_pdf(
        &self,
        prim: u32,
        dir: Vec3A,
        dist: f32,
        from: Vec3A,
        n: Vec3A,
    ) -> f32 {
        let li = self.light_of_triangle[prim as usize];
        if li == u32::MAX {
            return 0.0;
        }
        let LightRef::Triangle { area, normal, .. } = self.lights[li as usize] else {
            return 0.0;
        };
        let cos = normal.dot(dir).abs();
        if cos <= 0.0 {
            return 0.0;
        }
        self.light_pick.prob(from, n, li as usize) * dist * dist / (area * cos)
    }

    /// The density with which [`RenderScene::sample_light`] picks the environment and in it
    /// the direction of `at` (a point [`EnvLight::look`] found); 0 without an environment light.
    #[inline(always)]
    pub fn env_light_pdf_at(&self, at: &EnvPoint) -> f32 {
        match self.env_light_index {
            Some(i) => self.light_pick.prob(Vec3A::ZERO, Vec3A::ZERO, i) * self.env.pdf_at(at),
            None => 0.0,
        }
    }

    /// Samples one light as seen from `p`, a point with geometric normal `n` (zero in a
    /// medium).
    #[inline(always)]
    pub fn sample_light(&self, p: Vec3A, n: Vec3A, u1: f32, u2: f32) -> Option<LightSample> {
        if self.light_pick.is_empty() {
            return None;
        }
        // `u1` picks the light and, rescaled to the picked light's share, goes on as its first
        // coordinate: the 2-D point stays stratified over all the lights together (two
        // triangles of a quad light are sampled as one quad).
        let (li, sel, u1) = self.light_pick.pick(p, n, u1)?;
        if sel <= 0.0 {
            return None;
        }
        match self.lights[li] {
            LightRef::Triangle {
                prim,
                area,
                corners: [p0, p1, p2],
                normal: n,
            } => {
                let su = u1.sqrt();
                let (b1, b2) = (su * (1.0 - u2), su * u2);
                let q = p0 * (1.0 - b1 - b2) + p1 * b1 + p2 * b2;
                let d = q - p;
                let dist2 = d.length_squared();
                if dist2 <= 0.0 {
                    return None;
                }
                let dist = dist2.sqrt();
                let wi = d / dist;
                let cos_l = n.dot(wi);
                // The light's front faces the shading point when the light's normal points back.
                let front = cos_l < 0.0;
                let le = self.emission(prim, b1, b2, front);
                if le == Vec3A::ZERO || cos_l == 0.0 {
                    return None;
                }
                Some(LightSample {
                    wi,
                    dist,
                    li: le,
                    pdf: sel * dist2 / (area * cos_l.abs()),
                    delta: false,
                })
            }
            LightRef::Punctual(i) => {
                let l = &self.scene.lights[i as usize];
                let color = Vec3A::from(l.color) * l.intensity;
                match l.kind {
                    LightKind::Directional => Some(LightSample {
                        wi: -Vec3A::from(l.direction),
                        dist: f32::INFINITY,
                        li: color,
                        pdf: sel,
                        delta: true,
                    }),
                    LightKind::Point | LightKind::Spot { .. } => {
                        let d = Vec3A::from(l.position) - p;
                        let dist2 = d.length_squared();
                        if dist2 <= 0.0 {
                            return None;
                        }
                        let dist = dist2.sqrt();
                        let wi = d / dist;
                        let mut li = color / dist2;
                        if let LightKind::Spot {
                            inner_cone,
                            outer_cone,
                        } = l.kind
                        {
                            // glTF's recommended smooth cone falloff.
                            let cd = Vec3A::from(l.direction).dot(-wi);
                            let scale = 1.0 / (inner_cone.cos_d() - outer_cone.cos_d()).max(0.001);
                            let offset = -outer_cone.cos_d() * scale;
                            let a = (cd * scale + offset).clamp(0.0, 1.0);
                            li *= a * a;
                        }
                        if li == Vec3A::ZERO {
                            return None;
                        }
                        Some(LightSample {
                            wi,
                            dist,
                            li,
                            pdf: sel,
                            delta: true,
                        })
                    }
                }
            }
            LightRef::Environment => {
                let (wi, li, pdf) = self.env.sample(u1, u2)?;
                if pdf <= 0.0 {
                    return None;
                }
                Some(LightSample {
                    wi,
                    dist: f32::INFINITY,
                    li,
                    pdf: pdf * sel,
                    delta: false,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guide table picks the bin the full binary search picks, for every kind of
    /// distribution (single bins, zero runs at either end, a sun-like spike, an all-zero one)
    /// and every kind of `u`: random, exactly on a bound, a slot's edge, 0, just below 1, 1 and
    /// above, negative, NaN.
    #[test]
    fn guide_table_picks_the_bins_of_the_full_search() {
        let mut x = 0x2545_F491u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let mut checked = 0usize;
        for case in 0..400 {
            let n = match case % 5 {
                0 => 1 + (next() % 3) as usize,
                1 => 1 + (next() % 64) as usize,
                _ => 1 + (next() % 3000) as usize,
            };
            let mut func: Vec<f32> = (0..n)
                .map(|_| match next() % 8 {
                    0 | 1 => 0.0,
                    2 => 1e-6,
                    _ => (next() >> 8) as f32 / (1u32 << 24) as f32,
                })
                .collect();
            match case % 7 {
                0 => func[n / 2] = 1e6, // a sun
                1 => func.iter_mut().take(n / 2).for_each(|f| *f = 0.0),
                2 => func.iter_mut().skip(n / 2).for_each(|f| *f = 0.0),
                3 if case % 2 == 0 => func.iter_mut().for_each(|f| *f = 0.0),
                _ => {}
            }
            let d = Distribution1D::new(func);
            let g = (d.guide.len() - 1) as f32;
            let mut us: Vec<f32> = (0..200)
                .map(|_| (next() >> 8) as f32 / (1u32 << 24) as f32)
                .collect();
            us.extend(d.cdf.iter().copied());
            us.extend(
                d.cdf
                    .iter()
                    .map(|&c| f32::from_bits(c.to_bits().saturating_sub(1))),
            );
            us.extend((0..=d.guide.len()).map(|j| j as f32 / g));
            us.extend([
                0.0,
                -0.0,
                0.99999994,
                1.0,
                1.5,
                f32::INFINITY,
                -0.25,
                f32::NAN,
            ]);
            for &u in &us {
                assert_eq!(d.bin(u), d.bin_by_search(u), "case {case}, n {n}, u {u}");
                checked += 1;
            }
        }
        assert!(checked > 400 * 200);
    }

    /// `Distribution1D::sample` with its bounds stored from 0 picks what the old layout (no
    /// leading 0, a test for the first bin) picked, with the same probability and remapped `u`.
    #[test]
    fn distribution_samples_as_before_its_leading_zero() {
        fn old_sample(func: &[f32], u: f32) -> (usize, f32, f32) {
            let mut cdf = Vec::new();
            let mut acc = 0.0f64;
            for &f in func {
                acc += f.max(0.0) as f64;
                cdf.push(acc as f32);
            }
            let total = acc as f32;
            if total > 0.0 {
                for c in &mut cdf {
                    *c /= total;
                }
            }
            *cdf.last_mut().unwrap() = 1.0;
            let i = cdf.partition_point(|&c| c <= u).min(cdf.len() - 1);
            let lo = if i == 0 { 0.0 } else { cdf[i - 1] };
            let p = cdf[i] - lo;
            let ur = if p > 0.0 {
                ((u - lo) / p).clamp(0.0, 0.99999994)
            } else {
                0.5
            };
            (i, p, ur)
        }
        let mut x = 0x1234_5678u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as f32 / (1u32 << 24) as f32
        };
        for n in [1usize, 2, 3, 7, 64] {
            for case in 0..20 {
                let func: Vec<f32> = (0..n)
                    .map(|i| match (case + i) % 5 {
                        0 => 0.0,
                        1 => -1.0,
                        _ => next() * 10.0,
                    })
                    .collect();
                let d = Distribution1D::new(func.clone());
                for k in 0..200 {
                    let u = if k < 3 {
                        [0.0, 0.99999994, 0.5][k]
                    } else {
                        next()
                    };
                    let (a, b) = (d.sample(u), old_sample(&func, u));
                    assert_eq!(a.0, b.0, "{func:?} at {u}");
                    assert_eq!(a.1.to_bits(), b.1.to_bits(), "{func:?} at {u}");
                    assert_eq!(a.2.to_bits(), b.2.to_bits(), "{func:?} at {u}");
                }
            }
        }
    }

    /// Four emissive quads side by side, each a quarter of an 8x2 emission texture that is
    /// black but for its first column: only the first quad's two triangles are lights, and a
    /// black texture makes none (NEE samples the environment instead of black triangles).
    #[test]
    fn triangles_black_under_their_emission_texture_are_not_lights() {
        use glam::Vec3;
        use rayfarm_scene::{Image, Material, Texture, WrapMode};
        let strip = |lit: bool| {
            let mut s = CompiledScene::default();
            let mut rgba = vec![0u8; 8 * 2 * 4];
            if lit {
                for y in 0..2 {
                    rgba[y * 32..y * 32 + 4].copy_from_slice(&[255, 255, 255, 255]);
                }
            }
            s.images.push(Image {
                name: "logo".into(),
                width: 8,
                height: 2,
                rgba8: rgba,
            });
            s.textures.push(Texture {
                image: 0,
                wrap_s: WrapMode::ClampToEdge,
                wrap_t: WrapMode::ClampToEdge,
                nearest: false,
            });
            for i in 0..4 {
                let mut tex = TextureRef::new(0, 0);
                // Quad i shows u in [i / 4, (i + 1) / 4].
                tex.transform = [0.25, 0.0, 0.25 * i as f32, 0.0, 1.0, 0.0];
                let m = s.add_material(Material {
                    emissive: [1.0; 3],
                    emissive_texture: Some(tex),
                    ..Default::default()
                });
                s.add_quad("panel", Vec3::new(i as f32, 0.0, 0.0), Vec3::X, Vec3::Y, m);
            }
            s.environment = Environment::Color([0.5; 3]);
            s
        };
        let rs = RenderScene::new(strip(true));
        let lit: Vec<u32> = rs
            .lights
            .iter()
            .filter_map(|l| match l {
                LightRef::Triangle { prim, .. } => Some(*prim),
                _ => None,
            })
            .collect();
        assert_eq!(lit, vec![0, 1]);
        assert!(rs.env_light_index.is_some());
        let dark = RenderScene::new(strip(false));
        assert_eq!(dark.lights.len(), 1, "only the environment");
        assert!(matches!(dark.lights[0], LightRef::Environment));
        assert_eq!(
            dark.triangle_light_pdf(0, Vec3A::Z, 1.0, Vec3A::ZERO, Vec3A::Z),
            0.0
        );
    }

    /// Point lights without a finite place are left out; the others go into the light tree
    /// (five lights with a place), which picks each with its probability; a directional light
    /// is picked beside the tree, by power.
    #[test]
    fn point_lights_without_a_place_are_no_lights() {
        let mut s = CompiledScene::default();
        for i in 0..6 {
            let x = if i == 2 { f32::NAN } else { i as f32 };
            s.lights.push(rayfarm_scene::Light {
                name: format!("p{i}"),
                kind: LightKind::Point,
                color: [1.0; 3],
                intensity: 1.0,
                position: [x, 1.0, 0.0],
                direction: [0.0, -1.0, 0.0],
            });
        }
        // A sun, listed first: directional lights come after the tree's in `lights`.
        s.lights.insert(
            0,
            rayfarm_scene::Light {
                name: "sun".into(),
                kind: LightKind::Directional,
                color: [1.0; 3],
                intensity: 0.01,
                position: [0.0; 3],
                direction: [0.0, -1.0, 0.0],
            },
        );
        let rs = RenderScene::new(s);
        assert_eq!(rs.lights.len(), 6);
        assert!(
            matches!(rs.lights[5], LightRef::Punctual(0)),
            "the sun last"
        );
        assert!(rs.light_pick.has_tree());
        let (p, n) = (Vec3A::new(0.5, 0.0, 0.0), Vec3A::Y);
        let mut total = 0.0;
        for li in 0..rs.lights.len() {
            let pmf = rs.light_pick.prob(p, n, li);
            assert!(pmf > 0.0 && pmf.is_finite(), "light {li}: {pmf}");
            total += pmf;
        }
        assert!((total - 1.0).abs() < 1e-5, "{total}");
        let (li, sel, _) = rs.light_pick.pick(p, n, 0.3).unwrap();
        assert_eq!(sel, rs.light_pick.prob(p, n, li));
    }

    /// A sun (one bright texel) in a dark sky: light samples near it carry bounded weights.
    /// The radiance is bilinear, so texels next to the sun show much of its radiance; sampled
    /// by their own dark luminance they gave weights 10^5 times the mean (fireflies around
    /// every reflection of the sun).
    #[test]
    fn a_sun_texel_does_not_make_fireflies_next_to_it() {
        let (w, h) = (32usize, 16usize);
        let mut texels = vec![[0.01f32; 3]; w * h];
        texels[5 * w + 9] = [5000.0; 3];
        let env = EnvLight::new(Environment::Map {
            width: w as u32,
            height: h as u32,
            texels,
        });
        // The weight a light sample would carry, radiance / density, at directions all over
        // the sphere (8 x 8 per texel), against the mean weight of samples (the integral).
        let mut max = 0.0f64;
        for i in 0..w * 8 {
            for j in 1..h * 8 {
                let (u, v) = ((i as f32 + 0.5) / (w * 8) as f32, j as f32 / (h * 8) as f32);
                let d = EnvLight::uv_to_dir(u, v);
                let pdf = env.pdf(d);
                let l = luminance(env.radiance(d));
                if l > 0.0 {
                    assert!(pdf > 0.0, "radiance {l} at density 0 (u {u}, v {v})");
                    max = max.max((l / pdf) as f64);
                }
            }
        }
        let n = 128;
        let mut sum = 0.0f64;
        for i in 0..n {
            for j in 0..n {
                let (u1, u2) = ((i as f32 + 0.5) / n as f32, (j as f32 + 0.5) / n as f32);
                if let Some((d, l, pdf)) = env.sample(u1, u2) {
                    assert!((pdf - env.pdf(d)).abs() <= 1e-3 * pdf, "pdf");
                    sum += (luminance(l) / pdf) as f64;
                }
            }
        }
        let mean = sum / (n * n) as f64;
        assert!(max < 20.0 * mean, "max weight {max} against mean {mean}");
    }

    fn map_2x2() -> EnvLight {
        EnvLight::new(Environment::Map {
            width: 2,
            height: 2,
            texels: vec![
                [1.0, 0.0, 0.0],
                [0.0, 1.0, 0.0],
                [0.0, 0.0, 1.0],
                [1.0, 1.0, 1.0],
            ],
        })
    }

    fn close(a: Vec3A, b: [f32; 3]) -> bool {
        (a - Vec3A::from(b)).abs().max_element() < 1e-4
    }

    /// The environment's sampling tables are made row by row side by side: on one thread and
    /// on three they are the same bits (and so is every sample drawn from them).
    #[test]
    fn environment_tables_are_the_same_on_any_pool() {
        let (w, h) = (97usize, 61usize);
        let mut z = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            z ^= z << 13;
            z ^= z >> 7;
            z ^= z << 17;
            // Mostly dim, with a few very bright texels (suns).
            let x = (z >> 40) as f32 / (1u64 << 24) as f32;
            if x > 0.995 {
                x * 5e4
            } else {
                x
            }
        };
        let texels: Vec<[f32; 3]> = (0..w * h).map(|_| [next(), next(), next()]).collect();
        let env = Environment::Map {
            width: w as u32,
            height: h as u32,
            texels,
        };
        let build = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| EnvLight::new(env.clone()))
        };
        let fingerprint = |e: &EnvLight| -> Vec<u32> {
            let EnvLight::Map {
                texels,
                rows,
                cols,
                luminance_total,
                ..
            } = e
            else {
                panic!("not a map");
            };
            let mut v: Vec<u32> = texels.iter().flat_map(|t| t.map(f32::to_bits)).collect();
            for d in std::iter::once(rows).chain(cols) {
                v.extend(d.cdf.iter().chain(&d.func).map(|x| x.to_bits()));
                v.extend(&d.guide);
                v.push(d.total.to_bits());
            }
            v.push(luminance_total.to_bits());
            v
        };
        let (one, three) = (build(1), build(3));
        assert_eq!(fingerprint(&one), fingerprint(&three));
        for i in 0..64 {
            let u = ((i as f32 + 0.5) / 64.0, ((i * 37 % 64) as f32 + 0.5) / 64.0);
            let (a, b) = (one.sample(u.0, u.1), three.sample(u.0, u.1));
            let bits = |s: Option<(Vec3A, Vec3A, f32)>| {
                s.map(|(d, l, p)| {
                    (
                        d.to_array().map(f32::to_bits),
                        l.to_array().map(f32::to_bits),
                        p.to_bits(),
                    )
                })
            };
            assert_eq!(bits(a), bits(b));
        }
    }

    /// A 2x2 environment is interpolated bilinearly between texel centres (it used to be
    /// looked up at the nearest texel), wrapping around in longitude and clamping at the poles.
    #[test]
    fn environment_map_is_bilinear() {
        let env = map_2x2();
        let at = |u: f32, v: f32| env.radiance(EnvLight::uv_to_dir(u, v));
        // Texel centres give the texels.
        assert!(close(at(0.25, 0.25), [1.0, 0.0, 0.0]), "{}", at(0.25, 0.25));
        assert!(close(at(0.75, 0.75), [1.0, 1.0, 1.0]));
        // Halfway between all four: their mean.
        assert!(close(at(0.5, 0.5), [0.5, 0.5, 0.5]), "{}", at(0.5, 0.5));
        // A quarter of the way from the first texel to the second, in the top row.
        assert!(
            close(at(0.375, 0.25), [0.75, 0.25, 0.0]),
            "{}",
            at(0.375, 0.25)
        );
        // Across the seam at u = 0: halfway between the last and first texels of the row.
        assert!(
            close(at(0.999_99, 0.25), [0.5, 0.5, 0.0]),
            "{}",
            at(0.999_99, 0.25)
        );
        // Above the top row's centres the top row holds.
        assert!(close(at(0.25, 0.05), [1.0, 0.0, 0.0]));
        // Light samples carry the same filtered radiance as a lookup in their direction.
        for i in 0..16 {
            let (u1, u2) = ((i as f32 + 0.5) / 16.0, ((i * 7 % 16) as f32 + 0.5) / 16.0);
            let (d, l, pdf) = env.sample(u1, u2).unwrap();
            assert!(pdf > 0.0);
            assert!(
                (l - env.radiance(d)).abs().max_element() < 1e-3,
                "{l} vs {}",
                env.radiance(d)
            );
        }
    }
}
