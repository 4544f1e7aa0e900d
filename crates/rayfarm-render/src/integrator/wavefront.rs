//! The wavefront kernel: 16 paths at a time, shaded in 16-lane operations
//! ([`crate::lanes`]), for scenes whose every vertex is Lambertian and whose lights are
//! emissive triangles picked by power. Traversal stays one ray at a time (the paired shadow
//! and continuation rays of [`RenderScene::shadow_and_trace`]).
//!
//! It computes, per path, the same IEEE operations in the same order as
//! [`RenderScene::radiance`] does for such a scene, so the image is the same, byte for byte
//! (tested): it is an optimisation, not another renderer. Every lane's numbers depend on its
//! (pixel, sample) alone; which lanes share a wave changes nothing, and a pixel's sums are
//! integers, so the order in which its samples finish changes nothing either.

#![allow(clippy::needless_range_loop)] // lane loops read best indexed

use super::*;
use crate::bvh::Hit;
use crate::lanes::{F, M, U, V3, W};
use crate::sampler::lanes as sampler_lanes;
use crate::scene::{EnvLight, LightRef};
use std::f32::consts::FRAC_1_PI;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    Tracing,
}

/// What the kernel reads of a scene it can render ([`RenderScene::wavefront_tables`]).
pub(crate) struct WaveTables {
    /// The light picker's bounds: `cdf[0] = 0`, light `k` spans `cdf[k]..cdf[k + 1]`.
    cdf: Vec<f32>,
    /// Per light: lo, hi, corners (9), normal (3), area, radiance front (3) and back (3),
    /// probability. One row per light, gathered by the picked index.
    lights: Vec<[f32; LIGHT_ROW]>,
    /// Per material: the Lambertian albedo (`Bsdf::base`), front and back emission.
    materials: Vec<[f32; 9]>,
}

const LIGHT_ROW: usize = 24;

/// The most lights the kernel picks among (by selects, one per light). Scenes with more lights
/// with a place pick through a light tree ([`crate::scene::LIGHT_TREE_MIN`]), which the kernel
/// does not do.
const MAX_LIGHTS: usize = crate::scene::LIGHT_TREE_MIN - 1;

/// Every lane's path: the state [`RenderScene::radiance_from`] keeps in locals, one lane each.
struct Wave {
    state: [State; W],
    o: [[f32; W]; 3],
    d: [[f32; W]; 3],
    beta: [[f32; W]; 3],
    l: [[f32; W]; 3],
    prev_pdf: [f32; W],
    prev_delta: [bool; W],
    light_u: [[f32; W]; 2],
    depth: [u32; W],
    seed: [u64; W],
    index: [u32; W],
    pixel: [u32; W],
    /// The light sample whose shadow ray waits for the next trace: origin, direction,
    /// distance, contribution.
    pending: [bool; W],
    sh_o: [[f32; W]; 3],
    sh_d: [[f32; W]; 3],
    sh_dist: [f32; W],
    sh_c: [[f32; W]; 3],
    /// Whether the path ended in this round.
    done: [bool; W],
    // The trace's results and what shading gathers of them.
    t: [f32; W],
    hit: [bool; W],
    b1: [f32; W],
    b2: [f32; W],
    p0: [[f32; W]; 3],
    p1: [[f32; W]; 3],
    p2: [[f32; W]; 3],
    n0: [[f32; W]; 3],
    n1: [[f32; W]; 3],
    n2: [[f32; W]; 3],
    /// Albedo, front and back emission of the hit's material.
    mat: [[f32; W]; 9],
    /// Of the hit's light (if it is one): probability, area, normal; `is_light`.
    em_prob: [f32; W],
    em_area: [f32; W],
    em_n: [[f32; W]; 3],
    is_light: [bool; W],
}

