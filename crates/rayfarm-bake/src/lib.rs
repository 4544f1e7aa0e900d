//! Texture baking on top of rayfarm-render: texel rasterisation ([`raster`]), bake passes
//! ([`bake_unit`]) and padding by dilation ([`dilate`]).
//!
//! A bake reuses the renderer's work units: a [`TexelTable`] is a `width x height` "image" of
//! surface points, cut into texel tiles and sample ranges by [`rayfarm_render::plan_units`];
//! [`bake_unit`] turns one unit into a [`UnitResult`] of 24-bit fixed-point per-texel sums,
//! which a [`Film`] accumulates. Every random number comes from (seed, texel index, sample
//! index) through [`rayfarm_render::sampler::Sampler`], so maps are bit-identical however they
//! are tiled, on however many threads or machines. Like rayfarm-render, this crate does no IO.
//!
//! # Passes and units
//!
//! Every sample is taken at the texel's surface point (no spatial jitter inside the texel).
//! - `complete`: radiance leaving the surface, as the path tracer renders it, seen by a viewer
//!   along the (interpolated, normal-mapped) shading normal: emission, direct and indirect light
//!   through the full BSDF. The view-dependent (specular) part is thus the one seen head-on.
//!   Units: the renderer's radiance (nits for photometric scenes).
//! - `lightmap`: irradiance `E = ∫ L_i cos θ dω` over the hemisphere of the shading normal,
//!   direct plus indirect, without albedo (the path tracer with a white Lambertian BSDF, times
//!   π). Units: radiance × sr (lux when radiance is in nits). `lightmap * albedo / π` is the
//!   diffuse part of `complete`.
//! - `ao`: fraction of cosine-weighted hemisphere rays (about the shading normal) not blocked
//!   within `ao_distance`; translucent blockers count by their transmittance.
//! - `albedo`: base colour times base-colour texture, linear.
//! - `normal`: world-space shading normal (normal map applied), raw in [-1, 1].

pub mod raster;
pub mod workload;

pub use raster::{Overlap, TexelPoint, TexelTable};
pub use rayfarm_render::film::{plan_units, Film, Region, UnitResult, WorkUnit};
pub use workload::{BakeSpec, BakeWork, LayerSpec, MapSpec, Workload, WorkloadError};

use glam::Vec3A;
use rayfarm_render::bsdf::{cosine_hemisphere, onb, Bsdf};
use rayfarm_render::film::to_fixed;
use rayfarm_render::integrator::ray_offset;
use rayfarm_render::sampler::Sampler;
use rayfarm_render::RenderScene;
use rayfarm_scene::CompiledScene;
use std::f32::consts::PI;

/// Largest map edge in texels.
pub const MAX_SIZE: u32 = 16384;

/// A bake pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Pass {
    Complete,
    Lightmap,
    Ao,
    Albedo,
    Normal,
}

impl Pass {
    pub const ALL: [Pass; 5] = [
        Pass::Complete,
        Pass::Lightmap,
        Pass::Ao,
        Pass::Albedo,
        Pass::Normal,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Pass::Complete => "complete",
            Pass::Lightmap => "lightmap",
            Pass::Ao => "ao",
            Pass::Albedo => "albedo",
            Pass::Normal => "normal",
        }
    }
    pub fn parse(s: &str) -> Option<Pass> {
        Pass::ALL.into_iter().find(|p| p.name() == s)
    }
    /// Whether the pass is a deterministic function of the surface (one sample suffices).
    pub fn is_deterministic(self) -> bool {
        matches!(self, Pass::Albedo | Pass::Normal)
    }
}

/// Everything besides the scene and the texel table that decides a pass's texels.
#[derive(Clone, Debug, PartialEq)]
pub struct BakeSettings {
    pub pass: Pass,
    /// Samples per texel (albedo and normal take one whatever this says; see [`Self::spp`]).
    pub spp: u32,
    /// Indirect bounces, as for rendering.
    pub max_bounces: u32,
    pub seed: u64,
    /// AO ray length in world units.
    pub ao_distance: f32,
}

