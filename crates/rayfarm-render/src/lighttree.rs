//! A tree over the scene's lights, to choose one by its importance at the shading point
//! rather than by its share of the scene's power (the many-lights method of Conty Estevez and
//! Kulla, "Importance Sampling of Many Lights with Adaptive Tree Splitting", 2018, which
//! pbrt-v4's BVH light sampler and Cycles' light tree follow).
//!
//! Every light with a place (an emissive triangle, a point or spot light) is a leaf with its
//! [`LightBounds`]: a box, a power and a cone of directions it emits into. Each inner node
//! bounds its two children. A light sample walks down from the root, at each node choosing a
//! child in proportion to its [`LightBounds::importance`] at the shading point (near, bright
//! and facing the point counts more), and the probability of a light is the product of the
//! choices on its path, which [`LightTree::pmf`] recomputes from the light's stored path for
//! multiple importance sampling.
//!
//! IO-free and deterministic: the build is sequential with stable partitions, and sampling
//! uses only `+ - * / sqrt` (and the shared `libm` functions at build time), so every node of a
//! farm and every code path builds the same tree and picks the same light.

use crate::math::{cross, DetMath};
use glam::{BVec4A, Vec3A, Vec4};
use std::f32::consts::PI;

/// Importances are kept below this, so that the sum of two stays finite.
const MAX_IMPORTANCE: f32 = 1e30;
/// Sets of at least this many lights build their two halves side by side.
const PARALLEL_MIN: usize = 8192;
/// Sets of more lights than this look for their split along one axis only.
const LARGE_SET: usize = 4096;
/// Buckets per axis when looking for a node's split.
const BUCKETS: usize = 12;
/// From this depth on, nodes split in the middle of their list: the binary tree stays under 64
/// levels, whatever the lights.
const MEDIAN_DEPTH: u32 = 30;
/// A number just below one, the largest `u` may be after rescaling.
const ONE_MINUS: f32 = 1.0 - f32::EPSILON / 2.0;

/// Where a light or a group of lights is, how much it emits and into which directions.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LightBounds {
    pub lo: Vec3A,
    pub hi: Vec3A,
    /// A power-like weight: emitted radiance times area for area lights, intensity times
    /// 4 pi for point and spot lights.
    pub phi: f32,
    /// The axis of the cone holding every emitter's normal (or main direction).
    pub w: Vec3A,
    /// Cosine of that cone's half-angle (-1: every direction).
    pub cos_o: f32,
    /// Cosine of how far from its normal each emitter sends light (0 for area lights: a
    /// hemisphere; a spot light's beam width).
    pub cos_e: f32,
    /// Whether the emitters also send light to the back of `w` (double-sided triangles).
    pub two_sided: bool,
}

/// The square root of each lane in one instruction where there is one (glam's `Vec4::sqrt`
/// takes the four lanes one at a time); IEEE square roots, correctly rounded either way, so the
/// same bits.
#[inline(always)]
fn sqrt4(v: Vec4) -> Vec4 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: SSE is part of every x86-64 CPU (the target's baseline).
        Vec4::from(unsafe { std::arch::x86_64::_mm_sqrt_ps(v.into()) })
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: NEON is part of every AArch64 CPU (the target's baseline).
        Vec4::from(unsafe { std::arch::aarch64::vsqrtq_f32(v.into()) })
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        Vec4::new(v.x.sqrt(), v.y.sqrt(), v.z.sqrt(), v.w.sqrt())
    }
}

fn safe_sqrt(x: f32) -> f32 {
    x.max(0.0).sqrt()
}

/// `cos(max(0, a - b))` from the sines and cosines of `a` and `b` in [0, pi].
fn cos_sub_clamped(sin_a: f32, cos_a: f32, sin_b: f32, cos_b: f32) -> f32 {
    if cos_a > cos_b {
        1.0
    } else {
        cos_a * cos_b + sin_a * sin_b
    }
}

/// `sin(max(0, a - b))` likewise.
fn sin_sub_clamped(sin_a: f32, cos_a: f32, sin_b: f32, cos_b: f32) -> f32 {
    if cos_a > cos_b {
        0.0
    } else {
        sin_a * cos_b - cos_a * sin_b
    }
}

/// The smallest cone (axis, cosine of half-angle) holding both cones, never narrower than
/// either (a bound, not an estimate; widened by a hair against rounding).
fn cone_union(a: (Vec3A, f32), b: (Vec3A, f32)) -> (Vec3A, f32) {
    let theta_a = a.1.clamp(-1.0, 1.0).acos_d();
    let theta_b = b.1.clamp(-1.0, 1.0).acos_d();
    // The angle between the axes from both its sine and cosine: acos alone loses half the
    // digits near 0 and pi.
    let theta_d = cross(a.0, b.0).length().atan2_d(a.0.dot(b.0));
    if (theta_d + theta_b).min(PI) <= theta_a {
        return a;
    }
    if (theta_d + theta_a).min(PI) <= theta_b {
        return b;
    }
    let theta_o = 0.5 * (theta_a + theta_d + theta_b) + 1e-4;
    if theta_o >= PI {
        return (a.0, -1.0);
    }
    let axis = cross(a.0, b.0);
    let len = axis.length();
    if len.is_nan() || len <= 1e-7 {
        return (a.0, -1.0);
    }
    let k = axis / len;
    // Turn a's axis towards b's by theta_o - theta_a (Rodrigues; k is perpendicular to a).
    let (s, c) = (theta_o - theta_a).sin_cos_d();
    let w = a.0 * c + cross(k, a.0) * s;
    (w.normalize_or(a.0), theta_o.cos_d())
}

