//! Unidirectional path tracing with next-event estimation and multiple importance sampling.
//!
//! Light is estimated at every vertex by sampling one light (emissive triangles, punctual
//! lights and the environment, chosen by power) and by following the BSDF sample; the two are
//! combined with the power heuristic. Russian roulette starts after five bounces, with survival
//! sqrt(max throughput). Nothing is
//! clamped. `render_unit` is a pure function of (scene, settings, unit).

use crate::bsdf::onb;
use crate::bvh::Query;
use crate::film::{to_fixed, UnitResult, WorkUnit};
use crate::math::{normalize, DetMath, DetMathVec};
use crate::sampler::Sampler;
use crate::scene::{RenderScene, Surface};
use crate::texture::RayCone;
use glam::{Vec3A, Vec3Swizzles};
use rayfarm_scene::{AlphaMode, Camera, Projection};

pub(crate) mod wavefront;

/// Everything besides the scene that decides a render's pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct RenderSettings {
    pub width: u32,
    pub height: u32,
    pub spp: u32,
    /// Indirect bounces, as in Blender Cycles: 0 renders direct lighting only.
    pub max_bounces: u32,
    pub seed: u64,
    pub camera: Camera,
}

/// Sampler dimensions before the per-bounce ones: one 4-D point, (camera jitter, first light
/// point). A baked path uses only its light point.
const CAMERA_DIMS: u32 = 1;
/// Sampler dimensions each bounce uses: a 4-D point (this vertex's BSDF direction, the next
/// vertex's light point, whose first coordinate also picks the light) and a 2-D point (lobe
/// choice, Russian roulette). Indirect light at the next vertex is an integral over the
/// direction and the light point together, so they come stratified together; roulette and
/// lobe choices decide much of a pixel's noise, so they are stratified over the samples too.
const DIMS_PER_BOUNCE: u32 = 2;
/// Hashed 1-D numbers each bounce uses: the alpha test's.
const HASHED_PER_BOUNCE: u32 = 1;
const SHADOW_MAX_LAYERS: u32 = 64;
/// BSDF samples at the first vertex when its BSDF is glossy enough ([`SPLIT_MIN_GLOSSY`]) and
/// has no transmission: the path goes on along the first; the others only look for light (an
/// emitter or the environment). Each of them counts 1/FIRST_SPLIT ([`split_weight`]). Glossy
/// reflections of an environment map are most of a textured scene's noise, and one more ray
/// costs far less than a whole path: the water bottle's relMSE fell by a third for 14% more
/// time (BENCHMARKS.md, "Splitting the first glossy vertex"; 4 measured no better). A power of
/// two, so that 1/FIRST_SPLIT is exact.
pub const FIRST_SPLIT: u32 = 2;
/// The share of a BSDF's samples its specular and coat lobes must take for its vertex to
/// split: mostly diffuse BSDFs (a rough dielectric seen head-on takes 4-10%) find their light
/// by light sampling, and a BSDF sample more would be wasted on them.
const SPLIT_MIN_GLOSSY: f32 = 0.25;
/// The hashed slot of a split sample's alpha test (plus the sample's number).
const SPLIT_HASHED: u32 = u32::MAX - 64;
/// Russian roulette starts at this many bounces (as Mitsuba 3's `rr_depth`), with survival
/// sqrt(max throughput) (as Cycles). Starting at 3 with the throughput itself ended a third of a
/// Cornell box's paths at their fourth vertex and raised relMSE by half, more than the time it
/// saved (BENCHMARKS.md, "Render efficiency beside Mitsuba 3 and Cycles").
const RR_DEPTH: u32 = 5;

