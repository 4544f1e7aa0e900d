//! Bounding volume hierarchy over triangles: obvhs's compressed 8-wide BVH (CWBVH), built by PLOC
//! with reinsertion, traversed with obvhs's `traverse!` loop and a node test of our own.
//!
//! Why obvhs and not our own binned-SAH BVH2: it traces 1.5–3x faster (BENCHMARKS.md, "BVH").
//! What we add on top of obvhs:
//! - Determinism. The build runs on a private one-thread rayon pool, so the tree is the same
//!   whatever the caller's pool size or the machine's core count: obvhs's parallel radix sorts
//!   (rdst) pick tile sizes by thread count, and it sorts keys with ties, which could then come
//!   out in a different order. obvhs's `parallel` feature is always on (workspace Cargo.toml),
//!   because its serial code path sorts differently: a build must not depend on which other
//!   crates are compiled alongside.
//! - Robustness on ties: groups of identical boxes and padded boxes (see [`JITTER`]) keep
//!   PLOC from going quadratic on copies of a triangle and rows of equal triangles.
//! - A node test that keeps child boxes the ray is inside of at t = 0. obvhs's own test
//!   (`CwBvhNode::intersect_ray`) drops boxes the ray leaves before t = 1e-4 (absolute, in scene
//!   units) and so misses hits closer than that, e.g. shadow rays from points near a blocker.
//!   Ours also takes the box slab order from the sign of the inverse direction it uses, so a
//!   direction component of -0.0 cannot flip a slab.
//! - Triangles are stored in BVH order as (v0, e1, e2) for our Möller–Trumbore test; the hit
//!   reports the original triangle index and the barycentrics of v1 and v2.

use crate::isa::Isa;
use crate::math::cross;
use glam::{UVec2, Vec3A, Vec4};
use obvhs::aabb::Aabb;
use obvhs::bvh2::node::Bvh2Node;
use obvhs::bvh2::reinsertion::ReinsertionOptimizer;
use obvhs::bvh2::Bvh2;
use obvhs::cwbvh::bvh2_to_cwbvh::bvh2_to_cwbvh;
use obvhs::cwbvh::node::CwBvhNode;
use obvhs::cwbvh::CwBvh;
use obvhs::ploc::PlocBuilder;
use obvhs::BvhBuildParams;

/// obvhs's "medium" preset: PLOC with search distance 14 (1 for the first 3 passes), reinsertion
/// of 5% of the nodes, at most 3 triangles per leaf (the CWBVH maximum).
const BUILD_PARAMS: BvhBuildParams = BvhBuildParams::medium_build();

/// Boxes handed to the builder are padded by up to this fraction of the largest coordinate
/// magnitude or extent of the triangle (about 8 ulps), pseudo-randomly per triangle.
///
/// obvhs's PLOC pairs two clusters only when each is the other's cheapest neighbour, and breaks
/// cost ties towards the later one. Where neighbour costs tie (a row of evenly spaced equal
/// triangles, as in fences, stairs or tiles) every cluster picks its right neighbour and one
/// pair merges per pass: the build goes quadratic (100k such triangles took 3 minutes) and the
/// tree degenerates into a chain. Distinct pads make the costs distinct, so the pairing looks
/// like that of irregular geometry (the 100k then take 0.1 s). Padding only grows boxes, so no
/// hit can be lost, and the pads are a function of the triangle index, so the tree stays
/// deterministic. Pads cannot separate copies of one box (the union of two padded copies is the
/// larger one, so costs still tie); [`Groups`] handles those.
const JITTER: f32 = 1.0 / (1 << 20) as f32;
/// Smallest pad scale, so that boxes of triangles at the origin get distinct (non-underflowing)
/// areas too.
const MIN_JITTER: f32 = 1e-18;
/// Stack of the build thread.
const BUILD_STACK: usize = 256 << 20;

/// A hash of `i` in `[0, 1)`.
fn unit_hash(i: u32) -> f32 {
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
}

/// A triangle prepared for intersection.
#[derive(Clone, Copy, Debug)]
pub struct Tri {
    pub v0: Vec3A,
    pub e1: Vec3A,
    pub e2: Vec3A,
}

/// A ray hit: distance, barycentrics of v1 and v2, and the original triangle index.
#[derive(Clone, Copy, Debug)]
pub struct Hit {
    pub t: f32,
    pub u: f32,
    pub v: f32,
    pub prim: u32,
}

pub struct Bvh {
    /// The tree; `cwbvh.primitive_indices[i]` is the original index of `tris[i]`.
    pub cwbvh: CwBvh,
    /// Triangles in the order of `cwbvh.primitive_indices`, so leaves index them directly.
    pub tris: Vec<Tri>,
    /// The traversal's code path ([`crate::isa`]); every path finds the same hits, bit for bit.
    isa: Isa,
}

