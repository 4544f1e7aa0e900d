//! rayfarm's own BVH as it was before the renderer switched to obvhs's CWBVH (see the BVH section
//! of BENCHMARKS.md), kept here as the "ours" baseline of this benchmark: binned-SAH build on all
//! cores, stack traversal.
//!
//! Nodes are 32 bytes; the two children of an interior node are adjacent so traversal can test
//! both boxes and visit the nearer first. Triangles are stored in BVH order as (v0, e1, e2) for
//! the Möller–Trumbore test, with their original index.

use glam::{Vec3A, Vec4};
use rayfarm_render::bvh::{intersect_tri, Hit, Tri};

const BINS: usize = 16;
const MAX_LEAF: usize = 4;
const PARALLEL_THRESHOLD: usize = 8192;
/// Relative cost of a ray-box test against a ray-triangle test, for the SAH.
const TRAVERSAL_COST: f32 = 1.0;

/// 32 bytes: bounds as two 16-byte vectors whose fourth lanes carry the child or triangle
/// index and the triangle count, so a node's box loads with two aligned moves.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(32))]
pub struct Node {
    min_first: Vec4,
    max_count: Vec4,
}

impl Node {
    fn new(min: Vec3A, max: Vec3A, first: u32, count: u32) -> Node {
        Node {
            min_first: min.extend(f32::from_bits(first)),
            max_count: max.extend(f32::from_bits(count)),
        }
    }
    /// Interior: index of the left child (the right child follows). Leaf: first triangle.
    #[inline(always)]
    pub fn first(&self) -> u32 {
        self.min_first.w.to_bits()
    }
    /// Number of triangles in a leaf; 0 for an interior node.
    #[inline(always)]
    pub fn count(&self) -> u32 {
        self.max_count.w.to_bits()
    }
    #[inline(always)]
    pub fn min(&self) -> Vec3A {
        Vec3A::from_vec4(self.min_first)
    }
    #[inline(always)]
    pub fn max(&self) -> Vec3A {
        Vec3A::from_vec4(self.max_count)
    }
}

pub struct OwnBvh {
    pub nodes: Vec<Node>,
    pub tris: Vec<Tri>,
    /// Original triangle index of each entry of `tris`.
    pub prim_ids: Vec<u32>,
}

#[derive(Clone, Copy)]
struct Aabb {
    min: Vec3A,
    max: Vec3A,
}

impl Aabb {
    const EMPTY: Aabb = Aabb {
        min: Vec3A::splat(f32::INFINITY),
        max: Vec3A::splat(f32::NEG_INFINITY),
    };
    fn grow(&mut self, o: &Aabb) {
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }
    fn grow_point(&mut self, p: Vec3A) {
        self.min = self.min.min(p);
        self.max = self.max.max(p);
    }
    fn half_area(&self) -> f32 {
        let d = (self.max - self.min).max(Vec3A::ZERO);
        d.x * d.y + d.y * d.z + d.z * d.x
    }
}

#[derive(Clone, Copy)]
struct PrimRef {
    bounds: Aabb,
    centroid: Vec3A,
    id: u32,
}

enum BuildNode {
    Leaf {
        bounds: Aabb,
        first: usize,
        count: usize,
    },
    Interior {
        bounds: Aabb,
        children: Box<[BuildNode; 2]>,
    },
}

impl OwnBvh {
    /// Builds over triangles given as corner positions.
    pub fn build(triangles: &[[Vec3A; 3]]) -> OwnBvh {
        use rayon::prelude::*;
        let mut refs: Vec<PrimRef> = triangles
            .par_iter()
            .enumerate()
            .map(|(i, t)| {
                let mut b = Aabb::EMPTY;
                for &p in t {
                    b.grow_point(p);
                }
                PrimRef {
                    bounds: b,
                    centroid: (b.min + b.max) * 0.5,
                    id: i as u32,
                }
            })
            .collect();
        if refs.is_empty() {
            return OwnBvh {
                nodes: vec![Node::new(Vec3A::ZERO, Vec3A::ZERO, 0, 0)],
                tris: Vec::new(),
                prim_ids: Vec::new(),
            };
        }
        let root = build_rec(&mut refs, 0);
        let mut nodes = Vec::with_capacity(refs.len() / 2 + 1);
        nodes.push(Node::new(Vec3A::ZERO, Vec3A::ZERO, 0, 0));
        flatten(&root, 0, &mut nodes);
        let prim_ids: Vec<u32> = refs.iter().map(|r| r.id).collect();
        let tris = prim_ids
            .iter()
            .map(|&i| {
                let [a, b, c] = triangles[i as usize];
                Tri {
                    v0: a,
                    e1: b - a,
                    e2: c - a,
                }
            })
            .collect();
        OwnBvh {
            nodes,
            tris,
            prim_ids,
        }
    }

    /// Closest hit in `(0, tmax)`. `filter(prim, u, v)` is asked about triangles for which
    /// `needs_filter(prim)` is true and returns false to ignore that hit (alpha testing).
    #[inline]
    pub fn intersect(
        &self,
        org: Vec3A,
        dir: Vec3A,
        tmax: f32,
        needs_filter: &impl Fn(u32) -> bool,
        filter: &mut impl FnMut(u32, f32, f32) -> bool,
    ) -> Option<Hit> {
        self.traverse::<false>(org, dir, tmax, needs_filter, filter)
    }

