//! Bounding volume hierarchy over triangles: obvhs's PLOC build with reinsertion, collapsed into
//! our own 8-wide tree with full-precision boxes and leaves of four triangles, both stored as
//! structure of arrays so one SIMD test covers a node's eight children or a leaf's four triangles.
//!
//! Why obvhs's builder and not our own binned-SAH BVH2: its trees trace 1.5–3x faster
//! (BENCHMARKS.md, "BVH"). Why not its compressed wide BVH (CWBVH), which we traversed until
//! December 2026: its quantised boxes are built for GPU memory bandwidth, and on a CPU decoding
//! them, and testing leaf triangles one at a time, cost more than the memory saved
//! (BENCHMARKS.md, "Own 8-wide BVH").
//! What we add on top of obvhs's builder:
//! - Determinism. The build runs on a private one-thread rayon pool, so the tree is the same
//!   whatever the caller's pool size or the machine's core count: obvhs's parallel radix sorts
//!   (rdst) pick tile sizes by thread count, and it sorts keys with ties, which could then come
//!   out in a different order. obvhs's `parallel` feature is always on (workspace Cargo.toml),
//!   because its serial code path sorts differently: a build must not depend on which other
//!   crates are compiled alongside.
//! - Robustness on ties: groups of identical boxes and padded boxes (see [`JITTER`]) keep
//!   PLOC from going quadratic on copies of a triangle and rows of equal triangles.
//! - The 8-wide tree ([`Collapse`]): exact child boxes, padded by a few ulps ([`BOX_PAD`]) so a
//!   box test's rounding never culls a hit; leaves of up to four triangles as (v0, e1, e2) for
//!   a four-lane Möller–Trumbore test. The hit reports the original triangle index and the
//!   barycentrics of v1 and v2.
//! - Traversal: nearest child first for closest hits, with the slab order taken from the sign of
//!   the inverse direction it uses (so a direction component of -0.0 cannot flip a slab), from
//!   t = 0 (so hits right next to the origin are found, e.g. shadow rays from points near a
//!   blocker). The AVX2 path tests the eight boxes in one register, the portable path in two
//!   halves; both compute the same bits.

use crate::isa::Isa;
use crate::math::cross;
use glam::{Vec3A, Vec4};
use obvhs::aabb::Aabb;
use obvhs::bvh2::node::Bvh2Node;
use obvhs::bvh2::reinsertion::ReinsertionOptimizer;
use obvhs::bvh2::Bvh2;
use obvhs::ploc::PlocBuilder;
use obvhs::BvhBuildParams;

/// obvhs's "medium" preset: PLOC with search distance 14 (1 for the first 3 passes), reinsertion
/// of 5% of the nodes (its leaf size is not used: [`Collapse`] makes our leaves).
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

/// The `prim` of [`Bvh::traverse`]'s answer when nothing was hit (no triangle has this index:
/// references are 31 bits).
const NO_HIT: u32 = u32::MAX;

/// A ray hit: distance, barycentrics of v1 and v2, and the original triangle index.
#[derive(Clone, Copy, Debug)]
pub struct Hit {
    pub t: f32,
    pub u: f32,
    pub v: f32,
    pub prim: u32,
}

/// Children per inner node: eight boxes, one AVX2 register (or two SSE/NEON ones) per plane.
const WIDTH: usize = 8;
/// Triangles per leaf: four, one SSE/NEON register (glam's `Vec4`) per coordinate.
const PACK: usize = 4;
/// A child reference with this bit set is a leaf (the rest is its pack's index); without it, an
/// inner node's index.
const LEAF: u32 = 1 << 31;
/// The child reference of an unused slot (whose box no ray overlaps).
const EMPTY: u32 = u32::MAX;
/// Traversal stack entries kept on the machine stack; a deeper tree spills the rest to the heap.
const INLINE_STACK: usize = 128;
/// Child boxes are padded by this fraction of their largest coordinate magnitude or extent
/// (about 8 ulps), so that the rounding of a box test never culls a hit the triangle test would
/// find (e.g. on the shared edge of two triangles in different leaves, or in a flat box).
const BOX_PAD: f32 = 1.0 / (1 << 20) as f32;

/// An inner node: the boxes of its eight children as structure of arrays, so that a ray is tested
/// against all of them at once.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(32))]
pub struct Node8 {
    /// Lower bounds per axis and child; an unused slot holds +inf (and -inf in `hi`).
    lo: [[f32; WIDTH]; 3],
    /// Upper bounds per axis and child.
    hi: [[f32; WIDTH]; 3],
    /// [`LEAF`] | pack index, an inner node's index, or [`EMPTY`].
    child: [u32; WIDTH],
}

impl Node8 {
    const EMPTY: Node8 = Node8 {
        lo: [[f32::INFINITY; WIDTH]; 3],
        hi: [[f32::NEG_INFINITY; WIDTH]; 3],
        child: [EMPTY; WIDTH],
    };
}

/// A leaf: up to four triangles as (v0, e1, e2) in structure of arrays, tested together. Unused
/// lanes hold a degenerate triangle (zero edges), which the test rejects.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(16))]
pub struct TriPack {
    v0: [[f32; PACK]; 3],
    e1: [[f32; PACK]; 3],
    e2: [[f32; PACK]; 3],
    /// Original triangle index per lane ([`EMPTY`] for an unused lane).
    prim: [u32; PACK],
}

pub struct Bvh {
    /// Inner nodes; the root is the first (when there are triangles at all).
    nodes: Vec<Node8>,
    /// Leaves.
    packs: Vec<TriPack>,
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

/// Builder primitives (groups of triangles) per chunk of a large scene: [`build_chunked`].
const CHUNK: usize = 1 << 16;
/// Scenes of at least this many chunks' worth of builder primitives are built in chunks.
const CHUNKED_FROM: usize = 4;
/// In a chunked build, a node with a binary subtree of at least a chunk's worth of triangles
/// over this collapses all its children in parallel ([`Collapse::inner_in_parallel`]).
const PARALLEL_COLLAPSE_DIVISOR: usize = 8;

/// Runs `f` on a private one-thread rayon pool (so that obvhs's parallel code takes its
/// one-thread path whatever the caller's pool), with a stack deep enough for the collapse's
/// recursion.
fn on_build_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    on_build_threads(1, f)
}

/// Runs `f` on a private pool of `threads` threads with the build's stack size.
fn on_build_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .thread_name(|_| "rayfarm-bvh-build".into())
        // The collapse recurses once per level; a deep tree must not overflow the stack.
        // Only the pages used are committed.
        .stack_size(BUILD_STACK)
        .build()
        .expect("spawning the BVH build thread")
        .install(f)
}

/// obvhs's PLOC tree, improved by reinsertion, over `aabbs` (the builder primitives whose
/// numbers are `ids`, in the same order). Call it on a one-thread pool ([`on_build_thread`]).
fn build_bvh2(aabbs: &[Aabb], ids: Vec<u32>) -> Bvh2 {
    let p = BUILD_PARAMS;
    let mut bvh2 = PlocBuilder::with_capacity(aabbs.len()).build(
        p.ploc_search_distance,
        aabbs,
        ids,
        p.sort_precision,
        p.search_depth_threshold,
    );
    ReinsertionOptimizer::default().run(&mut bvh2, p.reinsertion_batch_ratio, None);
    bvh2
}