/// Triangles with bit-identical boxes, which obvhs's PLOC would chain (see [`JITTER`]; 10k
/// copies of one triangle took 4 s, 100k overflowed the stack): the builder sees one box per
/// group, and [`Groups::expand`] hangs a balanced subtree with the group's triangles where that
/// box's leaf is.
struct Groups {
    /// Triangle indices, grouped, ascending within a group.
    members: Vec<u32>,
    /// (start in `members`, length) of each group, ordered by the group's first triangle; the
    /// builder's primitive `k` is group `k`.
    groups: Vec<(u32, u32)>,
}

impl Groups {
    fn of(boxes: &[Aabb]) -> Groups {
        use rayon::prelude::*;
        let key = |b: &Aabb| {
            let (lo, hi) = (b.min.to_array(), b.max.to_array());
            [lo, hi].map(|v| v.map(f32::to_bits))
        };
        // An FNV-1a-style hash of the box's bits: equal boxes sort next to each other, ascending
        // by index. (Two boxes with equal hashes may interleave; a group is a run of equal
        // boxes, so that only splits a group.)
        let mut order: Vec<(u64, u32)> = boxes
            .par_iter()
            .enumerate()
            .map(|(i, b)| {
                let h = key(b)
                    .as_flattened()
                    .iter()
                    .fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
                        (h ^ x as u64).wrapping_mul(0x0000_0100_0000_01b3)
                    });
                (h, i as u32)
            })
            .collect();
        // The (hash, index) pairs are unique, so the result does not depend on the pool.
        order.par_sort_unstable();
        let mut groups: Vec<(u32, u32)> = Vec::new();
        for k in 0..order.len() {
            let (h, i) = order[k];
            let joins = k > 0 && order[k - 1].0 == h && {
                key(&boxes[order[k - 1].1 as usize]) == key(&boxes[i as usize])
            };
            match groups.last_mut() {
                Some(g) if joins => g.1 += 1,
                _ => groups.push((k as u32, 1)),
            }
        }
        if groups.len() == order.len() {
            // No duplicates (the usual case): one group per triangle, in triangle order.
            return Groups {
                members: (0..order.len() as u32).collect(),
                groups: (0..order.len() as u32).map(|i| (i, 1)).collect(),
            };
        }
        let members: Vec<u32> = order.iter().map(|&(_, i)| i).collect();
        groups.par_sort_unstable_by_key(|&(start, _)| members[start as usize]);
        Groups { members, groups }
    }

    /// Index of the first triangle of group `k`.
    fn first(&self, k: usize) -> u32 {
        self.members[self.groups[k].0 as usize]
    }

    fn group(&self, k: usize) -> &[u32] {
        let (start, len) = self.groups[k];
        &self.members[start as usize..(start + len) as usize]
    }

    /// Turns the builder's primitive indices (group numbers) into triangle indices, replacing the
    /// leaf of every group of several triangles by a balanced subtree with one leaf per triangle
    /// (and that leaf's box).
    fn expand(&self, bvh2: &mut Bvh2) {
        for k in 0..bvh2.primitive_indices.len() {
            bvh2.primitive_indices[k] = self.first(bvh2.primitive_indices[k] as usize);
        }
        if self.groups.len() == self.members.len() {
            return;
        }
        fn hang(bvh2: &mut Bvh2, at: usize, tris: &[u32], aabb: Aabb) {
            if let [tri] = tris {
                bvh2.nodes[at] = Bvh2Node::new(aabb, 1, bvh2.primitive_indices.len() as u32);
                bvh2.primitive_indices.push(*tri);
                return;
            }
            let children = bvh2.nodes.len();
            bvh2.nodes.push(Bvh2Node::default());
            bvh2.nodes.push(Bvh2Node::default());
            bvh2.nodes[at] = Bvh2Node::new(aabb, 0, children as u32);
            let (l, r) = tris.split_at(tris.len() / 2);
            hang(bvh2, children, l, aabb);
            hang(bvh2, children + 1, r, aabb);
        }
        let mut extra_depth = 0;
        for at in 0..bvh2.nodes.len() {
            let node = bvh2.nodes[at];
            if node.is_leaf() {
                // The builder's leaves hold one primitive, whose slot is its group number.
                let tris = self.group(node.first_index as usize);
                if tris.len() > 1 {
                    hang(bvh2, at, tris, *node.aabb());
                    extra_depth = extra_depth.max(tris.len().ilog2() as usize + 1);
                }
            }
        }
        // Caches that no longer match the tree.
        bvh2.parents.clear();
        bvh2.primitives_to_nodes.clear();
        bvh2.children_are_ordered_after_parents = false;
        bvh2.max_depth += extra_depth;
    }
}

