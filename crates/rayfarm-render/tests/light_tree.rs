//! Scenes with many lights pick the light of a light sample through a light tree, by its
//! importance at the shading point (`rayfarm_render::lighttree`). The image must stay what it
//! was (only the choice of light changes, and every weight follows it) and get less noisy; a
//! scene with a single quad light keeps its bytes.

mod common;
use common::*;
use glam::Vec3;
use rayfarm_render::{RenderScene, RenderSettings};
use rayfarm_scene::{CompiledScene, Light, LightKind, Material};

/// A hall: a floor and a back wall under a grid of 48 small lamps of different colours, most
/// facing down, some double-sided, a few spheres on the floor, and point and spot lights.
fn hall() -> CompiledScene {
    let mut s = CompiledScene::default();
    let grey = s.add_material(Material {
        base_color: [0.6, 0.6, 0.6, 1.0],
        ..Default::default()
    });
    let red = s.add_material(Material {
        base_color: [0.7, 0.2, 0.1, 1.0],
        roughness: 0.3,
        ..Default::default()
    });
    s.add_quad(
        "floor",
        Vec3::new(-10.0, 0.0, 10.0),
        Vec3::new(20.0, 0.0, 0.0),
        Vec3::new(0.0, 0.0, -20.0),
        grey,
    );
    s.add_quad(
        "wall",
        Vec3::new(-10.0, 0.0, -8.0),
        Vec3::new(20.0, 0.0, 0.0),
        Vec3::new(0.0, 6.0, 0.0),
        grey,
    );
    for (i, x) in [-4.0f32, -1.0, 2.5, 5.0].into_iter().enumerate() {
        s.add_sphere(
            "ball",
            Vec3::new(x, 0.6, -1.0 - i as f32),
            0.6,
            12,
            24,
            if i % 2 == 0 { red } else { grey },
        );
    }
    for gx in 0..8 {
        for gz in 0..6 {
            let k = gx * 6 + gz;
            let hue = [
                [4.0, 3.0, 2.0],
                [1.0, 3.0, 4.0],
                [3.0, 3.0, 3.0],
                [6.0, 1.0, 1.0],
            ][k % 4];
            let scale = 10.0 + 10.0 * (k % 5) as f32;
            let lamp = s.add_material(Material {
                base_color: [0.0, 0.0, 0.0, 1.0],
                emissive: hue.map(|c| c * scale),
                double_sided: k % 7 == 0,
                ..Default::default()
            });
            let (x, z) = (-8.0 + 2.2 * gx as f32, 6.0 - 2.4 * gz as f32);
            // Front faces down (cross of the edges points to -y).
            s.add_quad(
                "lamp",
                Vec3::new(x, 2.5 + 0.3 * (k % 3) as f32, z),
                Vec3::new(0.3, 0.0, 0.0),
                Vec3::new(0.0, 0.0, 0.3),
                lamp,
            );
        }
    }
    let light = |kind, position: [f32; 3], color: [f32; 3], intensity| Light {
        name: "l".into(),
        kind,
        color,
        intensity,
        position,
        direction: [0.3, -1.0, -0.2],
    };
    s.lights.push(light(
        LightKind::Point,
        [-6.0, 1.0, -2.0],
        [1.0, 0.8, 0.6],
        3.0,
    ));
    s.lights.push(light(
        LightKind::Point,
        [6.0, 0.5, 0.0],
        [0.6, 0.8, 1.0],
        2.0,
    ));
    s.lights.push(light(
        LightKind::Spot {
            inner_cone: 0.2,
            outer_cone: 0.5,
        },
        [0.0, 4.0, -3.0],
        [1.0, 1.0, 1.0],
        40.0,
    ));
    s
}

fn settings(spp: u32, seed: u64) -> RenderSettings {
    RenderSettings {
        width: 48,
        height: 32,
        spp,
        max_bounces: 3,
        seed,
        camera: perspective_camera(
            Vec3::new(0.0, 5.0, 9.0),
            Vec3::new(0.0, 0.0, -1.0),
            0.9,
            48.0 / 32.0,
        ),
    }
}

