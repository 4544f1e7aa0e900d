//! SPIKE (branch wip/wavefront): a 16-lane wavefront path tracer for Lambertian scenes lit by
//! emissive triangles, to measure what shading several paths per instruction wins. Traversal
//! stays one ray at a time. Not the same bytes as the scalar path.

use super::*;
use crate::bvh::Hit;
use crate::sampler::lanes::{self, W};
use crate::scene::LightRef;

const NO_HIT: u32 = u32::MAX;
const PI_INV: f32 = std::f32::consts::FRAC_1_PI;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Empty,
    Tracing,
    /// The path ended; its last shadow ray is still to trace.
    LastShadow,
}

struct Lights {
    cdf: Vec<f32>,
    prob: Vec<f32>,
    c0: Vec<[f32; 3]>,
    c1: Vec<[f32; 3]>,
    c2: Vec<[f32; 3]>,
    n: Vec<[f32; 3]>,
    area: Vec<f32>,
    le: Vec<[f32; 3]>,
    /// Per light: lo, hi, c0, c1, c2, n, area, le.r, le.g (le.b = le.r: the spike assumes grey-ish? no)
    packed: Vec<[f32; 18]>,
}

/// Every lane's path.
struct Wave {
    state: [State; W],
    o: [[f32; W]; 3],
    d: [[f32; W]; 3],
    beta: [[f32; W]; 3],
    l: [[f32; W]; 3],
    prev_pdf: [f32; W],
    prev_delta: [bool; W],
    prev_p: [[f32; W]; 3],
    prev_n: [[f32; W]; 3],
    light_u: [[f32; W]; 2],
    depth: [u32; W],
    seed: [u64; W],
    index: [u32; W],
    pixel: [u32; W],
    pending: [bool; W],
    sh_o: [[f32; W]; 3],
    sh_d: [[f32; W]; 3],
    sh_t: [f32; W],
    sh_c: [[f32; W]; 3],
    // The trace's results, and what shading gathers of them.
    t: [f32; W],
    prim: [u32; W],
    b1: [f32; W],
    b2: [f32; W],
    p0: [[f32; W]; 3],
    p1: [[f32; W]; 3],
    p2: [[f32; W]; 3],
    n0: [[f32; W]; 3],
    n1: [[f32; W]; 3],
    n2: [[f32; W]; 3],
    base: [[f32; W]; 3],
    em: [[f32; W]; 3],
    em_pdf: [f32; W],
    done: [bool; W],
}

#[inline(always)]
fn v(a: &[[f32; W]; 3], i: usize) -> Vec3A {
    Vec3A::new(a[0][i], a[1][i], a[2][i])
}

#[inline(always)]
fn set(a: &mut [[f32; W]; 3], i: usize, x: Vec3A) {
    a[0][i] = x.x;
    a[1][i] = x.y;
    a[2][i] = x.z;
}

impl RenderScene {
    /// Whether the spike can render this scene.
    pub fn wavefront_eligible(&self) -> bool {
        std::env::var_os("RAYFARM_WAVEFRONT").is_some()
            && !self.any_alpha_tested
            && !self.has_translucency
            && !self.light_pick.has_tree()
            && self.env_light_index.is_none()
            && self
                .lights
                .iter()
                .all(|l| matches!(l, LightRef::Triangle { .. }))
    }

    fn wave_lights(&self) -> Lights {
        let mut ls = Lights {
            cdf: vec![0.0],
            prob: vec![],
            c0: vec![],
            c1: vec![],
            c2: vec![],
            n: vec![],
            area: vec![],
            le: vec![],
            packed: vec![],
        };
        for (k, l) in self.lights.iter().enumerate() {
            let LightRef::Triangle {
                prim,
                area,
                corners,
                normal,
            } = *l
            else {
                unreachable!()
            };
            let p = self.light_pick.prob(Vec3A::ZERO, Vec3A::ZERO, k);
            ls.prob.push(p);
            ls.cdf.push(ls.cdf[k] + p);
            ls.c0.push(corners[0].to_array());
            ls.c1.push(corners[1].to_array());
            ls.c2.push(corners[2].to_array());
            ls.n.push(normal.to_array());
            ls.area.push(area);
            ls.le.push(self.emission(prim, 1.0 / 3.0, 1.0 / 3.0, true).to_array());
        }
        for k in 0..ls.prob.len() {
            let mut r = [0f32; 18];
            r[0] = ls.cdf[k];
            r[1] = ls.cdf[k + 1];
            r[2..5].copy_from_slice(&ls.c0[k]);
            r[5..8].copy_from_slice(&ls.c1[k]);
            r[8..11].copy_from_slice(&ls.c2[k]);
            r[11..14].copy_from_slice(&ls.n[k]);
            r[14] = ls.area[k];
            r[15] = ls.le[k][0];
            r[16] = ls.le[k][1];
            r[17] = ls.le[k][2];
            ls.packed.push(r);
        }
        ls
    }