impl Wave {
    fn new() -> Box<Wave> {
        let z3 = [[0f32; W]; 3];
        Box::new(Wave {
            state: [State::Empty; W],
            o: z3,
            d: z3,
            beta: z3,
            l: z3,
            prev_pdf: [0.0; W],
            prev_delta: [false; W],
            light_u: [[0.0; W]; 2],
            depth: [0; W],
            seed: [0; W],
            index: [0; W],
            pixel: [0; W],
            pending: [false; W],
            sh_o: z3,
            sh_d: z3,
            sh_dist: [0.0; W],
            sh_c: z3,
            done: [false; W],
            t: [0.0; W],
            hit: [false; W],
            b1: [0.0; W],
            b2: [0.0; W],
            p0: z3,
            p1: z3,
            p2: z3,
            n0: z3,
            n1: z3,
            n2: z3,
            mat: [[0.0; W]; 9],
            em_prob: [0.0; W],
            em_area: [0.0; W],
            em_n: z3,
            is_light: [false; W],
        })
    }
}

#[inline(always)]
fn get(a: &[[f32; W]; 3], i: usize) -> Vec3A {
    Vec3A::new(a[0][i], a[1][i], a[2][i])
}

#[inline(always)]
fn put(a: &mut [[f32; W]; 3], i: usize, x: Vec3A) {
    a[0][i] = x.x;
    a[1][i] = x.y;
    a[2][i] = x.z;
}

/// `power_heuristic` of 16 lanes.
#[inline(always)]
fn power_heuristic_v(a: F, b: F) -> F {
    let (a2, b2) = (a * a, b * b);
    let s = a2 + b2;
    let zero = F::splat(0.0);
    let inf = a.abs().eq_inf();
    (s.gt(zero) & s.is_finite()).select(a2 / s, inf.select(F::splat(1.0), zero))
}

/// `offset` of 16 lanes: `p` moved off its surface (geometric normal `ng`) towards `dir`.
#[inline(always)]
fn offset_v(p: V3, ng: V3, dir: V3) -> V3 {
    let eps = F::splat(1e-4) * (F::splat(1.0) + p.abs().max_element());
    let out = dir.dot(ng).ge(F::splat(0.0));
    V3::select(out, p.add(ng.scale(eps)), p.sub(ng.scale(eps)))
}

/// `v.normalize_or(fallback)` as glam computes it: times the reciprocal of the length.
#[inline(always)]
fn normalize_or_v(v: V3, fallback: V3) -> V3 {
    let rcp = F::splat(1.0) / v.dot(v).sqrt();
    let ok = rcp.is_finite() & rcp.gt(F::splat(0.0));
    V3::select(ok, v.scale(rcp), fallback)
}

