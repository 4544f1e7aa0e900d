//! `bvhbench`: rayfarm's BVHs against the `obvhs` and `bvh` crates on the shipped scenes.
//!
//! "ours" is rayfarm's own binned-SAH BVH2 ([`own_bvh`]), which the renderer used until it
//! switched to obvhs's CWBVH; "rayfarm" is what the renderer uses now
//! (`rayfarm_render::bvh::Bvh`: obvhs's PLOC tree built on one thread, collapsed into our own
//! 8-wide tree with four-triangle leaves). The obvhs CWBVH rows are close to what the renderer
//! traced from November to December 2026.
//!
//! For every scene each BVH is built (on all cores where the crate can), then the same two ray
//! sets are traced through each: primary rays of the automatic camera at 512x512 and incoherent
//! rays (origins on random triangles, uniformly random directions, fixed seed). Every BVH uses
//! rayfarm's own ray-triangle test on the same prepared triangles, so the comparison is of the
//! trees and their traversal only. Each measurement is repeated and the best run kept; the
//! repetitions are interleaved across BVHs so a burst of load elsewhere hurts all of them alike.
//! Closest-hit distances of every BVH are checked against ours, and a few disagreements are
//! refereed by brute force. The `bvh` crate has no closest-hit query, so its nearest-first
//! iterator is used with an early exit; obvhs's CWBVH gets an origin shift that undoes its fixed
//! minimum box distance (see [`CWBVH_ORIGIN_SHIFT`]).
//!
//! ```text
//! cargo run --release -p rayfarm-bvhbench -- [--reps N] [--build-reps N] [--rays N]
//!     [--res N] [--bvhs name,name,...] [SCENE...]
//! ```

mod own_bvh;

use glam::Vec3A;
use own_bvh::OwnBvh;
use rayfarm_render::bvh::{intersect_tri, Bvh as RayfarmBvh, Tri};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Scenes measured when none are named, relative to the workspace root.
const DEFAULT_SCENES: [&str; 4] = [
    "../shared/scenes/cornell-box/converted/cornell_box.gltf",
    "../shared/scenes/metal-rough-spheres-no-textures/glTF/MetalRoughSpheresNoTextures.gltf",
    "../shared/scenes/water-bottle/glTF/WaterBottle.gltf",
    "../shared/scenes/lights-punctual-lamp/glTF/LightsPunctualLamp.gltf",
];

/// Every BVH variant this benchmark knows, in table order. `ours` is the reference for the
/// hit-distance check. The `obvhs-cwbvh-*` variants use the origin-shift workaround described
/// at [`CWBVH_ORIGIN_SHIFT`]; `-raw` is obvhs as shipped (not in the default set).
const ALL_BVHS: [&str; 7] = [
    "ours",
    "rayfarm",
    "obvhs-cwbvh-fast",
    "obvhs-cwbvh-medium",
    "obvhs-cwbvh-medium-raw",
    "obvhs-bvh2-medium",
    "bvh",
];

/// What runs when `--bvhs` is not given.
const DEFAULT_BVHS: [&str; 6] = [
    "ours",
    "rayfarm",
    "obvhs-cwbvh-fast",
    "obvhs-cwbvh-medium",
    "obvhs-bvh2-medium",
    "bvh",
];

/// Relative tolerance on hit distance for two BVHs to agree on a ray.
const REL_TOL: f32 = 1e-4;
/// Rays handed to a worker at a time in the multi-threaded runs.
const CHUNK: usize = 256;

struct Opts {
    scenes: Vec<PathBuf>,
    reps: usize,
    build_reps: usize,
    incoherent_rays: usize,
    res: u32,
    bvhs: Vec<String>,
}