thread_local! {
    /// Rays traced on this thread since the last `take_ray_count`, for benchmarks.
    static RAYS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

#[inline(always)]
fn count_ray() {
    RAYS.with(|c| c.set(c.get() + 1));
}

/// Returns and resets the number of rays this thread traced.
pub fn take_ray_count() -> u64 {
    RAYS.with(|c| c.replace(0))
}

/// `u + shift` wrapped into [0, 1): the numbers of a split sample, from those of the path's
/// own. Exact: sampler numbers are multiples of 2^-24 below 1 and shifts multiples of
/// 1/FIRST_SPLIT, so every result is a multiple of 2^-24 below 1, which an f32 holds.
///
/// Shifting by a half puts the two samples of a split in opposite halves of the square and of
/// the lobe choice, stratifying each pair, while the path's own samples keep their joint
/// stratification with the next vertex's light point. A second sample drawn as a Sobol point
/// of its own (another dimension) measured the same on the water bottle (relMSE 0.000223,
/// 0.000329 without splitting) and 5% noisier on a test scene; the shift needs no more
/// sampler numbers.
#[inline(always)]
fn shifted(u: f32, shift: f32) -> f32 {
    // Not `(u + shift) - 1`: above 1 the sum would lose its last bit.
    let back = 1.0 - shift;
    if u < back {
        u + shift
    } else {
        u - back
    }
}

/// The weight of one of `n` BSDF samples (density `bsdf_pdf`) that found light of density
/// `light_pdf`: the power heuristic of one BSDF sample against the one light sample, times the
/// sample's share 1/n (exact: `n` is a power of two). The BSDF strategy's part of the light is
/// then the mean of `n` samples, so its variance can only fall. (Weights for `n` BSDF samples,
/// `(n p_b)^2 / ((n p_b)^2 + p_l^2)`, moved light from light samples to BSDF samples and raised
/// the noise where a small bright source is reflected by a moderately glossy surface.)
#[inline(always)]
fn split_weight(n: u32, bsdf_pdf: f32, light_pdf: f32) -> f32 {
    power_heuristic(bsdf_pdf, light_pdf) * (1.0 / n as f32)
}

#[inline(always)]
fn power_heuristic(a: f32, b: f32) -> f32 {
    let (a2, b2) = (a * a, b * b);
    if a2 + b2 > 0.0 && (a2 + b2).is_finite() {
        a2 / (a2 + b2)
    } else if a.is_infinite() {
        1.0
    } else {
        0.0
    }
}

/// How far a shadow ray from `org` towards a light `dist` away looks: short of the light by a
/// margin (infinite for a light at infinity).
#[inline(always)]
fn shadow_tmax(org: Vec3A, dist: f32) -> f32 {
    if dist.is_finite() {
        dist * (1.0 - 1e-4) - 1e-4 * (1.0 + org.abs().max_element())
    } else {
        f32::INFINITY
    }
}

/// The shadow ray of light sample `ls` taken at `p`, from `org` (`p` moved off its surface):
/// to the sampled point itself, or along the sample's direction for a light at infinity.
/// Along the direction from `p`, the ray ran beside the segment to the light by the offset,
/// and towards a low lamp seen at a grazing angle it crossed the lamp's plane before its end:
/// the lamp shadowed itself (floor points two lamp-widths away lost 90% of their direct light;
/// `tests/analytic.rs`, `a_low_lamp_lights_the_floor_beside_it_as_lambert_says`).
#[inline(always)]
fn shadow_ray(org: Vec3A, p: Vec3A, ls: &crate::scene::LightSample) -> (Vec3A, Vec3A, f32) {
    if !ls.dist.is_finite() {
        return (org, ls.wi, ls.dist);
    }
    let d = p + ls.wi * ls.dist - org;
    let len = d.length();
    if len > 0.0 && len.is_finite() {
        (org, d / len, len)
    } else {
        (org, ls.wi, ls.dist)
    }
}

#[inline(always)]
fn offset(p: Vec3A, ng: Vec3A, dir: Vec3A) -> Vec3A {
    let eps = 1e-4 * (1.0 + p.abs().max_element());
    if dir.dot(ng) >= 0.0 {
        p + ng * eps
    } else {
        p - ng * eps
    }
}

/// Generates the primary ray through image position `(fx, fy)` in pixels.
pub fn camera_ray(cam: &Camera, width: u32, height: u32, fx: f32, fy: f32) -> (Vec3A, Vec3A) {
    CameraRays::new(cam, width, height).ray(fx, fy)
}

/// Primary rays of one camera and image size, with what every ray shares (the field of view's
/// tangent, the basis) worked out once: [`camera_ray`] for many rays, the same bits.
#[derive(Clone, Copy, Debug)]
pub struct CameraRays {
    width: f32,
    height: f32,
    aspect: f32,
    right: Vec3A,
    up: Vec3A,
    fwd: Vec3A,
    pos: Vec3A,
    /// `tan(yfov / 2)` of a perspective camera, `None` for an orthographic one.
    tan_half_fov: Option<f32>,
    ymag: f32,
}

impl CameraRays {
    pub fn new(cam: &Camera, width: u32, height: u32) -> CameraRays {
        let (tan_half_fov, ymag) = match cam.projection {
            Projection::Perspective { yfov, .. } => (Some((yfov * 0.5).tan_d()), 0.0),
            Projection::Orthographic { ymag, .. } => (None, ymag),
        };
        CameraRays {
            width: width as f32,
            height: height as f32,
            aspect: width as f32 / height as f32,
            right: Vec3A::from(cam.right),
            up: Vec3A::from(cam.up),
            fwd: Vec3A::from(cam.forward),
            pos: Vec3A::from(cam.position),
            tan_half_fov,
            ymag,
        }
    }

    /// The ray through image position `(fx, fy)` in pixels.
    #[inline]
    pub fn ray(&self, fx: f32, fy: f32) -> (Vec3A, Vec3A) {
        let sx = 2.0 * fx / self.width - 1.0;
        let sy = 1.0 - 2.0 * fy / self.height;
        let (right, up, aspect) = (self.right, self.up, self.aspect);
        match self.tan_half_fov {
            Some(th) => {
                let d = normalize(right * (sx * th * aspect) + up * (sy * th) + self.fwd);
                (self.pos, d)
            }
            None => {
                let ymag = self.ymag;
                let o = self.pos + right * (sx * ymag * aspect) + up * (sy * ymag);
                (o, self.fwd)
            }
        }
    }
}

/// The cone of every primary ray (ray cones for texture filtering, see [`RayCone`]): a
/// perspective camera's rays start as points and widen by one pixel's angle, `2 tan(yfov / 2) /
/// height`; an orthographic camera's are one pixel wide and do not widen.
pub fn camera_cone(cam: &Camera, height: u32) -> RayCone {
    let height = height.max(1) as f32;
    match cam.projection {
        Projection::Perspective { yfov, .. } => RayCone {
            width: 0.0,
            spread: 2.0 * (yfov * 0.5).tan_d() / height,
        },
        Projection::Orthographic { ymag, .. } => RayCone {
            width: 2.0 * ymag / height,
            spread: 0.0,
        },
    }
}

impl RenderScene {
    /// Closest hit with alpha testing; `u` decides stochastic (blend) transparency.
    #[inline]
    fn trace(&self, org: Vec3A, dir: Vec3A, u: f32) -> Option<crate::bvh::Hit> {
        count_ray();
        self.bvh.intersect(
            org,
            dir,
            f32::INFINITY,
            &|prim| self.alpha_tested[prim as usize],
            &mut |prim, b1, b2| self.alpha_accept(prim, b1, b2, u),
        )
    }

    /// Whether a shadow ray from `org` along `dir` over `dist` is blocked (scenes without
    /// translucency only: see [`RenderScene::transmittance`]), and the closest hit of the
    /// continuation ray `(next_org, next_dir)`, traced together ([`crate::bvh::Bvh::occluded_and_intersect`]).
    #[inline(always)]
    fn shadow_and_trace(
        &self,
        (org, dir, dist): (Vec3A, Vec3A, f32),
        (next_org, next_dir, u): (Vec3A, Vec3A, f32),
    ) -> (bool, Option<crate::bvh::Hit>) {
        let tmax = shadow_tmax(org, dist);
        if tmax <= 0.0 {
            return (false, self.trace(next_org, next_dir, u));
        }
        count_ray();
        count_ray();
        self.bvh.occluded_and_intersect(
            Query(
                (org, dir, tmax),
                &|prim| self.mask_only(prim),
                &mut |prim, b1, b2| self.alpha_accept(prim, b1, b2, 0.0),
            ),
            Query(
                (next_org, next_dir, f32::INFINITY),
                &|prim| self.alpha_tested[prim as usize],
                &mut |prim, b1, b2| self.alpha_accept(prim, b1, b2, u),
            ),
        )
    }

    /// Whether triangle `prim` is alpha-tested as a mask (a shadow ray's only filter).
    #[inline(always)]
    fn mask_only(&self, prim: u32) -> bool {
        self.alpha_tested[prim as usize]
            && self.scene.materials[self.scene.triangle_materials[prim as usize] as usize]
                .alpha_mode
                == AlphaMode::Mask
    }

    /// Fraction of light that passes from `org` along `dir` over `dist`: 0 or 1 for opaque
    /// blockers, partial through blended and thin transmissive surfaces.
    fn transmittance(&self, mut org: Vec3A, dir: Vec3A, dist: f32) -> Vec3A {
        let mut tmax = shadow_tmax(org, dist);
        if tmax <= 0.0 {
            return Vec3A::ONE;
        }
        let mask_only = |prim: u32| self.mask_only(prim);
        let mut accept = |prim: u32, b1: f32, b2: f32| self.alpha_accept(prim, b1, b2, 0.0);
        count_ray();
        if !self.has_translucency {
            let blocked = self.bvh.occluded(org, dir, tmax, &mask_only, &mut accept);
            return if blocked { Vec3A::ZERO } else { Vec3A::ONE };
        }
        let mut tr = Vec3A::ONE;
        for _ in 0..SHADOW_MAX_LAYERS {
            count_ray();
            let Some(hit) = self.bvh.intersect(org, dir, tmax, &mask_only, &mut accept) else {
                return tr;
            };
            let m =
                &self.scene.materials[self.scene.triangle_materials[hit.prim as usize] as usize];
            if m.alpha_mode != AlphaMode::Blend && m.transmission <= 0.0 {
                return Vec3A::ZERO;
            }
            let s = self.surface(&hit, org, dir);
            let alpha = if m.alpha_mode == AlphaMode::Blend {
                self.alpha(hit.prim, hit.u, hit.v)
            } else {
                1.0
            };
            let through = (1.0 - alpha) + alpha * s.bsdf.straight_transmittance(s.ns.dot(dir));
            tr *= through;
            if tr.max_element() <= 0.0 {
                return Vec3A::ZERO;
            }
            let p = offset(s.p, s.ng, dir);
            if tmax.is_finite() {
                tmax -= (p - org).length();
                if tmax <= 0.0 {
                    return tr;
                }
            }
            org = p;
        }
        Vec3A::ZERO
    }

    /// Radiance along a camera ray with cone `cone` for one sample.
    #[inline(always)]
    pub fn radiance(
        &self,
        org: Vec3A,
        dir: Vec3A,
        cone: RayCone,
        max_bounces: u32,
        s: &mut Sampler,
    ) -> Vec3A {
        self.radiance_from(org, dir, cone, None, max_bounces, s)
    }

    /// Radiance leaving the surface point `first` towards `-dir` for one sample, as if a camera
    /// ray with direction `dir` had hit it (used by texture baking, which knows the point
    /// already). The path continues exactly as in [`RenderScene::radiance`]; the caller may
    /// change the surface's BSDF or emission first (e.g. a white Lambertian BSDF gives the
    /// irradiance divided by pi).
    #[inline(always)]
    pub fn radiance_at_surface(
        &self,
        first: Surface,
        dir: Vec3A,
        max_bounces: u32,
        s: &mut Sampler,
    ) -> Vec3A {
        self.radiance_from(
            first.p - dir,
            dir,
            RayCone::NONE,
            Some(first),
            max_bounces,
            s,
        )
    }

    /// The path loop of [`RenderScene::radiance`]; `first`, when given, replaces the first hit.
    ///
    /// Texture footprints: the ray's `cone` filters the textures it hits; it goes on (same
    /// spread, flat-mirror approximation) through delta (mirror, glass) bounces and is dropped
    /// (full resolution) after any other bounce. Sound because emitters reached after a non-delta
    /// bounce are weighed by MIS against light samples, which read full resolution too; and after
    /// a rough bounce, where the true footprint is wide and unknown, full resolution costs a
    /// little noise but never blurs.
    #[inline(always)]
    fn radiance_from(
        &self,
        mut org: Vec3A,
        mut dir: Vec3A,
        mut cone: RayCone,
        first: Option<Surface>,
        max_bounces: u32,
        s: &mut Sampler,
    ) -> Vec3A {
        let mut l = Vec3A::ZERO;
        let mut beta = Vec3A::ONE;
        let mut prev_pdf = 0.0f32;
        let mut prev_delta = true;
        // How many BSDF samples the previous vertex took (1, or FIRST_SPLIT where it split).
        let mut prev_split = 1u32;
        // The previous vertex's point and geometric normal: where its light sample was taken,
        // which the light tree's probabilities depend on.
        let mut prev_p = Vec3A::ZERO;
        let mut prev_n = Vec3A::ZERO;
        // Absorption coefficient of the volume the path is in (KHR_materials_volume), if any.
        // One level: entering a volume from its front sets it, leaving through a back face
        // clears it (volumes are closed meshes with outward faces, as the extension requires).
        let mut medium: Option<Vec3A> = None;
        // The wavelength channel a dispersive refraction chose (KHR_materials_dispersion).
        let mut channel = crate::bsdf::ALL_CHANNELS;
        let max_vertices = max_bounces.saturating_add(1);
        let mut depth = 0u32;
        let mut given_first = first.is_some();
        let mut surf = first.unwrap_or_else(Surface::blank);
        // The light point of the vertex to come: the first from the camera's 4-D point, each
        // next from the previous bounce's.
        let mut light_u = s.point_4d_tail(0);
        // A light sample whose shadow ray waits to be traced with the next continuation ray
        // (scenes without translucency): (shadow ray, its contribution if unblocked). Added to
        // `l` before anything the continuation finds, as if traced on its own.
        let mut pending: Option<((Vec3A, Vec3A, f32), Vec3A)> = None;
        let pair = self.paired_shadow_rays && !self.has_translucency;
        loop {
            let dims = CAMERA_DIMS + depth * DIMS_PER_BOUNCE;
            let hashed = depth * HASHED_PER_BOUNCE;
            let u_alpha = if self.any_alpha_tested {
                s.hashed(hashed)
            } else {
                0.0
            };
            // A given first surface is reached with prev_delta set, so its hit is never needed.
            // Each hit is written into the one `surf` (a `Surface` is large: returning it by
            // value copied it on every bounce). Of the hit, only its distance and triangle are
            // needed past `fill_surface`.
            let hit: Option<(f32, u32)>;
            if given_first {
                given_first = false;
                hit = None;
            } else {
                let traced = match pending.take() {
                    Some((shadow, contribution)) => {
                        let (blocked, hit) = self.shadow_and_trace(shadow, (org, dir, u_alpha));
                        if !blocked {
                            l += contribution;
                        }
                        hit
                    }
                    None => self.trace(org, dir, u_alpha),
                };
                let Some(found) = traced else {
                    let (le, at) = self.env.look(dir);
                    if le != Vec3A::ZERO {
                        let w = if prev_delta {
                            1.0
                        } else if prev_split > 1 {
                            split_weight(prev_split, prev_pdf, self.env_light_pdf_at(&at))
                        } else {
                            power_heuristic(prev_pdf, self.env_light_pdf_at(&at))
                        };
                        l += beta * le * w;
                    }
                    break;
                };
                if let Some(sigma) = medium {
                    // Beer-Lambert over the distance travelled inside.
                    beta *= (-sigma * found.t).exp_d();
                }
                hit = Some((found.t, found.prim));
                self.fill_surface(&mut surf, &found, org, dir, cone.width_at(found.t));
            }
            if surf.emission != Vec3A::ZERO {
                let w = match hit {
                    Some((t, prim)) if !prev_delta && prev_split > 1 => split_weight(
                        prev_split,
                        prev_pdf,
                        self.triangle_light_pdf(prim, dir, t, prev_p, prev_n),
                    ),
                    Some((t, prim)) if !prev_delta => power_heuristic(
                        prev_pdf,
                        self.triangle_light_pdf(prim, dir, t, prev_p, prev_n),
                    ),
                    _ => 1.0,
                };
                l += beta * surf.emission * w;
            }
            if depth >= max_vertices {
                break;
            }
            surf.bsdf.channel = channel;
            let (tx, ty) = onb(surf.ns);
            let to_local = |v: Vec3A| Vec3A::new(v.dot(tx), v.dot(ty), v.dot(surf.ns));
            let bsdf = surf.bsdf.prepare(to_local(-dir));

            // The bounce's numbers: the BSDF direction and the next light point, (lobe,
            // roulette). Drawn together, so that their hash chains overlap; (lobe, roulette)
            // only where they are read.
            let (u1, u2) = light_u;
            let [d1, d2, n1, n2] = s.point_4d(dims);
            let (u_lobe, u_rr) = if bsdf.chooses_a_lobe() || depth + 1 >= RR_DEPTH {
                s.point_2d(dims + 1)
            } else {
                (0.0, 0.0)
            };
            light_u = (n1, n2);
            // The first vertex splits its BSDF sample where that pays (FIRST_SPLIT). The path
            // goes on along its own sample, (d1, d2) and u_lobe as without splitting; the
            // others are that sample's numbers shifted by k/FIRST_SPLIT ([`shifted`]).
            let split = if depth == 0
                && bsdf.chooses_a_lobe()
                && bsdf.glossy_share() >= SPLIT_MIN_GLOSSY
                && surf.bsdf.transmission <= 0.0
                && surf.bsdf.diffuse_transmission <= 0.0
                && surf.bsdf.refract_eta <= 0.0
            {
                self.first_split
            } else {
                1
            };

            // Next-event estimation: lights on the lit side, and behind the surface too when
            // it has a non-delta transmission lobe (diffuse transmission, rough refraction);
            // the local and geometric sides must agree either way.
            if let Some(ls) = self.sample_light(surf.p, surf.ng, u1, u2) {
                let side = ls.wi.dot(surf.ng);
                let wi = to_local(ls.wi);
                if side > 0.0 || (side < 0.0 && wi.z < 0.0 && surf.bsdf.transmits_nondelta()) {
                    let (f, bsdf_pdf) = bsdf.eval(wi);
                    if f != Vec3A::ZERO {
                        let shadow = shadow_ray(offset(surf.p, surf.ng, ls.wi), surf.p, &ls);
                        let w = if ls.delta {
                            1.0
                        } else {
                            power_heuristic(ls.pdf, bsdf_pdf)
                        };
                        if pair {
                            // Opaque blockers only: the transmittance is 0 or 1, and
                            // `beta * f * 1` is `beta * f` exactly.
                            let contribution = beta * f * ls.li * (wi.z.abs() * w / ls.pdf);
                            pending = Some((shadow, contribution));
                        } else {
                            let tr = self.transmittance(shadow.0, shadow.1, shadow.2);
                            if tr != Vec3A::ZERO {
                                l += beta * f * tr * ls.li * (wi.z.abs() * w / ls.pdf);
                            }
                        }
                    }
                }
            }

            if split > 1 {
                self.split_samples(
                    &mut l,
                    &bsdf,
                    &surf,
                    (tx, ty),
                    beta,
                    (d1, d2, u_lobe),
                    split,
                    s,
                );
            }

            // Continue the path by sampling the BSDF.
            let Some(bs) = bsdf.sample(u_lobe, d1, d2) else {
                break;
            };
            // Whole-vector swizzles rather than `bs.wi.x` and so on: the same products, but the
            // compiler then reads the sample with the aligned load its store forwards to, not an
            // unaligned one across two stores, which waited for both to retire.
            let wi = tx * bs.wi.xxx() + ty * bs.wi.yyy() + surf.ns * bs.wi.zzz();
            let side = wi.dot(surf.ng);
            // Reflection must leave on the lit side of the geometry, transmission on the other.
            if (bs.wi.z > 0.0) != (side > 0.0) {
                break;
            }
            if bs.channel != crate::bsdf::ALL_CHANNELS {
                channel = bs.channel;
            }
            // Transmission through a volume's surface (refraction, or diffuse transmission)
            // enters or leaves it.
            if bs.wi.z < 0.0 && surf.bsdf.refract_eta > 0.0 {
                medium = if surf.front {
                    Some(self.absorption[surf.material as usize]).filter(|s| s.max_element() > 0.0)
                } else {
                    None
                };
            }
            cone = match hit {
                Some((t, _)) if bs.delta => cone.advanced(t),
                _ => RayCone::NONE,
            };
            beta *= bs.weight;
            prev_pdf = bs.pdf;
            prev_delta = bs.delta;
            prev_split = split;
            prev_p = surf.p;
            prev_n = surf.ng;
            org = offset(surf.p, surf.ng, wi);
            dir = wi;
            depth += 1;
            if depth >= RR_DEPTH {
                // sqrt, as Cycles does: dim paths survive more often than with the throughput
                // itself, which measured 10% more efficient on the Cornell box.
                let survive = beta.max_element().sqrt().min(1.0);
                if survive <= 0.0 || u_rr >= survive {
                    break;
                }
                beta /= survive;
            }
            if beta.max_element() <= 0.0 {
                break;
            }
        }
        // The path ended with its last light sample's shadow ray still to trace.
        if let Some(((org, dir, dist), contribution)) = pending {
            if self.transmittance(org, dir, dist) != Vec3A::ZERO {
                l += contribution;
            }
        }
        l
    }

    /// The split samples of a vertex after the path's own ([`FIRST_SPLIT`]): each looks for
    /// light along its direction and adds what it finds to `l`. Reflection must leave on the
    /// lit side (as the path's own sample must); the BSDF has no delta lobe (no transmission),
    /// and the path is in no volume yet. Out of line: inlined, it slowed the path loop of
    /// scenes that never split (the Cornell box) by several percent.
    #[inline(never)]
    #[allow(clippy::too_many_arguments)]
    fn split_samples(
        &self,
        l: &mut Vec3A,
        bsdf: &crate::bsdf::PreparedBsdf<'_>,
        surf: &Surface,
        (tx, ty): (Vec3A, Vec3A),
        beta: Vec3A,
        (d1, d2, u_lobe): (f32, f32, f32),
        split: u32,
        s: &Sampler,
    ) {
        for k in 1..split {
            let shift = k as f32 / split as f32;
            let (a, b, c) = (
                shifted(d1, shift),
                shifted(d2, shift),
                shifted(u_lobe, shift),
            );
            let Some(bk) = bsdf.sample(c, a, b) else {
                continue;
            };
            let wi = tx * bk.wi.xxx() + ty * bk.wi.yyy() + surf.ns * bk.wi.zzz();
            if (bk.wi.z > 0.0) != (wi.dot(surf.ng) > 0.0) {
                continue;
            }
            let u_alpha = if self.any_alpha_tested {
                s.hashed(SPLIT_HASHED + k)
            } else {
                0.0
            };
            let (le, w) = match self.trace(offset(surf.p, surf.ng, wi), wi, u_alpha) {
                None => {
                    let (le, at) = self.env.look(wi);
                    if le == Vec3A::ZERO {
                        continue;
                    }
                    (le, split_weight(split, bk.pdf, self.env_light_pdf_at(&at)))
                }
                Some(h) => {
                    let le = self.emission_seen(&h, wi);
                    if le == Vec3A::ZERO {
                        continue;
                    }
                    let light_pdf = self.triangle_light_pdf(h.prim, wi, h.t, surf.p, surf.ng);
                    (le, split_weight(split, bk.pdf, light_pdf))
                }
            };
            *l += beta * bk.weight * le * w;
        }
    }

    /// Renders one work unit: a pure function of the scene, the settings and the unit, compiled
    /// for the scene's code path ([`crate::isa::run`]).
    pub fn render_unit(&self, settings: &RenderSettings, unit: &WorkUnit) -> UnitResult {
        crate::isa::run(
            self.bvh.isa(),
            #[inline(always)]
            || self.render_unit_in(settings, unit),
        )
    }

    /// Whether renders of this scene take the wavefront kernel (`integrator::wavefront`: 16
    /// paths shaded at a time, the same bytes as one at a time): scenes of Lambertian (or black)
    /// untextured materials lit by at most three emissive triangles, with no environment.
    pub fn takes_wavefront(&self) -> bool {
        self.wavefront
            && self.paired_shadow_rays
            && self
                .wave_tables
                .get_or_init(|| self.wavefront_tables())
                .is_some()
    }

    /// The body of [`RenderScene::render_unit`], inlined into each path's copy.
    #[inline(always)]
    fn render_unit_in(&self, settings: &RenderSettings, unit: &WorkUnit) -> UnitResult {
        if self.wavefront && self.paired_shadow_rays {
            if let Some(tables) = self.wave_tables.get_or_init(|| self.wavefront_tables()) {
                return self.render_unit_wave(tables, settings, unit);
            }
        }
        let mut sums = Vec::with_capacity(unit.pixels());
        let mut nonfinite = 0u64;
        let cone = camera_cone(&settings.camera, settings.height);
        let rays = CameraRays::new(&settings.camera, settings.width, settings.height);
        for y in unit.y0..unit.y1 {
            for x in unit.x0..unit.x1 {
                let pixel = y as u64 * settings.width as u64 + x as u64;
                let mut acc = [0i128; 3];
                for si in unit.sample_start..unit.sample_end {
                    let mut s = Sampler::new(settings.seed, pixel, si);
                    // The first two coordinates of the camera's 4-D point (see CAMERA_DIMS).
                    let (jx, jy) = s.point_2d(0);
                    let (org, dir) = rays.ray(x as f32 + jx, y as f32 + jy);
                    let l = self.radiance(org, dir, cone, settings.max_bounces, &mut s);
                    if !l.is_finite() {
                        if nonfinite == 0 {
                            tracing::warn!(
                                "non-finite radiance at pixel ({x}, {y}) sample {si} (seed {}); sample dropped",
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
                sums.push(acc);
            }
        }
        UnitResult {
            unit: *unit,
            sums,
            nonfinite_samples: nonfinite,
        }
    }
}

/// Public helpers for texture baking (`rayfarm-bake`), which starts paths on known surface
/// points instead of camera rays.
impl RenderScene {
    /// Shading data of triangle `prim` at barycentrics `(b1, b2)` (of its second and third
    /// vertex) as seen by a ray travelling along `dir`.
    pub fn surface_at(&self, prim: u32, b1: f32, b2: f32, dir: Vec3A) -> Surface {
        let hit = crate::bvh::Hit {
            t: 1.0,
            u: b1,
            v: b2,
            prim,
        };
        let t = self.scene.triangles[prim as usize];
        let b0 = 1.0 - b1 - b2;
        let [p0, p1, p2] = t.map(|i| Vec3A::from(self.scene.positions[i as usize]));
        let p = p0 * b0 + p1 * b1 + p2 * b2;
        self.surface(&hit, p - dir, dir)
    }

    /// Fraction of light passing from `org` along unit `dir` over `dist` (may be infinite):
    /// the shadow-ray test of the path tracer.
    pub fn visibility(&self, org: Vec3A, dir: Vec3A, dist: f32) -> Vec3A {
        self.transmittance(org, dir, dist)
    }
}

/// Ray origin for leaving the surface point `p` (geometric normal `ng`) in direction `dir`:
/// offset along `ng` by a distance scaled to the coordinates' magnitude, as the path tracer does.
pub fn ray_offset(p: Vec3A, ng: Vec3A, dir: Vec3A) -> Vec3A {
    offset(p, ng, dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A split sample's numbers stay in [0, 1), are exact (shifting back gives the original
    /// bits), and a half shift moves every number to the other half of [0, 1).
    #[test]
    fn shifted_numbers_wrap_exactly() {
        let mut x = 0x9E37_79B9u32;
        for i in 0..100_000u32 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            // As the sampler makes them: 24 bits, a multiple of 2^-24 below 1.
            let u = if i < 4 {
                [0.0, 0.5, 1.0 - 1.0 / (1u32 << 24) as f32, 0.25][i as usize]
            } else {
                (x >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
            };
            for k in 1..FIRST_SPLIT {
                let shift = k as f32 / FIRST_SPLIT as f32;
                let s = shifted(u, shift);
                assert!((0.0..1.0).contains(&s), "{u} + {shift} -> {s}");
                let back = shifted(s, 1.0 - shift);
                assert_eq!(back.to_bits(), u.to_bits(), "{u} + {shift} and back");
            }
            let h = shifted(u, 0.5);
            assert_ne!(u < 0.5, h < 0.5, "{u} -> {h}");
        }
    }

    /// The split weights of FIRST_SPLIT samples add up to one sample's power heuristic, which
    /// with the light sample's weight makes one: splitting keeps the estimator unbiased.
    #[test]
    fn split_weights_sum_to_the_unsplit_weight() {
        for (pb, pl) in [
            (0.3f32, 2.0f32),
            (5.0, 0.1),
            (1.0, 1.0),
            (1e-3, 7.0),
            (2.0, 0.0),
        ] {
            let n = FIRST_SPLIT;
            let sum: f32 = (0..n).map(|_| split_weight(n, pb, pl)).sum();
            let plain = power_heuristic(pb, pl);
            assert!((sum - plain).abs() <= 1e-6 * plain.max(1e-30), "{pb} {pl}");
            assert!((plain + power_heuristic(pl, pb) - 1.0).abs() < 1e-6);
        }
    }
}
