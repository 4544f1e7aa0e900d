//! Analytic and consistency tests of the bake passes.

use glam::{Vec3, Vec3A};
use rayfarm_bake::*;
use rayfarm_render::{plan_units, render_local, RenderScene, RenderSettings};
use rayfarm_scene::{Camera, CompiledScene, Light, LightKind, Material, Projection};
use std::path::{Path, PathBuf};

fn bake(
    rs: &RenderScene,
    table: &TexelTable,
    settings: &BakeSettings,
    threads: usize,
    tile: u32,
    spu: u32,
) -> Vec<[f32; 3]> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let units = plan(table, settings, tile, spu);
    let film = pool.install(|| bake_local(rs, table, settings, &units, &|_| {}));
    assert_eq!(film.nonfinite_samples, 0);
    film.to_rgb(settings.spp())
}

fn settings(pass: Pass, spp: u32) -> BakeSettings {
    BakeSettings {
        pass,
        spp,
        max_bounces: 8,
        seed: 7,
        ao_distance: 10.0,
    }
}

fn point_of(scene: &CompiledScene, p: &TexelPoint) -> Vec3A {
    let t = scene.triangles[p.prim as usize];
    let [a, b, c] = t.map(|i| Vec3A::from(scene.positions[i as usize]));
    a * (1.0 - p.b1 - p.b2) + b * p.b1 + c * p.b2
}

fn grey(c: f32) -> Material {
    Material {
        base_color: [c, c, c, 1.0],
        metallic: 0.0,
        ..Default::default()
    }
}

#[test]
fn ao_of_open_plane_is_one() {
    let mut s = CompiledScene::default();
    let m = s.add_material(grey(0.5));
    s.add_quad(
        "plane",
        Vec3::new(-1.0, 0.0, -1.0),
        Vec3::Z * 2.0,
        Vec3::X * 2.0,
        m,
    );
    let table = TexelTable::build(&s, &[0], 0, 8, 8);
    let rs = RenderScene::new(s);
    let ao = bake(&rs, &table, &settings(Pass::Ao, 64), 2, 4, 16);
    assert!(ao.iter().all(|p| *p == [1.0; 3]), "{ao:?}");
}

/// Fraction of cosine-weighted directions from the centre of a 1x1 floor that leave an open box
/// of wall height `h` through its top: for azimuth φ the opening is reached up to
/// tan θ = 0.5 / (h max(|cos φ|, |sin φ|)), and ∫ cos θ sin θ dθ / π up to θmax is sin²θmax / 2π.
fn open_box_ao(h: f64) -> f64 {
    let n = 200_000;
    let mut sum = 0.0;
    for i in 0..n {
        let phi = (i as f64 + 0.5) / n as f64 * std::f64::consts::TAU;
        let t = 0.5 / (h * phi.cos().abs().max(phi.sin().abs()));
        let s2 = t * t / (1.0 + t * t);
        sum += s2;
    }
    sum / n as f64
}

#[test]
fn ao_in_open_box_matches_integral() {
    let h = 0.8f32;
    let mut s = CompiledScene::default();
    let m = s.add_material(grey(0.5));
    // Floor facing +Y with its centre at the origin; UV (0.5, 0.5) is the centre.
    s.add_quad("floor", Vec3::new(-0.5, 0.0, -0.5), Vec3::Z, Vec3::X, m);
    let y = Vec3::Y * h;
    s.add_quad("w1", Vec3::new(0.5, 0.0, -0.5), y, Vec3::Z, m);
    s.add_quad("w2", Vec3::new(-0.5, 0.0, -0.5), Vec3::Z, y, m);
    s.add_quad("w3", Vec3::new(-0.5, 0.0, 0.5), y, Vec3::X, m);
    s.add_quad("w4", Vec3::new(-0.5, 0.0, -0.5), Vec3::X, y, m);
    let table = TexelTable::build(&s, &[0], 0, 9, 9);
    let centre = table.texels[4 * 9 + 4];
    assert!(point_of(&s, &centre).length() < 1e-5);
    let rs = RenderScene::new(s);
    let ao = bake(&rs, &table, &settings(Pass::Ao, 4096), 2, 4, 256);
    let got = ao[4 * 9 + 4][0] as f64;
    let want = open_box_ao(h as f64);
    eprintln!("open box AO: baked {got:.4}, integral {want:.4}");
    assert!((got - want).abs() < 0.01, "AO {got} vs {want}");
    // Points near the walls see less sky.
    assert!(ao[4 * 9][0] < ao[4 * 9 + 4][0]);
}