/// Per-ray values of the node test.
struct RayData {
    org: Vec3A,
    inv: Vec3A,
    /// Whether each component of `inv` is negative: then the slab is entered at the box max.
    neg: [bool; 3],
}

impl Bvh {
    /// Builds over triangles given as corner positions (which should be finite; a triangle with
    /// a non-finite corner gets an empty box at the origin, so the tree stays valid).
    ///
    /// The result depends only on `triangles`, not on the calling thread pool.
    pub fn build(triangles: &[[Vec3A; 3]]) -> Bvh {
        use rayon::prelude::*;
        if triangles.is_empty() {
            return Bvh {
                cwbvh: CwBvh::default(),
                tris: Vec::new(),
                isa: crate::isa::selected(),
            };
        }
        let boxes: Vec<Aabb> = triangles
            .par_iter()
            .map(|&[a, b, c]| {
                let (lo, hi) = (a.min(b).min(c), a.max(b).max(c));
                if lo.is_finite() && hi.is_finite() {
                    Aabb::new(lo, hi)
                } else {
                    Aabb::new(Vec3A::ZERO, Vec3A::ZERO)
                }
            })
            .collect();
        let groups = Groups::of(&boxes);
        // The builder's input: one padded box per group, in order of the group's first triangle.
        let aabbs: Vec<Aabb> = (0..groups.groups.len())
            .into_par_iter()
            .map(|k| {
                let i = groups.first(k);
                let b = boxes[i as usize];
                let size = b.min.abs().max(b.max.abs()).max(b.max - b.min);
                let pad = (size.max_element() * JITTER).max(MIN_JITTER) * unit_hash(i);
                Aabb::new(b.min - pad, b.max + pad)
            })
            .collect();
        drop(boxes);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .thread_name(|_| "rayfarm-bvh-build".into())
            // obvhs converts the tree recursively; a deep tree must not overflow the stack.
            // Only the pages used are committed.
            .stack_size(BUILD_STACK)
            .build()
            .expect("spawning the BVH build thread");
        let cwbvh = pool.install(|| {
            let p = BUILD_PARAMS;
            let mut bvh2 = PlocBuilder::with_capacity(aabbs.len()).build(
                p.ploc_search_distance,
                &aabbs,
                (0..aabbs.len() as u32).collect(),
                p.sort_precision,
                p.search_depth_threshold,
            );
            ReinsertionOptimizer::default().run(&mut bvh2, p.reinsertion_batch_ratio, None);
            groups.expand(&mut bvh2);
            bvh2_to_cwbvh(&bvh2, p.max_prims_per_leaf.clamp(1, 3), true, false)
        });
        let tris = cwbvh
            .primitive_indices
            .par_iter()
            .map(|&i| {
                let [a, b, c] = triangles[i as usize];
                Tri {
                    v0: a,
                    e1: b - a,
                    e2: c - a,
                }
            })
            .collect();
        Bvh {
            cwbvh,
            tris,
            isa: crate::isa::selected(),
        }
    }

    /// Closest hit in `(0, tmax)`. `filter(prim, u, v)` is asked about triangles for which
    /// `needs_filter(prim)` is true and returns false to ignore that hit (alpha testing).
    #[inline(always)]
    pub fn intersect(
        &self,
        org: Vec3A,
        dir: Vec3A,
        tmax: f32,
        needs_filter: &impl Fn(u32) -> bool,
        filter: &mut impl FnMut(u32, f32, f32) -> bool,
    ) -> Option<Hit> {
        #[cfg(target_arch = "x86_64")]
        if self.isa == Isa::Avx2 {
            // SAFETY: `isa` is Avx2 only on a CPU with AVX2 (`set_isa`, `isa::selected`).
            return unsafe { self.traverse_avx2::<false>(org, dir, tmax, needs_filter, filter) };
        }
        self.traverse::<false, false>(org, dir, tmax, needs_filter, filter)
    }

    /// Whether anything (accepted by `filter`) lies in `(0, tmax)`.
    #[inline(always)]
    pub fn occluded(
        &self,
        org: Vec3A,
        dir: Vec3A,
        tmax: f32,
        needs_filter: &impl Fn(u32) -> bool,
        filter: &mut impl FnMut(u32, f32, f32) -> bool,
    ) -> bool {
        #[cfg(target_arch = "x86_64")]
        if self.isa == Isa::Avx2 {
            // SAFETY: as in `intersect`.
            return unsafe { self.traverse_avx2::<true>(org, dir, tmax, needs_filter, filter) }
                .is_some();
        }
        self.traverse::<true, false>(org, dir, tmax, needs_filter, filter)
            .is_some()
    }

    /// The code path traversals take.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Makes traversals take `isa`; refused (and nothing changes) when this CPU cannot run it.
    pub fn set_isa(&mut self, isa: Isa) -> Result<(), Isa> {
        if !isa.is_supported() {
            return Err(isa);
        }
        self.isa = isa;
        Ok(())
    }