impl LightBounds {
    /// A one-sided (or `two_sided`) emissive triangle with emitted power weight `phi`.
    pub fn triangle(corners: [Vec3A; 3], normal: Vec3A, phi: f32, two_sided: bool) -> Self {
        LightBounds {
            lo: corners[0].min(corners[1]).min(corners[2]),
            hi: corners[0].max(corners[1]).max(corners[2]),
            phi,
            w: normal,
            cos_o: 1.0,
            cos_e: 0.0,
            two_sided,
        }
    }

    /// A point light of intensity (luminance) `intensity`, emitting every way.
    pub fn point(p: Vec3A, intensity: f32) -> Self {
        LightBounds {
            lo: p,
            hi: p,
            phi: 4.0 * PI * intensity,
            w: Vec3A::Z,
            cos_o: -1.0,
            cos_e: 0.0,
            two_sided: false,
        }
    }

    /// A spot light at `p` shining along `dir` within `outer_cone` radians of it.
    pub fn spot(p: Vec3A, dir: Vec3A, outer_cone: f32, intensity: f32) -> Self {
        LightBounds {
            lo: p,
            hi: p,
            phi: 4.0 * PI * intensity,
            w: dir.normalize_or(Vec3A::Z),
            cos_o: 1.0,
            // A hair wider than the cone, against rounding at its edge.
            cos_e: (outer_cone.clamp(0.0, PI) + 1e-4).min(PI).cos_d(),
            two_sided: false,
        }
    }

    /// Both bounds together.
    pub fn union(&self, b: &LightBounds) -> LightBounds {
        let (w, cos_o) = cone_union((self.w, self.cos_o), (b.w, b.cos_o));
        LightBounds {
            lo: self.lo.min(b.lo),
            hi: self.hi.max(b.hi),
            phi: self.phi + b.phi,
            w,
            cos_o,
            cos_e: self.cos_e.min(b.cos_e),
            two_sided: self.two_sided || b.two_sided,
        }
    }

    fn centroid(&self) -> Vec3A {
        (self.lo + self.hi) * 0.5
    }

    /// How much light these emitters may send to a surface at `p` with geometric normal `n`
    /// (zero: no normal, a point in a medium): power over squared distance, times the most
    /// favourable cosines that the box and cone allow at the emitters and at `p`. Zero only
    /// where no emitter inside can light `p` at all.
    #[inline]
    pub fn importance(&self, p: Vec3A, n: Vec3A) -> f32 {
        // Component by component, in the order `Lanes::importance` computes each lane. The
        // cosines come from dot products with the unnormalised offset divided by its length,
        // and the bounding sphere's sine and cosine both from r2 / dist2: short chains of
        // dependent operations, for this runs several times per light sample.
        let c = self.centroid();
        let r2 = (self.hi - self.lo).length_squared() * 0.25;
        let (dx, dy, dz) = (p.x - c.x, p.y - c.y, p.z - c.z);
        let dist2 = dx * dx + dy * dy + dz * dz;
        let base = self.phi / dist2.max(r2).max(f32::MIN_POSITIVE);
        let len = dist2.sqrt();
        let away = dist2 > 0.0;
        let wd = self.w.x * dx + self.w.y * dy + self.w.z * dz;
        let mut cos_w = if away { wd / len } else { 1.0 };
        if self.two_sided {
            cos_w = cos_w.abs();
        }
        let sin_w = safe_sqrt(1.0 - cos_w * cos_w);
        // The directions from `p` into the box's bounding sphere.
        let q = r2 / dist2;
        let inside = dist2 <= r2;
        let cos_b = if inside { -1.0 } else { safe_sqrt(1.0 - q) };
        let sin_b = if inside { 0.0 } else { q.min(1.0).sqrt() };
        let sin_o = safe_sqrt(1.0 - self.cos_o * self.cos_o);
        let cos_x = cos_sub_clamped(sin_w, cos_w, sin_o, self.cos_o);
        let sin_x = sin_sub_clamped(sin_w, cos_w, sin_o, self.cos_o);
        let cos_p = cos_sub_clamped(sin_x, cos_x, sin_b, cos_b);
        if cos_p <= self.cos_e {
            return 0.0;
        }
        let mut imp = base * cos_p;
        if n != Vec3A::ZERO {
            let nd = n.x * dx + n.y * dy + n.z * dz;
            let cos_i = if away {
                (nd / len).abs()
            } else {
                (n.x * self.w.x + n.y * self.w.y + n.z * self.w.z).abs()
            };
            let sin_i = safe_sqrt(1.0 - cos_i * cos_i);
            imp *= cos_sub_clamped(sin_i, cos_i, sin_b, cos_b);
        }
        if imp > 0.0 {
            imp.min(MAX_IMPORTANCE)
        } else {
            0.0
        }
    }