#[test]
fn lightmap_under_point_light_is_inverse_square() {
    let mut s = CompiledScene::default();
    let m = s.add_material(grey(0.3));
    s.add_quad(
        "plane",
        Vec3::new(-1.0, 0.0, -1.0),
        Vec3::Z * 2.0,
        Vec3::X * 2.0,
        m,
    );
    let (lp, intensity) = (Vec3A::new(0.3, 1.0, 0.2), 10.0f32);
    s.lights.push(Light {
        name: "point".into(),
        kind: LightKind::Point,
        color: [1.0, 1.0, 1.0],
        intensity,
        position: lp.to_array(),
        direction: [0.0, -1.0, 0.0],
    });
    let table = TexelTable::build(&s, &[0], 0, 16, 16);
    let points: Vec<Vec3A> = table.texels.iter().map(|t| point_of(&s, t)).collect();
    let rs = RenderScene::new(s);
    let e = bake(&rs, &table, &settings(Pass::Lightmap, 4), 2, 8, 4);
    for (p, got) in points.iter().zip(&e) {
        let d = lp - *p;
        let r = d.length();
        let want = intensity * (d.y / r) / (r * r);
        for c in got {
            assert!((c - want).abs() < 0.01 * want, "E {c} vs {want} at {p}");
        }
    }
}

fn cornell() -> CompiledScene {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cornell-box/cornell_box.gltf");
    rayfarm_scene::load(&path).unwrap().0
}

/// The complete pass of Cornell-box floor texels equals the path-traced radiance a camera
/// looking straight down at the same points sees (both along the normal).
#[test]
fn cornell_floor_complete_matches_render() {
    let scene = cornell();
    let floor = scene.mesh_by_name("Floor").unwrap();
    let table = TexelTable::build(&scene, &[floor], 0, 16, 16);
    let rs = RenderScene::new(scene.clone());
    let spp = 2048;
    let mut picked = Vec::new();
    for (i, t) in table.texels.iter().enumerate() {
        let p = point_of(&scene, t);
        // Free above (not under a box), away from the walls; every 17th texel.
        if i % 17 == 0 && rs.visibility(p + Vec3A::Y * 1e-3, Vec3A::Y, 0.5) == Vec3A::ONE {
            picked.push((i, p));
        }
    }
    assert!(picked.len() >= 4, "{picked:?}");
    picked.truncate(6);
    let baked = bake(&rs, &table, &settings(Pass::Complete, spp), 2, 8, 256);
    let lightmap = bake(&rs, &table, &settings(Pass::Lightmap, spp), 2, 8, 256);
    let albedo = bake(&rs, &table, &settings(Pass::Albedo, 1), 2, 8, 1);
    let (mut sum_b, mut sum_r) = (0.0f64, 0.0f64);
    for &(i, p) in &picked {
        let pos = p + Vec3A::Y * 0.4;
        let cam = Camera {
            name: "down".into(),
            projection: Projection::Orthographic {
                xmag: 1e-4,
                ymag: 1e-4,
            },
            position: pos.to_array(),
            right: [1.0, 0.0, 0.0],
            up: [0.0, 0.0, -1.0],
            forward: [0.0, -1.0, 0.0],
        };
        let rset = RenderSettings {
            width: 1,
            height: 1,
            spp,
            max_bounces: 8,
            seed: 3,
            camera: cam,
        };
        let units = plan_units(1, 1, spp, 1, 256);
        let r = render_local(&rs, &rset, &units, &|_| {}).to_rgb(spp)[0];
        let b = baked[i];
        eprintln!("floor texel {i} at {p}: complete {b:?}, render {r:?}");
        let diffuse = lightmap[i].map(|e| e / std::f32::consts::PI);
        for c in 0..3 {
            assert!(
                (b[c] - r[c]).abs() < 0.08 * r[c] + 1e-3,
                "texel {i}: bake {b:?} vs render {r:?}"
            );
            // The floor is pure Lambert (specular 0), so lightmap * albedo / π estimates the
            // same value as the complete pass; they differ only by Monte Carlo noise (two
            // independent 2048-sample estimates: a few per cent per texel).
            let d = diffuse[c] * albedo[i][c];
            assert!(
                (d - b[c]).abs() <= 0.08 * b[c] + 1e-3,
                "texel {i}: diffuse {d} vs complete {}",
                b[c]
            );
            sum_b += b[c] as f64;
            sum_r += r[c] as f64;
        }
    }
    assert!(
        (sum_b - sum_r).abs() < 0.02 * sum_r,
        "mean bake {sum_b} vs render {sum_r}"
    );
}

