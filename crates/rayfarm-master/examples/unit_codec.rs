//! What one unit's result costs on the wire and in the master: the bytes a worker sends and the
//! master's CPU time to decode it and add it into the film, for the plain sums codec (protocol
//! 3: 48 bytes of `i128` per pixel, zstd level 1, a new zstd context per unit) and the compact
//! one (protocol 4: zigzag varints, zstd level 1, contexts kept per thread).
//!
//! `cargo run --release -p rayfarm-master --example unit_codec [-- UNITS]`
//! Renders UNITS (default 64) units of 32x32 px x 16 spp of the shipped Cornell box at
//! 512x512, 8 bounces, then times encoding and decoding+merging each many times.

use rayfarm_render::film::{Film, WorkUnit};
use rayfarm_render::{RenderScene, RenderSettings};
use std::path::Path;
use std::time::Instant;

fn main() {
    let n_units: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
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
        width: 512,
        height: 512,
        spp: 16,
        max_bounces: 8,
        seed: 1,
        camera,
    };
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
}
