//! Every scene of the shared collection (../shared/scenes, outside the repository) loads and
//! renders through the CLI, small and fast, to an image that is not black; scenes without a
//! camera are framed by the automatic camera.
//!
//! When the collection is absent the tests print a notice and pass, unless
//! RAYFARM_REQUIRE_SHARED=1.

mod common;

use common::*;
use std::path::Path;
use std::time::{Duration, Instant};

struct Rendered {
    width: usize,
    height: usize,
    pixels: Vec<[f32; 3]>,
    cameras: usize,
    elapsed: Duration,
}

/// `rayfarm info` then `rayfarm render` at 64x48, 4 spp, 3 bounces, with `extra` arguments.
fn render_scene(scene: &Path, extra: &[&str]) -> Rendered {
    let info = rayfarm(args!["info", scene]);
    info.assert_ok();
    let cameras = info
        .stdout
        .split([',', '\n'])
        .find_map(|part| {
            part.trim()
                .strip_suffix(" cameras")?
                .trim()
                .parse::<usize>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no camera count in `rayfarm info`: {}", info.stdout));

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.exr");
    let mut a = args![
        "render",
        scene,
        "-o",
        &out,
        "--width",
        "64",
        "--height",
        "48",
        "--spp",
        "4",
        "--max-bounces",
        "3"
    ];
    a.extend(extra.iter().map(std::ffi::OsString::from));
    let t0 = Instant::now();
    let r = rayfarm(a);
    let elapsed = t0.elapsed();
    r.assert_ok();
    assert!(
        !r.stderr.contains("error") && !r.stderr.contains("not finite"),
        "{}: unexpected messages: {}",
        scene.display(),
        r.stderr
    );
    let (width, height, pixels) = read_exr(&out);
    assert_eq!((width, height), (64, 48));
    println!(
        "{}: {} cameras, rendered in {:.2} s",
        scene.display(),
        cameras,
        elapsed.as_secs_f64()
    );
    Rendered {
        width,
        height,
        pixels,
        cameras,
        elapsed,
    }
}

/// Renders a scene of the shared collection and checks the image.
fn check(rel: &str) -> Option<Rendered> {
    let scenes = shared_scenes()?;
    let scene = scenes.join(rel);
    assert!(
        scene.is_file(),
        "{} is missing from the shared scenes",
        scene.display()
    );
    let r = render_scene(&scene, &[]);
    let (w, h) = (r.width, r.height);
    assert!(
        r.pixels
            .iter()
            .flatten()
            .all(|v| v.is_finite() && *v >= 0.0),
        "{rel}: bad pixel values"
    );
    let mean = region_mean(w, &r.pixels, 0, w, 0, h);
    assert!(mean > 0.001, "{rel}: the image is black (mean {mean})");
    if r.cameras == 0 {
        // The automatic camera must frame the object. It looks a little down, so with nothing
        // in view the centre would show the uniform ground of the sky, the colour of the lower
        // corners. Count the centre pixels that differ from the colour of every corner.
        let (cw, ch) = (w / 8, h / 8);
        let corners: Vec<[f64; 3]> = [(0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)]
            .iter()
            .map(|&(x0, y0)| region_rgb(w, &r.pixels, x0, x0 + cw, y0, y0 + ch))
            .collect();
        let differs = |p: [f32; 3], k: &[f64; 3]| {
            let diff = (0..3)
                .map(|c| (p[c] as f64 - k[c]).abs())
                .fold(0.0, f64::max);
            let scale = p
                .iter()
                .map(|&v| v as f64)
                .chain(k.iter().copied())
                .fold(0.0, f64::max);
            diff > 0.05 * scale + 1e-3
        };
        let (mut n, mut distinct) = (0usize, 0usize);
        for y in h / 4..3 * h / 4 {
            for x in w / 4..3 * w / 4 {
                n += 1;
                distinct += corners.iter().all(|k| differs(r.pixels[y * w + x], k)) as usize;
            }
        }
        let fraction = distinct as f64 / n as f64;
        assert!(
            fraction > 0.1,
            "{rel}: nothing in view of the automatic camera? only {:.0}% of the centre differs from the corners {corners:?}",
            fraction * 100.0
        );
        println!(
            "{rel}: {:.0}% of the centre differs from the corners",
            fraction * 100.0
        );
    }
    Some(r)
}

#[test]
fn cornell_box_gltf() {
    check("cornell-box/converted/cornell_box.gltf");
}

#[test]
fn cornell_box_obj() {
    check("cornell-box/converted/cornell_box.obj");
}

#[test]
fn lights_punctual_lamp() {
    check("lights-punctual-lamp/glTF/LightsPunctualLamp.gltf");
}

#[test]
fn metal_rough_spheres_1m_triangles() {
    if let Some(r) = check("metal-rough-spheres-no-textures/glTF/MetalRoughSpheresNoTextures.gltf")
    {
        // About a million triangles: loading and building the BVH must stay quick.
        assert!(
            r.elapsed < Duration::from_secs(120),
            "the 1M-triangle scene took {:.1} s",
            r.elapsed.as_secs_f64()
        );
    }
}

#[test]
fn water_bottle() {
    check("water-bottle/glTF/WaterBottle.gltf");
}

#[test]
fn multi_uv_test() {
    check("multi-uv-test/glTF/MultiUVTest.gltf");
}

#[test]
fn sponza_obj_if_present() {
    let Some(scenes) = shared_scenes() else {
        return;
    };
    if scenes.join("sponza-dabrovic-geometry/sponza.obj").is_file() {
        check("sponza-dabrovic-geometry/sponza.obj");
    }
}

#[test]
fn lamp_with_environment_map_and_colour() {
    let Some(scenes) = shared_scenes() else {
        return;
    };
    let lamp = scenes.join("lights-punctual-lamp/glTF/LightsPunctualLamp.gltf");
    let hdr = scenes.join("environments/chinese_garden_1k.hdr");
    let plain = render_scene(&lamp, &[]);
    let with_map = render_scene(&lamp, &["--env", hdr.to_str().unwrap()]);
    let with_colour = render_scene(&lamp, &["--env-color", "0.2,0.2,0.2"]);
    let mean = |r: &Rendered| region_mean(r.width, &r.pixels, 0, r.width, 0, r.height);
    let (m0, m1, m2) = (mean(&plain), mean(&with_map), mean(&with_colour));
    assert!(
        m1 > 0.001 && m2 > 0.001,
        "environment renders are black: {m1} {m2}"
    );
    // Adding light from an environment brightens the image.
    assert!(
        m1 > m0 && m2 > m0,
        "the environment added no light: none {m0}, map {m1}, colour {m2}"
    );
    assert!(
        with_map.pixels != with_colour.pixels,
        "--env and --env-color gave the same image"
    );
}

#[test]
fn environment_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.exr");
    let r = rayfarm(args![
        "render",
        "-o",
        &out,
        "--spp",
        "1",
        "--env",
        dir.path().join("nosuch.hdr")
    ]);
    r.assert_error(&["nosuch.hdr"]);
    let r = rayfarm(args![
        "render",
        "-o",
        &out,
        "--spp",
        "1",
        "--env-color",
        "1,2"
    ]);
    assert!(!r.success && !r.stderr.contains("panicked"), "{}", r.stderr);
    assert!(r.stderr.contains("R,G,B"), "{}", r.stderr);
}