    /// [`Bvh::traverse`] compiled for AVX2, with the 8-wide node test.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn traverse_avx2<const ANY: bool>(
        &self,
        org: Vec3A,
        dir: Vec3A,
        tmax: f32,
        needs_filter: &impl Fn(u32) -> bool,
        filter: &mut impl FnMut(u32, f32, f32) -> bool,
    ) -> Option<Hit> {
        self.traverse::<ANY, true>(org, dir, tmax, needs_filter, filter)
    }

    /// `WIDE` takes the AVX2 node test: only from `traverse_avx2`.
    #[inline(always)]
    fn traverse<const ANY: bool, const WIDE: bool>(
        &self,
        org: Vec3A,
        dir: Vec3A,
        tmax: f32,
        needs_filter: &impl Fn(u32) -> bool,
        filter: &mut impl FnMut(u32, f32, f32) -> bool,
    ) -> Option<Hit> {
        if self.tris.is_empty() {
            return None;
        }
        let safe = |d: f32| {
            if d.abs() < 1e-30 {
                1e-30f32.copysign(d)
            } else {
                d
            }
        };
        let inv = Vec3A::new(1.0 / safe(dir.x), 1.0 / safe(dir.y), 1.0 / safe(dir.z));
        let ray = RayData {
            org,
            inv,
            neg: [inv.x < 0.0, inv.y < 0.0, inv.z < 0.0],
        };
        let mut best = Hit {
            t: tmax,
            u: 0.0,
            v: 0.0,
            prim: u32::MAX,
        };
        let bvh = &self.cwbvh;
        let mut state = bvh.new_traversal(dir);
        let mut node: &CwBvhNode;
        'traversal: {
            obvhs::traverse!(
                bvh,
                node,
                state,
                node_hits::<WIDE>(node, &ray, best.t, state.oct_inv4),
                {
                    let i = state.primitive_id as usize;
                    // SAFETY: leaves index `primitive_indices`, which `tris` matches in length.
                    let tri = unsafe { self.tris.get_unchecked(i) };
                    if let Some((t, u, v)) = intersect_tri(tri, org, dir, best.t) {
                        let prim = unsafe { *bvh.primitive_indices.get_unchecked(i) };
                        if !needs_filter(prim) || filter(prim, u, v) {
                            best = Hit { t, u, v, prim };
                            if ANY {
                                break 'traversal;
                            }
                        }
                    }
                }
            );
        }
        (best.prim != u32::MAX).then_some(best)
    }
}

#[inline(always)]
fn node_hits<const WIDE: bool>(node: &CwBvhNode, ray: &RayData, tmax: f32, oct_inv4: u32) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if WIDE {
        // SAFETY: WIDE is set only inside `traverse_avx2`, which runs only with AVX2.
        return unsafe { intersect_node_avx2(node, ray, tmax, oct_inv4) };
    }
    intersect_node(node, ray, tmax, oct_inv4)
}

/// The bits of the hit mask of the children in `mask` (bit `j`: child `j` overlaps).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn child_hit_bits(mask: u32, child_bits8: u64, bit_index8: u64) -> u32 {
    // A loop over the set bits measured faster here than a branch-free unrolled one.
    let mut hit_mask = 0u32;
    let mut m = mask;
    while m != 0 {
        let child = m.trailing_zeros();
        m &= m - 1;
        let child_bits = ((child_bits8 >> (child * 8)) as u32) & 0xff;
        let bit_index = ((bit_index8 >> (child * 8)) as u32) & 0xff;
        hit_mask |= child_bits << bit_index;
    }
    hit_mask
}

/// [`intersect_node`] on all 8 children at once: the same IEEE operations per lane, in the same
/// order (multiply, then add; max and min with the same operand order as glam's SSE `Vec4`), so
/// the mask is the same bit for bit.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn intersect_node_avx2(node: &CwBvhNode, ray: &RayData, tmax: f32, oct_inv4: u32) -> u32 {
    use std::arch::x86_64::*;
    let adj_inv = node.compute_extent() * ray.inv;
    let adj_org = (Vec3A::from(node.p) - ray.org) * ray.inv;
    let (child_bits8, bit_index8) = node.get_child_and_index_bits(oct_inv4);
    // 8 quantised planes, widened u8 -> i32 -> f32 (exact).
    let q = |v: &[u8; 8]| {
        // SAFETY: reads exactly the 8 bytes of `v`.
        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(unsafe {
            _mm_loadl_epi64(v.as_ptr() as *const __m128i)
        }))
    };
    let slab = |lo: &[u8; 8], hi: &[u8; 8], neg: bool, i: f32, o: f32| {
        let (near, far) = if neg { (q(hi), q(lo)) } else { (q(lo), q(hi)) };
        let (i, o) = (_mm256_set1_ps(i), _mm256_set1_ps(o));
        (
            _mm256_add_ps(_mm256_mul_ps(near, i), o),
            _mm256_add_ps(_mm256_mul_ps(far, i), o),
        )
    };
    let (x0, x1) = slab(
        &node.child_min_x,
        &node.child_max_x,
        ray.neg[0],
        adj_inv.x,
        adj_org.x,
    );
    let (y0, y1) = slab(
        &node.child_min_y,
        &node.child_max_y,
        ray.neg[1],
        adj_inv.y,
        adj_org.y,
    );
    let (z0, z1) = slab(
        &node.child_min_z,
        &node.child_max_z,
        ray.neg[2],
        adj_inv.z,
        adj_org.z,
    );
    let t0 = _mm256_max_ps(
        _mm256_max_ps(_mm256_max_ps(x0, y0), z0),
        _mm256_setzero_ps(),
    );
    let t1 = _mm256_min_ps(
        _mm256_min_ps(_mm256_min_ps(x1, y1), z1),
        _mm256_set1_ps(tmax),
    );
    let mask = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(t0, t1)) as u32;
    child_hit_bits(mask, child_bits8, bit_index8)
}