/// The binary tree of a large scene, built on every thread of the caller's pool and still the
/// same on any pool. obvhs's build hardly scales with threads (BENCHMARKS.md, "BVH"), and must
/// run on one thread to be deterministic anyway, so a large scene is cut into `2^k` chunks of
/// `chunk / 2` to `chunk` primitives: median splits of the box centres along the longest axis of
/// their bounds, ties broken by primitive number (a total order, so the cut is a pure function
/// of the boxes). The splits are the top of the tree; each chunk gets its own PLOC tree over its
/// primitives in ascending order, built on a one-thread pool of its own, several chunks at
/// once. Which thread builds which chunk cannot change a node.
fn build_chunked(aabbs: &[Aabb], chunk: usize) -> Bvh2 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;
    let levels = (aabbs.len().div_ceil(chunk)).next_power_of_two().ilog2();
    let centres: Vec<Vec3A> = aabbs.iter().map(|b| (b.min + b.max) * 0.5).collect();
    let mut ids: Vec<u32> = (0..aabbs.len() as u32).collect();
    // The top of the tree: node 0 the root, each split's two halves next to each other (as
    // obvhs's nodes are); `slots[c]` is the node chunk `c` goes into, `ranges[c]` its ids.
    struct Top<'c> {
        centres: &'c [Vec3A],
        nodes: Vec<Bvh2Node>,
        slots: Vec<usize>,
        ranges: Vec<(usize, usize)>,
    }
    impl Top<'_> {
        /// Cuts `ids` (those from `start` on) under node `at`, `level` splits deep.
        fn split(&mut self, ids: &mut [u32], start: usize, level: u32, at: usize) {
            if level == 0 || ids.len() < 2 {
                self.slots.push(at);
                self.ranges.push((start, start + ids.len()));
                return;
            }
            let centres = self.centres;
            let (mut lo, mut hi) = (Vec3A::INFINITY, Vec3A::NEG_INFINITY);
            for &i in ids.iter() {
                lo = lo.min(centres[i as usize]);
                hi = hi.max(centres[i as usize]);
            }
            let axis = (hi - lo).max_position();
            let mid = ids.len() / 2;
            ids.select_nth_unstable_by(mid, |&a, &b| {
                centres[a as usize][axis]
                    .total_cmp(&centres[b as usize][axis])
                    .then(a.cmp(&b))
            });
            let children = self.nodes.len();
            self.nodes.push(Bvh2Node::default());
            self.nodes.push(Bvh2Node::default());
            self.nodes[at].first_index = children as u32;
            let (left, right) = ids.split_at_mut(mid);
            self.split(left, start, level - 1, children);
            self.split(right, start + mid, level - 1, children + 1);
        }
    }
    let mut top = Top {
        centres: &centres,
        nodes: vec![Bvh2Node::default()],
        slots: Vec::new(),
        ranges: Vec::new(),
    };
    top.split(&mut ids, 0, levels, 0);
    let Top {
        mut nodes,
        slots,
        ranges,
        ..
    } = top;
    drop(centres);
    let top_len = nodes.len();

    // The chunks' trees, several at once, each on its own one-thread pool.
    let built: Vec<Mutex<Option<Bvh2>>> = ranges.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let workers = rayon::current_num_threads().clamp(1, ranges.len());
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                on_build_thread(|| loop {
                    let c = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(a, b)) = ranges.get(c) else { break };
                    // In primitive order: `select_nth_unstable_by` leaves each side in an
                    // order std does not specify, and PLOC's input order breaks its sort's
                    // ties, so unsorted the tree could change with the compiler.
                    let mut chunk_ids = ids[a..b].to_vec();
                    chunk_ids.sort_unstable();
                    let chunk_boxes: Vec<Aabb> =
                        chunk_ids.iter().map(|&i| aabbs[i as usize]).collect();
                    // Built over local numbers (0..len, which obvhs's leaves index
                    // `primitive_indices` with), then each leaf is given its global number.
                    let tree = build_bvh2(&chunk_boxes, (0..chunk_ids.len() as u32).collect());
                    let nodes: Vec<Bvh2Node> = tree
                        .nodes
                        .into_iter()
                        .map(|mut n| {
                            if n.is_leaf() {
                                let local = tree.primitive_indices[n.first_index as usize];
                                n.first_index = chunk_ids[local as usize];
                            }
                            n
                        })
                        .collect();
                    // Only the nodes are kept: the rest is freed here, on this thread.
                    let nodes = Bvh2 {
                        nodes,
                        max_depth: tree.max_depth,
                        ..Bvh2::default()
                    };
                    *built[c].lock().expect("a chunk's slot") = Some(nodes);
                })
            });
        }
    });

    // One tree: the chunks' nodes after the top's, each chunk's root in its slot. A leaf's
    // `first_index` is its primitive's global number (mapped above), and `primitive_indices`
    // the identity, as in a tree PLOC builds over all the primitives at once.
    let trees: Vec<Bvh2> = built
        .into_iter()
        .map(|t| {
            t.into_inner()
                .expect("a chunk's slot")
                .expect("every chunk was built")
        })
        .collect();
    nodes.reserve(trees.iter().map(|t| t.nodes.len()).sum());
    let mut max_depth = 0;
    for (c, tree) in trees.into_iter().enumerate() {
        let node_base = nodes.len() as u32;
        let moved = |mut n: Bvh2Node| {
            if !n.is_leaf() {
                n.first_index += node_base;
            }
            n
        };
        nodes[slots[c]] = moved(tree.nodes[0]);
        nodes.extend(tree.nodes.iter().map(|&n| moved(n)));
        max_depth = max_depth.max(tree.max_depth);
    }
    // The top's boxes: its nodes were made parents first, so in reverse each node's children
    // are done (a chunk's root, or a top node after it).
    let mut is_slot = vec![false; top_len];
    for &n in &slots {
        is_slot[n] = true;
    }
    for n in (0..top_len).rev() {
        if !is_slot[n] {
            let first = nodes[n].first_index as usize;
            let b = nodes[first].aabb().union(nodes[first + 1].aabb());
            nodes[n] = Bvh2Node::new(b, 0, first as u32);
        }
    }
    Bvh2 {
        nodes,
        primitive_indices: (0..aabbs.len() as u32).collect(),
        max_depth: max_depth + levels as usize,
        ..Bvh2::default()
    }
}

/// Turns obvhs's binary tree into the 8-wide one. Each node starts from a binary node's two
/// children and opens the one with the largest surface area (among those with more than [`PACK`]
/// triangles) until it has eight; a subtree of at most [`PACK`] triangles becomes one leaf.
/// This is the usual BVH2-to-BVH8 collapse (as Embree's), with obvhs's PLOC tree as input.
struct Collapse<'a> {
    bvh2: &'a Bvh2,
    triangles: &'a [[Vec3A; 3]],
    /// Triangles under each binary node.
    counts: &'a [u32],
    /// Subtrees of at least this many triangles are collapsed in parallel
    /// ([`Collapse::inner_in_parallel`]; large scenes, see [`build_chunked`]); `usize::MAX`
    /// for none.
    parallel_from: usize,
    nodes: Vec<Node8>,
    packs: Vec<TriPack>,
}

/// A triangle's box; a triangle with a non-finite corner gets an empty box at the origin, as in
/// the builder's input.
fn triangle_box(&[a, b, c]: &[Vec3A; 3]) -> Aabb {
    let (lo, hi) = (a.min(b).min(c), a.max(b).max(c));
    if lo.is_finite() && hi.is_finite() {
        Aabb::new(lo, hi)
    } else {
        Aabb::new(Vec3A::ZERO, Vec3A::ZERO)
    }
}

