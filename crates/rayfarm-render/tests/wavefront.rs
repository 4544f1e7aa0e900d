//! The wavefront kernel (`integrator::wavefront`: 16 paths shaded at a time in 16-lane
//! operations) is an optimisation, not another renderer: every scene it takes renders the same
//! bytes through it and through the one-path-at-a-time loop, on every code path this CPU runs,
//! whatever the unit shape, seed or bounce count. Scenes it cannot render exactly go the
//! scalar way.

mod common;
use common::*;
use glam::Vec3;
use rayfarm_render::isa::Isa;
use rayfarm_render::{RenderScene, RenderSettings};
use rayfarm_scene::{CompiledScene, Environment, Material};

fn lambert(rgb: [f32; 3]) -> Material {
    Material {
        base_color: [rgb[0], rgb[1], rgb[2], 1.0],
        metallic: 0.0,
        specular: 0.0,
        ..Default::default()
    }
}

/// A closed room of Lambertian walls (one albedo above 1, which the BSDF clamps; one black
/// wall) with two boxes, lit by one emissive triangle facing down, one facing away from most of
/// the room (its back is dark unless double-sided) and one double-sided: every case of the
/// kernel's emission and light sampling.
fn room() -> CompiledScene {
    let mut s = CompiledScene::default();
    let white = s.add_material(lambert([0.8, 0.8, 0.8]));
    let red = s.add_material(lambert([0.9, 0.1, 0.1]));
    let hot = s.add_material(lambert([1.3, 0.6, 0.2]));
    let black = s.add_material(lambert([0.0, 0.0, 0.0]));
    let lamp = s.add_material(Material {
        emissive: [6.0, 5.0, 4.0],
        ..lambert([0.0, 0.0, 0.0])
    });
    let lamp2 = s.add_material(Material {
        emissive: [0.5, 2.0, 1.0],
        double_sided: true,
        ..lambert([0.5, 0.5, 0.5])
    });
    let x = Vec3::X * 2.0;
    let y = Vec3::Y * 2.0;
    let z = Vec3::Z * 2.0;
    let o = Vec3::new(-1.0, -1.0, -1.0);
    s.add_quad("floor", o, z, x, white);
    s.add_quad("ceiling", o + y, x, z, white);
    s.add_quad("back", o, x, y, hot);
    s.add_quad("left", o, y, z, red);
    s.add_quad("right", o + x, z, y, black);
    s.add_sphere("ball", Vec3::new(0.3, -0.6, 0.2), 0.4, 12, 24, white);
    // Three emissive triangles (a light tree starts at four).
    let tri = |s: &mut CompiledScene, a: Vec3, b: Vec3, c: Vec3, m: u32| {
        let base = s.positions.len() as u32;
        let n = (b - a).cross(c - a).normalize();
        for p in [a, b, c] {
            s.positions.push(p.to_array());
            s.normals.push(n.to_array());
            if !s.uv0.is_empty() {
                s.uv0.push([0.0, 0.0]);
            }
        }
        s.triangles.push([base, base + 1, base + 2]);
        s.triangle_materials.push(m);
    };
    tri(
        &mut s,
        Vec3::new(-0.3, 0.98, -0.3),
        Vec3::new(0.3, 0.98, -0.3),
        Vec3::new(0.0, 0.98, 0.3),
        lamp,
    );
    tri(
        &mut s,
        Vec3::new(-0.8, 0.2, -0.9),
        Vec3::new(-0.8, 0.6, -0.9),
        Vec3::new(-0.5, 0.2, -0.9),
        lamp,
    );
    tri(
        &mut s,
        Vec3::new(0.5, -0.2, 0.5),
        Vec3::new(0.9, -0.2, 0.5),
        Vec3::new(0.7, 0.3, 0.2),
        lamp2,
    );
    s
}

fn settings(rs: &RenderScene, spp: u32, max_bounces: u32, seed: u64) -> RenderSettings {
    let camera = perspective_camera(Vec3::new(0.0, 0.0, 3.5), Vec3::ZERO, 0.8, 1.0);
    let _ = rs;
    RenderSettings {
        width: 40,
        height: 40,
        spp,
        max_bounces,
        seed,
        camera,
    }
}