    /// The build's cost of a node (the surface area orientation heuristic): power times the
    /// solid angle its directions cover times its box's size, `axis_ratio` penalising thin
    /// splits.
    fn cost(&self, axis_ratio: f32) -> f32 {
        let theta_o = self.cos_o.clamp(-1.0, 1.0).acos_d();
        let theta_e = self.cos_e.clamp(-1.0, 1.0).acos_d();
        let theta_w = (theta_o + theta_e).min(PI);
        let sin_o = safe_sqrt(1.0 - self.cos_o * self.cos_o);
        let m_omega = 2.0 * PI * (1.0 - self.cos_o)
            + PI / 2.0
                * (2.0 * theta_w * sin_o
                    - (theta_o - 2.0 * theta_w).cos_d()
                    - 2.0 * theta_o * sin_o
                    + self.cos_o);
        let e = self.hi - self.lo;
        // Surface area, plus a little of the squared diagonal so that flat and thin boxes (a
        // row of point lights) still rank by size.
        let size = 2.0 * (e.x * e.y + e.y * e.z + e.z * e.x) + 0.01 * e.length_squared();
        self.phi * m_omega.max(0.0) * axis_ratio * size
    }
}

/// A node of the binary tree the build makes (collapsed into [`Node`]s after).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Node2 {
    bounds: LightBounds,
    /// Leaf: the light's index. Inner node: the second child's node (the first follows).
    index: u32,
    leaf: bool,
}

/// A child slot of a [`Node`]: a light (`LEAF` set) or another node; `EMPTY` for none.
const LEAF: u32 = 1 << 31;
const EMPTY: u32 = u32::MAX;

/// Four children's bounds side by side, one per lane, so that one pass of vector arithmetic
/// weighs all four (lane by lane the same IEEE operations on every ISA: `+ - * / sqrt`,
/// comparisons and selects). An empty lane has `phi` 0 and `cos_e` 2 and weighs 0.
#[derive(Clone, Copy, Debug)]
struct Lanes {
    cx: Vec4,
    cy: Vec4,
    cz: Vec4,
    /// Squared radius of each box's bounding sphere.
    r2: Vec4,
    wx: Vec4,
    wy: Vec4,
    wz: Vec4,
    cos_o: Vec4,
    sin_o: Vec4,
    cos_e: Vec4,
    phi: Vec4,
    two_sided: BVec4A,
}

impl Lanes {
    fn new(children: &[LightBounds]) -> Lanes {
        let lane = |k: usize, f: &dyn Fn(&LightBounds) -> f32, empty: f32| -> f32 {
            children.get(k).map_or(empty, f)
        };
        let v = |f: &dyn Fn(&LightBounds) -> f32, empty: f32| -> Vec4 {
            Vec4::new(
                lane(0, f, empty),
                lane(1, f, empty),
                lane(2, f, empty),
                lane(3, f, empty),
            )
        };
        let two = |k: usize| children.get(k).is_some_and(|b| b.two_sided);
        Lanes {
            cx: v(&|b| b.centroid().x, 0.0),
            cy: v(&|b| b.centroid().y, 0.0),
            cz: v(&|b| b.centroid().z, 0.0),
            r2: v(&|b| (b.hi - b.lo).length_squared() * 0.25, 0.0),
            wx: v(&|b| b.w.x, 0.0),
            wy: v(&|b| b.w.y, 0.0),
            wz: v(&|b| b.w.z, 1.0),
            cos_o: v(&|b| b.cos_o, 1.0),
            sin_o: v(&|b| safe_sqrt(1.0 - b.cos_o * b.cos_o), 0.0),
            cos_e: v(&|b| b.cos_e, 2.0),
            phi: v(&|b| b.phi, 0.0),
            two_sided: BVec4A::new(two(0), two(1), two(2), two(3)),
        }
    }

    /// [`LightBounds::importance`] of the four children at once: lane for lane the same
    /// operations in the same order (a test compares the bits).
    #[inline(always)]
    fn importance(&self, p: Vec3A, n: Vec3A) -> Vec4 {
        let zero = Vec4::ZERO;
        let one = Vec4::ONE;
        let dx = Vec4::splat(p.x) - self.cx;
        let dy = Vec4::splat(p.y) - self.cy;
        let dz = Vec4::splat(p.z) - self.cz;
        let dist2 = dx * dx + dy * dy + dz * dz;
        let base = self.phi / dist2.max(self.r2).max(Vec4::splat(f32::MIN_POSITIVE));
        let len = sqrt4(dist2);
        let away = dist2.cmpgt(zero);
        let wd = self.wx * dx + self.wy * dy + self.wz * dz;
        let cw = Vec4::select(away, wd / len, one);
        let cos_w = Vec4::select(self.two_sided, cw.abs(), cw);
        let sin_w = sqrt4((one - cos_w * cos_w).max(zero));
        let q = self.r2 / dist2;
        let inside = dist2.cmple(self.r2);
        let cos_b = Vec4::select(inside, Vec4::splat(-1.0), sqrt4((one - q).max(zero)));
        let sin_b = Vec4::select(inside, zero, sqrt4(q.min(one)));
        let inside_o = cos_w.cmpgt(self.cos_o);
        let cos_x = Vec4::select(inside_o, one, cos_w * self.cos_o + sin_w * self.sin_o);
        let sin_x = Vec4::select(inside_o, zero, sin_w * self.cos_o - cos_w * self.sin_o);
        let cos_p = Vec4::select(cos_x.cmpgt(cos_b), one, cos_x * cos_b + sin_x * sin_b);
        let mut imp = Vec4::select(cos_p.cmple(self.cos_e), zero, base * cos_p);
        if n != Vec3A::ZERO {
            let (nx, ny, nz) = (Vec4::splat(n.x), Vec4::splat(n.y), Vec4::splat(n.z));
            let nd = nx * dx + ny * dy + nz * dz;
            let nw = nx * self.wx + ny * self.wy + nz * self.wz;
            let cos_i = Vec4::select(away, nd / len, nw).abs();
            let sin_i = sqrt4((one - cos_i * cos_i).max(zero));
            imp *= Vec4::select(cos_i.cmpgt(cos_b), one, cos_i * cos_b + sin_i * sin_b);
        }
        Vec4::select(imp.cmpgt(zero), imp.min(Vec4::splat(MAX_IMPORTANCE)), zero)
    }
}