impl<'a> Collapse<'a> {
    fn run(
        bvh2: &'a Bvh2,
        triangles: &'a [[Vec3A; 3]],
        parallel_from: usize,
    ) -> (Vec<Node8>, Vec<TriPack>) {
        let counts = subtree_counts(bvh2);
        let mut c = Collapse {
            bvh2,
            triangles,
            counts: &counts,
            parallel_from,
            nodes: Vec::new(),
            packs: Vec::new(),
        };
        let root = &bvh2.nodes[0];
        if c.counts[0] as usize <= PACK || root.is_leaf() {
            // Few triangles, or a binary tree that is one leaf: the root holds leaves directly.
            let prims = c.prims_under(0);
            c.prims_node(&prims);
        } else {
            c.inner(0);
        }
        (c.nodes, c.packs)
    }

    /// The triangles under binary node `n` (at most [`PACK`] of them, as `counts` says),
    /// left to right, into `out`; returns how many.
    fn prims_under_into(&self, n: usize, out: &mut [u32; PACK]) -> usize {
        let mut len = 0;
        // A subtree of at most PACK triangles has at most 2 PACK - 1 nodes, and the stack
        // holds at most one more than the tree's depth.
        let mut stack = [0usize; 2 * PACK];
        let mut top = 1;
        stack[0] = n;
        while top > 0 {
            top -= 1;
            let node = &self.bvh2.nodes[stack[top]];
            let first = node.first_index as usize;
            if node.is_leaf() {
                for &p in &self.bvh2.primitive_indices[first..first + node.prim_count as usize] {
                    out[len] = p;
                    len += 1;
                }
            } else {
                stack[top] = first + 1;
                stack[top + 1] = first;
                top += 2;
            }
        }
        len
    }

    /// The triangles under binary node `n`, left to right.
    fn prims_under(&self, n: usize) -> Vec<u32> {
        let mut out = Vec::new();
        let mut stack = vec![n];
        while let Some(n) = stack.pop() {
            let node = &self.bvh2.nodes[n];
            let first = node.first_index as usize;
            if node.is_leaf() {
                out.extend_from_slice(
                    &self.bvh2.primitive_indices[first..first + node.prim_count as usize],
                );
            } else {
                stack.push(first + 1);
                stack.push(first);
            }
        }
        out
    }

    /// A new inner node over binary inner node `n`; returns its reference and exact box.
    /// (Fixed arrays, not vectors: a large scene has hundreds of thousands of nodes, and their
    /// allocations were a third of the collapse's time.)
    fn inner(&mut self, n: usize) -> (u32, Aabb) {
        let idx = self.nodes.len();
        self.nodes.push(Node8::EMPTY);
        let first = self.bvh2.nodes[n].first_index as usize;
        let mut kids = [0usize; WIDTH];
        kids[0] = first;
        kids[1] = first + 1;
        let mut len = 2;
        while len < WIDTH {
            let mut open: Option<(usize, f32)> = None;
            for (j, &k) in kids[..len].iter().enumerate() {
                let node = &self.bvh2.nodes[k];
                if node.is_leaf() || self.counts[k] as usize <= PACK {
                    continue;
                }
                let area = node.aabb().half_area();
                if open.is_none_or(|(_, best)| area > best) {
                    open = Some((j, area));
                }
            }
            let Some((j, _)) = open else { break };
            let f = self.bvh2.nodes[kids[j]].first_index as usize;
            // `kids[j]` becomes its two children, in place: what follows moves up one.
            kids.copy_within(j + 1..len, j + 2);
            kids[j] = f;
            kids[j + 1] = f + 1;
            len += 1;
        }
        let kids = &kids[..len];
        if kids
            .iter()
            .any(|&k| self.counts[k] as usize >= self.parallel_from)
        {
            return self.inner_in_parallel(idx, kids);
        }
        let mut children = [(EMPTY, Aabb::empty()); WIDTH];
        for (c, &k) in children.iter_mut().zip(kids) {
            *c = self.child(k);
        }
        self.fill(idx, &children[..len])
    }

    /// What binary node `k` becomes as a child: a leaf of its few triangles, a node over the
    /// triangles of a binary leaf, or an inner node. Returns its reference and exact box.
    fn child(&mut self, k: usize) -> (u32, Aabb) {
        if self.counts[k] as usize <= PACK {
            let mut prims = [0u32; PACK];
            let n = self.prims_under_into(k, &mut prims);
            self.leaf(&prims[..n])
        } else if self.bvh2.nodes[k].is_leaf() {
            let prims = self.prims_under(k);
            self.prims_node(&prims)
        } else {
            self.inner(k)
        }
    }

    /// The end of [`Collapse::inner`] for node `idx` over the binary nodes `kids` when some are
    /// large: each kid collapsed into arrays of its own, all at once, then appended in order
    /// (the references in them moved by where they land), so the arrays are the same whichever
    /// thread did what. As in `inner`, each kid becomes one child ([`Collapse::child`]).
    fn inner_in_parallel(&mut self, idx: usize, kids: &[usize]) -> (u32, Aabb) {
        use rayon::prelude::*;
        let parts: Vec<(Vec<Node8>, Vec<TriPack>, u32, Aabb)> = kids
            .par_iter()
            .map(|&k| {
                let mut c = Collapse {
                    bvh2: self.bvh2,
                    triangles: self.triangles,
                    counts: self.counts,
                    parallel_from: self.parallel_from,
                    nodes: Vec::new(),
                    packs: Vec::new(),
                };
                let (r, b) = c.child(k);
                (c.nodes, c.packs, r, b)
            })
            .collect();
        // Room for all the parts at once: one allocation, each part copied once.
        self.nodes.reserve(parts.iter().map(|p| p.0.len()).sum());
        self.packs.reserve(parts.iter().map(|p| p.1.len()).sum());
        let mut children = Vec::with_capacity(parts.len());
        for (nodes, packs, r, b) in parts {
            let (node_base, pack_base) = (self.nodes.len() as u32, self.packs.len() as u32);
            let moved = |r: u32| match r {
                EMPTY => EMPTY,
                r if r & LEAF != 0 => LEAF | ((r & !LEAF) + pack_base),
                r => r + node_base,
            };
            self.nodes.extend(nodes.into_iter().map(|mut n| {
                n.child = n.child.map(moved);
                n
            }));
            self.packs.extend(packs);
            // `LEAF | (LEAF - 1)` is `EMPTY`: the last index is not a leaf's.
            assert!(
                self.packs.len() < LEAF as usize,
                "fewer than 2^31 - 1 leaves"
            );
            children.push((moved(r), b));
        }
        self.fill(idx, &children)
    }

    /// A node over a list of triangles in order (a binary leaf with more than [`PACK`], which
    /// obvhs's PLOC does not make, or a whole small scene): up to eight runs, each a leaf or
    /// again such a node.
    fn prims_node(&mut self, prims: &[u32]) -> (u32, Aabb) {
        let idx = self.nodes.len();
        self.nodes.push(Node8::EMPTY);
        let per_child = prims.len().div_ceil(WIDTH).max(PACK);
        let children: Vec<(u32, Aabb)> = prims
            .chunks(per_child)
            .map(|run| {
                if run.len() <= PACK {
                    self.leaf(run)
                } else {
                    self.prims_node(run)
                }
            })
            .collect();
        self.fill(idx, &children)
    }