impl BakeSettings {
    /// The samples per texel this pass actually takes.
    pub fn spp(&self) -> u32 {
        if self.pass.is_deterministic() {
            1
        } else {
            self.spp.max(1)
        }
    }
}

/// Problems with a bake request, found before any work starts.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BakeError {
    #[error("no object named '{name}' in the scene (objects: {available})")]
    UnknownObject { name: String, available: String },
    #[error("object '{object}' has no UV set {uv_set} (TEXCOORD_{uv_set})")]
    MissingUvSet { object: String, uv_set: u8 },
    #[error("UV set {0} does not exist; use 0 or 1")]
    BadUvSet(u8),
    #[error("no object in the scene has UV set {0}")]
    NothingToBake(u8),
    #[error("map size {0} is out of range; use 1 to {MAX_SIZE}")]
    BadSize(u64),
    #[error("{0} texels per unit is not a positive finite number")]
    BadDensity(f32),
    #[error("object '{0}' has no area in its UV set, so no size follows from texels per unit")]
    NoUvArea(String),
}

/// Why per-object films cannot be merged into an atlas; each variant names the texel,
/// triangle or object at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("triangle {0} belongs to no mesh")]
    OrphanTriangle(u32),
    #[error("no film for object '{0}'")]
    NoFilm(String),
    #[error("texel ({x}, {y}) of object '{object}' lies outside its film")]
    TexelOutside { x: u32, y: u32, object: String },
}

/// Resolves object names (all objects having `uv_set` when `names` is empty; then the ones
/// without it are skipped and returned second) and checks the UV set. Returns mesh indices.
pub fn select_objects(
    scene: &CompiledScene,
    names: &[String],
    uv_set: u8,
) -> Result<(Vec<usize>, Vec<String>), BakeError> {
    if uv_set > 1 {
        return Err(BakeError::BadUvSet(uv_set));
    }
    if names.is_empty() {
        let (with, without): (Vec<usize>, Vec<usize>) =
            (0..scene.meshes.len()).partition(|&i| scene.meshes[i].has_uv[uv_set as usize]);
        if with.is_empty() {
            return Err(BakeError::NothingToBake(uv_set));
        }
        let skipped = without
            .into_iter()
            .map(|i| scene.meshes[i].name.clone())
            .collect();
        return Ok((with, skipped));
    }
    let mut out = Vec::new();
    for name in names {
        let Some(i) = scene.mesh_by_name(name) else {
            let mut available: Vec<&str> = scene.meshes.iter().map(|m| m.name.as_str()).collect();
            available.truncate(30);
            return Err(BakeError::UnknownObject {
                name: name.clone(),
                available: available.join(", "),
            });
        };
        if !scene.meshes[i].has_uv[uv_set as usize] {
            return Err(BakeError::MissingUvSet {
                object: name.clone(),
                uv_set,
            });
        }
        if !out.contains(&i) {
            out.push(i);
        }
    }
    Ok((out, Vec::new()))
}

/// Checks a map edge length.
pub fn check_size(size: u64) -> Result<u32, BakeError> {
    if size == 0 || size > MAX_SIZE as u64 {
        return Err(BakeError::BadSize(size));
    }
    Ok(size as u32)
}

/// World-space area and UV-space area (in units of the whole [0,1]² map) of the meshes.
pub fn surface_areas(scene: &CompiledScene, meshes: &[usize], uv_set: u8) -> (f64, f64) {
    let uvs = if uv_set == 0 { &scene.uv0 } else { &scene.uv1 };
    let (mut world, mut uv) = (0.0f64, 0.0f64);
    for &mi in meshes {
        let m = &scene.meshes[mi];
        for prim in m.first_triangle..m.first_triangle + m.triangle_count {
            let t = scene.triangles[prim as usize];
            let [a, b, c] =
                t.map(|i| glam::DVec3::from(scene.positions[i as usize].map(f64::from)));
            world += 0.5 * (b - a).cross(c - a).length();
            let [p, q, r] = t.map(|i| {
                let v = uvs.get(i as usize).copied().unwrap_or([0.0; 2]);
                glam::DVec2::new(v[0] as f64, v[1] as f64)
            });
            uv += 0.5 * (q - p).perp_dot(r - p).abs();
        }
    }
    (world, uv)
}