#[test]
fn bit_identical_across_threads_and_tiles() {
    let scene = cornell();
    let (meshes, _) = select_objects(&scene, &[], 0).unwrap();
    let table = TexelTable::build(&scene, &meshes, 0, 40, 40);
    let rs = RenderScene::new(scene);
    for pass in [Pass::Complete, Pass::Ao, Pass::Lightmap] {
        let s = settings(pass, 6);
        let a = bake(&rs, &table, &s, 1, 8, 6);
        let b = bake(&rs, &table, &s, 2, 13, 4);
        let c = bake(&rs, &table, &s, 2, 40, 1);
        assert!(a.iter().any(|p| p[0] > 0.0));
        assert!(a == b && a == c, "{pass:?} differs");
    }
}

#[test]
fn bad_requests_are_named() {
    let scene = cornell();
    let e = select_objects(&scene, &["Floor".into(), "Nope".into()], 0).unwrap_err();
    assert!(e.to_string().contains("'Nope'"), "{e}");
    let e = select_objects(&scene, &["Floor".into()], 1).unwrap_err();
    assert_eq!(
        e,
        BakeError::MissingUvSet {
            object: "Floor".into(),
            uv_set: 1
        }
    );
    assert_eq!(
        select_objects(&scene, &[], 1).unwrap_err(),
        BakeError::NothingToBake(1)
    );
    assert_eq!(check_size(0), Err(BakeError::BadSize(0)));
    assert_eq!(check_size(100_000), Err(BakeError::BadSize(100_000)));
    assert_eq!(check_size(2048), Ok(2048));
    assert!(size_for_density(&scene, &[0], 0, 0.0).is_err());
    let s = size_for_density(&scene, &[0], 0, 100.0).unwrap();
    // The floor is 2 x 2 units over the whole UV square.
    assert!((199..=201).contains(&s), "{s}");
}

