//! The master's merge under load: how many unit results a second it decodes and adds into the
//! film when they arrive from 1 and from 2 threads at once, and the CPU each costs.
//!
//! `cargo run --release --example merge_bench [-- RESULTS]`
//! Renders 64 units of 32x32 px x 16 spp of the shipped Cornell box once and encodes them with
//! the wire codec (`unit_sums`). A job of about RESULTS (default 20000) such units over a
//! 512x512 image (256 tiles x as many 16-sample ranges as it takes) is then completed through
//! a `Scheduler` shared by T threads, each acting as one node: take a unit (under the
//! scheduler's lock), decode its sums as a session does (`decode_sums`), and merge it. Each
//! tile's results reuse the sums of one of the 64 rendered units. Every run must end with the
//! same film bytes.

use rayfarm_master::scheduler::{NodeId, Scheduler};
use rayfarm_proto::WireUnit;
use rayfarm_render::film::{plan_units, Region, UnitResult, WorkUnit};
use rayfarm_render::{Film, RenderScene, RenderSettings};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

const SIDE: u32 = 512;
const TILE: u32 = 32;
const SPU: u32 = 16;
const RENDERED: u32 = 64;

/// This process's CPU time (user + system, every thread) in seconds, from /proc/self/stat.
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with the last ')'): utime is the 12th, stime
    // the 13th, in clock ticks of 1/100 s.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// The encoded sums standing in for `u`'s result.
fn encoded_for<'a>(encoded: &'a [Vec<u8>], u: &WorkUnit) -> &'a [u8] {
    let tile = (u.y0 / TILE) * (SIDE / TILE) + u.x0 / TILE;
    &encoded[(tile % RENDERED) as usize]
}

/// What a session does with one result: completes it under the scheduler's one lock.
fn merge(sched: &Mutex<Scheduler>, node: NodeId, r: UnitResult) -> bool {
    sched.lock().unwrap().complete(node, r)
}

/// Completes every unit from `threads` threads; returns (wall s, CPU s, film).
fn run(units: &[WorkUnit], encoded: &[Vec<u8>], threads: usize) -> (f64, f64, Film) {
    let sched = Mutex::new(Scheduler::new(
        vec![Region::full(SIDE, SIDE)],
        units.to_vec(),
    ));
    let nodes: Vec<NodeId> = (0..threads)
        .map(|t| sched.lock().unwrap().add_node(format!("t{t}"), 1))
        .collect();
    let (t0, c0) = (Instant::now(), cpu_s());
    std::thread::scope(|s| {
        for &node in &nodes {
            let sched = &sched;
            s.spawn(move || loop {
                let Some(u) = sched.lock().unwrap().take(node) else {
                    return;
                };
                let wire = WireUnit::from(u);
                let r = rayfarm_proto::decode_sums(&wire, encoded_for(encoded, &u), 0).unwrap();
                assert!(merge(sched, node, r), "{u:?} refused");
            });
        }
    });
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_s() - c0);
    let mut s = sched.into_inner().unwrap();
    assert!(s.finished());
    let (_, film) = s.take_finished().pop().expect("the layer finished");
    (wall, cpu, film)
}

fn main() {
    let wanted: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cornell-box/cornell_box.gltf");
    let (scene, _) = rayfarm_scene::load(&path).expect("the shipped Cornell box");
    let camera = scene
        .cameras
        .first()
        .cloned()
        .unwrap_or_else(|| rayfarm_scene::camera::auto_camera(&scene, 1.0));
    let rs = RenderScene::new(scene);
    let settings = RenderSettings {
        width: SIDE,
        height: SIDE,
        spp: SPU,
        max_bounces: 8,
        seed: 1,
        camera,
    };
    let encoded: Vec<Vec<u8>> = (0..RENDERED)
        .map(|i| {
            let (tx, ty) = (i % (SIDE / TILE), i / (SIDE / TILE));
            let u = WorkUnit {
                layer: 0,
                sample_start: 0,
                sample_end: SPU,
                x0: tx * TILE,
                y0: ty * TILE,
                x1: tx * TILE + TILE,
                y1: ty * TILE + TILE,
            };
            rayfarm_proto::unit_sums::encode(&rs.render_unit(&settings, &u).sums)
        })
        .collect();
    let tiles = (SIDE / TILE) * (SIDE / TILE);
    let ranges = wanted.div_ceil(tiles).max(1);
    let units = plan_units(SIDE, SIDE, ranges * SPU, TILE, SPU);
    let n = units.len() as f64;
    println!(
        "{} results of {TILE}x{TILE} px x {SPU} spp into a {SIDE}x{SIDE} film, {} bytes each on average",
        units.len(),
        encoded.iter().map(|e| e.len()).sum::<usize>() / encoded.len()
    );
    let mut reference: Option<Film> = None;
    for threads in [1usize, 2, 1, 2] {
        let (wall, cpu, film) = run(&units, &encoded, threads);
        println!(
            "{threads} thread(s): {:8.0} results/s  {:6.1} us wall per result  {:6.1} us CPU per result",
            n / wall,
            wall * 1e6 / n,
            cpu * 1e6 / n
        );
        match &reference {
            None => reference = Some(film),
            Some(f) => assert_eq!(f.sums(), film.sums(), "the film changed with the threads"),
        }
    }
    println!("every run ended with the same film bytes");
}