    #[inline(always)]
    fn traverse<const ANY: bool>(
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
        let oinv = org * inv;
        let mut best = Hit {
            t: tmax,
            u: 0.0,
            v: 0.0,
            prim: u32::MAX,
        };
        // Not zeroed: only entries below `sp` are ever read.
        let mut stack = [std::mem::MaybeUninit::<u32>::uninit(); 64];
        let mut sp = 0usize;
        let root = &self.nodes[0];
        if root.count() > 0 {
            // A single-leaf tree.
            self.leaf::<ANY>(root, org, dir, &mut best, needs_filter, filter);
            return (best.prim != u32::MAX).then_some(best);
        }
        let nodes = &self.nodes[..];
        let mut node_idx = 0usize;
        loop {
            // SAFETY: the builder only writes child indices of nodes it pushed, so every
            // `first` of an interior node and `first + 1` are in bounds.
            let node = unsafe { nodes.get_unchecked(node_idx) };
            let l = node.first() as usize;
            let (a, b) = unsafe { (nodes.get_unchecked(l), nodes.get_unchecked(l + 1)) };
            let ta = slab(a, inv, oinv, best.t);
            let tb = slab(b, inv, oinv, best.t);
            let (near, far, tn, tf) = if tb < ta {
                (l + 1, l, tb, ta)
            } else {
                (l, l + 1, ta, tb)
            };
            let mut next = usize::MAX;
            // Visit leaves right away; descend into the nearer interior child, push the farther.
            for (t, idx) in [(tn, near), (tf, far)] {
                if t == f32::INFINITY {
                    break;
                }
                let n = unsafe { nodes.get_unchecked(idx) };
                if n.count() > 0 {
                    if self.leaf::<ANY>(n, org, dir, &mut best, needs_filter, filter) && ANY {
                        return Some(best);
                    }
                } else if next == usize::MAX {
                    next = idx;
                } else if sp < stack.len() {
                    stack[sp] = std::mem::MaybeUninit::new(idx as u32);
                    sp += 1;
                }
            }
            if next != usize::MAX {
                node_idx = next;
                continue;
            }
            if sp == 0 {
                break;
            }
            sp -= 1;
            // SAFETY: entries below `sp` were written before `sp` was raised past them.
            node_idx = unsafe { stack[sp].assume_init() } as usize;
        }
        (best.prim != u32::MAX).then_some(best)
    }

    #[inline(always)]
    fn leaf<const ANY: bool>(
        &self,
        n: &Node,
        org: Vec3A,
        dir: Vec3A,
        best: &mut Hit,
        needs_filter: &impl Fn(u32) -> bool,
        filter: &mut impl FnMut(u32, f32, f32) -> bool,
    ) -> bool {
        let mut found = false;
        let start = n.first() as usize;
        for i in start..start + n.count() as usize {
            // SAFETY: leaves cover ranges of `tris` (and `prim_ids`, of equal length) by construction.
            let tri = unsafe { self.tris.get_unchecked(i) };
            if let Some((t, u, v)) = intersect_tri(tri, org, dir, best.t) {
                let prim = unsafe { *self.prim_ids.get_unchecked(i) };
                if needs_filter(prim) && !filter(prim, u, v) {
                    continue;
                }
                *best = Hit { t, u, v, prim };
                found = true;
                if ANY {
                    return true;
                }
            }
        }
        found
    }
}

#[inline(always)]
fn slab(n: &Node, inv: Vec3A, oinv: Vec3A, tmax: f32) -> f32 {
    let t0 = n.min() * inv - oinv;
    let t1 = n.max() * inv - oinv;
    let tmin = t0.min(t1).max_element().max(0.0);
    let tfar = t0.max(t1).min_element().min(tmax);
    if tmin <= tfar {
        tmin
    } else {
        f32::INFINITY
    }
}

fn bounds_of(refs: &[PrimRef]) -> (Aabb, Aabb) {
    let mut b = Aabb::EMPTY;
    let mut c = Aabb::EMPTY;
    for r in refs {
        b.grow(&r.bounds);
        c.grow_point(r.centroid);
    }
    (b, c)
}