/// Which children of `node` the ray overlaps within `[0, tmax]`, as the hit mask obvhs's
/// `traverse!` expects (like `CwBvhNode::intersect_ray`, but from t = 0 instead of t = 1e-4).
#[inline(always)]
fn intersect_node(node: &CwBvhNode, ray: &RayData, tmax: f32, oct_inv4: u32) -> u32 {
    // Child planes are at p + q * e for quantised q in 0..=255; the ray is moved into that grid.
    let adj_inv = node.compute_extent() * ray.inv;
    let adj_org = (Vec3A::from(node.p) - ray.org) * ray.inv;
    let (child_bits8, bit_index8) = node.get_child_and_index_bits(oct_inv4);
    let (ix, iy, iz) = (
        Vec4::splat(adj_inv.x),
        Vec4::splat(adj_inv.y),
        Vec4::splat(adj_inv.z),
    );
    let (ox, oy, oz) = (
        Vec4::splat(adj_org.x),
        Vec4::splat(adj_org.y),
        Vec4::splat(adj_org.z),
    );
    let tmax4 = Vec4::splat(tmax);
    let mut hit_mask = 0u32;
    for half in 0..2 {
        let q = |v: &[u8; 8]| {
            let k = half * 4;
            Vec4::new(
                v[k] as f32,
                v[k + 1] as f32,
                v[k + 2] as f32,
                v[k + 3] as f32,
            )
        };
        let slab = |lo: &[u8; 8], hi: &[u8; 8], neg: bool, i: Vec4, o: Vec4| {
            let (near, far) = if neg { (q(hi), q(lo)) } else { (q(lo), q(hi)) };
            (near * i + o, far * i + o)
        };
        let (x0, x1) = slab(&node.child_min_x, &node.child_max_x, ray.neg[0], ix, ox);
        let (y0, y1) = slab(&node.child_min_y, &node.child_max_y, ray.neg[1], iy, oy);
        let (z0, z1) = slab(&node.child_min_z, &node.child_max_z, ray.neg[2], iz, oz);
        let t0 = x0.max(y0).max(z0).max(Vec4::ZERO);
        let t1 = x1.min(y1).min(z1).min(tmax4);
        // Unrolled per half with constant shifts: faster here than `child_hit_bits`'s loop.
        let mask = t0.cmple(t1).bitmask();
        for j in 0..4 {
            if mask & (1 << j) != 0 {
                let child = half * 4 + j;
                let child_bits = ((child_bits8 >> (child * 8)) as u32) & 0xff;
                let bit_index = ((bit_index8 >> (child * 8)) as u32) & 0xff;
                hit_mask |= child_bits << bit_index;
            }
        }
    }
    hit_mask
}

