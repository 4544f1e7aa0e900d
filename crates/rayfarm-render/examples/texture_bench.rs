//! Renders a glTF file on one thread and prints the time and a checksum of the image, for
//! before/after comparisons of texture filtering (BENCHMARKS.md, "MIP selection from ray
//! cones"). With `sky`, a constant grey sky replaces the scene's environment.
//!
//! Usage: texture_bench SCENE.gltf [WIDTH HEIGHT SPP [sky]]

use rayfarm_render::{plan_units, render_local, RenderScene, RenderSettings};
use rayfarm_scene::Environment;
use std::path::Path;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: texture_bench SCENE.gltf [WIDTH HEIGHT SPP [sky]]");
        std::process::exit(2);
    };
    let num = |i: usize, d: u32| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (width, height, spp) = (num(2, 256), num(3, 256), num(4, 4));
    let (mut scene, _) = rayfarm_scene::load(Path::new(path)).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1);
    });
    if args.get(5).map(String::as_str) == Some("sky") {
        scene.environment = Environment::Color([0.8, 0.8, 0.8]);
    }
    let camera = scene.cameras.first().cloned().unwrap_or_else(|| {
        rayfarm_scene::camera::auto_camera(&scene, width as f32 / height as f32)
    });
    let start = Instant::now();
    let rs = RenderScene::new(scene);
    let prepare_s = start.elapsed().as_secs_f64();
    let settings = RenderSettings {
        width,
        height,
        spp,
        max_bounces: 8,
        seed: 1,
        camera,
    };
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
