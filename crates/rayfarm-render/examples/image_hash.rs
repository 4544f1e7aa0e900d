//! Renders a scene small and prints a hash of the image's bits, the code path and the target:
//! for checking that images are identical across CPUs and architectures (BENCHMARKS.md, "Same
//! bytes on every code path and architecture"), e.g. an aarch64 build run under qemu-user.
//!
//! Usage: image_hash SCENE.gltf [WIDTH HEIGHT SPP]

use rayfarm_render::{plan_units, render_local, RenderScene, RenderSettings};
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: image_hash SCENE.gltf [WIDTH HEIGHT SPP]");
        std::process::exit(2);
    };
    let num = |i: usize, d: u32| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (width, height, spp) = (num(2, 64), num(3, 64), num(4, 16));
    let (scene, _) = rayfarm_scene::load(Path::new(path)).unwrap_or_else(|e| {
        eprintln!("error: {e}");
        std::process::exit(1);
    });
    let camera = scene.cameras.first().cloned().unwrap_or_else(|| {
        rayfarm_scene::camera::auto_camera(&scene, width as f32 / height as f32)
    });
    let rs = RenderScene::new(scene);
    let settings = RenderSettings {
        width,
        height,
        spp,
        max_bounces: 8,
        seed: 1,
        camera,
    };
    let units = plan_units(width, height, spp, 16, 8);
    let film = render_local(&rs, &settings, &units, &|_| {});
    // FNV-1a over the bits of every pixel's RGB.
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for px in film.to_rgb(spp) {
        for c in px {
            for b in c.to_bits().to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    println!(
        "{h:016x}  {width}x{height} {spp} spp, {} path, {}",
        rs.bvh.isa().name(),
        std::env::consts::ARCH
    );
}