    /// Puts `children` (reference, exact box) into the slots of node `idx`, in order; returns
    /// the node's reference and the union of their boxes.
    fn fill(&mut self, idx: usize, children: &[(u32, Aabb)]) -> (u32, Aabb) {
        let mut bounds = Aabb::empty();
        for (slot, &(r, b)) in children.iter().enumerate() {
            self.set_child(idx, slot, r, &b);
            bounds = bounds.union(&b);
        }
        (idx as u32, bounds)
    }

    /// A leaf of at most [`PACK`] triangles; returns its reference and exact box.
    fn leaf(&mut self, prims: &[u32]) -> (u32, Aabb) {
        debug_assert!(!prims.is_empty() && prims.len() <= PACK);
        let mut pack = TriPack {
            v0: [[0.0; PACK]; 3],
            e1: [[0.0; PACK]; 3],
            e2: [[0.0; PACK]; 3],
            prim: [EMPTY; PACK],
        };
        let mut bounds = Aabb::empty();
        for (lane, &i) in prims.iter().enumerate() {
            let t = &self.triangles[i as usize];
            let [a, b, c] = *t;
            let (e1, e2) = (b - a, c - a);
            for axis in 0..3 {
                pack.v0[axis][lane] = a[axis];
                pack.e1[axis][lane] = e1[axis];
                pack.e2[axis][lane] = e2[axis];
            }
            pack.prim[lane] = i;
            bounds = bounds.union(&triangle_box(t));
        }
        let index = u32::try_from(self.packs.len())
            .ok()
            // `LEAF | (LEAF - 1)` is `EMPTY`: the last index is not a leaf's.
            .filter(|&i| i < LEAF - 1)
            .expect("fewer than 2^31 - 1 leaves");
        self.packs.push(pack);
        (LEAF | index, bounds)
    }

    /// Puts child `r` with box `b` (padded by [`BOX_PAD`]) into slot `slot` of node `idx`.
    fn set_child(&mut self, idx: usize, slot: usize, r: u32, b: &Aabb) {
        let size = b.min.abs().max(b.max.abs()).max(b.max - b.min);
        let pad = (size.max_element() * BOX_PAD).max(f32::MIN_POSITIVE);
        let (lo, hi) = (b.min - pad, b.max + pad);
        let node = &mut self.nodes[idx];
        for axis in 0..3 {
            node.lo[axis][slot] = lo[axis];
            node.hi[axis][slot] = hi[axis];
        }
        node.child[slot] = r;
    }
}

/// Triangles under each binary node (0 for nodes the root does not reach). The top few levels'
/// subtrees are counted in parallel (a large scene's tree has millions of nodes); every count
/// is a sum of its subtree's, so the result is the same either way.
fn subtree_counts(bvh2: &Bvh2) -> Vec<u32> {
    // About 16k nodes a task at least.
    subtree_counts_in_parallel_from(bvh2, 1 << 20)
}

/// [`subtree_counts`], in parallel in trees of at least `parallel_from` nodes.
fn subtree_counts_in_parallel_from(bvh2: &Bvh2, parallel_from: usize) -> Vec<u32> {
    use std::sync::atomic::{AtomicU32, Ordering};
    /// Levels whose two subtrees are counted at once.
    const PARALLEL_LEVELS: u32 = 6;
    let counts: Vec<AtomicU32> = (0..bvh2.nodes.len()).map(|_| AtomicU32::new(0)).collect();
    fn below(bvh2: &Bvh2, counts: &[AtomicU32], root: usize) -> u32 {
        let mut stack = vec![(root, false)];
        while let Some((n, children_done)) = stack.pop() {
            let node = &bvh2.nodes[n];
            let first = node.first_index as usize;
            if node.is_leaf() {
                counts[n].store(node.prim_count, Ordering::Relaxed);
            } else if children_done {
                let sum = counts[first].load(Ordering::Relaxed)
                    + counts[first + 1].load(Ordering::Relaxed);
                counts[n].store(sum, Ordering::Relaxed);
            } else {
                stack.extend([(n, true), (first, false), (first + 1, false)]);
            }
        }
        counts[root].load(Ordering::Relaxed)
    }
    fn top(bvh2: &Bvh2, counts: &[AtomicU32], n: usize, level: u32) -> u32 {
        let node = &bvh2.nodes[n];
        if node.is_leaf() || level >= PARALLEL_LEVELS {
            return below(bvh2, counts, n);
        }
        let first = node.first_index as usize;
        let (a, b) = rayon::join(
            || top(bvh2, counts, first, level + 1),
            || top(bvh2, counts, first + 1, level + 1),
        );
        counts[n].store(a + b, Ordering::Relaxed);
        a + b
    }
    if !bvh2.nodes.is_empty() {
        if bvh2.nodes.len() >= parallel_from {
            top(bvh2, &counts, 0, 0);
        } else {
            below(bvh2, &counts, 0);
        }
    }
    counts.into_iter().map(AtomicU32::into_inner).collect()
}

/// Per-ray values of the node and leaf tests.
struct RayData {
    org: Vec3A,
    inv: Vec3A,
    /// Whether each component of `inv` is negative: then the slab is entered at the box max.
    neg: [bool; 3],
    /// Origin and direction, one coordinate per register, for the leaf test.
    o4: [Vec4; 3],
    d4: [Vec4; 3],
}

/// The traversal stack: (child reference, entry distance), the top popped first.
struct Stack {
    inline: [std::mem::MaybeUninit<(u32, f32)>; INLINE_STACK],
    len: usize,
    /// Entries beyond `INLINE_STACK`; non-empty only while `inline` is full.
    spill: Vec<(u32, f32)>,
}

impl Stack {
    #[inline(always)]
    fn new() -> Stack {
        Stack {
            inline: [const { std::mem::MaybeUninit::uninit() }; INLINE_STACK],
            len: 0,
            spill: Vec::new(),
        }
    }

    #[inline(always)]
    fn push(&mut self, child: u32, t: f32) {
        if self.len < INLINE_STACK {
            self.inline[self.len].write((child, t));
            self.len += 1;
        } else {
            self.spill.push((child, t));
        }
    }

    #[inline(always)]
    fn pop(&mut self) -> Option<(u32, f32)> {
        if let Some(e) = self.spill.pop() {
            return Some(e);
        }
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: entries below `len` were written by `push`.
        Some(unsafe { self.inline[self.len].assume_init() })
    }
}

impl Bvh {
    /// Builds over triangles given as corner positions (which should be finite; a triangle with
    /// a non-finite corner gets an empty box at the origin, so the tree stays valid).
    ///
    /// The result depends only on `triangles`, not on the calling thread pool.
    pub fn build(triangles: &[[Vec3A; 3]]) -> Bvh {
        Bvh::build_in_chunks_of(triangles, CHUNK)
    }

