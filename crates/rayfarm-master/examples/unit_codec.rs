//! What one unit's result costs on the wire and in the master: the bytes a worker sends and the
//! master's CPU time to decode it and add it into the film, for the plain sums codec (protocol
//! 3: 48 bytes of `i128` per pixel, zstd level 1, a new zstd context per unit) and the compact
//! one (protocol 4: zigzag varints, zstd level 1, contexts kept per thread).
//!
//! `cargo run --release --example unit_codec [-- UNITS]`
//! Renders UNITS (default 64) units of 32x32 px x 16 spp of the shipped Cornell box at
//! 512x512, 8 bounces, then times encoding and decoding+merging each many times; then, for
//! UNITS / 8 tiles, 8 results of 16 spp against one joined result of 128 spp.

mod common;

use rayfarm_render::film::{Film, WorkUnit};

use std::time::Instant;

/// What the master does with one compact result: decode it and add it into the film.
fn merge_compact(film: &mut Film, unit: WorkUnit, encoded: &[u8]) {
    let sums = rayfarm_proto::unit_sums::decode(encoded, unit.pixels()).unwrap();
    film.add(&rayfarm_render::film::UnitResult {
        unit,
        sums,
        nonfinite_samples: 0,
    })
    .unwrap();
}

fn main() {
    let n_units: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let (rs, settings) = common::cornell(512, 16);
    let results: Vec<_> = (0..n_units)
        .map(|i| {
            let (tx, ty) = (i % 16, (i / 16) % 16);
            let u = WorkUnit {
                layer: 0,
                sample_start: 0,
                sample_end: 16,
                x0: tx * 32,
                y0: ty * 32,
                x1: tx * 32 + 32,
                y1: ty * 32 + 32,
            };
            rs.render_unit(&settings, &u)
        })
        .collect();
    let reps = 20;
    for (name, enc, dec) in [
        (
            "plain (protocol 3)",
            Box::new(|s: &[[i128; 3]]| rayfarm_proto::sums::encode(s, 1))
                as Box<dyn Fn(&[[i128; 3]]) -> Vec<u8>>,
            Box::new(|d: &[u8], n| rayfarm_proto::sums::decode(d, n).unwrap())
                as Box<dyn Fn(&[u8], usize) -> Vec<[i128; 3]>>,
        ),
        (
            "compact (protocol 4)",
            Box::new(rayfarm_proto::unit_sums::encode) as Box<dyn Fn(&[[i128; 3]]) -> Vec<u8>>,
            Box::new(|d: &[u8], n| rayfarm_proto::unit_sums::decode(d, n).unwrap())
                as Box<dyn Fn(&[u8], usize) -> Vec<[i128; 3]>>,
        ),
    ] {
        let t = Instant::now();
        let mut encoded = Vec::new();
        for _ in 0..reps {
            encoded = results.iter().map(|r| enc(&r.sums)).collect::<Vec<_>>();
        }
        let enc_us = t.elapsed().as_secs_f64() * 1e6 / (reps * results.len()) as f64;
        let bytes: usize = encoded.iter().map(|e| e.len()).sum();
        let mut film = Film::new(512, 512);
        let t = Instant::now();
        for _ in 0..reps {
            for (r, e) in results.iter().zip(&encoded) {
                let sums = dec(e, r.unit.pixels());
                assert_eq!(sums, r.sums);
                let back = rayfarm_render::film::UnitResult {
                    unit: r.unit,
                    sums,
                    nonfinite_samples: 0,
                };
                film.add(&back).unwrap();
            }
        }
        let dec_us = t.elapsed().as_secs_f64() * 1e6 / (reps * results.len()) as f64;
        println!(
            "{name:22} {:8.0} bytes/unit  encode {enc_us:6.1} us/unit  decode+merge {dec_us:6.1} us/unit",
            bytes as f64 / results.len() as f64
        );
    }

    // Joined units (the scheduler's `take_joined`): a tile's 8 consecutive 16-sample ranges
    // rendered and sent as one 128-sample result, against 8 results of 16, compact codec.
    let tiles = (n_units / 8).max(1);
    let (mut split_bytes, mut joined_bytes) = (0usize, 0usize);
    let (mut split_us, mut joined_us) = (0.0f64, 0.0f64);
    let mut film = Film::new(512, 512);
    for i in 0..tiles {
        let (tx, ty) = (i % 16, (i / 16) % 16);
        let tile = |s0: u32, s1: u32| WorkUnit {
            layer: 0,
            sample_start: s0,
            sample_end: s1,
            x0: tx * 32,
            y0: ty * 32,
            x1: tx * 32 + 32,
            y1: ty * 32 + 32,
        };
        let parts: Vec<_> = (0..8)
            .map(|k| rs.render_unit(&settings, &tile(16 * k, 16 * k + 16)))
            .collect();
        let joined = rs.render_unit(&settings, &tile(0, 128));
        let enc: Vec<_> = parts
            .iter()
            .map(|r| rayfarm_proto::unit_sums::encode(&r.sums))
            .collect();
        let enc_joined = rayfarm_proto::unit_sums::encode(&joined.sums);
        split_bytes += enc.iter().map(|e| e.len()).sum::<usize>();
        joined_bytes += enc_joined.len();
        let t = Instant::now();
        for _ in 0..reps {
            for (r, e) in parts.iter().zip(&enc) {
                merge_compact(&mut film, r.unit, e);
            }
        }
        split_us += t.elapsed().as_secs_f64() * 1e6 / reps as f64;
        let t = Instant::now();
        for _ in 0..reps {
            merge_compact(&mut film, joined.unit, &enc_joined);
        }
        joined_us += t.elapsed().as_secs_f64() * 1e6 / reps as f64;
        // The same sums either way: integer sums do not depend on how samples are grouped.
        let mut summed = parts[0].sums.clone();
        for r in &parts[1..] {
            for (a, b) in summed.iter_mut().zip(&r.sums) {
                for c in 0..3 {
                    a[c] += b[c];
                }
            }
        }
        assert_eq!(summed, joined.sums);
    }
    let t = tiles as f64;
    println!(
        "per 32x32 tile x 128 spp: 8 results of 16 spp {:8.0} bytes, master {:6.1} us; 1 joined result {:8.0} bytes, master {:6.1} us",
        split_bytes as f64 / t,
        split_us / t,
        joined_bytes as f64 / t,
        joined_us / t
    );
}
