//! Renders a glTF file on one thread and prints the time and a checksum of the image, for
//! before/after comparisons of texture filtering (BENCHMARKS.md, "MIP selection from ray
//! cones"). With `sky`, a constant grey sky replaces the scene's environment.
//!
//! Usage: texture_bench SCENE.gltf [WIDTH HEIGHT SPP [ENV.hdr | sky]]

mod common;

use rayfarm_render::{plan_units, render_local, RenderScene};
use std::time::Instant;

fn main() {
    let common::Setup {
        path,
        scene,
        camera,
        width,
        height,
        spp,
    } = common::setup("texture_bench", (256, 256, 4));
    let start = Instant::now();
    let rs = RenderScene::new(scene);
    let prepare_s = start.elapsed().as_secs_f64();
    let settings = common::settings(width, height, spp, camera);
    let units = plan_units(width, height, spp, 32, spp);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a one-thread pool");
    let start = Instant::now();
    let film = pool.install(|| render_local(&rs, &settings, &units, &|_| {}));
    let render_s = start.elapsed().as_secs_f64();
    let rgb = film.to_rgb(spp);
    let sum: f64 = rgb.iter().map(|p| (p[0] + p[1] + p[2]) as f64).sum();
    println!(
        "{path}: {width}x{height} {spp} spp, scene prepared in {prepare_s:.3} s, rendered in {render_s:.3} s ({:.3} M samples/s), mean {:.6}",
        (width * height * spp) as f64 / render_s / 1e6,
        sum / (3 * rgb.len()) as f64
    );
}
