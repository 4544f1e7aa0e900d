//! Renders a scene small and prints a hash of the image's bits, the code path and the target:
//! for checking that images are identical across CPUs and architectures (BENCHMARKS.md, "Same
//! bytes on every code path and architecture"), e.g. an aarch64 build run under qemu-user.
//!
//! Usage: image_hash SCENE.gltf [WIDTH HEIGHT SPP [ENV.hdr | sky]]
//! (`sky`: a uniform grey sky, for scenes without lights)

mod common;

use rayfarm_render::{plan_units, render_local, RenderScene};

fn main() {
    let common::Setup {
        scene,
        camera,
        width,
        height,
        spp,
        ..
    } = common::setup("image_hash", (64, 64, 16));
    let rs = RenderScene::new(scene);
    if std::env::var_os("IMAGE_HASH_PROBE").is_some() {
        probe(&rs, &camera, width, height);
    }
    let settings = common::settings(width, height, spp, camera);
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

/// Prints intermediate values of a few samples, to find where two machines part.
fn probe(rs: &RenderScene, camera: &rayfarm_scene::Camera, width: u32, height: u32) {
    use rayfarm_render::sampler::Sampler;
    let idx: u64 = rs
        .bvh
        .leaf_order()
        .fold(0u64, |h, i| h.wrapping_mul(31).wrapping_add(i as u64));
    println!(
        "bvh: {} nodes, {} leaves, order hash {idx:x}",
        rs.bvh.nodes().len(),
        rs.bvh.packs().len()
    );
    for (x, y) in [(32u32, 32u32), (10, 50), (50, 12)] {
        let pixel = (y * width + x) as u64;
        for si in 0..3 {
            let mut s = Sampler::new(1, pixel, si);
            let (jx, jy) = s.point_2d(0);
            let (o, d) =
                rayfarm_render::camera_ray(camera, width, height, x as f32 + jx, y as f32 + jy);
            let hit = rs
                .bvh
                .intersect(o, d, f32::INFINITY, &|_| false, &mut |_, _, _| true);
            let cone = rayfarm_render::camera_cone(camera, height);
            let l = rs.radiance(o, d, cone, 8, &mut s);
            println!(
                "px ({x},{y}) s{si}: j {:08x} {:08x} dir {:?} hit {:?} L {:?}",
                jx.to_bits(),
                jy.to_bits(),
                d.to_array().map(f32::to_bits),
                hit.map(|h| (h.prim, h.t.to_bits(), h.u.to_bits(), h.v.to_bits())),
                l.to_array().map(f32::to_bits)
            );
        }
    }
}