fn same(a: &[[f32; 3]], b: &[[f32; 3]]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(p, q)| p.map(f32::to_bits) == q.map(f32::to_bits))
}

#[test]
fn the_wavefront_renders_the_same_bytes_as_one_path_at_a_time() {
    let compiled = room();
    let mut rs = RenderScene::new(compiled);
    assert!(rs.takes_wavefront(), "the room is a wavefront scene");
    let mut lit = 0usize;
    for (spp, bounces, seed, tile, per_unit) in [
        (16, 8, 1, 16, 16),
        (12, 0, 2, 8, 5),
        (8, 1, 3, 40, 3),
        (16, 16, 4, 7, 16),
    ] {
        let st = settings(&rs, spp, bounces, seed);
        for isa in Isa::supported() {
            rs.bvh.set_isa(isa).expect("supported path");
            rs.wavefront = true;
            let wave = render(&rs, &st, 2, tile, per_unit);
            rs.wavefront = false;
            let scalar = render(&rs, &st, 2, tile, per_unit);
            assert!(
                same(&wave, &scalar),
                "{} path, {spp} spp, {bounces} bounces, seed {seed}: the wavefront differs",
                isa.name()
            );
            lit += wave.iter().filter(|p| p.iter().any(|&c| c > 0.0)).count();
        }
    }
    assert!(lit > 1000, "the room is lit ({lit} lit pixels)");
}

/// The shipped Cornell box (the benchmark scene) and, when the shared scenes are present, the
/// converted one take the wavefront and render the same bytes either way.
#[test]
fn the_cornell_boxes_take_the_wavefront_with_the_same_bytes() {
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/cornell-box/cornell_box.gltf");
    let mut paths = vec![shipped];
    if let Some(p) = shared_scene("cornell-box/converted/cornell_box.gltf") {
        paths.push(p);
    }
    for path in paths {
        let mut rs = RenderScene::new(rayfarm_scene::load(&path).expect("loads").0);
        assert!(rs.takes_wavefront(), "{}", path.display());
        let st = RenderSettings {
            width: 48,
            height: 48,
            spp: 16,
            max_bounces: 8,
            seed: 9,
            camera: rs.scene.cameras[0].clone(),
        };
        let wave = render(&rs, &st, 2, 16, 8);
        rs.wavefront = false;
        let scalar = render(&rs, &st, 2, 16, 8);
        assert!(same(&wave, &scalar), "{}", path.display());
    }
}

/// What the kernel does not do sends a scene the scalar way: an environment, a glossy or
/// metallic material, a textured one, four or more lights (a light tree).
#[test]
fn scenes_the_wavefront_cannot_render_exactly_go_the_scalar_way() {
    let takes = |s: CompiledScene| RenderScene::new(s).takes_wavefront();
    assert!(takes(room()));
    let mut env = room();
    env.environment = Environment::Color([0.2, 0.3, 0.4]);
    assert!(!takes(env), "an environment");
    let mut glossy = room();
    glossy.materials[0].specular = 0.5;
    assert!(!takes(glossy), "a dielectric's specular lobe");
    let mut metal = room();
    metal.materials[1].metallic = 1.0;
    assert!(!takes(metal), "a metal");
    let mut many = room();
    let lamp = 4;
    many.add_quad(
        "more",
        Vec3::new(-0.2, -0.99, -0.2),
        Vec3::new(0.0, 0.0, 0.4),
        Vec3::new(0.4, 0.0, 0.0),
        lamp,
    );
    assert!(!takes(many.clone()), "five lights: a light tree");
    // Picked by power alone (the tree turned off), five lights are still more than the
    // kernel picks among.
    let mut flat = RenderScene::new(many);
    flat.use_light_tree(false);
    assert!(!flat.takes_wavefront(), "five lights without a tree");
    let mut none = room();
    for m in &mut none.materials {
        m.emissive = [0.0; 3];
    }
    assert!(!takes(none), "no lights at all");
}