/// The map edge that gives about `texels_per_unit` texels per world unit along the surface.
pub fn size_for_density(
    scene: &CompiledScene,
    meshes: &[usize],
    uv_set: u8,
    texels_per_unit: f32,
) -> Result<u32, BakeError> {
    if !(texels_per_unit.is_finite() && texels_per_unit > 0.0) {
        return Err(BakeError::BadDensity(texels_per_unit));
    }
    let (world, uv) = surface_areas(scene, meshes, uv_set);
    if uv <= 0.0 || !uv.is_finite() {
        let name = meshes
            .first()
            .map(|&i| scene.meshes[i].name.clone())
            .unwrap_or_default();
        return Err(BakeError::NoUvArea(name));
    }
    let size = (texels_per_unit as f64 * (world / uv).sqrt() - 1e-6).ceil();
    check_size(if size.is_finite() {
        size as u64
    } else {
        u64::MAX
    })
}

/// The default AO distance: 10% of the scene's bounding-box diagonal.
pub fn default_ao_distance(scene: &RenderScene) -> f32 {
    0.1 * 2.0 * scene.radius
}

/// Units for one pass over a table: texel tiles of `tile_px` and sample ranges.
pub fn plan(
    table: &TexelTable,
    settings: &BakeSettings,
    tile_px: u32,
    samples_per_unit: u32,
) -> Vec<WorkUnit> {
    plan_units(
        table.width,
        table.height,
        settings.spp(),
        tile_px,
        samples_per_unit,
    )
}

/// A white Lambertian BSDF: `f = 1/π`, all of it diffuse.
const WHITE_LAMBERT: Bsdf = Bsdf::base(Vec3A::ONE, 0.0, 1.0, Vec3A::ZERO, 0.0, 0.0);

/// One sample of `settings.pass` at a texel's surface point.
#[inline(always)]
fn sample_texel(
    scene: &RenderScene,
    settings: &BakeSettings,
    p: &TexelPoint,
    s: &mut Sampler,
) -> Vec3A {
    let sc = &scene.scene;
    let t = sc.triangles[p.prim as usize];
    let b0 = 1.0 - p.b1 - p.b2;
    let [n0, n1, n2] = t.map(|i| Vec3A::from(sc.normals[i as usize]));
    let [p0, p1, p2] = t.map(|i| Vec3A::from(sc.positions[i as usize]));
    let ng_raw = rayfarm_render::math::cross(p1 - p0, p2 - p0).normalize_or(Vec3A::Z);
    let n = (n0 * b0 + n1 * p.b1 + n2 * p.b2).normalize_or(ng_raw);
    // The viewer looks down the interpolated normal, so the surface's front is that side.
    let surf = scene.surface_at(p.prim, p.b1, p.b2, -n);
    match settings.pass {
        Pass::Complete => scene.radiance_at_surface(surf, -n, settings.max_bounces, s),
        Pass::Lightmap => {
            let mut white = surf;
            white.bsdf = WHITE_LAMBERT;
            white.emission = Vec3A::ZERO;
            scene.radiance_at_surface(white, -n, settings.max_bounces, s) * PI
        }
        Pass::Ao => {
            s.set_dimension(0);
            let (u1, u2) = s.next_2d();
            let l = cosine_hemisphere(u1, u2);
            let (tx, ty) = onb(surf.ns);
            let wi = tx * l.x + ty * l.y + surf.ns * l.z;
            if wi.dot(surf.ng) <= 0.0 {
                return Vec3A::ZERO;
            }
            let org = ray_offset(surf.p, surf.ng, wi);
            let v = scene.visibility(org, wi, settings.ao_distance);
            Vec3A::splat((v.x + v.y + v.z) / 3.0)
        }
        Pass::Albedo => surf.bsdf.base,
        Pass::Normal => surf.ns,
    }
}