impl RenderScene {
    /// The tables of the wavefront kernel, or `None` when a scene needs something it does not
    /// do: an environment, a light tree, punctual lights, alpha tests, translucency, textures,
    /// or a material that is not Lambertian (or black).
    pub(crate) fn wavefront_tables(&self) -> Option<WaveTables> {
        if self.any_alpha_tested
            || self.has_translucency
            || !self.paired_shadow_rays
            || !matches!(self.env, EnvLight::Black)
            || self.env_light_index.is_some()
        {
            return None;
        }
        let (cdf, probs) = self.light_pick.flat()?;
        let s = &self.scene;
        // One triangle of each material, to build its BSDF as a hit would.
        let mut example = vec![u32::MAX; s.materials.len()];
        for (prim, &m) in s.triangle_materials.iter().enumerate() {
            let e = &mut example[m as usize];
            if *e == u32::MAX {
                *e = prim as u32;
            }
        }
        let mut materials = vec![[0f32; 9]; s.materials.len()];
        for (mi, m) in s.materials.iter().enumerate() {
            if self.material_textured[mi]
                || self.material_extension_lobes[mi]
                || m.normal_texture.is_some()
                || m.emissive_texture.is_some()
                || m.has_sheen()
                || m.has_clearcoat()
                || m.has_volume()
                || self.absorption[mi] != Vec3A::ZERO
            {
                return None;
            }
            let Some(&prim) = example.get(mi).filter(|&&p| p != u32::MAX) else {
                continue;
            };
            let surf = self.surface_at(prim, 1.0 / 3.0, 1.0 / 3.0, Vec3A::NEG_Z);
            let b = &surf.bsdf;
            let plain = b.metallic == 0.0
                && b.transmission == 0.0
                && b.diffuse_transmission == 0.0
                && b.f90_dielectric == 0.0
                && b.f0_dielectric == Vec3A::ZERO
                && b.sheen_color == Vec3A::ZERO
                && b.clearcoat == 0.0
                && b.refract_eta == 0.0
                && !b.anisotropic
                && b.iridescence == 0.0
                && b.dispersion == 0.0;
            // Lambertian (`prepare` takes its fast path), or black: f = 0, no light sample
            // and no continuation, whichever lobes the full code would weigh.
            let lum = crate::bsdf::luminance(b.base);
            if !plain || !(lum > 0.0 && lum.is_finite() || b.base == Vec3A::ZERO) {
                return None;
            }
            let front = self.emission(prim, 1.0 / 3.0, 1.0 / 3.0, true);
            let back = self.emission(prim, 1.0 / 3.0, 1.0 / 3.0, false);
            let row = &mut materials[mi];
            row[0..3].copy_from_slice(&b.base.to_array());
            row[3..6].copy_from_slice(&front.to_array());
            row[6..9].copy_from_slice(&back.to_array());
        }
        if self.lights.is_empty() || self.lights.len() > MAX_LIGHTS {
            return None;
        }
        let mut lights = Vec::with_capacity(self.lights.len());
        for (k, l) in self.lights.iter().enumerate() {
            let LightRef::Triangle {
                prim,
                area,
                corners,
                normal,
            } = *l
            else {
                return None;
            };
            let mut r = [0f32; LIGHT_ROW];
            r[0] = cdf[k];
            r[1] = cdf[k + 1];
            for (c, p) in corners.iter().enumerate() {
                r[2 + 3 * c..5 + 3 * c].copy_from_slice(&p.to_array());
            }
            r[11..14].copy_from_slice(&normal.to_array());
            r[14] = area;
            let m = s.triangle_materials[prim as usize] as usize;
            r[15..18].copy_from_slice(&materials[m][3..6]);
            r[18..21].copy_from_slice(&materials[m][6..9]);
            r[21] = probs[k];
            lights.push(r);
        }
        Some(WaveTables {
            cdf: cdf.to_vec(),
            lights,
            materials,
        })
    }