/// Möller–Trumbore; returns (t, u, v) with `1e-9 < t < tmax`.
#[inline(always)]
pub fn intersect_tri(tri: &Tri, org: Vec3A, dir: Vec3A, tmax: f32) -> Option<(f32, f32, f32)> {
    let p = cross(dir, tri.e2);
    let det = tri.e1.dot(p);
    if det.abs() < 1e-20 {
        return None;
    }
    let inv_det = 1.0 / det;
    let s = org - tri.v0;
    let u = s.dot(p) * inv_det;
    if !(0.0..=1.0).contains(&u) {
        return None;
    }
    let q = cross(s, tri.e1);
    let v = dir.dot(q) * inv_det;
    if v < 0.0 || u + v > 1.0 {
        return None;
    }
    let t = tri.e2.dot(q) * inv_det;
    if t > 1e-9 && t < tmax {
        Some((t, u, v))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::disallowed_methods)] // test rays need not be the same bits everywhere
    use super::*;

    fn lcg(s: &mut u64) -> f32 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*s >> 40) as f32) / (1u64 << 24) as f32
    }

    fn prepare(tris: &[[Vec3A; 3]]) -> Vec<Tri> {
        tris.iter()
            .map(|t| Tri {
                v0: t[0],
                e1: t[1] - t[0],
                e2: t[2] - t[0],
            })
            .collect()
    }

    /// Closest accepted hit by testing every triangle (ties go to the lower index).
    fn brute(
        tris: &[Tri],
        o: Vec3A,
        d: Vec3A,
        tmax: f32,
        accept: impl Fn(u32, f32, f32) -> bool,
    ) -> Option<Hit> {
        let mut best: Option<Hit> = None;
        for (i, t) in tris.iter().enumerate() {
            if let Some((t, u, v)) = intersect_tri(t, o, d, best.map_or(tmax, |b| b.t)) {
                if accept(i as u32, u, v) {
                    best = Some(Hit {
                        t,
                        u,
                        v,
                        prim: i as u32,
                    });
                }
            }
        }
        best
    }

    fn same(a: Option<Hit>, b: Option<Hit>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.prim == b.prim
                    && a.t.to_bits() == b.t.to_bits()
                    && a.u.to_bits() == b.u.to_bits()
                    && a.v.to_bits() == b.v.to_bits()
            }
            _ => false,
        }
    }

    /// Random triangles around `offset`, and rays of three kinds: random, starting a tiny
    /// distance off a triangle (either side, so hits at t far below obvhs's 1e-4 cut), and
    /// starting on a triangle's plane next to it. Every answer must match brute force exactly,
    /// with and without an alpha-test filter, for closest hits and for occlusion.
    fn check_against_brute_force(offset: Vec3A, scale: f32, seed: u64) {
        let mut s = seed;
        let tris: Vec<[Vec3A; 3]> = (0..3000)
            .map(|_| {
                let c = Vec3A::new(lcg(&mut s), lcg(&mut s), lcg(&mut s)) * 10.0;
                [0, 1, 2].map(|_| {
                    offset + (c + Vec3A::new(lcg(&mut s), lcg(&mut s), lcg(&mut s)) - 0.5) * scale
                })
            })
            .collect();
        let mut bvh = Bvh::build(&tris);
        let prepared = prepare(&tris);
        let needs = |p: u32| p & 1 == 0;
        let accept = |p: u32, u: f32, v: f32| p & 3 != 0 || u > v;
        // The same rays on every code path this CPU runs (crate::isa).
        let rays_seed = s;
        for isa in Isa::supported() {
            bvh.set_isa(isa).expect("supported");
            check_rays(
                &bvh, &tris, &prepared, offset, scale, rays_seed, &needs, &accept,
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn check_rays(
        bvh: &Bvh,
        tris: &[[Vec3A; 3]],
        prepared: &[Tri],
        offset: Vec3A,
        scale: f32,
        mut s: u64,
        needs: &impl Fn(u32) -> bool,
        accept: &impl Fn(u32, f32, f32) -> bool,
    ) {
        let (mut near_hits, mut tiny_t) = (0, 0);
        for k in 0..4000 {
            let d = (Vec3A::new(lcg(&mut s), lcg(&mut s), lcg(&mut s)) - 0.5).normalize();
            let o = match k % 3 {
                0 => {
                    offset
                        + (Vec3A::new(lcg(&mut s), lcg(&mut s), lcg(&mut s)) * 12.0 - 1.0) * scale
                }
                _ => {
                    let [a, b, c] = tris[(lcg(&mut s) * tris.len() as f32) as usize];
                    let (b1, b2) = (lcg(&mut s), lcg(&mut s));
                    let (b1, b2) = if b1 + b2 > 1.0 {
                        (1.0 - b1, 1.0 - b2)
                    } else {
                        (b1, b2)
                    };
                    let p = a + (b - a) * b1 + (c - a) * b2;
                    let n = cross(b - a, c - a).normalize();
                    // Up to a few ulps of the coordinates off the surface, or exactly on it.
                    let h = (lcg(&mut s) - 0.5) * 1e-5 * (1.0 + p.abs().max_element());
                    if k % 3 == 1 {
                        p + n * h
                    } else {
                        p + (b - a) * (lcg(&mut s) * 1e-3) + n * h * 1e-3
                    }
                }
            };
            let tmax = if k % 5 == 0 {
                lcg(&mut s) * 3.0 * scale
            } else {
                f32::INFINITY
            };
            let expect = brute(prepared, o, d, tmax, |_, _, _| true);
            let got = bvh.intersect(o, d, tmax, &|_| false, &mut |_, _, _| true);
            assert!(
                same(got, expect),
                "ray {k}: {got:?} vs brute force {expect:?}"
            );
            if k % 3 != 0 && got.is_some() {
                near_hits += 1;
                tiny_t += got.is_some_and(|h| h.t < 1e-4) as usize;
            }
            let occ = bvh.occluded(o, d, tmax, &|_| false, &mut |_, _, _| true);
            assert_eq!(occ, expect.is_some(), "ray {k}");

            let expect = brute(prepared, o, d, tmax, |p, u, v| !needs(p) || accept(p, u, v));
            let mut asked_wrongly = false;
            let got = bvh.intersect(o, d, tmax, needs, &mut |p, u, v| {
                asked_wrongly |= !needs(p);
                accept(p, u, v)
            });
            assert!(!asked_wrongly);
            assert!(
                same(got, expect),
                "ray {k} (filtered): {got:?} vs {expect:?}"
            );
            // Occlusion stops at the first accepted hit: the filter accepts everything, so it
            // is asked once if anything is hit.
            let mut calls = 0;
            let occ = bvh.occluded(o, d, tmax, &|_| true, &mut |_, _, _| {
                calls += 1;
                true
            });
            assert_eq!(occ, calls == 1, "ray {k}: {calls} filter calls");
            let expect_any = brute(prepared, o, d, tmax, |_, _, _| true);
            assert_eq!(occ, expect_any.is_some());
            let mut rejected = 0;
            let occ = bvh.occluded(o, d, tmax, needs, &mut |p, u, v| {
                let a = accept(p, u, v);
                rejected += !a as usize;
                a
            });
            assert_eq!(occ, expect.is_some(), "ray {k} (filtered occlusion)");
        }
        // The near-surface rays really test small distances.
        assert!(
            near_hits > 1000 && tiny_t > 100,
            "{:?}: {near_hits} {tiny_t}",
            bvh.isa()
        );
    }

    #[test]
    fn matches_brute_force() {
        check_against_brute_force(Vec3A::ZERO, 1.0, 7);
    }

    #[test]
    fn matches_brute_force_far_from_origin_and_small() {
        // At 1000 units from the origin obvhs's fixed 1e-4 box cut is a few ulps; in a scene
        // 1000x smaller it is the size of a triangle.
        check_against_brute_force(Vec3A::new(1000.0, -1000.0, 500.0), 1.0, 11);
        check_against_brute_force(Vec3A::new(0.01, 0.0, -0.02), 1e-3, 13);
    }

    #[test]
    fn axis_aligned_rays_and_negative_zero() {
        // A box of axis-aligned quads, traced along the axes with +-0.0 direction components
        // from points just inside a wall. (obvhs's own node test picks the slab order from the
        // direction's sign but inverts -0.0 to a negative number, so it misses every box here.)
        let quad = |o: Vec3A, a: Vec3A, b: Vec3A| [[o, o + a, o + a + b], [o, o + a + b, o + b]];
        let x = Vec3A::X;
        let y = Vec3A::Y;
        let z = Vec3A::Z;
        let mut tris = Vec::new();
        for (o, a, b) in [
            (Vec3A::ZERO, x, y),
            (z, x, y),
            (Vec3A::ZERO, y, z),
            (x, y, z),
            (Vec3A::ZERO, z, x),
            (y, z, x),
        ] {
            tris.extend(quad(o, a, b));
        }
        let bvh = Bvh::build(&tris);
        let prepared = prepare(&tris);
        let mut s = 3u64;
        for _ in 0..2000 {
            let axis = (lcg(&mut s) * 3.0) as usize;
            let sign = if lcg(&mut s) < 0.5 { -1.0 } else { 1.0 };
            let mut d = [0.0f32; 3];
            for (i, c) in d.iter_mut().enumerate() {
                *c = if i == axis {
                    sign
                } else if lcg(&mut s) < 0.5 {
                    -0.0
                } else {
                    0.0
                };
            }
            let d = Vec3A::from(d);
            let mut o = Vec3A::new(lcg(&mut s), lcg(&mut s), lcg(&mut s));
            // Start within 1e-6 of a wall. (Not exactly on one: a ray lying in the plane of a
            // box face with a zero direction component across it can miss the box, as it could
            // with our earlier BVH; traced rays start off surfaces.)
            let w = (lcg(&mut s) * 3.0) as usize;
            let off = 1e-6 * (0.1 + lcg(&mut s));
            o[w] = if lcg(&mut s) < 0.5 { off } else { 1.0 - off };
            let expect = brute(&prepared, o, d, f32::INFINITY, |_, _, _| true);
            let got = bvh.intersect(o, d, f32::INFINITY, &|_| false, &mut |_, _, _| true);
            assert_eq!(got.map(|h| h.t), expect.map(|h| h.t), "{o} {d}");
        }
    }

    /// Levels of the CWBVH (traversal keeps one stack entry per level, at most 32).
    fn depth(bvh: &CwBvh, node: usize) -> usize {
        let n = &bvh.nodes[node];
        1 + (0..8)
            .filter(|&c| !n.is_leaf(c))
            .map(|c| depth(bvh, n.child_node_index(c) as usize))
            .max()
            .unwrap_or(0)
    }

    /// Inputs on which obvhs's PLOC alone builds in quadratic time and chains the tree: copies of
    /// one triangle, rows of evenly spaced equal triangles, many triangles per point.
    #[test]
    fn ties_build_fast_shallow_and_correct() {
        let tri = [
            Vec3A::ZERO,
            Vec3A::new(0.5, 0.0, 0.0),
            Vec3A::new(0.0, 0.5, 0.2),
        ];
        let mut tris = vec![tri; 20_000];
        tris.extend((0..20_000).map(|i| tri.map(|p| p + Vec3A::new(i as f32 * 0.25, 2.0, 0.0))));
        tris.extend((0..10_000).map(|i| [Vec3A::new((i % 100) as f32, 1.0, -1.0); 3]));
        let mut s = 5u64;
        tris.extend((0..3000).map(|_| {
            let c = Vec3A::new(
                lcg(&mut s) * 100.0,
                lcg(&mut s) * 4.0,
                lcg(&mut s) * 2.0 - 1.0,
            );
            [0, 1, 2].map(|_| c + Vec3A::new(lcg(&mut s), lcg(&mut s), lcg(&mut s)) - 0.5)
        }));
        let start = std::time::Instant::now();
        let bvh = Bvh::build(&tris);
        let took = start.elapsed();
        // Without the grouping and padding this took 18 s and the tree was 10000 levels deep.
        assert!(took.as_secs_f32() < 2.0, "{took:?}");
        let d = depth(&bvh.cwbvh, 0);
        assert!(d <= 16, "depth {d}");
        let mut sorted = bvh.cwbvh.primitive_indices.clone();
        sorted.sort_unstable();
        assert!(
            sorted.iter().copied().eq(0..tris.len() as u32),
            "every triangle once"
        );
        let prepared = prepare(&tris);
        for k in 0..600 {
            let o = Vec3A::new(lcg(&mut s) * 100.0, lcg(&mut s) * 4.0 - 1.0, 3.0);
            let d = (Vec3A::new(lcg(&mut s) - 0.5, lcg(&mut s) - 0.5, -1.0)).normalize();
            let expect = brute(&prepared, o, d, f32::INFINITY, |_, _, _| true);
            let got = bvh.intersect(o, d, f32::INFINITY, &|_| false, &mut |_, _, _| true);
            // Copies of one triangle, and the overlapping coplanar triangles of the row, tie on
            // t; which of them is reported is up to the traversal order.
            assert_eq!(got.map(|h| h.t), expect.map(|h| h.t), "ray {k}");
        }
    }

    #[test]
    fn small_and_degenerate_inputs() {
        let none = |_: u32| false;
        let ok = &mut |_: u32, _: f32, _: f32| true;
        let bvh = Bvh::build(&[]);
        assert!(bvh
            .intersect(Vec3A::ZERO, Vec3A::X, f32::INFINITY, &none, ok)
            .is_none());
        assert!(!bvh.occluded(Vec3A::ZERO, Vec3A::X, f32::INFINITY, &none, ok));

        let tri = [
            Vec3A::new(1.0, -1.0, -1.0),
            Vec3A::new(1.0, 1.0, -1.0),
            Vec3A::new(1.0, 0.0, 1.0),
        ];
        let bvh = Bvh::build(&[tri]);
        let h = bvh
            .intersect(Vec3A::ZERO, Vec3A::X, f32::INFINITY, &none, ok)
            .unwrap();
        assert_eq!((h.t, h.prim), (1.0, 0));
        assert!(bvh
            .intersect(Vec3A::ZERO, Vec3A::X, 0.5, &none, ok)
            .is_none());

        // Many copies of one triangle plus a point-sized one and a non-finite one; the first
        // copy along the ray is not defined, but some copy must be hit.
        let mut tris = vec![tri; 5000];
        tris.push([Vec3A::splat(2.0); 3]);
        tris.push([Vec3A::splat(f32::NAN), Vec3A::ONE, Vec3A::ZERO]);
        let bvh = Bvh::build(&tris);
        let h = bvh
            .intersect(Vec3A::ZERO, Vec3A::X, f32::INFINITY, &none, ok)
            .unwrap();
        assert_eq!(h.t, 1.0);
        assert!(h.prim < 5000);
        // Rejecting every copy lets the ray through.
        assert!(bvh
            .intersect(
                Vec3A::ZERO,
                Vec3A::X,
                f32::INFINITY,
                &|p| p < 5000,
                &mut |_, _, _| false
            )
            .is_none());
    }
}
