//! Against a renderer we did not write: the Cornell box beside Tungsten's reference render.

mod common;
use common::*;
use rayfarm_render::{RenderScene, RenderSettings};

/// Reads the reference EXR and box-downsamples it to `size` x `size`.
fn reference(size: usize) -> Option<Vec<[f64; 3]>> {
    let path = shared_scene("cornell-box/reference/TungstenRender.exr")?;
    let img = exr::prelude::read_first_rgba_layer_from_file(
        &path,
        |res, _| (res.width(), vec![[0f32; 3]; res.width() * res.height()]),
        |(w, px), pos, (r, g, b, _a): (f32, f32, f32, f32)| px[pos.y() * *w + pos.x()] = [r, g, b],
    )
    .expect("reference EXR reads");
    let (w, px) = &img.layer_data.channel_data.pixels;
    let f = w / size;
    let mut out = vec![[0f64; 3]; size * size];
    for y in 0..size * f {
        for x in 0..size * f {
            let p = px[y * w + x];
            let o = &mut out[(y / f) * size + x / f];
            for c in 0..3 {
                o[c] += p[c] as f64 / (f * f) as f64;
            }
        }
    }
    Some(out)
}

fn rel_mse(img: &[[f32; 3]], reference: &[[f64; 3]]) -> f64 {
    let mut s = 0.0;
    for (a, b) in img.iter().zip(reference) {
        for c in 0..3 {
            let d = a[c] as f64 - b[c];
            s += d * d / (b[c] * b[c] + 1e-2);
        }
    }
    s / (3 * img.len()) as f64
}

#[test]
fn cornell_box_matches_tungsten() {
    let Some(gltf) = shared_scene("cornell-box/converted/cornell_box.gltf") else {
        return;
    };
    let size = 64usize;
    let Some(reference) = reference(size) else {
        return;
    };
    let (scene, _) = rayfarm_scene::load(&gltf).expect("cornell box loads");
    let camera = scene.cameras[0].clone();
    let rs = RenderScene::new(scene);
    let settings = |spp| RenderSettings {
        width: size as u32,
        height: size as u32,
        spp,
        max_bounces: 64,
        seed: 7,
        camera: camera.clone(),
    };
    let low = render(&rs, &settings(16), 2, 32, 16);
    let high = render(&rs, &settings(256), 2, 32, 32);
    let (m, r) = (
        mean(&high),
        mean(
            &reference
                .iter()
                .map(|p| p.map(|v| v as f32))
                .collect::<Vec<_>>(),
        ),
    );
    let (e_low, e_high) = (rel_mse(&low, &reference), rel_mse(&high, &reference));
    eprintln!("mean rayfarm {m:?} tungsten {r:?}; relMSE 16 spp {e_low:.5}, 256 spp {e_high:.5}");
    for c in 0..3 {
        assert!(
            (m[c] - r[c]).abs() < 0.02 * r[c],
            "channel {c}: {} vs {}",
            m[c],
            r[c]
        );
    }
    // 16x the samples: relative MSE should fall by about 16x while it is above the reference's
    // own noise; ask for at least 5x.
    assert!(e_high < e_low / 5.0, "relMSE {e_low} -> {e_high}");
}
