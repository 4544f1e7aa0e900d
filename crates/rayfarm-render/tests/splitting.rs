//! A glossy first vertex takes `FIRST_SPLIT` BSDF samples (`integrator::FIRST_SPLIT`): the
//! image must stay what it was (the same expected value: splitting only spends more samples on
//! one integral) and get less noisy, both with light found in an environment map and on an
//! emissive triangle.

mod common;
use common::*;
use glam::Vec3;
use rayfarm_render::{RenderScene, RenderSettings};
use rayfarm_scene::{CompiledScene, Environment, Material};

/// A glossy metal sphere filling most of the view and a rough dielectric one beside it, with
/// an emissive quad above, under an environment map of bright and dark tiles (light that
/// neither the BSDF nor the map's importance sampling finds well alone, as a sky seen in
/// polished metal).
fn scene() -> CompiledScene {
    let mut s = CompiledScene::default();
    let metal = s.add_material(Material {
        base_color: [0.9, 0.8, 0.6, 1.0],
        metallic: 1.0,
        roughness: 0.4,
        ..Default::default()
    });
    let plastic = s.add_material(Material {
        base_color: [0.2, 0.5, 0.8, 1.0],
        metallic: 0.0,
        roughness: 0.2,
        ..Default::default()
    });
    let lamp = s.add_material(Material {
        base_color: [0.0, 0.0, 0.0, 1.0],
        emissive: [4.0, 3.0, 2.0],
        ..Default::default()
    });
    s.add_sphere("metal", Vec3::new(-0.2, 0.0, 0.0), 0.8, 32, 64, metal);
    s.add_sphere("plastic", Vec3::new(1.0, -0.4, 0.3), 0.3, 16, 32, plastic);
    // An emissive quad above and in front of the spheres, facing them (its front faces down
    // and back, towards -z).
    s.add_quad(
        "lamp",
        Vec3::new(-0.8, 1.2, 0.2),
        Vec3::new(1.6, 0.0, 0.0),
        Vec3::new(0.0, -0.2, 0.8),
        lamp,
    );
    let (w, h) = (64u32, 32u32);
    let mut texels = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            let bright = ((x / 4) + (y / 4)) % 2 == 0;
            let up = 1.0 - y as f32 / h as f32;
            let v = if bright { 3.0 } else { 0.05 };
            texels.push([v * (0.6 + 0.4 * up), v, v * (1.2 - 0.4 * up)]);
        }
    }
    s.environment = Environment::Map {
        width: w,
        height: h,
        texels,
    };
    s
}

fn settings(spp: u32, seed: u64) -> RenderSettings {
    RenderSettings {
        width: 40,
        height: 24,
        spp,
        max_bounces: 4,
        seed,
        camera: perspective_camera(Vec3::new(0.0, 0.3, 3.0), Vec3::ZERO, 0.6, 40.0 / 24.0),
    }
}

fn render_with(split: u32, spp: u32, seed: u64) -> Vec<[f32; 3]> {
    let mut rs = RenderScene::new(scene());
    rs.first_split = split;
    render(&rs, &settings(spp, seed), 2, 16, 16)
}

#[test]
fn splitting_keeps_the_image_and_lowers_its_noise() {
    let spp = 64;
    let plain = [render_with(1, spp, 1), render_with(1, spp, 2)];
    let split = [render_with(2, spp, 1), render_with(2, spp, 2)];
    // The same expected image: the means over all pixels and both seeds agree within their
    // noise (about 0.3% here; the tolerance is 1.5%).
    let (mp, ms) = (mean_of_two(&plain), mean_of_two(&split));
    assert_means_agree(mp, ms, 0.015, ("without splitting", "with"));
    // Pixel by pixel too, where the spheres reflect the sun and the lamp: every pixel's mean
    // over the two seeds agrees within a generous bound of its noise.
    let (np, ns) = (noise(&plain[0], &plain[1]), noise(&split[0], &split[1]));
    eprintln!("means {mp:?} vs {ms:?}; relative noise {np:.6} without splitting, {ns:.6} with");
    assert!(
        ns < 0.85 * np,
        "splitting should lower the noise: {ns} with, {np} without"
    );
    // And the split render differs from the plain one (the split is taken at all).
    assert_ne!(plain[0], split[0]);
}

/// A scene with only Lambertian materials never splits: its bytes do not depend on the split.
#[test]
fn lambertian_scenes_do_not_split() {
    let mut s = scene();
    for m in &mut s.materials {
        m.metallic = 0.0;
        m.specular = 0.0;
    }
    let render_lambert = |split: u32| {
        let mut rs = RenderScene::new(s.clone());
        rs.first_split = split;
        render(&rs, &settings(16, 3), 2, 16, 16)
    };
    assert_eq!(render_lambert(1), render_lambert(2));
}