fn build_rec(refs: &mut [PrimRef], offset: usize) -> BuildNode {
    let (bounds, cb) = if refs.len() > PARALLEL_THRESHOLD {
        use rayon::prelude::*;
        refs.par_chunks(4096).map(bounds_of).reduce(
            || (Aabb::EMPTY, Aabb::EMPTY),
            |mut a, b| {
                a.0.grow(&b.0);
                a.1.grow(&b.1);
                a
            },
        )
    } else {
        bounds_of(refs)
    };
    let n = refs.len();
    let leaf = || BuildNode::Leaf {
        bounds,
        first: offset,
        count: n,
    };
    if n <= 1 {
        return leaf();
    }
    let extent = cb.max - cb.min;
    // Best split over all axes by binned SAH.
    let mut best = (f32::INFINITY, 0usize, 0usize);
    for axis in 0..3 {
        if extent[axis] <= 0.0 {
            continue;
        }
        let scale = BINS as f32 / extent[axis];
        let mut bins = [(Aabb::EMPTY, 0usize); BINS];
        for r in refs.iter() {
            let b = (((r.centroid[axis] - cb.min[axis]) * scale) as usize).min(BINS - 1);
            bins[b].0.grow(&r.bounds);
            bins[b].1 += 1;
        }
        let mut right_area = [0f32; BINS];
        let mut right_count = [0usize; BINS];
        let mut acc = Aabb::EMPTY;
        let mut cnt = 0;
        for i in (1..BINS).rev() {
            acc.grow(&bins[i].0);
            cnt += bins[i].1;
            right_area[i] = acc.half_area();
            right_count[i] = cnt;
        }
        let mut acc = Aabb::EMPTY;
        let mut cnt = 0;
        for i in 0..BINS - 1 {
            acc.grow(&bins[i].0);
            cnt += bins[i].1;
            if cnt == 0 || right_count[i + 1] == 0 {
                continue;
            }
            let cost = acc.half_area() * cnt as f32 + right_area[i + 1] * right_count[i + 1] as f32;
            if cost < best.0 {
                best = (cost, axis, i);
            }
        }
    }
    let leaf_cost = bounds.half_area() * n as f32;
    let split_cost = TRAVERSAL_COST * bounds.half_area() + best.0;
    let mid = if best.0.is_finite() && (split_cost < leaf_cost || n > MAX_LEAF) {
        let (axis, bin) = (best.1, best.2);
        let scale = BINS as f32 / extent[axis];
        partition(refs, |r| {
            (((r.centroid[axis] - cb.min[axis]) * scale) as usize).min(BINS - 1) <= bin
        })
    } else if n > MAX_LEAF {
        // All centroids coincide: split in the middle.
        n / 2
    } else {
        return leaf();
    };
    let mid = if mid == 0 || mid == n { n / 2 } else { mid };
    let (left, right) = refs.split_at_mut(mid);
    let (l, r) = if n > PARALLEL_THRESHOLD {
        rayon::join(
            || build_rec(left, offset),
            || build_rec(right, offset + mid),
        )
    } else {
        (build_rec(left, offset), build_rec(right, offset + mid))
    };
    BuildNode::Interior {
        bounds,
        children: Box::new([l, r]),
    }
}

fn partition(refs: &mut [PrimRef], pred: impl Fn(&PrimRef) -> bool) -> usize {
    let mut i = 0;
    for j in 0..refs.len() {
        if pred(&refs[j]) {
            refs.swap(i, j);
            i += 1;
        }
    }
    i
}

fn flatten(node: &BuildNode, index: usize, nodes: &mut Vec<Node>) {
    match node {
        BuildNode::Leaf {
            bounds,
            first,
            count,
        } => {
            nodes[index] = Node::new(bounds.min, bounds.max, *first as u32, *count as u32);
        }
        BuildNode::Interior { bounds, children } => {
            let l = nodes.len();
            let blank = nodes[index];
            nodes.push(blank);
            nodes.push(blank);
            nodes[index] = Node::new(bounds.min, bounds.max, l as u32, 0);
            flatten(&children[0], l, nodes);
            flatten(&children[1], l + 1, nodes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(s: &mut u64) -> f32 {
        *s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*s >> 40) as f32) / (1u64 << 24) as f32
    }

    #[test]
    fn matches_brute_force() {
        let mut s = 7u64;
        let tris: Vec<[Vec3A; 3]> = (0..3000)
            .map(|_| {
                let c = Vec3A::new(lcg(&mut s), lcg(&mut s), lcg(&mut s)) * 10.0;
                [0, 1, 2].map(|_| c + Vec3A::new(lcg(&mut s), lcg(&mut s), lcg(&mut s)) - 0.5)
            })
            .collect();
        let bvh = OwnBvh::build(&tris);
        let prepared: Vec<Tri> = tris
            .iter()
            .map(|t| Tri {
                v0: t[0],
                e1: t[1] - t[0],
                e2: t[2] - t[0],
            })
            .collect();
        for _ in 0..2000 {
            let o = Vec3A::new(lcg(&mut s), lcg(&mut s), lcg(&mut s)) * 12.0 - 1.0;
            let d = (Vec3A::new(lcg(&mut s), lcg(&mut s), lcg(&mut s)) - 0.5).normalize();
            let mut brute: Option<(f32, u32)> = None;
            for (i, t) in prepared.iter().enumerate() {
                if let Some((t, _, _)) = intersect_tri(t, o, d, f32::INFINITY) {
                    if brute.is_none_or(|b| t < b.0) {
                        brute = Some((t, i as u32));
                    }
                }
            }
            let hit = bvh.intersect(o, d, f32::INFINITY, &|_| false, &mut |_, _, _| true);
            assert_eq!(hit.map(|h| h.prim), brute.map(|b| b.1));
        }
    }
}