    /// [`Bvh::build`] with `chunk` builder primitives per chunk of a large scene (tests use
    /// small chunks to exercise the chunked build on few triangles).
    fn build_in_chunks_of(triangles: &[[Vec3A; 3]], chunk: usize) -> Bvh {
        use rayon::prelude::*;
        if triangles.is_empty() {
            return Bvh {
                nodes: Vec::new(),
                packs: Vec::new(),
                isa: crate::isa::selected(),
            };
        }
        let boxes: Vec<Aabb> = triangles.par_iter().map(triangle_box).collect();
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
        let chunked = aabbs.len() >= CHUNKED_FROM * chunk;
        let mut bvh2 = if chunked {
            build_chunked(&aabbs, chunk)
        } else {
            on_build_thread(|| build_bvh2(&aabbs, (0..aabbs.len() as u32).collect()))
        };
        drop(aabbs);
        on_build_thread(|| groups.expand(&mut bvh2));
        let (nodes, packs) = if chunked {
            on_build_threads(rayon::current_num_threads(), || {
                Collapse::run(
                    &bvh2,
                    triangles,
                    (chunk / PARALLEL_COLLAPSE_DIVISOR).max(PACK + 1),
                )
            })
        } else {
            on_build_thread(|| Collapse::run(&bvh2, triangles, usize::MAX))
        };
        Bvh {
            nodes,
            packs,
            isa: crate::isa::selected(),
        }
    }

    /// Inner nodes (the root first); for tests and statistics.
    pub fn nodes(&self) -> &[Node8] {
        &self.nodes
    }

    /// Leaves; for tests and statistics.
    pub fn packs(&self) -> &[TriPack] {
        &self.packs
    }

    /// Original triangle indices in leaf order (each triangle exactly once).
    pub fn leaf_order(&self) -> impl Iterator<Item = u32> + '_ {
        self.packs
            .iter()
            .flat_map(|p| p.prim)
            .filter(|&i| i != EMPTY)
    }

    /// Levels of inner nodes on the longest path from the root (0 for an empty tree).
    pub fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut stack = Vec::new();
        if !self.nodes.is_empty() {
            stack.push((0u32, 1usize));
        }
        while let Some((n, d)) = stack.pop() {
            deepest = deepest.max(d);
            for &c in &self.nodes[n as usize].child {
                if c != EMPTY && c & LEAF == 0 {
                    stack.push((c, d + 1));
                }
            }
        }
        deepest
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
        let hit = if self.isa.wide_nodes() {
            // SAFETY: `isa` is Avx2 or Avx512 only on a CPU with AVX2 (`set_isa`, `isa::selected`).
            unsafe { self.traverse_avx2::<false>(org, dir, tmax, needs_filter, filter) }
        } else {
            self.traverse::<false, false>(org, dir, tmax, needs_filter, filter)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let hit = self.traverse::<false, false>(org, dir, tmax, needs_filter, filter);
        (hit.prim != NO_HIT).then_some(hit)
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
        if self.isa.wide_nodes() {
            // SAFETY: as in `intersect`.
            let hit = unsafe { self.traverse_avx2::<true>(org, dir, tmax, needs_filter, filter) };
            return hit.prim != NO_HIT;
        }
        self.traverse::<true, false>(org, dir, tmax, needs_filter, filter)
            .prim
            != NO_HIT
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
    ) -> Hit {
        self.traverse::<ANY, true>(org, dir, tmax, needs_filter, filter)
    }

    /// One query's [`Walk`] to its end. `WIDE` takes the AVX2 node test: only from
    /// `traverse_avx2`.
    ///
    /// Returns the hit, or one with `prim` [`NO_HIT`]. An `Option<Hit>` came back through
    /// memory that the caller then read with loads wider than the callee's stores, which have
    /// to wait for those stores to retire (store forwarding fails): 4% of the Cornell box's time.
    #[inline(always)]
    fn traverse<const ANY: bool, const WIDE: bool>(
        &self,
        org: Vec3A,
        dir: Vec3A,
        tmax: f32,
        needs_filter: &impl Fn(u32) -> bool,
        filter: &mut impl FnMut(u32, f32, f32) -> bool,
    ) -> Hit {
        let mut walk = Walk::<ANY>::new(org, dir, tmax);
        let mut live = !self.nodes.is_empty() && walkable(org, dir);
        while live {
            live = walk.step::<WIDE>(self, needs_filter, filter);
        }
        walk.best
    }

    /// An any-hit query (`occluded`'s) and a closest-hit query (`intersect`'s) together, their
    /// steps interleaved: two independent chains of dependent loads and tests that the CPU can
    /// overlap, where one query after the other left it waiting on each in turn. Each query
    /// visits exactly the nodes it would alone, in the same order: the same results.
    #[inline(always)]
    pub fn occluded_and_intersect(
        &self,
        shadow: Query<'_, impl Fn(u32) -> bool, impl FnMut(u32, f32, f32) -> bool>,
        ray: Query<'_, impl Fn(u32) -> bool, impl FnMut(u32, f32, f32) -> bool>,
    ) -> (bool, Option<Hit>) {
        #[cfg(target_arch = "x86_64")]
        let (blocked, hit) = if self.isa.wide_nodes() {
            // SAFETY: as in `intersect`.
            unsafe { self.pair_avx2(shadow, ray) }
        } else {
            self.pair::<false>(shadow, ray)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let (blocked, hit) = self.pair::<false>(shadow, ray);
        (blocked.prim != NO_HIT, (hit.prim != NO_HIT).then_some(hit))
    }

    /// [`Bvh::pair`] compiled for AVX2.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn pair_avx2(
        &self,
        shadow: Query<'_, impl Fn(u32) -> bool, impl FnMut(u32, f32, f32) -> bool>,
        ray: Query<'_, impl Fn(u32) -> bool, impl FnMut(u32, f32, f32) -> bool>,
    ) -> (Hit, Hit) {
        self.pair::<true>(shadow, ray)
    }

    #[inline(always)]
    fn pair<const WIDE: bool>(
        &self,
        shadow: Query<'_, impl Fn(u32) -> bool, impl FnMut(u32, f32, f32) -> bool>,
        ray: Query<'_, impl Fn(u32) -> bool, impl FnMut(u32, f32, f32) -> bool>,
    ) -> (Hit, Hit) {
        let (Query(a_ray, a_needs, a_filter), Query(b_ray, b_needs, b_filter)) = (shadow, ray);
        let mut a = Walk::<true>::new(a_ray.0, a_ray.1, a_ray.2);
        let mut b = Walk::<false>::new(b_ray.0, b_ray.1, b_ray.2);
        let some = !self.nodes.is_empty();
        let mut a_live = some && walkable(a_ray.0, a_ray.1);
        let mut b_live = some && walkable(b_ray.0, b_ray.1);
        while a_live && b_live {
            a_live = a.step::<WIDE>(self, a_needs, a_filter);
            b_live = b.step::<WIDE>(self, b_needs, b_filter);
        }
        while a_live {
            a_live = a.step::<WIDE>(self, a_needs, a_filter);
        }
        while b_live {
            b_live = b.step::<WIDE>(self, b_needs, b_filter);
        }
        (a.best, b.best)
    }
}

/// Whether a ray can be walked: its origin and direction finite. The slab test of a ray with a
/// NaN or infinite coordinate compares NaNs, which `max` and `min` turn into passing lanes: the
/// empty slots of a node (`EMPTY` children) would be visited. Such a ray hits nothing. (A scene
/// with coordinates near 1e30 made them; the walk then read far outside the leaf array and the
/// renderer crashed: `tests/hostile_scenes.rs`.)
#[inline(always)]
fn walkable(org: Vec3A, dir: Vec3A) -> bool {
    org.is_finite() && dir.is_finite()
}

