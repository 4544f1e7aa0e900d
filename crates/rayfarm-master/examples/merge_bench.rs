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
//!
//! Merges: `OneLock` adds under the scheduler's lock (`Scheduler::complete`, as before issue
//! 15), `Split` only accepts and counts under it and adds into the banded film beside other
//! threads (`scheduler::merge`, what the master does). `Threads` runs them on plain threads;
//! `TokioInline` runs the split merge from T sessions on a tokio runtime of T worker threads,
//! decoding and merging on the runtime's threads (what `session_loop` does), and
//! `TokioSpawnBlocking` on a blocking thread per result, to see what moving it off the
//! runtime's threads would cost. Besides results/s and CPU per result, each run reports how
//! long the scheduler's lock was held per result: whatever the cores, a master cannot merge
//! more than one result per that time.

mod common;

use rayfarm_master::scheduler::{NodeId, Scheduler};
use rayfarm_proto::WireUnit;
use rayfarm_render::film::{plan_units, Region, WorkUnit};
use rayfarm_render::Film;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

#[derive(Clone, Copy, Debug, PartialEq)]
enum Merge {
    OneLock,
    Split,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Runner {
    Threads,
    TokioInline,
    TokioSpawnBlocking,
}

/// What a session does with one result: decode it, then merge it.
fn decode_and_merge(sched: &Mutex<Scheduler>, node: NodeId, u: WorkUnit, enc: &[u8], m: Merge) {
    let r = rayfarm_proto::decode_sums(&WireUnit::from(u), enc, 0).unwrap();
    // The time the scheduler's lock is held to merge the result: with a lock held H s a
    // result, no number of cores merges more than 1 / H results a second.
    let held = |t: Instant| {
        LOCK_HELD_NS.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
    };
    let accepted = match m {
        Merge::OneLock => {
            let mut s = sched.lock().unwrap();
            let t = Instant::now();
            let ok = s.complete(node, r);
            held(t);
            ok
        }
        // The steps of `scheduler::merge`, with its two lock sections timed.
        Merge::Split => {
            let a = {
                let mut s = sched.lock().unwrap();
                let t = Instant::now();
                let a = s.accept(node, &r);
                held(t);
                a
            };
            a.map(|a| {
                a.add(&r).unwrap();
                let mut s = sched.lock().unwrap();
                let t = Instant::now();
                s.merged(a);
                held(t);
            })
            .is_some()
        }
    };
    assert!(accepted, "{u:?} refused");
}

/// Nanoseconds the scheduler's lock was held to merge results, over a run.
static LOCK_HELD_NS: AtomicU64 = AtomicU64::new(0);

/// Completes every unit from `threads` threads or sessions; returns (wall s, CPU s, film) and
/// leaves the lock's time in [`LOCK_HELD_NS`].
fn run(
    units: &[WorkUnit],
    encoded: &Arc<Vec<Vec<u8>>>,
    threads: usize,
    m: Merge,
    runner: Runner,
) -> (f64, f64, Film) {
    let sched = Arc::new(Mutex::new(Scheduler::new(
        vec![Region::full(SIDE, SIDE)],
        units.to_vec(),
    )));
    let nodes: Vec<NodeId> = (0..threads)
        .map(|t| sched.lock().unwrap().add_node(format!("t{t}"), 1))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .build()
        .unwrap();
    LOCK_HELD_NS.store(0, Ordering::Relaxed);
    let (t0, c0) = (Instant::now(), cpu_s());
    match runner {
        Runner::Threads => std::thread::scope(|s| {
            for &node in &nodes {
                let sched = &sched;
                s.spawn(move || loop {
                    let Some(u) = sched.lock().unwrap().take(node) else {
                        return;
                    };
                    decode_and_merge(sched, node, u, encoded_for(encoded, &u), m);
                });
            }
        }),
        Runner::TokioInline | Runner::TokioSpawnBlocking => rt.block_on(async {
            let sessions: Vec<_> = nodes
                .iter()
                .map(|&node| {
                    let (sched, encoded) = (sched.clone(), encoded.clone());
                    tokio::spawn(async move {
                        loop {
                            let Some(u) = sched.lock().unwrap().take(node) else {
                                return;
                            };
                            if runner == Runner::TokioInline {
                                decode_and_merge(&sched, node, u, encoded_for(&encoded, &u), m);
                                // A session awaits its next message between results.
                                tokio::task::yield_now().await;
                            } else {
                                let (sched, encoded) = (sched.clone(), encoded.clone());
                                tokio::task::spawn_blocking(move || {
                                    decode_and_merge(&sched, node, u, encoded_for(&encoded, &u), m)
                                })
                                .await
                                .unwrap();
                            }
                        }
                    })
                })
                .collect();
            for s in sessions {
                s.await.unwrap();
            }
        }),
    }
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_s() - c0);
    drop(rt);
    let mut s = sched.lock().unwrap();
    assert!(s.finished());
    let (_, film) = s.take_finished().pop().expect("the layer finished");
    (wall, cpu, film)
}

fn main() {
    let wanted: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let (rs, settings) = common::cornell(SIDE, SPU);
    let encoded: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..RENDERED)
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
            .collect(),
    );
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
    let runs = [
        (Merge::OneLock, Runner::Threads),
        (Merge::Split, Runner::Threads),
        (Merge::Split, Runner::TokioInline),
        (Merge::Split, Runner::TokioSpawnBlocking),
    ];
    for round in 0..2 {
        for (m, runner) in runs {
            for threads in [1usize, 2] {
                let (wall, cpu, film) = run(&units, &encoded, threads, m, runner);
                println!(
                    "round {round} {:28} {threads} thread(s): {:8.0} results/s  {:5.1} us wall, {:5.1} us CPU, lock held {:5.2} us per result",
                    format!("{m:?}, {runner:?}"),
                    n / wall,
                    wall * 1e6 / n,
                    cpu * 1e6 / n,
                    LOCK_HELD_NS.load(Ordering::Relaxed) as f64 / 1e3 / n
                );
                match &reference {
                    None => reference = Some(film),
                    Some(f) => assert_eq!(f.sums(), film.sums(), "the film changed"),
                }
            }
        }
    }
    println!("every run ended with the same film bytes");
}