    /// [`RenderScene::render_unit_in`] through the wavefront kernel.
    #[inline(always)]
    pub(super) fn render_unit_wave(
        &self,
        tables: &WaveTables,
        settings: &RenderSettings,
        unit: &WorkUnit,
    ) -> UnitResult {
        let mut sums = vec![[0i128; 3]; unit.pixels()];
        let mut nonfinite = 0u64;
        let rays = CameraRays::new(&settings.camera, settings.width, settings.height);
        let max_vertices = settings.max_bounces.saturating_add(1);
        let uw = (unit.x1 - unit.x0) as u64;
        let spp = (unit.sample_end - unit.sample_start) as u64;
        let total = unit.pixels() as u64 * spp;
        let mut next = 0u64;
        let mut w = Wave::new();
        loop {
            // Start a sample in every empty lane, in the order the scalar loop takes them.
            for i in 0..W {
                if w.state[i] != State::Empty || next >= total {
                    continue;
                }
                let pix = next / spp;
                let si = unit.sample_start + (next % spp) as u32;
                next += 1;
                let (x, y) = (unit.x0 + (pix % uw) as u32, unit.y0 + (pix / uw) as u32);
                let pixel = y as u64 * settings.width as u64 + x as u64;
                let s = Sampler::new(settings.seed, pixel, si);
                let (jx, jy) = s.point_2d(0);
                let (org, dir) = rays.ray(x as f32 + jx, y as f32 + jy);
                let lu = s.point_4d_tail(0);
                w.state[i] = State::Tracing;
                put(&mut w.o, i, org);
                put(&mut w.d, i, dir);
                put(&mut w.beta, i, Vec3A::ONE);
                put(&mut w.l, i, Vec3A::ZERO);
                w.prev_pdf[i] = 0.0;
                w.prev_delta[i] = true;
                w.light_u[0][i] = lu.0;
                w.light_u[1][i] = lu.1;
                w.depth[i] = 0;
                w.seed[i] = sampler_lanes::pixel_seed(settings.seed, pixel);
                w.index[i] = si;
                w.pixel[i] = pix as u32;
                w.pending[i] = false;
            }
            if w.state.iter().all(|s| *s == State::Empty) {
                break;
            }
            self.trace_wave(&mut w, tables);
            shade_wave(&mut w, tables, max_vertices);
            // Retire the paths that ended.
            for i in 0..W {
                if w.state[i] == State::Empty || !w.done[i] {
                    continue;
                }
                w.state[i] = State::Empty;
                let mut l = get(&w.l, i);
                if w.pending[i] {
                    // As after the scalar loop: the last light sample's shadow ray alone,
                    // traced now so that the lane takes a new sample in the next round.
                    w.pending[i] = false;
                    let (o, d, dist) = (get(&w.sh_o, i), get(&w.sh_d, i), w.sh_dist[i]);
                    if self.transmittance(o, d, dist) != Vec3A::ZERO {
                        l += get(&w.sh_c, i);
                    }
                }
                if !l.is_finite() {
                    if nonfinite == 0 {
                        let pix = w.pixel[i] as u64;
                        tracing::warn!(
                            "non-finite radiance at pixel ({}, {}) sample {} (seed {}); sample dropped",
                            unit.x0 as u64 + pix % uw,
                            unit.y0 as u64 + pix / uw,
                            w.index[i],
                            settings.seed
                        );
                    }
                    nonfinite += 1;
                    continue;
                }
                let acc = &mut sums[w.pixel[i] as usize];
                acc[0] += to_fixed(l.x);
                acc[1] += to_fixed(l.y);
                acc[2] += to_fixed(l.z);
            }
        }
        UnitResult {
            unit: *unit,
            sums,
            nonfinite_samples: nonfinite,
        }
    }

    /// Traces every lane's rays, one lane at a time, and gathers what shading needs of its
    /// hit.
    #[inline(always)]
    fn trace_wave(&self, w: &mut Wave, tables: &WaveTables) {
        let s = &self.scene;
        for i in 0..W {
            w.done[i] = true;
            match w.state[i] {
                State::Empty => continue,
                State::Tracing => {}
            }
            w.done[i] = false;
            let (org, dir) = (get(&w.o, i), get(&w.d, i));
            let hit = if w.pending[i] {
                w.pending[i] = false;
                let shadow = (get(&w.sh_o, i), get(&w.sh_d, i), w.sh_dist[i]);
                let (blocked, hit) = self.shadow_and_trace(shadow, (org, dir, 0.0));
                if !blocked {
                    let l = get(&w.l, i) + get(&w.sh_c, i);
                    put(&mut w.l, i, l);
                }
                hit
            } else {
                self.trace(org, dir, 0.0)
            };
            let Some(Hit { t, u, v, prim }) = hit else {
                w.hit[i] = false;
                continue;
            };
            w.hit[i] = true;
            w.t[i] = t;
            w.b1[i] = u;
            w.b2[i] = v;
            let tri = s.triangles[prim as usize];
            let (pa, pb, pc) = (&mut w.p0, &mut w.p1, &mut w.p2);
            for (c, dst) in [pa, pb, pc].into_iter().enumerate() {
                let p = s.positions[tri[c] as usize];
                dst[0][i] = p[0];
                dst[1][i] = p[1];
                dst[2][i] = p[2];
            }
            let (na, nb, nc) = (&mut w.n0, &mut w.n1, &mut w.n2);
            for (c, dst) in [na, nb, nc].into_iter().enumerate() {
                let n = s.normals[tri[c] as usize];
                dst[0][i] = n[0];
                dst[1][i] = n[1];
                dst[2][i] = n[2];
            }
            let m = &tables.materials[s.triangle_materials[prim as usize] as usize];
            for (c, &x) in m.iter().enumerate() {
                w.mat[c][i] = x;
            }
            let li = self.light_of_triangle[prim as usize];
            w.is_light[i] = li != u32::MAX;
            if li != u32::MAX {
                let r = &tables.lights[li as usize];
                w.em_prob[i] = r[21];
                w.em_area[i] = r[14];
                w.em_n[0][i] = r[11];
                w.em_n[1][i] = r[12];
                w.em_n[2][i] = r[13];
            }
        }
    }
}