fn parse_args() -> Result<Opts, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut o = Opts {
        scenes: Vec::new(),
        reps: 3,
        build_reps: 3,
        incoherent_rays: 512 * 512,
        res: 512,
        bvhs: DEFAULT_BVHS.iter().map(|s| s.to_string()).collect(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<usize, String> {
            args.next()
                .and_then(|v| v.parse().ok())
                .filter(|&v: &usize| v > 0)
                .ok_or_else(|| format!("{name} needs a positive integer"))
        };
        match a.as_str() {
            "--reps" => o.reps = num("--reps")?,
            "--build-reps" => o.build_reps = num("--build-reps")?,
            "--rays" => o.incoherent_rays = num("--rays")?,
            "--res" => o.res = num("--res")? as u32,
            "--bvhs" => {
                let list = args.next().ok_or("--bvhs needs a comma-separated list")?;
                o.bvhs = list.split(',').map(|s| s.trim().to_string()).collect();
                if let Some(bad) = o.bvhs.iter().find(|b| !ALL_BVHS.contains(&b.as_str())) {
                    return Err(format!(
                        "unknown BVH {bad:?}; known: {}",
                        ALL_BVHS.join(", ")
                    ));
                }
                if o.bvhs.first().map(String::as_str) != Some("ours") {
                    o.bvhs.retain(|b| b != "ours");
                    o.bvhs.insert(0, "ours".into());
                }
            }
            "-h" | "--help" => {
                return Err(format!(
                    "usage: bvhbench [--reps N] [--build-reps N] [--rays N] [--res N] \
                     [--bvhs {}] [SCENE...]",
                    ALL_BVHS.join(",")
                ))
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            s => o.scenes.push(PathBuf::from(s)),
        }
    }
    if o.scenes.is_empty() {
        o.scenes = DEFAULT_SCENES.iter().map(|s| root.join(s)).collect();
    }
    Ok(o)
}

/// splitmix64: a small, fixed-seed generator so the incoherent rays are the same every run.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// A ray set: (origin, unit direction) pairs.
struct RaySet {
    name: &'static str,
    rays: Vec<[Vec3A; 2]>,
}

fn primary_rays(scene: &rayfarm_scene::CompiledScene, res: u32) -> RaySet {
    let cam = rayfarm_scene::camera::auto_camera(scene, 1.0);
    let mut rays = Vec::with_capacity((res * res) as usize);
    for y in 0..res {
        for x in 0..res {
            let (o, d) = rayfarm_render::camera_ray(&cam, res, res, x as f32 + 0.5, y as f32 + 0.5);
            rays.push([o, d]);
        }
    }
    RaySet {
        name: "primary",
        rays,
    }
}

/// Origins at uniformly random points of uniformly chosen triangles, nudged off the surface
/// towards the side the direction points to (so no BVH has to decide a t≈0 self-hit); directions
/// uniform on the sphere.
fn incoherent_rays(tris: &[[Vec3A; 3]], diag: f32, n: usize) -> RaySet {
    let mut rng = SplitMix(0x0005_EED0_FBEE);
    let eps = 1e-5 * diag;
    let mut rays = Vec::with_capacity(n);
    let mut attempts = 0usize;
    while rays.len() < n && attempts < 20 * n + 1000 {
        attempts += 1;
        let [a, b, c] = tris[(rng.next_u64() % tris.len() as u64) as usize];
        let normal = (b - a).cross(c - a).normalize_or_zero();
        if normal == Vec3A::ZERO {
            continue;
        }
        let su = rng.next_f32().sqrt();
        let v = rng.next_f32();
        let (b0, b1) = (1.0 - su, v * su);
        let p = a * b0 + b * b1 + c * (1.0 - b0 - b1);
        let z = 1.0 - 2.0 * rng.next_f32();
        let r = (1.0 - z * z).max(0.0).sqrt();
        let phi = std::f32::consts::TAU * rng.next_f32();
        let d = Vec3A::new(r * phi.cos(), r * phi.sin(), z);
        let side = if normal.dot(d) >= 0.0 { 1.0 } else { -1.0 };
        rays.push([p + normal * (side * eps), d]);
    }
    RaySet {
        name: "incoherent",
        rays,
    }
}

/// Closest hit distance, or infinity for a miss.
trait Tracer: Sync {
    fn closest(&self, o: Vec3A, d: Vec3A) -> f32;
}

/// A built BVH of any kind, traced over a whole ray set (the per-ray loop is monomorphised).
trait Candidate: Sync {
    fn trace(
        &self,
        rays: &[[Vec3A; 2]],
        out: &mut [f32],
        pool: Option<&rayon::ThreadPool>,
    ) -> Duration;
}

impl<T: Tracer> Candidate for T {
    fn trace(
        &self,
        rays: &[[Vec3A; 2]],
        out: &mut [f32],
        pool: Option<&rayon::ThreadPool>,
    ) -> Duration {
        let start = Instant::now();
        match pool {
            None => {
                for (r, t) in rays.iter().zip(out.iter_mut()) {
                    *t = self.closest(r[0], r[1]);
                }
            }
            Some(pool) => pool.install(|| {
                out.par_chunks_mut(CHUNK)
                    .zip(rays.par_chunks(CHUNK))
                    .for_each(|(out, rays)| {
                        for (r, t) in rays.iter().zip(out.iter_mut()) {
                            *t = self.closest(r[0], r[1]);
                        }
                    })
            }),
        }
        start.elapsed()
    }
}

// ---- ours -------------------------------------------------------------------------------------

impl Tracer for OwnBvh {
    #[inline]
    fn closest(&self, o: Vec3A, d: Vec3A) -> f32 {
        self.intersect(o, d, f32::INFINITY, &|_| false, &mut |_, _, _| true)
            .map_or(f32::INFINITY, |h| h.t)
    }
}

// ---- rayfarm (the renderer's BVH) -------------------------------------------------------------

impl Tracer for RayfarmBvh {
    #[inline]
    fn closest(&self, o: Vec3A, d: Vec3A) -> f32 {
        self.intersect(o, d, f32::INFINITY, &|_| false, &mut |_, _, _| true)
            .map_or(f32::INFINITY, |h| h.t)
    }
}

// ---- obvhs ------------------------------------------------------------------------------------

fn prep_tri([a, b, c]: [Vec3A; 3]) -> Tri {
    Tri {
        v0: a,
        e1: b - a,
        e2: c - a,
    }
}

/// Triangles laid out in the BVH's primitive order, so leaves index them directly.
fn reorder(tris: &[[Vec3A; 3]], primitive_indices: &[u32]) -> Vec<Tri> {
    primitive_indices
        .iter()
        .map(|&i| prep_tri(tris[i as usize]))
        .collect()
}

/// obvhs 0.4's CWBVH node test ignores `Ray::tmin` and skips every child box that the ray
/// leaves before t = 1e-4 (an absolute distance, `cwbvh::node::EPSILON`), so hits closer than
/// that to the origin are lost. Moving the origin that far back along the ray puts the cut at
/// t = 0 of the real ray; the triangle test still uses the real origin.
const CWBVH_ORIGIN_SHIFT: f32 = 1e-4;

struct ObvhsCw {
    bvh: obvhs::cwbvh::CwBvh,
    tris: Vec<Tri>,
    /// 0 for obvhs as it is, [`CWBVH_ORIGIN_SHIFT`] for the workaround.
    shift: f32,
}

impl Tracer for ObvhsCw {
    #[inline]
    fn closest(&self, o: Vec3A, d: Vec3A) -> f32 {
        let s = self.shift;
        let ray = obvhs::ray::Ray::new_inf(o - d * s, d);
        let mut hit = obvhs::ray::RayHit::none();
        let mut best = f32::INFINITY;
        self.bvh.ray_traverse(ray, &mut hit, |ray, i| {
            match intersect_tri(&self.tris[i], o, d, ray.tmax - s) {
                Some((t, _, _)) if t + s < ray.tmax => {
                    best = t;
                    t + s
                }
                _ => f32::INFINITY,
            }
        });
        best
    }
}

struct ObvhsBvh2 {
    bvh: obvhs::bvh2::Bvh2,
    tris: Vec<Tri>,
}

impl Tracer for ObvhsBvh2 {
    #[inline]
    fn closest(&self, o: Vec3A, d: Vec3A) -> f32 {
        let ray = obvhs::ray::Ray::new_inf(o, d);
        let mut hit = obvhs::ray::RayHit::none();
        self.bvh.ray_traverse(ray, &mut hit, |ray, i| {
            intersect_tri(&self.tris[i], o, d, ray.tmax).map_or(f32::INFINITY, |h| h.0)
        });
        hit.t
    }
}

// ---- bvh (svenstaro) --------------------------------------------------------------------------

struct BvhShape {
    aabb: bvh::aabb::Aabb<f32, 3>,
    node: usize,
    /// Index of the triangle.
    id: u32,
}

impl bvh::aabb::Bounded<f32, 3> for BvhShape {
    fn aabb(&self) -> bvh::aabb::Aabb<f32, 3> {
        self.aabb
    }
}

impl bvh::bounding_hierarchy::BHShape<f32, 3> for BvhShape {
    fn set_bh_node_index(&mut self, index: usize) {
        self.node = index;
    }
    fn bh_node_index(&self) -> usize {
        self.node
    }
}

struct BvhCrate {
    bvh: bvh::bvh::Bvh<f32, 3>,
    shapes: Vec<BvhShape>,
    /// In input order.
    tris: Vec<Tri>,
}

impl Tracer for BvhCrate {
    /// The crate has no closest-hit query; its nearest-first iterator (a heap ordered by box
    /// entry distance) is the best fit: stop once a leaf's box starts beyond the best hit.
    #[inline]
    fn closest(&self, o: Vec3A, d: Vec3A) -> f32 {
        let ray = bvh::ray::Ray::new(
            nalgebra::Point3::new(o.x, o.y, o.z),
            nalgebra::Vector3::new(d.x, d.y, d.z),
        );
        let mut best = f32::INFINITY;
        for shape in self.bvh.nearest_traverse_iterator(&ray, &self.shapes) {
            if best < f32::INFINITY {
                match ray.intersection_slice_for_aabb(&shape.aabb) {
                    Some((entry, _)) if entry <= best => {}
                    _ => break,
                }
            }
            if let Some((t, _, _)) = intersect_tri(&self.tris[shape.id as usize], o, d, best) {
                best = t;
            }
        }
        best
    }
}

// ---- building ---------------------------------------------------------------------------------

/// Builds `reps` times; returns the last BVH and the fastest build time.
fn timed<T>(reps: usize, mut build: impl FnMut() -> T) -> (T, Duration) {
    let mut best = Duration::MAX;
    let mut last: Option<T> = None;
    for _ in 0..reps {
        // Drop the previous tree first so its memory is not in the way.
        drop(last.take());
        let start = Instant::now();
        let b = build();
        best = best.min(start.elapsed());
        last = Some(b);
    }
    (last.expect("reps > 0"), best)
}

fn build(name: &str, tris: &[[Vec3A; 3]], reps: usize) -> (Box<dyn Candidate>, Duration) {
    use obvhs::BvhBuildParams;
    let otris: Vec<obvhs::triangle::Triangle> = tris
        .iter()
        .map(|t| obvhs::triangle::Triangle {
            v0: t[0],
            v1: t[1],
            v2: t[2],
        })
        .collect();
    let cw = |params: BvhBuildParams, shift: f32| {
        let (b, t) = timed(reps, || {
            let bvh = obvhs::cwbvh::builder::build_cwbvh_from_tris(
                &otris,
                params,
                &mut Duration::default(),
            );
            let tris = reorder(tris, &bvh.primitive_indices);
            ObvhsCw { bvh, tris, shift }
        });
        (Box::new(b) as Box<dyn Candidate>, t)
    };
    match name {
        "ours" => {
            let (b, t) = timed(reps, || OwnBvh::build(tris));
            (Box::new(b), t)
        }
        "rayfarm" => {
            let (b, t) = timed(reps, || RayfarmBvh::build(tris));
            (Box::new(b), t)
        }
        "obvhs-cwbvh-fast" => cw(BvhBuildParams::fast_build(), CWBVH_ORIGIN_SHIFT),
        "obvhs-cwbvh-medium" => cw(BvhBuildParams::medium_build(), CWBVH_ORIGIN_SHIFT),
        "obvhs-cwbvh-medium-raw" => cw(BvhBuildParams::medium_build(), 0.0),
        "obvhs-bvh2-medium" => {
            let (b, t) = timed(reps, || {
                let bvh = obvhs::bvh2::builder::build_bvh2_from_tris(
                    &otris,
                    BvhBuildParams::medium_build(),
                    &mut Duration::default(),
                );
                let tris = reorder(tris, &bvh.primitive_indices);
                ObvhsBvh2 { bvh, tris }
            });
            (Box::new(b), t)
        }
        "bvh" => {
            use bvh::bounding_hierarchy::BoundingHierarchy;
            let shapes = || -> Vec<BvhShape> {
                tris.iter()
                    .enumerate()
                    .map(|(i, t)| {
                        let lo = t[0].min(t[1]).min(t[2]);
                        let hi = t[0].max(t[1]).max(t[2]);
                        BvhShape {
                            aabb: bvh::aabb::Aabb::with_bounds(
                                nalgebra::Point3::new(lo.x, lo.y, lo.z),
                                nalgebra::Point3::new(hi.x, hi.y, hi.z),
                            ),
                            node: 0,
                            id: i as u32,
                        }
                    })
                    .collect()
            };
            let mut best = Duration::MAX;
            let mut built = None;
            for _ in 0..reps {
                drop(built.take());
                let mut s = shapes();
                let start = Instant::now();
                let b = bvh::bvh::Bvh::build_par(&mut s);
                best = best.min(start.elapsed());
                built = Some((b, s));
            }
            let (bvh, shapes) = built.expect("reps > 0");
            let tris = tris.iter().map(|&t| prep_tri(t)).collect();
            (Box::new(BvhCrate { bvh, shapes, tris }), best)
        }
        _ => unreachable!("names are checked when parsing"),
    }
}

// ---- checking ---------------------------------------------------------------------------------

fn agree(a: f32, b: f32) -> bool {
    match (a.is_finite(), b.is_finite()) {
        (true, true) => (a - b).abs() <= REL_TOL * a.abs().max(b.abs()),
        (false, false) => true,
        _ => false,
    }
}

fn brute_force(tris: &[Tri], o: Vec3A, d: Vec3A) -> f32 {
    tris.par_iter()
        .filter_map(|t| intersect_tri(t, o, d, f32::INFINITY).map(|h| h.0))
        .reduce(|| f32::INFINITY, f32::min)
}

// ---- main -------------------------------------------------------------------------------------

struct Row {
    scene: String,
    triangles: usize,
    bvh: String,
    build: Duration,
    /// Rays in each ray set.
    rays: Vec<usize>,
    /// Best (1 thread, 2 threads) time per ray set.
    times: Vec<(Duration, Duration)>,
}

fn mrays(n: usize, t: Duration) -> f64 {
    n as f64 / t.as_secs_f64() / 1e6
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let pool2 = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("a 2-thread pool");
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();
    let mut ok = true;
    for path in &opts.scenes {
        let scene_name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let scene = match rayfarm_scene::load(path) {
            Ok((s, _warnings)) => s,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let tris: Vec<[Vec3A; 3]> = scene
            .triangles
            .iter()
            .map(|t| t.map(|i| Vec3A::from(scene.positions[i as usize])))
            .collect();
        if tris.is_empty() {
            eprintln!("{}: no triangles, skipped", path.display());
            continue;
        }
        let (lo, hi) = scene.bounds().unwrap_or(([-1.0; 3], [1.0; 3]));
        let diag = (Vec3A::from(hi) - Vec3A::from(lo)).length().max(1e-3);
        let sets = [
            primary_rays(&scene, opts.res),
            incoherent_rays(&tris, diag, opts.incoherent_rays),
        ];
        eprintln!(
            "{scene_name}: {} triangles, {} primary + {} incoherent rays",
            tris.len(),
            sets[0].rays.len(),
            sets[1].rays.len()
        );

        let mut built: Vec<(String, Box<dyn Candidate>)> = Vec::new();
        for name in &opts.bvhs {
            let (b, t) = build(name, &tris, opts.build_reps);
            eprintln!("  built {name:<20} {:>9.1} ms", t.as_secs_f64() * 1e3);
            built.push((name.clone(), b));
            rows.push(Row {
                scene: scene_name.clone(),
                triangles: tris.len(),
                bvh: name.clone(),
                build: t,
                rays: sets.iter().map(|s| s.rays.len()).collect(),
                times: vec![(Duration::MAX, Duration::MAX); sets.len()],
            });
        }
        let first_row = rows.len() - built.len();

        // Results of the last run of each (BVH, ray set); all runs compute the same thing.
        let mut results: Vec<Vec<Vec<f32>>> = built
            .iter()
            .map(|_| sets.iter().map(|s| vec![0.0; s.rays.len()]).collect())
            .collect();
        for rep in 0..opts.reps {
            for (si, set) in sets.iter().enumerate() {
                for (bi, (_, b)) in built.iter().enumerate() {
                    let out = &mut results[bi][si];
                    let t1 = b.trace(&set.rays, out, None);
                    let t2 = b.trace(&set.rays, out, Some(&pool2));
                    let best = &mut rows[first_row + bi].times[si];
                    best.0 = best.0.min(t1);
                    best.1 = best.1.min(t2);
                }
            }
            eprintln!("  rep {}/{} done", rep + 1, opts.reps);
        }

        // Agreement with ours (index 0), with a brute-force referee for a few disagreements.
        let prepared: Vec<Tri> = tris.iter().map(|&t| prep_tri(t)).collect();
        for (si, set) in sets.iter().enumerate() {
            let hits = results[0][si].iter().filter(|t| t.is_finite()).count();
            notes.push(format!(
                "{scene_name} {}: {} rays, {:.1}% hit",
                set.name,
                set.rays.len(),
                100.0 * hits as f64 / set.rays.len() as f64
            ));
            for (bi, (name, _)) in built.iter().enumerate().skip(1) {
                let bad: Vec<usize> = (0..set.rays.len())
                    .filter(|&i| !agree(results[0][si][i], results[bi][si][i]))
                    .collect();
                let frac = bad.len() as f64 / set.rays.len() as f64;
                if bad.is_empty() {
                    continue;
                }
                // How close to the origin the disagreements are (the nearer of the two hits).
                let nearest = bad
                    .iter()
                    .map(|&i| results[0][si][i].min(results[bi][si][i]))
                    .fold(0.0f32, f32::max);
                let (mut ours_right, mut theirs_right) = (0, 0);
                let judged = bad.len().min(8);
                for &i in &bad[..judged] {
                    let [o, d] = set.rays[i];
                    let truth = brute_force(&prepared, o, d);
                    ours_right += agree(truth, results[0][si][i]) as usize;
                    theirs_right += agree(truth, results[bi][si][i]) as usize;
                }
                let verdict = if frac > 1e-3 {
                    ok = false;
                    "FAIL (>0.1%)"
                } else {
                    "ok (<=0.1%)"
                };
                notes.push(format!(
                    "{scene_name} {} {name}: {} of {} rays disagree with ours ({:.4}%) {verdict}; \
                     brute force on {judged} of them: ours right {ours_right}, {name} right \
                     {theirs_right}; the nearer hit of every disagreeing ray is at t <= {nearest:.3e}",
                    set.name,
                    bad.len(),
                    set.rays.len(),
                    100.0 * frac
                ));
            }
        }
    }

    println!(
        "| scene | triangles | BVH | build ms | primary Mrays/s 1T | primary Mrays/s 2T \
         | incoherent Mrays/s 1T | incoherent Mrays/s 2T |"
    );
    println!("|---|---:|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        let n = &r.rays;
        println!(
            "| {} | {} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r.scene,
            r.triangles,
            r.bvh,
            r.build.as_secs_f64() * 1e3,
            mrays(n[0], r.times[0].0),
            mrays(n[0], r.times[0].1),
            mrays(n[1], r.times[1].0),
            mrays(n[1], r.times[1].1),
        );
    }
    println!();
    println!(
        "Hit-distance agreement with ours (relative tolerance {REL_TOL:e}); BVHs not listed \
         agree on every ray:"
    );
    println!();
    for n in &notes {
        println!("- {n}");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