/// Children per node of the tree: two [`Lanes`] side by side, weighed as two independent
/// chains of vector operations, which the CPU runs overlapped.
pub const WIDTH: usize = 8;

/// A node of the tree: up to [`WIDTH`] children (lights or nodes).
#[derive(Clone, Copy, Debug)]
struct Node {
    halves: [Lanes; 2],
    child: [u32; WIDTH],
}

impl Node {
    fn new(children: &[(LightBounds, u32)]) -> Node {
        let bounds: Vec<LightBounds> = children.iter().map(|c| c.0).collect();
        let (a, b) = bounds.split_at(bounds.len().min(4));
        Node {
            halves: [Lanes::new(a), Lanes::new(b)],
            child: std::array::from_fn(|k| children.get(k).map_or(EMPTY, |c| c.1)),
        }
    }

    /// The children's importances at (`p`, `n`) and their sum (in one fixed order); None
    /// when none can light the point. A child's probability is its importance over the sum.
    #[inline(always)]
    fn weights(&self, p: Vec3A, n: Vec3A) -> Option<([f32; WIDTH], f32)> {
        let a = self.halves[0].importance(p, n).to_array();
        let b = self.halves[1].importance(p, n).to_array();
        let total = ((a[0] + a[1]) + (a[2] + a[3])) + ((b[0] + b[1]) + (b[2] + b[3]));
        if total > 0.0 {
            Some(([a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]], total))
        } else {
            None
        }
    }
}

/// The tree (see the module documentation): each node weighs up to [`WIDTH`] children in one
/// pass of vector arithmetic; it is collapsed from the binary tree the build makes.
#[derive(Clone, Debug)]
pub struct LightTree {
    nodes: Vec<Node>,
    /// Where each light is: its node times 8 plus its lane.
    leaf_at: Vec<u32>,
    /// Where each node is in its parent (node times 8 plus lane); `NO_PARENT` for the root.
    up: Vec<u32>,
}

const NO_PARENT: u32 = u32::MAX;
/// Levels a path can have: the binary tree has fewer than `MEDIAN_DEPTH` + 32, and collapsing
/// never adds any.
const MAX_LEVELS: usize = 64;

impl LightTree {
    /// Builds the tree over `lights` (each with a positive, finite `phi`); light `i` of a
    /// sample is `lights[i]`. None without lights.
    pub fn build(lights: &[LightBounds]) -> Option<LightTree> {
        if lights.is_empty() || lights.len() >= LEAF as usize {
            return None;
        }
        let mut ids: Vec<u32> = (0..lights.len() as u32).collect();
        let binary = build_subtree(lights, &mut ids, 0, PARALLEL_MIN);
        let mut tree = LightTree {
            nodes: Vec::with_capacity(lights.len() / (WIDTH - 1) + 1),
            leaf_at: vec![0; lights.len()],
            up: Vec::with_capacity(lights.len() / (WIDTH - 1) + 1),
        };
        let root = &binary[0];
        if root.leaf {
            tree.nodes
                .push(Node::new(&[(root.bounds, root.index | LEAF)]));
            tree.up.push(NO_PARENT);
        } else {
            tree.collapse(&binary, 0, NO_PARENT);
        }
        Some(tree)
    }

    /// Makes the node of binary inner node `i` and those below it; returns its index. Its
    /// children are `i`'s two, each inner one of them opened into its own two (the most
    /// powerful first, ties to the first) while there is room.
    fn collapse(&mut self, binary: &[Node2], i: usize, parent: u32) -> u32 {
        let mut lanes: Vec<usize> = vec![i + 1, binary[i].index as usize];
        while lanes.len() < WIDTH {
            let mut open: Option<usize> = None;
            for (j, &c) in lanes.iter().enumerate() {
                if !binary[c].leaf
                    && open.is_none_or(|o| binary[c].bounds.phi > binary[lanes[o]].bounds.phi)
                {
                    open = Some(j);
                }
            }
            let Some(j) = open else { break };
            let c = lanes[j];
            lanes[j] = c + 1;
            lanes.insert(j + 1, binary[c].index as usize);
        }
        let at = self.nodes.len();
        self.nodes.push(Node::new(&[]));
        self.up.push(parent);
        let mut children = Vec::with_capacity(WIDTH);
        for (k, &c) in lanes.iter().enumerate() {
            let here = (at * WIDTH + k) as u32;
            let slot = if binary[c].leaf {
                self.leaf_at[binary[c].index as usize] = here;
                binary[c].index | LEAF
            } else {
                self.collapse(binary, c, here)
            };
            children.push((binary[c].bounds, slot));
        }
        self.nodes[at] = Node::new(&children);
        at as u32
    }

