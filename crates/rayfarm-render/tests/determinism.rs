//! A pixel depends only on (scene, settings, seed): never on threads, tiles or unit sizes.

mod common;
use common::*;
use glam::{Vec3, Vec3A};
use rayfarm_render::bvh::{Bvh, Hit};
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
    // Progressive plans (passes of 1, 1, 2, 4 ... spp over larger tiles) give the same bytes.
    for (tile, spu) in [(8, 16), (5, 4), (16, 1)] {
        let units = rayfarm_render::plan_units_progressive(40, 30, settings.spp, tile, spu);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let film = pool.install(|| rayfarm_render::render_local(&rs, &settings, &units, &|_| {}));
        let img = film.to_rgb(settings.spp);
        assert!(
            img.iter()
                .zip(&reference)
                .all(|(a, b)| a.map(f32::to_bits) == b.map(f32::to_bits)),
            "progressive plan tile {tile} samples/unit {spu} differs"
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

/// The BVH, and so every hit, must not depend on the thread pool it is built on: a machine with
/// more cores must trace the same tree. Half the triangles are translated copies of one
/// triangle, so the builder's sorts by area see many ties.
#[test]
fn bvh_is_the_same_on_any_thread_pool() {
    let mut s = 0x5eed_u64;
    let mut rnd = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 40) as f32) / (1u64 << 24) as f32
    };
    let mut tris: Vec<[Vec3A; 3]> = Vec::with_capacity(50_000);
    for _ in 0..25_000 {
        let c = Vec3A::new(rnd(), rnd(), rnd()) * 40.0;
        tris.push([0, 1, 2].map(|_| c + Vec3A::new(rnd(), rnd(), rnd()) - 0.5));
    }
    let shape = [
        Vec3A::ZERO,
        Vec3A::new(0.7, 0.0, 0.1),
        Vec3A::new(0.2, 0.6, 0.0),
    ];
    for i in 0..25_000 {
        let c = Vec3A::new(
            (i % 50) as f32,
            ((i / 50) % 50) as f32,
            (i / 2500) as f32 * 4.0,
        );
        tris.push(shape.map(|p| p + c * 0.8));
    }
    let rays: Vec<(Vec3A, Vec3A)> = (0..20_000)
        .map(|_| {
            let o = Vec3A::new(rnd(), rnd(), rnd()) * 44.0 - 2.0;
            let d = rayfarm_render::math::normalize(Vec3A::new(rnd(), rnd(), rnd()) - 0.5);
            (o, d)
        })
        .collect();
    let build_and_trace = |threads: usize| -> (Bvh, Vec<Option<Hit>>) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let bvh = pool.install(|| Bvh::build(&tris));
        let hits = rays
            .iter()
            .map(|&(o, d)| bvh.intersect(o, d, f32::INFINITY, &|_| false, &mut |_, _, _| true))
            .collect();
        (bvh, hits)
    };
    let (bvh1, hits1) = build_and_trace(1);
    let (bvh4, hits4) = build_and_trace(4);
    assert!(bvh1.nodes() == bvh4.nodes(), "node arrays differ");
    assert!(bvh1.packs() == bvh4.packs(), "leaves differ");
    let bits = |h: &Option<Hit>| h.map(|h| (h.t.to_bits(), h.u.to_bits(), h.v.to_bits(), h.prim));
    let hit_count = hits1.iter().filter(|h| h.is_some()).count();
    assert!(hit_count > 5_000, "only {hit_count} of the rays hit");
    for (i, (a, b)) in hits1.iter().zip(&hits4).enumerate() {
        assert_eq!(bits(a), bits(b), "ray {i}");
    }
}

/// Every code path this CPU runs (`rayfarm_render::isa`, forced in the binary by `RAYFARM_ISA`)
/// renders the same bytes: on the test scene (metal, rough, emitters, sky) and on the shipped
/// Cornell box, and on Sponza's 66k triangles when the shared scenes are present.
#[test]
fn every_code_path_renders_the_same_bytes() {
    use rayfarm_render::isa::Isa;
    let supported = Isa::supported();
    eprintln!(
        "code paths on this CPU: {:?}",
        supported.iter().map(|i| i.name()).collect::<Vec<_>>()
    );
    let cornell = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/cornell-box/cornell_box.gltf");
    let mut scenes = vec![
        ("test scene", scene()),
        (
            "cornell box",
            rayfarm_scene::load(&cornell)
                .expect("shipped Cornell box")
                .0,
        ),
    ];
    if let Some(p) = shared_scene("sponza-dabrovic-geometry/sponza.obj") {
        scenes.push(("sponza", rayfarm_scene::load(&p).expect("sponza loads").0));
    }
    for (name, compiled) in scenes {
        let mut rs = RenderScene::new(compiled);
        let camera = rs
            .scene
            .cameras
            .first()
            .cloned()
            .unwrap_or_else(|| rayfarm_scene::camera::auto_camera(&rs.scene, 1.0));
        let settings = RenderSettings {
            width: 48,
            height: 48,
            spp: 16,
            max_bounces: 8,
            seed: 5,
            camera,
        };
        let mut images = Vec::new();
        for &isa in &supported {
            rs.bvh.set_isa(isa).expect("supported path");
            images.push((isa, render(&rs, &settings, 2, 16, 8)));
        }
        // Shadow rays traced on their own, not paired with the next continuation ray.
        assert!(
            rs.paired_shadow_rays,
            "{name}: opaque scenes pair shadow rays"
        );
        rs.paired_shadow_rays = false;
        let alone = render(&rs, &settings, 2, 16, 8);
        assert!(
            alone
                .iter()
                .zip(&images[images.len() - 1].1)
                .all(|(a, b)| a.map(f32::to_bits) == b.map(f32::to_bits)),
            "{name}: shadow rays traced in pairs and alone differ"
        );
        let (first, reference) = &images[0];
        for (isa, img) in &images[1..] {
            assert!(
                img.iter()
                    .zip(reference)
                    .all(|(a, b)| a.map(f32::to_bits) == b.map(f32::to_bits)),
                "{name}: the {} path differs from the {} path",
                isa.name(),
                first.name()
            );
        }
    }
}