/// Bakes one work unit (a texel tile and sample range) of one pass: per texel, the sum of its
/// samples in fixed point. A pure function of (scene, table, settings, unit).
pub fn bake_unit(
    scene: &RenderScene,
    table: &TexelTable,
    settings: &BakeSettings,
    unit: &WorkUnit,
) -> UnitResult {
    // Compiled for the scene's code path, as the renderer's units are.
    rayfarm_render::isa::run(
        scene.bvh.isa(),
        #[inline(always)]
        || bake_unit_in(scene, table, settings, unit),
    )
}

#[inline(always)]
fn bake_unit_in(
    scene: &RenderScene,
    table: &TexelTable,
    settings: &BakeSettings,
    unit: &WorkUnit,
) -> UnitResult {
    let mut sums = Vec::with_capacity(unit.pixels());
    let mut nonfinite = 0u64;
    for y in unit.y0..unit.y1 {
        for x in unit.x0..unit.x1 {
            let texel = y as u64 * table.width as u64 + x as u64;
            let p = table.at(x, y);
            let mut acc = [0i128; 3];
            if p.is_covered() {
                for si in unit.sample_start..unit.sample_end {
                    let mut s = Sampler::new(settings.seed, texel, si);
                    let l = sample_texel(scene, settings, p, &mut s);
                    if !l.is_finite() {
                        if nonfinite == 0 {
                            tracing::warn!(
                                "non-finite {} value at texel ({x}, {y}) sample {si} (seed {}); sample dropped",
                                settings.pass.name(),
                                settings.seed
                            );
                        }
                        nonfinite += 1;
                        continue;
                    }
                    acc[0] += to_fixed(l.x);
                    acc[1] += to_fixed(l.y);
                    acc[2] += to_fixed(l.z);
                }
            }
            sums.push(acc);
        }
    }
    UnitResult {
        unit: *unit,
        sums,
        nonfinite_samples: nonfinite,
    }
}

/// Bakes every unit on the current rayon pool and adds the results in unit order.
/// `progress(texel_samples)` is called as units finish.
pub fn bake_local(
    scene: &RenderScene,
    table: &TexelTable,
    settings: &BakeSettings,
    units: &[WorkUnit],
    progress: &(dyn Fn(u64) + Sync),
) -> Film {
    use rayon::prelude::*;
    let batch = (rayon::current_num_threads() * 8).max(16);
    let mut film = Film::new_region(table.region);
    for chunk in units.chunks(batch) {
        let results: Vec<UnitResult> = chunk
            .par_iter()
            .map(|u| {
                let r = bake_unit(scene, table, settings, u);
                progress(u.samples());
                r
            })
            .collect();
        for r in &results {
            film.add(r).expect("planned units fit the table");
        }
    }
    film
}

/// The mesh a triangle belongs to (meshes are runs of consecutive triangles in order).
pub fn mesh_of_prim(scene: &CompiledScene, prim: u32) -> Option<usize> {
    let i = scene
        .meshes
        .partition_point(|m| m.first_triangle <= prim)
        .checked_sub(1)?;
    let m = &scene.meshes[i];
    (prim < m.first_triangle + m.triangle_count).then_some(i)
}