/// One query of [`Bvh::occluded_and_intersect`]: the ray (origin, direction, `tmax`), which
/// triangles need the filter, and the filter (as [`Bvh::intersect`] takes them).
pub struct Query<'a, N, F>(pub (Vec3A, Vec3A, f32), pub &'a N, pub &'a mut F);

/// One query's traversal as a state machine: [`Walk::step`] visits one node or leaf and moves
/// to the next, so that two queries can take turns ([`Bvh::occluded_and_intersect`]). Depth
/// first; a closest-hit query (`ANY` false) visits the children a ray overlaps nearest first
/// and skips popped entries beyond the best hit so far; an any-hit query stops at the first
/// accepted hit. `WIDE` takes the AVX2 node test: only from functions compiled for AVX2.
/// Both node tests compute the same bits, so every path visits the same nodes in the same
/// order.
struct Walk<const ANY: bool> {
    ray: RayData,
    /// The hit so far, `prim` [`NO_HIT`] for none (its `t` the query's `tmax`).
    best: Hit,
    stack: Stack,
    /// The node or leaf to visit next.
    cur: u32,
}

impl<const ANY: bool> Walk<ANY> {
    #[inline(always)]
    fn new(org: Vec3A, dir: Vec3A, tmax: f32) -> Self {
        let safe = |d: f32| {
            if d.abs() < 1e-30 {
                1e-30f32.copysign(d)
            } else {
                d
            }
        };
        let inv = Vec3A::new(1.0 / safe(dir.x), 1.0 / safe(dir.y), 1.0 / safe(dir.z));
        Walk {
            ray: RayData {
                org,
                inv,
                neg: [inv.x < 0.0, inv.y < 0.0, inv.z < 0.0],
                o4: [0, 1, 2].map(|a| Vec4::splat(org[a])),
                d4: [0, 1, 2].map(|a| Vec4::splat(dir[a])),
            },
            best: Hit {
                t: tmax,
                u: 0.0,
                v: 0.0,
                prim: NO_HIT,
            },
            stack: Stack::new(),
            cur: 0,
        }
    }

    /// Visits `cur` (the tree must not be empty) and moves to the next node or leaf to visit;
    /// false when the walk is over.
    #[inline(always)]
    fn step<const WIDE: bool>(
        &mut self,
        bvh: &Bvh,
        needs_filter: &impl Fn(u32) -> bool,
        filter: &mut impl FnMut(u32, f32, f32) -> bool,
    ) -> bool {
        let cur = self.cur;
        if cur & LEAF == 0 {
            // SAFETY: inner references index `nodes` (built by `Collapse`), and only slots
            // that hold one pass the node test: an empty slot's box (+inf to -inf) fails it for
            // every ray with a finite origin and direction, which `walkable` lets in alone
            // (its slab distances are +inf to -inf, never NaN). Checked indexing cost 2% of
            // the Cornell box's speed.
            let node = unsafe { bvh.nodes.get_unchecked(cur as usize) };
            let (mask, tnear) = node_hits::<WIDE>(node, &self.ray, self.best.t);
            if mask != 0 {
                let first = mask.trailing_zeros() as usize;
                let rest = mask & (mask - 1);
                if rest == 0 {
                    self.cur = node.child[first];
                    return true;
                }
                if ANY {
                    // Any order finds a blocker; lane order is the cheapest.
                    let mut m = rest;
                    while m != 0 {
                        let j = m.trailing_zeros() as usize;
                        m &= m - 1;
                        self.stack.push(node.child[j], tnear[j]);
                    }
                    self.cur = node.child[first];
                    return true;
                }
                // Farthest first in `order`, so that the nearest is visited next; equal
                // distances go in lane order.
                let mut order = [(0.0f32, 0u32); WIDTH];
                let mut len = 0;
                let mut m = mask;
                while m != 0 {
                    let j = m.trailing_zeros() as usize;
                    m &= m - 1;
                    let entry = (tnear[j], node.child[j]);
                    let mut i = len;
                    while i > 0 && order[i - 1].0 <= entry.0 {
                        order[i] = order[i - 1];
                        i -= 1;
                    }
                    order[i] = entry;
                    len += 1;
                }
                for &(t, c) in &order[..len - 1] {
                    self.stack.push(c, t);
                }
                self.cur = order[len - 1].1;
                return true;
            }
        } else {
            // SAFETY: leaf references index `packs` (built by `Collapse`); empty slots are
            // never visited, as above.
            let pack = unsafe { bvh.packs.get_unchecked((cur & !LEAF) as usize) };
            let (mask, t, u, v) = leaf_hits(pack, &self.ray, self.best.t);
            if mask != 0 {
                let (t, u, v) = (t.to_array(), u.to_array(), v.to_array());
                let mut m = mask;
                while m != 0 {
                    let j = m.trailing_zeros() as usize;
                    m &= m - 1;
                    if t[j] < self.best.t {
                        let prim = pack.prim[j];
                        if !needs_filter(prim) || filter(prim, u[j], v[j]) {
                            self.best = Hit {
                                t: t[j],
                                u: u[j],
                                v: v[j],
                                prim,
                            };
                            if ANY {
                                return false;
                            }
                        }
                    }
                }
            }
        }
        loop {
            let Some((c, t)) = self.stack.pop() else {
                return false;
            };
            if t <= self.best.t {
                self.cur = c;
                return true;
            }
        }
    }
}

#[inline(always)]
fn node_hits<const WIDE: bool>(node: &Node8, ray: &RayData, tmax: f32) -> (u32, [f32; WIDTH]) {
    #[cfg(target_arch = "x86_64")]
    if WIDE {
        // SAFETY: WIDE is set only inside `traverse_avx2`, which runs only with AVX2.
        return unsafe { node_hits_avx2(node, ray, tmax) };
    }
    node_hits_4x2(node, ray, tmax)
}

/// Which children of `node` the ray overlaps within `[0, tmax]` (bit `j`: child `j`), and the
/// distance at which it enters each box: the slab test, `(plane - org) * inv` per axis, then the
/// largest entry (and 0) against the smallest exit (and `tmax`). Two halves of four lanes.
#[inline(always)]
fn node_hits_4x2(node: &Node8, ray: &RayData, tmax: f32) -> (u32, [f32; WIDTH]) {
    let mut tnear = [0.0f32; WIDTH];
    let mut mask = 0u32;
    for half in 0..2 {
        let k = half * 4;
        let slab = |axis: usize| {
            let (near, far) = if ray.neg[axis] {
                (&node.hi[axis], &node.lo[axis])
            } else {
                (&node.lo[axis], &node.hi[axis])
            };
            let (o, i) = (Vec4::splat(ray.org[axis]), Vec4::splat(ray.inv[axis]));
            (
                (Vec4::from_slice(&near[k..k + 4]) - o) * i,
                (Vec4::from_slice(&far[k..k + 4]) - o) * i,
            )
        };
        let (x0, x1) = slab(0);
        let (y0, y1) = slab(1);
        let (z0, z1) = slab(2);
        let t0 = x0.max(y0).max(z0).max(Vec4::ZERO);
        let t1 = x1.min(y1).min(z1).min(Vec4::splat(tmax));
        mask |= t0.cmple(t1).bitmask() << k;
        t0.write_to_slice(&mut tnear[k..k + 4]);
    }
    (mask, tnear)
}