/// Shades every lane that is tracing: emission, the light sample and the BSDF sample of the
/// vertex its ray found, in 16-lane operations.
#[inline(always)]
fn shade_wave(w: &mut Wave, tables: &WaveTables, max_vertices: u32) {
    let zero = F::splat(0.0);
    let one = F::splat(1.0);
    let zero3 = V3::new(zero, zero, zero);
    let mut tracing_b = [false; W];
    let mut deep_b = [false; W];
    let mut roulette_b = [false; W];
    let mut dims = [0u32; W];
    let mut need_rr = false;
    for i in 0..W {
        tracing_b[i] = w.state[i] == State::Tracing && !w.done[i];
        deep_b[i] = w.depth[i] < max_vertices;
        roulette_b[i] = w.depth[i] + 1 >= RR_DEPTH;
        dims[i] = CAMERA_DIMS + w.depth[i] * DIMS_PER_BOUNCE;
        need_rr |= tracing_b[i] && roulette_b[i];
    }
    let tracing = M::from_bools(&tracing_b);
    let hit = M::from_bools(&w.hit);
    // The surface (`fill_surface`).
    let o = V3::load(&w.o);
    let d = V3::load(&w.d);
    let t = F(w.t);
    let p = o.add(d.scale(t));
    let p0 = V3::load(&w.p0);
    let ng_raw = normalize_or_v(
        V3::load(&w.p1).sub(p0).cross(V3::load(&w.p2).sub(p0)),
        V3::new(zero, zero, one),
    );
    let front = ng_raw.dot(d).lt(zero);
    let ng = V3::select(front, ng_raw, ng_raw.neg());
    let b1 = F(w.b1);
    let b2 = F(w.b2);
    let b0 = one - b1 - b2;
    let ns = V3::load(&w.n0)
        .scale(b0)
        .add(V3::load(&w.n1).scale(b1))
        .add(V3::load(&w.n2).scale(b2));
    let ns = normalize_or_v(ns, ng_raw);
    let ns = V3::select(front, ns, ns.neg());
    let ns = V3::select(ns.dot(d.neg()).le(zero), ng, ns);
    let base = V3::new(F(w.mat[0]), F(w.mat[1]), F(w.mat[2]));
    let emission = V3::select(
        front,
        V3::new(F(w.mat[3]), F(w.mat[4]), F(w.mat[5])),
        V3::new(F(w.mat[6]), F(w.mat[7]), F(w.mat[8])),
    );
    // Emission, weighed against the light sample that could have found it
    // (`triangle_light_pdf`).
    let cos = V3::load(&w.em_n).dot(d).abs();
    let light_pdf = (M::from_bools(&w.is_light) & cos.gt(zero))
        .select(F(w.em_prob) * t * t / (F(w.em_area) * cos), zero);
    let prev_pdf = F(w.prev_pdf);
    let wgt = M::from_bools(&w.prev_delta).select(one, power_heuristic_v(prev_pdf, light_pdf));
    let emits = tracing & hit & emission.ne_zero();
    let beta = V3::load(&w.beta);
    V3::load(&w.l)
        .add(V3::select(emits, beta.mul(emission).scale(wgt), zero3))
        .store(&mut w.l);
    let active = tracing & hit & M::from_bools(&deep_b);
    // The bounce's numbers.
    let (u4, urr) = sampler_lanes::point_4d_dims(&w.seed, &w.index, &dims, need_rr);
    let (u1, u2) = (F(w.light_u[0]), F(w.light_u[1]));
    // The frame (`onb`) and the outgoing direction in it.
    let (x, y, z) = (ns.x, ns.y, ns.z);
    let sign = F::from_bits((z.bits() & U::splat(0x8000_0000)) | one.bits());
    let a = F::splat(-1.0) / (sign + z);
    let bb = x * y * a;
    let tx = V3::new(one + sign * x * x * a, sign * bb, (-sign) * x);
    let ty = V3::new(bb, sign + y * y * a, -y);
    let wo_z = d.neg().dot(ns);
    // The light sample (`sample_light`): pick a light by counting the bounds at most u1.
    let mut k = [0u32; W];
    for j in 1..tables.lights.len() {
        let c = tables.cdf[j];
        for i in 0..W {
            k[i] += u32::from(c <= u1.0[i]);
        }
    }
    // The picked light's row in every lane, by selects among the few lights
    // (`MAX_LIGHTS`): a quad light's two triangles.
    let mut g = [[0f32; W]; LIGHT_ROW];
    for c in 0..LIGHT_ROW {
        g[c] = [tables.lights[0][c]; W];
    }
    for (j, row) in tables.lights.iter().enumerate().skip(1) {
        let mut pick = [0u32; W];
        for i in 0..W {
            pick[i] = 0u32.wrapping_sub(u32::from(k[i] == j as u32));
        }
        let pick = M(pick);
        for c in 0..LIGHT_ROW {
            g[c] = pick.select(F::splat(row[c]), F(g[c])).0;
        }
    }
    let (lo, hi) = (F(g[0]), F(g[1]));
    let sel = hi - lo;
    let ur = sel
        .gt(zero)
        .select(((u1 - lo) / sel).clamp(0.0, 0.99999994), F::splat(0.5));
    let su = ur.sqrt();
    let (lb1, lb2) = (su * (one - u2), su * u2);
    let c0 = V3::new(F(g[2]), F(g[3]), F(g[4]));
    let c1 = V3::new(F(g[5]), F(g[6]), F(g[7]));
    let c2 = V3::new(F(g[8]), F(g[9]), F(g[10]));
    let q = c0
        .scale(one - lb1 - lb2)
        .add(c1.scale(lb1))
        .add(c2.scale(lb2));
    let dd = q.sub(p);
    let dist2 = dd.dot(dd);
    let dist = dist2.sqrt();
    let wi = dd.div(dist);
    let cos_l = V3::new(F(g[11]), F(g[12]), F(g[13])).dot(wi);
    let li = V3::select(
        cos_l.lt(zero),
        V3::new(F(g[15]), F(g[16]), F(g[17])),
        V3::new(F(g[18]), F(g[19]), F(g[20])),
    );
    let lpdf = sel * dist2 / (F(g[14]) * cos_l.abs());
    let side = wi.dot(ng);
    let cz = wi.dot(ns);
    // Lambert's eval.
    let f = base.scale(F::splat(FRAC_1_PI));
    let bsdf_pdf = cz * F::splat(FRAC_1_PI);
    let lw = power_heuristic_v(lpdf, bsdf_pdf);
    let contribution = beta.mul(f).mul(li).scale(cz.abs() * lw / lpdf);
    let lit = active
        & sel.gt(zero)
        & dist2.gt(zero)
        & li.ne_zero()
        & cos_l.ne(zero)
        & side.gt(zero)
        & !wo_z.le(zero)
        & !cz.le(zero)
        & f.ne_zero();
    // Its shadow ray (`shadow_ray`): from the offset origin to the sampled point.
    let sorg = offset_v(p, ng, wi);
    let to = p.add(wi.scale(dist)).sub(sorg);
    let len = to.dot(to).sqrt();
    let len_ok = len.gt(zero) & len.is_finite();
    V3::select(len_ok, to.div(len), wi).store(&mut w.sh_d);
    w.sh_dist = len_ok.select(len, dist).0;
    sorg.store(&mut w.sh_o);
    contribution.store(&mut w.sh_c);
    for i in 0..W {
        w.pending[i] = lit.lane(i);
    }
    // The BSDF sample (`cosine_hemisphere`).
    let (d1, d2) = (F(u4[0]), F(u4[1]));
    let r = d1.sqrt();
    let (sn, cs) = sin_cos_turns_v(d2);
    let (lx, ly, lz) = (r * cs, r * sn, (one - d1).max(zero).sqrt());
    let pdf = lz * F::splat(FRAC_1_PI);
    let weight = f.scale(lz.abs() / pdf);
    let nw = tx.scale(lx).add(ty.scale(ly)).add(ns.scale(lz));
    let nside = nw.dot(ng);
    let sampled = !wo_z.le(zero) & !lz.le(zero) & !pdf.le(zero) & pdf.is_finite() & nside.gt(zero);
    let nb = beta.mul(weight);
    // Russian roulette from RR_DEPTH on.
    let roulette = M::from_bools(&roulette_b);
    let survive = nb.max_element().sqrt().min(one);
    let ends = survive.le(zero) | F(urr).ge(survive);
    let survives = !roulette | !ends;
    let nb = V3::select(roulette, nb.div(survive), nb);
    let alive = sampled & survives & !nb.max_element().le(zero);
    let next_org = offset_v(p, ng, nw);
    V3::select(active, nb, beta).store(&mut w.beta);
    w.prev_pdf = active.select(pdf, prev_pdf).0;
    V3::select(active, next_org, o).store(&mut w.o);
    V3::select(active, nw, d).store(&mut w.d);
    w.light_u[0] = active.select(F(u4[2]), u1).0;
    w.light_u[1] = active.select(F(u4[3]), u2).0;
    for i in 0..W {
        if tracing.lane(i) {
            if active.lane(i) {
                w.prev_delta[i] = false;
                w.depth[i] += 1;
                w.done[i] = !alive.lane(i);
            } else {
                w.done[i] = true;
            }
        }
    }
}