    /// Picks a light for the point `p` with geometric normal `n` (zero for none) with `u` in
    /// [0, 1): (light, its probability, `u` rescaled to [0, 1) within the choice, so that it
    /// can go on as the light's own coordinate). None when no light can reach `p`.
    #[inline]
    pub fn sample(&self, p: Vec3A, n: Vec3A, mut u: f32) -> Option<(usize, f32, f32)> {
        let mut i = 0usize;
        let mut pmf = 1.0f32;
        loop {
            let node = &self.nodes[i];
            let (w, total) = node.weights(p, n)?;
            // The first lane whose running sum passes u x total; rounding can leave it above
            // the last sum, which goes to the last lane with a weight.
            let target = u * total;
            let mut lo = 0.0f32;
            let mut pick = None;
            let mut last = 0;
            for (k, &x) in w.iter().enumerate() {
                if x <= 0.0 {
                    continue;
                }
                last = k;
                let hi = lo + x;
                if target < hi {
                    pick = Some((k, lo));
                    break;
                }
                lo = hi;
            }
            let (k, lo) = pick.unwrap_or((last, lo - w[last]));
            u = ((target - lo) / w[k]).clamp(0.0, ONE_MINUS);
            pmf *= w[k] / total;
            let c = node.child[k];
            if c & LEAF != 0 {
                return Some(((c & !LEAF) as usize, pmf, u));
            }
            i = c as usize;
        }
    }

    /// The probability with which [`LightTree::sample`] picks `light` at (`p`, `n`).
    #[inline]
    pub fn pmf(&self, p: Vec3A, n: Vec3A, light: usize) -> f32 {
        // The light's places from its own up to the root's child, then multiplied from the
        // root down, in the order `sample` multiplies them.
        let mut path = [0u32; MAX_LEVELS];
        let mut levels = 0;
        let mut at = self.leaf_at[light];
        loop {
            path[levels] = at;
            levels += 1;
            at = self.up[at as usize / WIDTH];
            if at == NO_PARENT {
                break;
            }
        }
        let mut pmf = 1.0f32;
        for &at in path[..levels].iter().rev() {
            let (node, k) = (at as usize / WIDTH, at as usize % WIDTH);
            let Some((w, total)) = self.nodes[node].weights(p, n) else {
                return 0.0;
            };
            pmf *= w[k] / total;
        }
        pmf
    }

    /// Number of nodes (for tests and statistics).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree has no nodes (never, once built).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Steps from the root to the deepest light.
    pub fn depth(&self) -> u32 {
        fn walk(t: &LightTree, i: usize) -> u32 {
            t.nodes[i]
                .child
                .iter()
                .map(|&c| {
                    if c == EMPTY || c & LEAF != 0 {
                        1
                    } else {
                        1 + walk(t, c as usize)
                    }
                })
                .max()
                .unwrap_or(0)
        }
        walk(self, 0)
    }
}

/// The binary tree over `ids` (node 0 its root), the two halves of sets of `parallel_min`
/// lights or more built side by side on the thread pool and joined: the same nodes as
/// [`build_node`] makes alone (tested), in the same order.
fn build_subtree(
    lights: &[LightBounds],
    ids: &mut [u32],
    depth: u32,
    parallel_min: usize,
) -> Vec<Node2> {
    if ids.len() < parallel_min.max(2) {
        let mut nodes = Vec::with_capacity(2 * ids.len() - 1);
        let mut scratch = Vec::with_capacity(ids.len());
        build_node(&mut nodes, lights, ids, &mut scratch, depth);
        return nodes;
    }
    let mid = if depth < MEDIAN_DEPTH {
        split(lights, ids, &mut Vec::with_capacity(ids.len()))
    } else {
        None
    }
    .unwrap_or(ids.len() / 2);
    let (first, second) = ids.split_at_mut(mid);
    let (a, b) = rayon::join(
        || build_subtree(lights, first, depth + 1, parallel_min),
        || build_subtree(lights, second, depth + 1, parallel_min),
    );
    let shifted = |n: &Node2, by: usize| -> Node2 {
        if n.leaf {
            *n
        } else {
            Node2 {
                index: n.index + by as u32,
                ..*n
            }
        }
    };
    let mut nodes = Vec::with_capacity(1 + a.len() + b.len());
    nodes.push(Node2 {
        bounds: a[0].bounds.union(&b[0].bounds),
        index: 1 + a.len() as u32,
        leaf: false,
    });
    nodes.extend(a.iter().map(|n| shifted(n, 1)));
    nodes.extend(b.iter().map(|n| shifted(n, 1 + a.len())));
    nodes
}