/// [`node_hits_4x2`] on all 8 children at once: the same IEEE operations per lane, in the same
/// order (subtract, then multiply; max and min with the same operand order as glam's SSE
/// `Vec4`), so the mask and distances are the same bit for bit.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn node_hits_avx2(node: &Node8, ray: &RayData, tmax: f32) -> (u32, [f32; WIDTH]) {
    use std::arch::x86_64::*;
    let slab = |axis: usize| {
        let (near, far) = if ray.neg[axis] {
            (&node.hi[axis], &node.lo[axis])
        } else {
            (&node.lo[axis], &node.hi[axis])
        };
        let (o, i) = (_mm256_set1_ps(ray.org[axis]), _mm256_set1_ps(ray.inv[axis]));
        // SAFETY: each reads the 8 floats of one array.
        let (near, far) = unsafe {
            (
                _mm256_loadu_ps(near.as_ptr()),
                _mm256_loadu_ps(far.as_ptr()),
            )
        };
        (
            _mm256_mul_ps(_mm256_sub_ps(near, o), i),
            _mm256_mul_ps(_mm256_sub_ps(far, o), i),
        )
    };
    let (x0, x1) = slab(0);
    let (y0, y1) = slab(1);
    let (z0, z1) = slab(2);
    let t0 = _mm256_max_ps(
        _mm256_max_ps(_mm256_max_ps(x0, y0), z0),
        _mm256_setzero_ps(),
    );
    let t1 = _mm256_min_ps(
        _mm256_min_ps(_mm256_min_ps(x1, y1), z1),
        _mm256_set1_ps(tmax),
    );
    let mask = _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_LE_OQ>(t0, t1)) as u32;
    let mut tnear = [0.0f32; WIDTH];
    // SAFETY: writes the 8 floats of `tnear`.
    unsafe { _mm256_storeu_ps(tnear.as_mut_ptr(), t0) };
    (mask, tnear)
}