/// Path of a file under ../shared/scenes, or None (with a notice) when absent; panics instead
/// when RAYFARM_REQUIRE_SHARED=1.
fn shared_scene(rel: &str) -> Option<PathBuf> {
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

#[test]
fn water_bottle_charts_fully_covered_and_padded() {
    let Some(path) = shared_scene("water-bottle/glTF/WaterBottle.gltf") else {
        return;
    };
    let scene = rayfarm_scene::load(&path).unwrap().0;
    let (meshes, _) = select_objects(&scene, &[], 0).unwrap();
    let n = 256usize;
    let table = TexelTable::build(&scene, &meshes, 0, n as u32, n as u32);
    // Independent check: every texel centre inside some UV triangle is covered.
    let mut inside = vec![false; n * n];
    for &mi in &meshes {
        let m = &scene.meshes[mi];
        for prim in m.first_triangle..m.first_triangle + m.triangle_count {
            let uv = scene.triangles[prim as usize]
                .map(|i| scene.uv0[i as usize].map(|c| c as f64 * n as f64));
            let (lx, hx) = (
                uv.iter().map(|p| p[0]).fold(f64::MAX, f64::min),
                uv.iter().map(|p| p[0]).fold(f64::MIN, f64::max),
            );
            let (ly, hy) = (
                uv.iter().map(|p| p[1]).fold(f64::MAX, f64::min),
                uv.iter().map(|p| p[1]).fold(f64::MIN, f64::max),
            );
            let edge = |a: [f64; 2], b: [f64; 2], q: [f64; 2]| {
                (b[0] - a[0]) * (q[1] - a[1]) - (b[1] - a[1]) * (q[0] - a[0])
            };
            for y in (ly.floor().max(0.0) as usize)..(hy.ceil().min(n as f64) as usize) {
                for x in (lx.floor().max(0.0) as usize)..(hx.ceil().min(n as f64) as usize) {
                    let q = [x as f64 + 0.5, y as f64 + 0.5];
                    let e = [
                        edge(uv[0], uv[1], q),
                        edge(uv[1], uv[2], q),
                        edge(uv[2], uv[0], q),
                    ];
                    if e.iter().all(|&v| v > 0.0) || e.iter().all(|&v| v < 0.0) {
                        inside[y * n + x] = true;
                    }
                }
            }
        }
    }
    let covered = table.covered();
    let inside_count = inside.iter().filter(|&&b| b).count();
    assert!(inside_count > n * n / 4, "{inside_count}");
    for i in 0..n * n {
        assert!(
            !inside[i] || covered[i],
            "texel ({}, {}) inside a chart but empty",
            i % n,
            i / n
        );
    }
    assert!(
        table.covered_count() as usize > inside_count,
        "conservative edges add texels"
    );
    eprintln!(
        "water bottle 256²: {} centre texels, {} covered, overlap share {:.4}",
        table.centre_texels,
        table.covered_count(),
        table.overlap_share()
    );
    // Bake AO cheaply and pad: everything within 3 texels of a chart is filled, nothing else.
    let mut rs_scene = scene;
    rs_scene.environment = rayfarm_scene::Environment::Color([1.0; 3]);
    let rs = RenderScene::new(rs_scene);
    let mut s = settings(Pass::Ao, 2);
    s.ao_distance = default_ao_distance(&rs);
    let ao = bake(&rs, &table, &s, 4, 32, 2);
    for (i, p) in ao.iter().enumerate() {
        if covered[i] {
            assert!((0.0..=1.0).contains(&p[0]), "texel {i}: {p:?}");
        } else {
            assert_eq!(*p, [0.0; 3]);
        }
    }
    let (padded, cov) = dilate(&ao, n as u32, n as u32, &covered, 3);
    for y in 0..n {
        for x in 0..n {
            let near = (y.saturating_sub(3)..(y + 4).min(n))
                .any(|yy| (x.saturating_sub(3)..(x + 4).min(n)).any(|xx| covered[yy * n + xx]));
            assert_eq!(cov[y * n + x], near, "({x}, {y})");
        }
    }
    assert!(padded.iter().zip(&cov).all(|(p, &c)| c || *p == [0.0; 3]));
}

/// The `complete` pass shades with the same BSDF as renders, layers included: a white sheen
/// (KHR_materials_sheen) or clearcoat (KHR_materials_clearcoat) over a grey plane under a
/// uniform white sky changes what the pass records, and never above the sky. (Seen along the
/// normal, the sheen darkens the plane: it reflects little there, while the albedo scaling
/// takes from the base the light arriving at grazing angles, where the sheen is strong.)
#[test]
fn complete_pass_includes_sheen_and_clearcoat() {
    let complete_mean = |m: Material| {
        let mut s = CompiledScene {
            environment: rayfarm_scene::Environment::Color([1.0; 3]),
            ..Default::default()
        };
        let m = s.add_material(m);
        s.add_quad(
            "plane",
            Vec3::new(-1.0, 0.0, -1.0),
            Vec3::Z * 2.0,
            Vec3::X * 2.0,
            m,
        );
        let table = TexelTable::build(&s, &[0], 0, 8, 8);
        let rs = RenderScene::new(s);
        let px = bake(&rs, &table, &settings(Pass::Complete, 64), 2, 4, 16);
        px.iter().map(|p| p[0] as f64).sum::<f64>() / px.len() as f64
    };
    let plain = complete_mean(grey(0.5));
    let sheen = complete_mean(Material {
        sheen_color: [1.0; 3],
        sheen_roughness: 0.5,
        ..grey(0.5)
    });
    let coat = complete_mean(Material {
        clearcoat: 1.0,
        clearcoat_roughness: 0.1,
        ..grey(0.5)
    });
    eprintln!("complete pass: plain {plain:.4}, sheen {sheen:.4}, clearcoat {coat:.4}");
    assert!(
        (sheen - plain).abs() > 0.02,
        "sheen {sheen} vs plain {plain}"
    );
    assert!(coat > plain + 0.01, "clearcoat {coat} vs plain {plain}");
    assert!(sheen <= 1.01 && coat <= 1.01);
}