/// Builds the binary tree over `ids` into `nodes` (depth first, the first child right after
/// its parent); returns the bounds of its root.
fn build_node(
    nodes: &mut Vec<Node2>,
    lights: &[LightBounds],
    ids: &mut [u32],
    scratch: &mut Vec<u32>,
    depth: u32,
) -> LightBounds {
    let at = nodes.len();
    if let [only] = ids {
        let bounds = lights[*only as usize];
        nodes.push(Node2 {
            bounds,
            index: *only,
            leaf: true,
        });
        return bounds;
    }
    // A placeholder, filled in once both children are built.
    nodes.push(Node2 {
        bounds: lights[ids[0] as usize],
        index: 0,
        leaf: false,
    });
    let mid = if depth < MEDIAN_DEPTH {
        split(lights, ids, scratch)
    } else {
        None
    }
    .unwrap_or(ids.len() / 2);
    let (first, second) = ids.split_at_mut(mid);
    let a = build_node(nodes, lights, first, scratch, depth + 1);
    let second_at = nodes.len() as u32;
    let b = build_node(nodes, lights, second, scratch, depth + 1);
    nodes[at] = Node2 {
        bounds: a.union(&b),
        index: second_at,
        leaf: false,
    };
    nodes[at].bounds
}

/// Where to cut `ids` (reordering it, stably, so that the first part comes first): the bucket
/// boundary of least cost over the three axes. None when every centroid is the same point.
fn split(lights: &[LightBounds], ids: &mut [u32], scratch: &mut Vec<u32>) -> Option<usize> {
    let mut clo = Vec3A::splat(f32::INFINITY);
    let mut chi = Vec3A::splat(f32::NEG_INFINITY);
    let mut lo = Vec3A::splat(f32::INFINITY);
    let mut hi = Vec3A::splat(f32::NEG_INFINITY);
    for &i in ids.iter() {
        let l = &lights[i as usize];
        let c = l.centroid();
        clo = clo.min(c);
        chi = chi.max(c);
        lo = lo.min(l.lo);
        hi = hi.max(l.hi);
    }
    let extent = hi - lo;
    let max_extent = extent.max_element();
    let bucket_of = |c: f32, dim: usize| -> usize {
        let span = chi[dim] - clo[dim];
        let b = ((c - clo[dim]) / span * BUCKETS as f32) as usize;
        b.min(BUCKETS - 1)
    };
    // (cost, axis, last bucket of the first part)
    let mut best: Option<(f32, usize, usize)> = None;
    // Large sets try only the axis along which their centres spread most: a third of the
    // work where the build spends most of it (200,000 emissive triangles: 0.65 -> 0.3 s).
    let spread = chi - clo;
    let only = (ids.len() > LARGE_SET).then(|| {
        if spread.x >= spread.y && spread.x >= spread.z {
            0
        } else if spread.y >= spread.z {
            1
        } else {
            2
        }
    });
    for dim in 0..3 {
        if chi[dim].is_nan() || chi[dim] <= clo[dim] || only.is_some_and(|o| o != dim) {
            continue;
        }
        let mut buckets: [Option<LightBounds>; BUCKETS] = [None; BUCKETS];
        for &i in ids.iter() {
            let l = &lights[i as usize];
            let b = bucket_of(l.centroid()[dim], dim);
            buckets[b] = Some(match &buckets[b] {
                Some(x) => x.union(l),
                None => *l,
            });
        }
        let ratio = if extent[dim] > 0.0 {
            max_extent / extent[dim]
        } else {
            1.0
        };
        // Costs of everything above each boundary, then below it.
        let mut above = [0.0f32; BUCKETS];
        let mut acc: Option<LightBounds> = None;
        for k in (1..BUCKETS).rev() {
            if let Some(b) = &buckets[k] {
                acc = Some(match acc {
                    Some(a) => b.union(&a),
                    None => *b,
                });
            }
            above[k] = acc.map_or(f32::NAN, |a| a.cost(ratio));
        }
        let mut acc: Option<LightBounds> = None;
        for k in 0..BUCKETS - 1 {
            if let Some(b) = &buckets[k] {
                acc = Some(match acc {
                    Some(a) => a.union(b),
                    None => *b,
                });
            }
            let Some(below) = acc else { continue };
            let cost = below.cost(ratio) + above[k + 1];
            // NaN (nothing above) never wins.
            if cost.is_finite() && best.is_none_or(|(c, _, _)| cost < c) {
                best = Some((cost, dim, k));
            }
        }
    }
    let (_, dim, last) = best?;
    scratch.clear();
    scratch.extend(
        ids.iter()
            .copied()
            .filter(|&i| bucket_of(lights[i as usize].centroid()[dim], dim) <= last),
    );
    let mid = scratch.len();
    scratch.extend(
        ids.iter()
            .copied()
            .filter(|&i| bucket_of(lights[i as usize].centroid()[dim], dim) > last),
    );
    if mid == 0 || mid == ids.len() {
        return None;
    }
    ids.copy_from_slice(scratch);
    Some(mid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::mix64;

    fn rnd(k: u64) -> f32 {
        (mix64(k) >> 40) as f32 / (1u64 << 24) as f32
    }

    fn rvec(k: u64) -> Vec3A {
        Vec3A::new(rnd(3 * k), rnd(3 * k + 1), rnd(3 * k + 2)) * 2.0 - 1.0
    }

    /// A shading point in the lights' cloud and its normal (none when `no_normal`).
    fn point_and_normal(k: u64, no_normal: bool) -> (Vec3A, Vec3A) {
        let n = if no_normal {
            Vec3A::ZERO
        } else {
            rvec(k + 1_000_000).normalize_or(Vec3A::X)
        };
        (rvec(k) * 12.0, n)
    }

    /// A mix of small triangles facing every way (some double-sided), point and spot lights.
    fn lights(n: usize) -> Vec<LightBounds> {
        (0..n as u64)
            .map(|k| {
                let c = rvec(100 + k) * 10.0;
                let phi = 0.1 + 5.0 * rnd(7000 + k);
                match k % 5 {
                    3 => LightBounds::point(c, phi),
                    4 => LightBounds::spot(c, rvec(900 + k), 0.3 + rnd(50 + k), phi),
                    _ => {
                        let t = [c, c + rvec(200 + k) * 0.3, c + rvec(300 + k) * 0.3];
                        let nrm = cross(t[1] - t[0], t[2] - t[0]).normalize_or(Vec3A::Z);
                        LightBounds::triangle(t, nrm, phi, k % 5 == 2)
                    }
                }
            })
            .collect()
    }

    #[test]
    fn the_pmf_is_the_samples_probability_and_sums_to_one() {
        let ls = lights(300);
        let tree = LightTree::build(&ls).unwrap();
        for k in 0..200u64 {
            let (p, n) = point_and_normal(10_000 + k, k % 3 == 0);
            // Below one where a sample can reach a node none of whose children can light the
            // point (each child's bounds are tighter than the node's); sampling finds no
            // light as often.
            let pmfs: Vec<f32> = (0..ls.len()).map(|i| tree.pmf(p, n, i)).collect();
            let total: f64 = pmfs.iter().map(|&x| x as f64).sum();
            assert!(total < 1.0 + 1e-4, "point {k}: pmfs sum to {total}");
            let m = 4096;
            let found = (0..m)
                .filter(|j| tree.sample(p, n, (*j as f32 + 0.5) / m as f32).is_some())
                .count();
            assert!(
                (found as f64 / m as f64 - total).abs() < 5e-3,
                "point {k}: {found} of {m} samples found a light, pmfs sum to {total}"
            );
            // A light of probability 0 cannot reach the point: its own bounds say so.
            for (i, &x) in pmfs.iter().enumerate() {
                if x == 0.0 {
                    assert_eq!(ls[i].importance(p, n), 0.0, "point {k}, light {i}");
                }
            }
            for j in 0..20u64 {
                let u = rnd(30_000 + 20 * k + j);
                if let Some((i, pmf, v)) = tree.sample(p, n, u) {
                    assert_eq!(pmf, tree.pmf(p, n, i), "point {k}, u {u}");
                    assert!(pmf > 0.0 && (0.0..1.0).contains(&v));
                }
            }
        }
    }

    #[test]
    fn four_lanes_weigh_as_the_scalar_bounds_bit_for_bit() {
        let ls = lights(400);
        for chunk in ls.chunks(4) {
            let node = Lanes::new(chunk);
            for k in 0..50u64 {
                let (p, n) = point_and_normal(50_000 + k, k % 4 == 0);
                let lanes = node.importance(p, n).to_array();
                for (j, b) in chunk.iter().enumerate() {
                    assert_eq!(lanes[j].to_bits(), b.importance(p, n).to_bits());
                }
                for lane in &lanes[chunk.len()..] {
                    assert_eq!(*lane, 0.0, "an empty lane weighs nothing");
                }
            }
            // At a light's own centre (no direction to it) too.
            let at = chunk[0].centroid();
            assert_eq!(
                node.importance(at, Vec3A::Y).to_array()[0].to_bits(),
                chunk[0].importance(at, Vec3A::Y).to_bits()
            );
        }
    }

    #[test]
    fn the_build_on_many_threads_is_the_build_on_one() {
        let ls = lights(3000);
        let sequential = {
            let mut ids: Vec<u32> = (0..ls.len() as u32).collect();
            let mut nodes = Vec::new();
            build_node(&mut nodes, &ls, &mut ids, &mut Vec::new(), 0);
            nodes
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for parallel_min in [2, 7, 100] {
            let mut ids: Vec<u32> = (0..ls.len() as u32).collect();
            let joined = pool.install(|| build_subtree(&ls, &mut ids, 0, parallel_min));
            assert!(joined == sequential, "parallel_min {parallel_min}");
        }
    }

    #[test]
    fn samples_follow_the_pmf() {
        let ls = lights(12);
        let tree = LightTree::build(&ls).unwrap();
        let (p, n) = (Vec3A::new(1.0, 2.0, -3.0), Vec3A::Y);
        let m = 200_000;
        let mut counts = vec![0u32; ls.len()];
        for j in 0..m {
            let u = (j as f32 + 0.5) / m as f32;
            if let Some((i, _, _)) = tree.sample(p, n, u) {
                counts[i] += 1;
            }
        }
        for (i, &c) in counts.iter().enumerate() {
            let want = tree.pmf(p, n, i) as f64;
            let got = c as f64 / m as f64;
            assert!(
                (got - want).abs() < 1e-3,
                "light {i}: {got} sampled, pmf {want}"
            );
        }
    }

    #[test]
    fn rescaled_u_stays_stratified_within_a_choice() {
        // Two lights: u below the first's share maps onto [0, 1) in order.
        let ls = [
            LightBounds::point(Vec3A::new(0.0, 1.0, 0.0), 1.0),
            LightBounds::point(Vec3A::new(3.0, 1.0, 0.0), 1.0),
        ];
        let tree = LightTree::build(&ls).unwrap();
        let p = Vec3A::ZERO;
        let mut last = -1.0;
        for j in 0..100 {
            let u = j as f32 / 100.0;
            let (i, pmf, v) = tree.sample(p, Vec3A::ZERO, u).unwrap();
            if i == 0 && u < pmf {
                assert!(v > last);
                last = v;
            }
        }
        assert!(last > 0.9);
    }

    #[test]
    fn lights_that_cannot_reach_a_point_are_never_picked() {
        // Two one-sided triangles facing up at y = 0, one far away; a point below sees neither,
        // a point above sees the near one more.
        let tri = |x: f32| {
            let t = [
                Vec3A::new(x, 0.0, 0.0),
                Vec3A::new(x, 0.0, 1.0),
                Vec3A::new(x + 1.0, 0.0, 0.0),
            ];
            LightBounds::triangle(t, Vec3A::Y, 1.0, false)
        };
        let mut ls = vec![tri(0.0), tri(50.0)];
        let tree = LightTree::build(&ls).unwrap();
        let below = Vec3A::new(0.5, -1.0, 0.3);
        assert!(tree.sample(below, Vec3A::ZERO, 0.3).is_none());
        assert_eq!(tree.pmf(below, Vec3A::ZERO, 0), 0.0);
        let above = Vec3A::new(0.5, 1.0, 0.3);
        assert!(tree.pmf(above, Vec3A::Y, 0) > 0.99);
        // Double-sided, the point below sees it too.
        ls[0].two_sided = true;
        let tree = LightTree::build(&ls).unwrap();
        assert!(tree.pmf(below, Vec3A::ZERO, 0) > 0.99);
        // A spot light pointing away from the point is never chosen; a point light is.
        let ls = [
            LightBounds::spot(Vec3A::ZERO, Vec3A::Y, 0.5, 1.0),
            LightBounds::point(Vec3A::new(0.0, 0.0, 9.0), 1.0),
        ];
        let tree = LightTree::build(&ls).unwrap();
        assert_eq!(tree.pmf(Vec3A::new(0.0, -2.0, 0.0), Vec3A::ZERO, 0), 0.0);
        assert!(tree.pmf(Vec3A::new(0.0, 2.0, 0.0), Vec3A::ZERO, 0) > 0.9);
    }

    #[test]
    fn cone_unions_hold_both_cones() {
        for k in 0..500u64 {
            let a = (rvec(k).normalize_or(Vec3A::X), rnd(40_000 + k) * 2.0 - 1.0);
            let b = (
                rvec(600 + k).normalize_or(Vec3A::Y),
                rnd(41_000 + k) * 2.0 - 1.0,
            );
            let (w, cos_o) = cone_union(a, b);
            for (axis, cos) in [a, b] {
                // Every direction of each cone lies inside: its axis's angle to w plus its
                // half-angle is within the union's half-angle.
                let inside = cross(w, axis).length().atan2_d(w.dot(axis)) + cos.acos_d();
                assert!(
                    inside <= cos_o.acos_d() + 1e-4 || cos_o == -1.0,
                    "cone {k}: {inside} > {}",
                    cos_o.acos_d()
                );
            }
        }
    }

    #[test]
    fn degenerate_sets_build_shallow_trees_the_same_every_time() {
        // One light: a root with one lane, picked with probability 1.
        let one = LightTree::build(&[LightBounds::point(Vec3A::ONE, 1.0)]).unwrap();
        assert_eq!(one.pmf(Vec3A::ZERO, Vec3A::Y, 0), 1.0);
        assert_eq!(one.sample(Vec3A::ZERO, Vec3A::Y, 0.7).map(|s| s.0), Some(0));
        // 5000 lights at one point: no split by position, the middle of the list instead.
        let same = vec![LightBounds::point(Vec3A::ONE, 1.0); 5000];
        let tree = LightTree::build(&same).unwrap();
        assert!(tree.depth() <= 7, "depth {}", tree.depth());
        // A row of point lights (a flat, thin box) splits by position.
        let row: Vec<_> = (0..1000)
            .map(|i| LightBounds::point(Vec3A::new(i as f32, 0.0, 0.0), 1.0))
            .collect();
        let tree = LightTree::build(&row).unwrap();
        assert!(tree.depth() < 20, "depth {}", tree.depth());
        let p = Vec3A::new(10.0, 1.0, 0.0);
        let near = tree.pmf(p, Vec3A::ZERO, 10);
        let far = tree.pmf(p, Vec3A::ZERO, 900);
        assert!(near > 10.0 * far, "near {near}, far {far}");
        // The same input, the same tree.
        let ls = lights(777);
        let (a, b) = (
            LightTree::build(&ls).unwrap(),
            LightTree::build(&ls).unwrap(),
        );
        assert_eq!((&a.leaf_at, &a.up), (&b.leaf_at, &b.up));
        assert!(a.depth() < 32);
    }
}
