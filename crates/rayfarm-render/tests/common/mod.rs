//! Shared helpers for the renderer's integration tests: one place that renders a scene and one
//! that finds the shared test scenes.
#![allow(dead_code)]

use rayfarm_render::{plan_units, render_local, RenderScene, RenderSettings};
use rayfarm_scene::{Camera, CompiledScene, Projection};
use std::path::PathBuf;

/// Renders on a pool of `threads` with the given unit shape; returns linear RGB.
pub fn render(
    scene: &RenderScene,
    settings: &RenderSettings,
    threads: usize,
    tile: u32,
    samples_per_unit: u32,
) -> Vec<[f32; 3]> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let units = plan_units(
        settings.width,
        settings.height,
        settings.spp,
        tile,
        samples_per_unit,
    );
    let film = pool.install(|| render_local(scene, settings, &units, &|_| {}));
    assert_eq!(film.nonfinite_samples, 0, "non-finite samples");
    film.to_rgb(settings.spp)
}

pub fn quick(scene: CompiledScene, settings: &RenderSettings) -> Vec<[f32; 3]> {
    let rs = RenderScene::new(scene);
    render(&rs, settings, 2, 16, 16)
}

/// An orthographic camera at `pos` looking at `target` with half-height `ymag`.
pub fn ortho_camera(pos: [f32; 3], target: [f32; 3], ymag: f32) -> Camera {
    let p = glam::Vec3::from(pos);
    let f = (glam::Vec3::from(target) - p).normalize();
    let helper = if f.y.abs() > 0.99 {
        glam::Vec3::Z
    } else {
        glam::Vec3::Y
    };
    let r = f.cross(helper).normalize();
    let u = r.cross(f);
    Camera {
        name: "test".into(),
        projection: Projection::Orthographic { xmag: ymag, ymag },
        position: pos,
        right: r.to_array(),
        up: u.to_array(),
        forward: f.to_array(),
    }
}

/// Path of a file under ../shared/scenes, or None (with a notice) when the shared folder is
/// absent. Panics instead when RAYFARM_REQUIRE_SHARED=1 (as CI sets).
pub fn shared_scene(rel: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/scenes")
        .join(rel);
    if p.exists() {
        return Some(p);
    }
    if std::env::var("RAYFARM_REQUIRE_SHARED").as_deref() == Ok("1") {
        panic!("{} is missing and RAYFARM_REQUIRE_SHARED=1", p.display());
    }
    eprintln!(
        "notice: skipping, {} not found (shared scenes absent)",
        p.display()
    );
    None
}

pub fn mean(px: &[[f32; 3]]) -> [f64; 3] {
    let mut m = [0f64; 3];
    for p in px {
        for c in 0..3 {
            m[c] += p[c] as f64;
        }
    }
    m.map(|v| v / px.len() as f64)
}

/// A perspective camera at `pos` looking at `target` (+Y up) with vertical field of view
/// `yfov` and aspect ratio `aspect`.
pub fn perspective_camera(pos: glam::Vec3, target: glam::Vec3, yfov: f32, aspect: f32) -> Camera {
    let f = (target - pos).normalize();
    let r = f.cross(glam::Vec3::Y).normalize();
    Camera {
        name: "test".into(),
        projection: Projection::Perspective {
            yfov,
            aspect: Some(aspect),
        },
        position: pos.to_array(),
        right: r.to_array(),
        up: r.cross(f).to_array(),
        forward: f.to_array(),
    }
}

/// Per-pixel noise: half the mean squared difference of two renders with different seeds,
/// relative to the pixel's value (as relMSE weighs it).
pub fn noise(a: &[[f32; 3]], b: &[[f32; 3]]) -> f64 {
    let mut sum = 0.0;
    for (p, q) in a.iter().zip(b) {
        for c in 0..3 {
            let (x, y) = (p[c] as f64, q[c] as f64);
            let m = 0.5 * (x + y);
            sum += 0.5 * (x - y) * (x - y) / (m * m + 0.01);
        }
    }
    sum / (a.len() * 3) as f64
}

/// The mean over all pixels of two renders (two seeds of one image).
pub fn mean_of_two(imgs: &[Vec<[f32; 3]>; 2]) -> [f64; 3] {
    let (a, b) = (mean(&imgs[0]), mean(&imgs[1]));
    [0, 1, 2].map(|c| 0.5 * (a[c] + b[c]))
}

/// Asserts that two images' per-channel means agree within `tolerance` (relative to `a`'s);
/// `labels` name the two in the message.
pub fn assert_means_agree(a: [f64; 3], b: [f64; 3], tolerance: f64, labels: (&str, &str)) {
    for c in 0..3 {
        assert!(
            (a[c] - b[c]).abs() < tolerance * a[c],
            "channel {c}: {} {}, {} {}",
            a[c],
            labels.0,
            b[c],
            labels.1
        );
    }
}