/// Multi-pass merge: assembles an atlas pass from per-object films, taking each texel from
/// the film of the object that owns it in the atlas's table (`atlas`, built over all the
/// objects). A texel an object owns in the atlas gets the same surface point in that
/// object's own table (the rasteriser's choice among one object's triangles does not depend on
/// the others), so where charts do not overlap the result equals a single-pass bake's, bit
/// for bit. Returns the whole map's film; `films` pairs mesh indices with their films.
pub fn merge_objects(
    scene: &CompiledScene,
    atlas: &TexelTable,
    films: &[(usize, &Film)],
) -> Result<Film, MergeError> {
    let full = Region::full(atlas.width, atlas.height);
    let mut sums = vec![[0i128; 3]; full.pixels()];
    let mut nonfinite = 0u64;
    for (_, f) in films {
        nonfinite = nonfinite.saturating_add(f.nonfinite_samples);
    }
    for y in atlas.region.y0..atlas.region.y1 {
        for x in atlas.region.x0..atlas.region.x1 {
            let p = atlas.at(x, y);
            if !p.is_covered() {
                continue;
            }
            let owner = mesh_of_prim(scene, p.prim).ok_or(MergeError::OrphanTriangle(p.prim))?;
            let Some((_, film)) = films.iter().find(|(m, _)| *m == owner) else {
                return Err(MergeError::NoFilm(scene.meshes[owner].name.clone()));
            };
            let r = film.region;
            if !r.contains_rect(x, y, x + 1, y + 1) {
                return Err(MergeError::TexelOutside {
                    x,
                    y,
                    object: scene.meshes[owner].name.clone(),
                });
            }
            sums[(y * atlas.width + x) as usize] =
                film.sums()[((y - r.y0) * r.width() + (x - r.x0)) as usize];
        }
    }
    Ok(Film::from_sums(full, sums, nonfinite))
}

/// Fills texels outside every chart from their covered neighbours, `padding` rings deep: each
/// round, an empty texel with filled 8-neighbours becomes their average (texels filled in the
/// same round are not used until the next). Returns the new coverage too.
pub fn dilate(
    pixels: &[[f32; 3]],
    width: u32,
    height: u32,
    covered: &[bool],
    padding: u32,
) -> (Vec<[f32; 3]>, Vec<bool>) {
    let (w, h) = (width as usize, height as usize);
    let mut px = pixels.to_vec();
    let mut cov = covered.to_vec();
    for _ in 0..padding {
        let mut next_px = px.clone();
        let mut next_cov = cov.clone();
        let mut changed = false;
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                if cov[i] {
                    continue;
                }
                let (mut sum, mut n) = ([0.0f64; 3], 0u32);
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                        if (dx == 0 && dy == 0)
                            || nx < 0
                            || ny < 0
                            || nx >= w as i64
                            || ny >= h as i64
                        {
                            continue;
                        }
                        let j = ny as usize * w + nx as usize;
                        if cov[j] {
                            for c in 0..3 {
                                sum[c] += px[j][c] as f64;
                            }
                            n += 1;
                        }
                    }
                }
                if n > 0 {
                    next_px[i] = sum.map(|v| (v / n as f64) as f32);
                    next_cov[i] = true;
                    changed = true;
                }
            }
        }
        px = next_px;
        cov = next_cov;
        if !changed {
            break;
        }
    }
    (px, cov)
}

/// File stem of a baked map, e.g. `atlas_lightmap_1024` or `Floor_ao_512x256`. Characters
/// other than ASCII letters, digits, `-` and `_` in object names become `_`.
pub fn map_name(object: Option<&str>, pass: Pass, width: u32, height: u32) -> String {
    let obj: String = match object {
        None => "atlas".into(),
        Some(n) => n
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect(),
    };
    let size = if width == height {
        width.to_string()
    } else {
        format!("{width}x{height}")
    };
    format!("{obj}_{}_{size}", pass.name())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dilation_fills_rings() {
        let covered = [false, false, false, false, true, false, false, false, false];
        let mut px = vec![[0.0; 3]; 9];
        px[4] = [1.0, 2.0, 3.0];
        let (out, cov) = dilate(&px, 3, 3, &covered, 1);
        assert!(cov.iter().all(|&c| c));
        assert!(out.iter().all(|p| *p == [1.0, 2.0, 3.0]));
        let (_, cov0) = dilate(&px, 3, 3, &covered, 0);
        assert_eq!(cov0, covered);
    }

    #[test]
    fn names() {
        assert_eq!(
            map_name(None, Pass::Lightmap, 1024, 1024),
            "atlas_lightmap_1024"
        );
        assert_eq!(map_name(Some("a b/c"), Pass::Ao, 8, 4), "a_b_c_ao_8x4");
        assert_eq!(Pass::parse("normal"), Some(Pass::Normal));
    }
}