    /// The spike's `render_unit_in`.
    #[inline(always)]
    pub(super) fn render_unit_wave(&self, settings: &RenderSettings, unit: &WorkUnit) -> UnitResult {
        let mut sums = vec![[0i128; 3]; unit.pixels()];
        let mut nonfinite = 0u64;
        let rays = CameraRays::new(&settings.camera, settings.width, settings.height);
        let lights = self.wave_lights();
        let max_vertices = settings.max_bounces.saturating_add(1);
        let uw = unit.x1 - unit.x0;
        let spp = unit.sample_end - unit.sample_start;
        let total = unit.pixels() as u64 * spp as u64;
        let mut next = 0u64;
        // SAFETY of zeroed: every field is plain numbers, bools and a fieldless enum whose
        // first variant is 0.
        let mut w: Box<Wave> = Box::new(unsafe { std::mem::zeroed() });
        for i in 0..W {
            w.state[i] = State::Empty;
        }
        loop {
            // Refill.
            for i in 0..W {
                if w.state[i] != State::Empty || next >= total {
                    continue;
                }
                let pix = (next / spp as u64) as u32;
                let si = unit.sample_start + (next % spp as u64) as u32;
                next += 1;
                let (x, y) = (unit.x0 + pix % uw, unit.y0 + pix / uw);
                let pixel = y as u64 * settings.width as u64 + x as u64;
                let s = Sampler::new(settings.seed, pixel, si);
                let (jx, jy) = s.point_2d(0);
                let (org, dir) = rays.ray(x as f32 + jx, y as f32 + jy);
                let lu = s.point_4d_tail(0);
                w.state[i] = State::Tracing;
                set(&mut w.o, i, org);
                set(&mut w.d, i, dir);
                set(&mut w.beta, i, Vec3A::ONE);
                set(&mut w.l, i, Vec3A::ZERO);
                w.prev_pdf[i] = 0.0;
                w.prev_delta[i] = true;
                w.light_u[0][i] = lu.0;
                w.light_u[1][i] = lu.1;
                w.depth[i] = 0;
                w.seed[i] = lanes::pixel_seed(settings.seed, pixel);
                w.index[i] = si;
                w.pixel[i] = pix;
                w.pending[i] = false;
            }
            if w.state.iter().all(|s| *s == State::Empty) {
                break;
            }
            // Trace, one ray at a time.
            for i in 0..W {
                w.done[i] = true;
                match w.state[i] {
                    State::Empty => continue,
                    State::LastShadow => {
                        if self.transmittance(v(&w.sh_o, i), v(&w.sh_d, i), w.sh_t[i])
                            != Vec3A::ZERO
                        {
                            let c = v(&w.sh_c, i);
                            let l = v(&w.l, i) + c;
                            set(&mut w.l, i, l);
                        }
                        w.pending[i] = false;
                        continue;
                    }
                    State::Tracing => {}
                }
                w.done[i] = false;
                let (org, dir) = (v(&w.o, i), v(&w.d, i));
                let hit = if w.pending[i] {
                    w.pending[i] = false;
                    let (blocked, hit) = self.shadow_and_trace(
                        (v(&w.sh_o, i), v(&w.sh_d, i), w.sh_t[i]),
                        (org, dir, 0.0),
                    );
                    if !blocked {
                        let l = v(&w.l, i) + v(&w.sh_c, i);
                        set(&mut w.l, i, l);
                    }
                    hit
                } else {
                    self.trace(org, dir, 0.0)
                };
                let Some(Hit { t, u, v: hv, prim }) = hit else {
                    w.prim[i] = NO_HIT;
                    continue;
                };
                w.t[i] = t;
                w.prim[i] = prim;
                w.b1[i] = u;
                w.b2[i] = hv;
                // Gather.
                let s = &self.scene;
                let tri = s.triangles[prim as usize];
                for (k, &vi) in tri.iter().enumerate() {
                    let p = s.positions[vi as usize];
                    let n = s.normals[vi as usize];
                    let (pd, nd) = match k {
                        0 => (&mut w.p0, &mut w.n0),
                        1 => (&mut w.p1, &mut w.n1),
                        _ => (&mut w.p2, &mut w.n2),
                    };
                    for c in 0..3 {
                        pd[c][i] = p[c];
                        nd[c][i] = n[c];
                    }
                }
                let m = &s.materials[s.triangle_materials[prim as usize] as usize];
                for c in 0..3 {
                    w.base[c][i] = m.base_color[c].clamp(0.0, 1.0);
                }
                let li = self.light_of_triangle[prim as usize];
                if li != u32::MAX {
                    let le = lights.le[li as usize];
                    for c in 0..3 {
                        w.em[c][i] = le[c];
                    }
                    w.em_pdf[i] = lights.prob[li as usize] / lights.area[li as usize];
                } else {
                    for c in 0..3 {
                        w.em[c][i] = 0.0;
                    }
                    w.em_pdf[i] = 0.0;
                }
            }
            self.shade_wave(&mut w, &lights, max_vertices);
            // Retire.
            for i in 0..W {
                if w.state[i] == State::Empty || !w.done[i] {
                    continue;
                }
                if w.state[i] == State::Tracing && w.pending[i] {
                    w.state[i] = State::LastShadow;
                    continue;
                }
                let l = v(&w.l, i);
                w.state[i] = State::Empty;
                if !l.is_finite() {
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

    /// Shades every lane that is tracing, in 16-lane operations ([`crate::lanes`]).
    #[inline(always)]
    fn shade_wave(&self, w: &mut Wave, ls: &Lights, max_vertices: u32) {
        use crate::lanes::{F, M, U, V3};
        let zero = F::splat(0.0);
        let one = F::splat(1.0);
        let mut tracing_b = [false; W];
        let mut hit_b = [false; W];
        let mut deep_b = [false; W];
        let mut dims = [0u32; W];
        let mut need_rr = false;
        for i in 0..W {
            tracing_b[i] = w.state[i] == State::Tracing && !w.done[i];
            hit_b[i] = w.prim[i] != NO_HIT;
            deep_b[i] = w.depth[i] < max_vertices;
            dims[i] = CAMERA_DIMS + w.depth[i] * DIMS_PER_BOUNCE;
            need_rr |= tracing_b[i] && w.depth[i] + 1 >= RR_DEPTH;
        }
        let tracing = M::from_bools(&tracing_b);
        let hit = M::from_bools(&hit_b);
        let o = V3::load(&w.o);
        let d = V3::load(&w.d);
        let t = F(w.t);
        let p = o.add(d.scale(t));
        let p0 = V3::load(&w.p0);
        let raw = V3::load(&w.p1).sub(p0).cross(V3::load(&w.p2).sub(p0));
        let len = raw.dot(raw).sqrt();
        let ok = len.gt(zero);
        let ngr = V3::select(ok, raw.div(len), V3::new(zero, zero, one));
        let cosd = ngr.dot(d);
        let front = cosd.lt(zero);
        let sg = front.select(one, F::splat(-1.0));
        let ng = ngr.scale(sg);
        let b1 = F(w.b1);
        let b2 = F(w.b2);
        let b0 = one - b1 - b2;
        let sn = V3::load(&w.n0)
            .scale(b0)
            .add(V3::load(&w.n1).scale(b1))
            .add(V3::load(&w.n2).scale(b2));
        let sl = sn.dot(sn).sqrt();
        let ns = V3::select(sl.gt(zero), sn.div(sl).scale(sg), ng);
        let ns = V3::select(ns.dot(d).ge(zero), ng, ns);
        // Emission, front faces only, weighed by MIS.
        let light_pdf = F(w.em_pdf) * t * t / cosd.abs();
        let prev = F(w.prev_pdf);
        let (a, b) = (prev * prev, light_pdf * light_pdf);
        let ab = a + b;
        let ph = (ab.gt(zero) & ab.is_finite()).select(a / ab, zero);
        let wgt = M::from_bools(&w.prev_delta).select(one, ph);
        let emit = tracing & hit & front;
        let beta = V3::load(&w.beta);
        let l = V3::load(&w.l);
        let l = l.add(V3::select(
            emit,
            beta.mul(V3::load(&w.em)).scale(wgt),
            V3::new(zero, zero, zero),
        ));
        l.store(&mut w.l);
        let active = tracing & hit & M::from_bools(&deep_b);
        for i in 0..W {
            w.done[i] |= tracing.lane(i) && !active.lane(i);
        }
        let (u4, urr) = lanes::point_4d_dims(&w.seed, &w.index, &dims, need_rr);
        // Pick lights: count the bounds at most u1.
        let nl = ls.prob.len();
        let u1 = F(w.light_u[0]);
        let u2 = F(w.light_u[1]);
        w.light_u[0] = u4[2];
        w.light_u[1] = u4[3];
        let mut k = [0u32; W];
        for j in 1..nl {
            let c = ls.cdf[j];
            for i in 0..W {
                k[i] += u32::from(c <= u1.0[i]);
            }
        }
        // Gather the picked lights.
        let mut g = [[0f32; W]; 18];
        for i in 0..W {
            let ki = k[i] as usize;
            let row = &ls.packed[ki];
            for c in 0..18 {
                g[c][i] = row[c];
            }
        }
        let (lo, hi) = (F(g[0]), F(g[1]));
        let sel = hi - lo;
        let ur = ((u1 - lo) / sel).max(zero).min(F::splat(0.99999994));
        let su = ur.sqrt();
        let (lb1, lb2) = (su * (one - u2), su * u2);
        let lb0 = one - lb1 - lb2;
        let c0 = V3::new(F(g[2]), F(g[3]), F(g[4]));
        let c1 = V3::new(F(g[5]), F(g[6]), F(g[7]));
        let c2 = V3::new(F(g[8]), F(g[9]), F(g[10]));
        let ln = V3::new(F(g[11]), F(g[12]), F(g[13]));
        let area = F(g[14]);
        let le = V3::new(F(g[15]), F(g[16]), F(g[17]));
        let q = c0.scale(lb0).add(c1.scale(lb1)).add(c2.scale(lb2));
        let dd = q.sub(p);
        let dist2 = dd.dot(dd);
        let dist = dist2.sqrt();
        let wi = dd.div(dist);
        let cos_l = ln.dot(wi);
        let lpdf = sel * dist2 / (area * cos_l.abs());
        let side = wi.dot(ng);
        let cz = wi.dot(ns);
        let pi_inv = F::splat(PI_INV);
        let bpdf = cz * pi_inv;
        let (a2, b2) = (lpdf * lpdf, bpdf * bpdf);
        let ab = a2 + b2;
        let wl = (ab.gt(zero) & ab.is_finite()).select(a2 / ab, zero);
        let base = V3::load(&w.base);
        let scale = cz * wl / lpdf;
        beta.mul(base.scale(pi_inv)).mul(le).scale(scale).store(&mut w.sh_c);
        let big = p.abs().max_element();
        let eps = F::splat(1e-4) * (one + big);
        let s_eps = side.ge(zero).select(eps, -eps);
        let so = p.add(ng.scale(s_eps));
        let sd = q.sub(so);
        let slen = sd.dot(sd).sqrt();
        so.store(&mut w.sh_o);
        sd.div(slen).store(&mut w.sh_d);
        let big_o = so.abs().max_element();
        let tmax = slen * F::splat(1.0 - 1e-4) - F::splat(1e-4) * (one + big_o);
        w.sh_t = tmax.0;
        let lit = active
            & cos_l.lt(zero)
            & side.gt(zero)
            & cz.gt(zero)
            & dist2.gt(zero)
            & tmax.gt(zero);
        for i in 0..W {
            w.pending[i] = lit.lane(i);
        }
        // The BSDF sample, cosine-weighted, in the frame of `ns`.
        let (x, y, z) = (ns.x, ns.y, ns.z);
        let sign = F::from_bits((z.bits() & U::splat(0x8000_0000)) | one.bits());
        let a = F::splat(-1.0) / (sign + z);
        let bb = x * y * a;
        let tv = V3::new(one + sign * x * x * a, sign * bb, -(sign * x));
        let bv = V3::new(bb, sign + y * y * a, -y);
        let (d1, d2) = (F(u4[0]), F(u4[1]));
        let r = d1.sqrt();
        let (sn, cs) = sin_cos_turns_v(d2);
        let (lx, ly, lz) = (r * cs, r * sn, (one - d1).max(zero).sqrt());
        let nw = tv.scale(lx).add(bv.scale(ly)).add(ns.scale(lz));
        let nside = nw.dot(ng);
        let ok = lz.gt(zero) & nside.gt(zero) & ns.dot(d).lt(zero);
        let nb = beta.mul(base);
        let depth1 = {
            let mut r = [0u32; W];
            for i in 0..W {
                r[i] = w.depth[i] + 1;
            }
            r
        };
        let mut roul = [false; W];
        for i in 0..W {
            roul[i] = depth1[i] >= RR_DEPTH;
        }
        let roulette = M::from_bools(&roul);
        let survive = roulette.select(nb.max_element().sqrt().min(one), one);
        let alive = ok & (!roulette | (survive.gt(zero) & F(urr).lt(survive)));
        let nb = nb.div(survive);
        let alive = alive & nb.max_element().gt(zero);
        let eps2 = nside.ge(zero).select(eps, -eps);
        let no = p.add(ng.scale(eps2));
        let lzpdf = lz * pi_inv;
        V3::select(active, nb, beta).store(&mut w.beta);
        w.prev_pdf = active.select(lzpdf, prev).0;
        V3::select(active, no, o).store(&mut w.o);
        V3::select(active, nw, d).store(&mut w.d);
        for i in 0..W {
            if active.lane(i) {
                w.prev_delta[i] = false;
                w.depth[i] = depth1[i];
                w.done[i] = !alive.lane(i);
            }
        }
    }
}

/// `sin_cos_turns` of 16 lanes, for `t` in [0, 1].
#[inline(always)]
fn sin_cos_turns_v(t: crate::lanes::F) -> (crate::lanes::F, crate::lanes::F) {
    use crate::lanes::{F, U};
    const S: [f32; 4] = [-1.0 / 6.0, 1.0 / 120.0, -1.0 / 5040.0, 1.0 / 362_880.0];
    const C: [f32; 5] = [
        -1.0 / 2.0,
        1.0 / 24.0,
        -1.0 / 720.0,
        1.0 / 40_320.0,
        -1.0 / 3_628_800.0,
    ];
    let t8 = t * F::splat(8.0);
    let wi = t8.to_i32();
    let f = t8 - F::from_i32(wi);
    let octant = wi & U::splat(7);
    let g = (f - F::from_i32(octant & U::splat(1))).abs();
    let a = g * F::splat(std::f32::consts::FRAC_PI_4);
    let a2 = a * a;
    let s = |c: f32| F::splat(c);
    let sin_a = a + a * (a2 * (s(S[0]) + a2 * (s(S[1]) + a2 * (s(S[2]) + a2 * s(S[3])))));
    let cos_a = s(1.0)
        + a2 * (s(C[0]) + a2 * (s(C[1]) + a2 * (s(C[2]) + a2 * (s(C[3]) + a2 * s(C[4])))));
    let odd = ((octant.wrapping_add(U::splat(1))) >> 1) & U::splat(1);
    let swap = U::splat(0).wrapping_add(U::splat(0)) ^ odd.wrapping_mul(u32::MAX);
    let (sb, cb) = (sin_a.bits(), cos_a.bits());
    let notswap = swap ^ U::splat(u32::MAX);
    let x = (sb & notswap) | (cb & swap);
    let y = (cb & notswap) | (sb & swap);
    let sin_sign = (octant >> 2) << 31;
    let cos_sign = ((octant.wrapping_add(U::splat(2)) >> 2) & U::splat(1)) << 31;
    (F::from_bits(x ^ sin_sign), F::from_bits(y ^ cos_sign))
}