fn render_with(tree: bool, spp: u32, seed: u64) -> Vec<[f32; 3]> {
    let mut rs = RenderScene::new(hall());
    assert!(rs.light_pick.has_tree(), "the hall has 99 lights");
    rs.use_light_tree(tree);
    render(&rs, &settings(spp, seed), 2, 16, 16)
}

#[test]
fn the_light_tree_keeps_the_image_and_lowers_its_noise() {
    let spp = 32;
    let flat = [render_with(false, spp, 1), render_with(false, spp, 2)];
    let tree = [render_with(true, spp, 1), render_with(true, spp, 2)];
    let (mf, mt) = (mean_of_two(&flat), mean_of_two(&tree));
    let (nf, nt) = (noise(&flat[0], &flat[1]), noise(&tree[0], &tree[1]));
    eprintln!(
        "means {mf:?} by power, {mt:?} by tree; relative noise {nf:.6} by power, {nt:.6} by tree"
    );
    // The same expected image: the means over all pixels and both seeds agree within their
    // noise (the tolerance is 1.5%).
    assert_means_agree(mf, mt, 0.015, ("by power", "by tree"));
    assert!(
        nt < 0.6 * nf,
        "the tree should lower the noise: {nt} with, {nf} without"
    );
}

/// Direct light from point and spot lights alone (delta lights, which only light samples
/// find): the tree must never leave out a light that reaches a point.
#[test]
fn point_and_spot_lights_light_the_same_through_the_tree() {
    let mut s = hall();
    for m in &mut s.materials {
        m.emissive = [0.0; 3];
    }
    for k in 0..6 {
        let a = k as f32;
        s.lights.push(Light {
            name: "extra".into(),
            kind: if k % 2 == 0 {
                LightKind::Point
            } else {
                LightKind::Spot {
                    inner_cone: 0.1,
                    outer_cone: 0.4 + 0.1 * a,
                }
            },
            color: [1.0, 0.9, 0.8],
            intensity: 2.0 + a,
            position: [-5.0 + 2.0 * a, 1.0 + 0.4 * a, -4.0 + a],
            direction: [0.1 * a - 0.3, -1.0, 0.2],
        });
    }
    let mut st = settings(16, 5);
    st.max_bounces = 0;
    let mut rs = RenderScene::new(s);
    assert!(rs.light_pick.has_tree());
    let tree = render(&rs, &st, 2, 16, 16);
    rs.use_light_tree(false);
    let flat = render(&rs, &st, 2, 16, 16);
    // Pixel by pixel: a light left out where it shines would darken whole regions.
    let (mf, mt) = (mean(&flat), mean(&tree));
    assert_means_agree(mf, mt, 0.02, ("by power", "by tree"));
    let dark_by_tree = flat
        .iter()
        .zip(&tree)
        .filter(|(f, t)| f[0] > 0.05 && t[0] < 0.2 * f[0])
        .count();
    assert!(
        dark_by_tree < flat.len() / 50,
        "{dark_by_tree} pixels dark only by tree"
    );
}

/// A scene with one quad light (two triangles, as the Cornell box) picks by power, as before
/// the tree: its bytes do not depend on the tree.
#[test]
fn a_single_quad_light_does_not_use_the_tree() {
    let mut s = hall();
    let lamps: Vec<usize> = (0..s.materials.len())
        .filter(|&m| s.materials[m].emissive != [0.0; 3])
        .collect();
    for &m in &lamps[1..] {
        s.materials[m].emissive = [0.0; 3];
    }
    s.lights.clear();
    let rs = RenderScene::new(s);
    assert!(!rs.light_pick.has_tree());
    let st = settings(8, 3);
    let before = render(&rs, &st, 2, 16, 16);
    let mut rs = rs;
    rs.use_light_tree(false);
    assert_eq!(before, render(&rs, &st, 2, 16, 16));
}

/// Through the tree too, an image is a function of the scene, the settings and the seed: the
/// same bytes on one thread or three, with any unit size.
#[test]
fn the_tree_renders_the_same_bytes_on_any_threads_and_units() {
    let rs = RenderScene::new(hall());
    assert!(rs.light_pick.has_tree());
    let st = settings(8, 9);
    let one = render(&rs, &st, 1, 16, 16);
    assert_eq!(one, render(&rs, &st, 3, 8, 4));
    assert_eq!(one, render(&rs, &st, 2, 32, 8));
}
