//! A pixel depends only on (scene, settings, seed): never on threads, tiles or unit sizes.

mod common;
use common::*;
use glam::Vec3;
use rayfarm_render::{RenderScene, RenderSettings};
use rayfarm_scene::{CompiledScene, Environment, Material};

fn scene() -> CompiledScene {
    let mut s = CompiledScene::default();
    let a = s.add_material(Material {
        base_color: [0.8, 0.3, 0.2, 1.0],
        metallic: 0.0,
        roughness: 0.5,
        ..Default::default()
    });
    let b = s.add_material(Material {
        base_color: [0.9; 4],
        metallic: 1.0,
        roughness: 0.2,
        ..Default::default()
    });
    let e = s.add_material(Material {
        emissive: [4.0, 4.0, 3.0],
        metallic: 0.0,
        ..Default::default()
    });
    s.add_quad(
        "floor",
        Vec3::new(-3.0, 0.0, 3.0),
        Vec3::new(6.0, 0.0, 0.0),
        Vec3::new(0.0, 0.0, -6.0),
        a,
    );
    s.add_sphere("ball", Vec3::new(0.0, 1.0, 0.0), 1.0, 16, 32, b);
    s.add_quad(
        "lamp",
        Vec3::new(-0.5, 3.0, -0.5),
        Vec3::new(1.0, 0.0, 0.0),
        Vec3::new(0.0, 0.0, 1.0),
        e,
    );
    s.environment = Environment::Color([0.1, 0.2, 0.3]);
    s
}

#[test]
fn threads_tiles_and_unit_sizes_do_not_change_a_bit() {
    let rs = RenderScene::new(scene());
    let settings = RenderSettings {
        width: 40,
        height: 30,
        spp: 24,
        max_bounces: 6,
        seed: 99,
        camera: rayfarm_scene::camera::auto_camera(&rs.scene, 40.0 / 30.0),
    };
    let reference = render(&rs, &settings, 1, 8, 24);
    for (threads, tile, spu) in [(2, 8, 24), (2, 13, 5), (1, 64, 1), (3, 7, 8)] {
        let img = render(&rs, &settings, threads, tile, spu);
        assert!(
            img.iter()
                .zip(&reference)
                .all(|(a, b)| a.map(f32::to_bits) == b.map(f32::to_bits)),
            "threads {threads} tile {tile} samples/unit {spu} differ"
        );
    }
    // A different seed gives a different image.
    let other = render(
        &rs,
        &RenderSettings {
            seed: 100,
            ..settings.clone()
        },
        2,
        8,
        8,
    );
    assert!(other != reference);
}