/// Möller–Trumbore on the four triangles of a leaf at once: lane `j` computes exactly what
/// [`intersect_tri`] computes for that triangle (the same operations in the same order), and bit
/// `j` of the mask says whether it hits in `(1e-9, tmax)`. Returns (mask, t, u, v).
#[inline(always)]
fn leaf_hits(pack: &TriPack, ray: &RayData, tmax: f32) -> (u32, Vec4, Vec4, Vec4) {
    let ld = |a: &[[f32; PACK]; 3]| a.map(Vec4::from_array);
    let ([v0x, v0y, v0z], [e1x, e1y, e1z], [e2x, e2y, e2z]) =
        (ld(&pack.v0), ld(&pack.e1), ld(&pack.e2));
    let [ox, oy, oz] = ray.o4;
    let [dx, dy, dz] = ray.d4;
    // p = cross(dir, e2), det = e1 . p
    let px = dy * e2z - dz * e2y;
    let py = dz * e2x - dx * e2z;
    let pz = dx * e2y - dy * e2x;
    let det = (e1x * px + e1y * py) + e1z * pz;
    let inv_det = Vec4::ONE / det;
    // s = org - v0, u = (s . p) / det
    let (sx, sy, sz) = (ox - v0x, oy - v0y, oz - v0z);
    let u = ((sx * px + sy * py) + sz * pz) * inv_det;
    // q = cross(s, e1), v = (dir . q) / det, t = (e2 . q) / det
    let qx = sy * e1z - sz * e1y;
    let qy = sz * e1x - sx * e1z;
    let qz = sx * e1y - sy * e1x;
    let v = ((dx * qx + dy * qy) + dz * qz) * inv_det;
    let t = ((e2x * qx + e2y * qy) + e2z * qz) * inv_det;
    let ok = det.abs().cmpge(Vec4::splat(1e-20))
        & u.cmpge(Vec4::ZERO)
        & u.cmple(Vec4::ONE)
        & v.cmpge(Vec4::ZERO)
        & (u + v).cmple(Vec4::ONE)
        & t.cmpgt(Vec4::splat(1e-9))
        & t.cmplt(Vec4::splat(tmax));
    (ok.bitmask(), t, u, v)
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
        check_build_against_brute_force(offset, scale, seed, Bvh::build);
    }

    /// [`check_against_brute_force`] with a tree from `build`; returns the tree and its
    /// triangles.
    fn check_build_against_brute_force(
        offset: Vec3A,
        scale: f32,
        seed: u64,
        build: impl Fn(&[[Vec3A; 3]]) -> Bvh,
    ) -> (Bvh, Vec<[Vec3A; 3]>) {
        let mut s = seed;
        let mut tris: Vec<[Vec3A; 3]> = (0..3000)
            .map(|_| {
                let c = Vec3A::new(lcg(&mut s), lcg(&mut s), lcg(&mut s)) * 10.0;
                [0, 1, 2].map(|_| {
                    offset + (c + Vec3A::new(lcg(&mut s), lcg(&mut s), lcg(&mut s)) - 0.5) * scale
                })
            })
            .collect();
        // Copies of a few triangles: groups of equal boxes (see `Groups`).
        for i in 0..600 {
            tris.push(tris[i % 7]);
        }
        let mut bvh = build(&tris);
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
        (bvh, tris)
    }

    /// Counting a tree's triangles in parallel gives the counts the serial walk gives.
    #[test]
    fn subtree_counts_in_parallel_are_the_serial_ones() {
        let mut s = 29u64;
        let aabbs: Vec<Aabb> = (0..5000)
            .map(|_| {
                let c = Vec3A::new(lcg(&mut s), lcg(&mut s), lcg(&mut s)) * 10.0;
                Aabb::new(c, c + Vec3A::splat(0.3))
            })
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        // A plain tree, and one joined from chunks (with nodes the root does not reach).
        let plain = on_build_thread(|| build_bvh2(&aabbs, (0..aabbs.len() as u32).collect()));
        let joined = pool.install(|| build_chunked(&aabbs, 64));
        for bvh2 in [plain, joined] {
            let serial = subtree_counts_in_parallel_from(&bvh2, usize::MAX);
            assert_eq!(serial[0], 5000);
            let parallel = pool.install(|| subtree_counts_in_parallel_from(&bvh2, 0));
            assert_eq!(serial, parallel);
        }
    }

    /// A large scene's tree is built in chunks, several at once ([`build_chunked`]): it must
    /// find every hit exactly (as brute force does) and be the same tree on any thread pool.
    /// Chunks of 32 primitives here (3000 groups of equal boxes, 94 chunks' worth, cut into 128),
    /// of 2^16 in a real scene.
    #[test]
    fn chunked_build_is_exact_and_the_same_on_any_pool() {
        let on_pool = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            check_build_against_brute_force(Vec3A::new(3.0, -2.0, 1.0), 1.0, 17, |t| {
                pool.install(|| Bvh::build_in_chunks_of(t, 32))
            })
        };
        let ((one, tris), (three, _)) = (on_pool(1), on_pool(3));
        assert!(one.nodes() == three.nodes(), "node arrays differ");
        assert!(one.packs() == three.packs(), "leaves differ");
        // It was built in chunks: the tree over all the triangles at once differs.
        assert!(Bvh::build(&tris).nodes() != one.nodes());
        assert!(one.depth() < 40, "depth {}", one.depth());
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
        let mut prev = (offset, Vec3A::X, f32::INFINITY);
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
            // Traced together with the previous ray as a shadow ray: the same answers as each
            // alone (which the lines above and below check against brute force).
            let (po, pd, pt) = prev;
            let alone = bvh.occluded(po, pd, pt, needs, &mut |p, u, v| accept(p, u, v));
            let (blocked, hit) = bvh.occluded_and_intersect(
                Query((po, pd, pt), needs, &mut |p, u, v| accept(p, u, v)),
                Query((o, d, tmax), needs, &mut |p, u, v| accept(p, u, v)),
            );
            assert_eq!(blocked, alone, "ray {k}: shadow ray traced in a pair");
            assert!(
                same(hit, got),
                "ray {k} traced in a pair: {hit:?} vs {got:?}"
            );
            prev = (o, d, tmax);
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

    /// Inputs on which obvhs's PLOC alone builds in quadratic time and chains the tree: copies of
    /// one triangle, rows of evenly spaced equal triangles, many triangles per point.
    #[test]
    fn ties_build_fast_shallow_and_correct() {
        ties_build_fast_shallow_and_correct_with(Bvh::build);
    }

    /// The same inputs built in chunks of 1024 primitives (the ties then also meet the cut's
    /// median splits).
    #[test]
    fn ties_build_fast_shallow_and_correct_in_chunks() {
        ties_build_fast_shallow_and_correct_with(|t| Bvh::build_in_chunks_of(t, 1024));
    }

    fn ties_build_fast_shallow_and_correct_with(build: impl Fn(&[[Vec3A; 3]]) -> Bvh) {
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
        let bvh = build(&tris);
        let took = start.elapsed();
        // Without the grouping and padding this took 18 s and the tree was 10000 levels deep.
        assert!(took.as_secs_f32() < 2.0, "{took:?}");
        let d = bvh.depth();
        assert!(d <= 16, "depth {d}");
        let mut sorted: Vec<u32> = bvh.leaf_order().collect();
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
    fn stack_spills_to_the_heap_and_stays_last_in_first_out() {
        let mut stack = Stack::new();
        for i in 0..(INLINE_STACK as u32 * 3) {
            stack.push(i, i as f32);
        }
        for i in (0..(INLINE_STACK as u32 * 3)).rev() {
            assert_eq!(stack.pop(), Some((i, i as f32)));
            if i % 50 == 0 {
                // Pushing again in the middle keeps the order.
                stack.push(i + 1000, 0.0);
                assert_eq!(stack.pop(), Some((i + 1000, 0.0)));
            }
        }
        assert_eq!(stack.pop(), None);
    }

    /// The AVX2 node test gives the portable one's mask and entry distances bit for bit, on
    /// random boxes (some empty) and rays (some along an axis, some with -0.0 components).
    #[test]
    fn node_tests_agree_bit_for_bit() {
        #[cfg(target_arch = "x86_64")]
        if Isa::Avx2.is_supported() {
            let mut s = 17u64;
            for k in 0..20_000 {
                let mut node = Node8::EMPTY;
                for slot in 0..WIDTH {
                    if lcg(&mut s) < 0.1 {
                        continue;
                    }
                    for axis in 0..3 {
                        let (a, b) = (lcg(&mut s) * 8.0 - 4.0, lcg(&mut s) * 8.0 - 4.0);
                        node.lo[axis][slot] = a.min(b);
                        node.hi[axis][slot] = a.max(b);
                    }
                    node.child[slot] = slot as u32;
                }
                let o = Vec3A::new(lcg(&mut s), lcg(&mut s), lcg(&mut s)) * 10.0 - 5.0;
                let mut d = Vec3A::new(lcg(&mut s), lcg(&mut s), lcg(&mut s)) - 0.5;
                match k % 4 {
                    1 => d.y = 0.0,
                    2 => d = Vec3A::new(-0.0, -0.0, 1.0),
                    _ => {}
                }
                let inv = Vec3A::new(1.0 / d.x, 1.0 / d.y, 1.0 / d.z)
                    .clamp(Vec3A::splat(-1e30), Vec3A::splat(1e30));
                let ray = RayData {
                    org: o,
                    inv,
                    neg: [inv.x < 0.0, inv.y < 0.0, inv.z < 0.0],
                    o4: [0, 1, 2].map(|a| Vec4::splat(o[a])),
                    d4: [0, 1, 2].map(|a| Vec4::splat(d[a])),
                };
                let tmax = if k % 3 == 0 {
                    f32::INFINITY
                } else {
                    lcg(&mut s) * 6.0
                };
                let (m4, t4) = node_hits_4x2(&node, &ray, tmax);
                // SAFETY: checked above that the CPU has AVX2.
                let (m8, t8) = unsafe { node_hits_avx2(&node, &ray, tmax) };
                assert_eq!(m4, m8, "ray {k}");
                for j in 0..WIDTH {
                    if m4 & (1 << j) != 0 {
                        assert_eq!(t4[j].to_bits(), t8[j].to_bits(), "ray {k} child {j}");
                    }
                }
            }
        }
    }

    /// The four-lane leaf test computes exactly what `intersect_tri` computes for each triangle.
    #[test]
    fn leaf_test_matches_the_scalar_triangle_test_bit_for_bit() {
        let mut s = 23u64;
        let mut hits = 0;
        for k in 0..20_000 {
            let tris: Vec<[Vec3A; 3]> = (0..1 + k % PACK)
                .map(|_| {
                    [0, 1, 2].map(|_| Vec3A::new(lcg(&mut s), lcg(&mut s), lcg(&mut s)) * 2.0 - 1.0)
                })
                .collect();
            let mut c = Collapse {
                bvh2: &Bvh2::default(),
                triangles: &tris,
                counts: &[],
                parallel_from: usize::MAX,
                nodes: Vec::new(),
                packs: Vec::new(),
            };
            let (r, _) = c.leaf(&(0..tris.len() as u32).collect::<Vec<_>>());
            let pack = c.packs[(r & !LEAF) as usize];
            let o = Vec3A::new(lcg(&mut s), lcg(&mut s), lcg(&mut s)) * 4.0 - 2.0;
            // Aimed near one triangle's centre, so that many rays hit (about a fifth).
            let [a, b, c] = tris[k % tris.len()];
            let aim = (a + b + c) / 3.0 + (Vec3A::new(lcg(&mut s), lcg(&mut s), 0.0) - 0.5);
            let d = (aim - o).normalize();
            let ray = RayData {
                org: o,
                inv: Vec3A::ONE,
                neg: [false; 3],
                o4: [0, 1, 2].map(|a| Vec4::splat(o[a])),
                d4: [0, 1, 2].map(|a| Vec4::splat(d[a])),
            };
            let tmax = if k % 2 == 0 {
                f32::INFINITY
            } else {
                lcg(&mut s) * 3.0
            };
            let (mask, t, u, v) = leaf_hits(&pack, &ray, tmax);
            for (j, p) in prepare(&tris).iter().enumerate() {
                let scalar = intersect_tri(p, o, d, tmax).map(|(t, u, v)| (t, u, v).map_bits());
                let lane = (mask & (1 << j) != 0).then(|| (t[j], u[j], v[j]).map_bits());
                assert_eq!(lane, scalar, "case {k} triangle {j}");
                hits += scalar.is_some() as u32;
            }
            assert_eq!(mask >> tris.len(), 0, "an unused lane hit");
        }
        assert!(hits > 3000, "only {hits} hits");
    }

    trait MapBits {
        fn map_bits(self) -> (u32, u32, u32);
    }
    impl MapBits for (f32, f32, f32) {
        fn map_bits(self) -> (u32, u32, u32) {
            (self.0.to_bits(), self.1.to_bits(), self.2.to_bits())
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