/// [`crate::math::sin_cos_turns`] of 16 lanes, for `t` in [0, 1) (a sampler number): the
/// same operations (`floor` is truncation there).
#[inline(always)]
fn sin_cos_turns_v(t: F) -> (F, F) {
    const S: [f32; 4] = crate::math::SIN_TAYLOR;
    const C: [f32; 5] = crate::math::COS_TAYLOR;
    let s = F::splat;
    let t8 = t * s(8.0);
    let whole = t8.to_i32();
    let f = t8 - F::from_i32(whole);
    let octant = whole & U::splat(7);
    let g = (f - F::from_i32(octant & U::splat(1))).abs();
    let a = g * s(std::f32::consts::FRAC_PI_4);
    let a2 = a * a;
    let sin_a = a + a * (a2 * (s(S[0]) + a2 * (s(S[1]) + a2 * (s(S[2]) + a2 * s(S[3])))));
    let cos_a =
        s(1.0) + a2 * (s(C[0]) + a2 * (s(C[1]) + a2 * (s(C[2]) + a2 * (s(C[3]) + a2 * s(C[4])))));
    let swap = ((octant.wrapping_add(U::splat(1)) >> 1) & U::splat(1)).wrapping_mul(u32::MAX);
    let keep = swap ^ U::splat(u32::MAX);
    let (sb, cb) = (sin_a.bits(), cos_a.bits());
    let x = (sb & keep) | (cb & swap);
    let y = (cb & keep) | (sb & swap);
    let sin_sign = (octant >> 2) << 31;
    let cos_sign = ((octant.wrapping_add(U::splat(2)) >> 2) & U::splat(1)) << 31;
    (F::from_bits(x ^ sin_sign), F::from_bits(y ^ cos_sign))
}
