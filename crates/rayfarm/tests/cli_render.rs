//! `rayfarm render` end to end on the embedded Cornell box: determinism across threads and work
//! splits, output formats, and what the command prints.

mod common;

use common::*;
use std::path::Path;

/// Renders the embedded Cornell box at 48x48, 8 spp, with `extra` arguments, into `out`.
fn render_embedded(out: &Path, extra: &[&str]) -> Run {
    let mut a = args!["render", "-o", out, "--width", "48", "--height", "48", "--spp", "8"];
    a.extend(extra.iter().map(std::ffi::OsString::from));
    rayfarm(a)
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn same_image_with_one_or_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("t1.exr"), dir.path().join("t2.exr"));
    render_embedded(&a, &["--threads", "1", "--quiet"]).assert_ok();
    render_embedded(&b, &["--threads", "2", "--quiet"]).assert_ok();
    let (ba, bb) = (read(&a), read(&b));
    assert!(
        ba.len() > 48 * 48 * 3 * 4,
        "the EXR is too small: {} bytes",
        ba.len()
    );
    assert!(
        ba == bb,
        "--threads 1 and --threads 2 gave different EXR files"
    );
}

#[test]
fn same_image_with_any_tile_and_unit_size() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.exr"), dir.path().join("b.exr"));
    render_embedded(&a, &["--tile", "8", "--samples-per-unit", "3", "--quiet"]).assert_ok();
    render_embedded(&b, &["--tile", "32", "--samples-per-unit", "8", "--quiet"]).assert_ok();
    assert!(
        read(&a) == read(&b),
        "--tile 8 --samples-per-unit 3 and --tile 32 --samples-per-unit 8 gave different EXR files"
    );
    // And the image is the Cornell box, not black.
    let (w, h, px) = read_exr(&a);
    assert_eq!((w, h), (48, 48));
    let mean = region_mean(w, &px, 0, w, 0, h);
    assert!(
        mean > 0.01,
        "the Cornell box rendered (nearly) black: mean {mean}"
    );
}

#[test]
fn seed_changes_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("s0.exr"), dir.path().join("s1.exr"));
    render_embedded(&a, &["--quiet"]).assert_ok();
    render_embedded(&b, &["--seed", "1", "--quiet"]).assert_ok();
    assert!(read(&a) != read(&b), "--seed 1 should change the noise");
}

#[test]
fn half_exr_and_png_output() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full.exr");
    let half = dir.path().join("half.exr");
    let png = dir.path().join("out.png");
    render_embedded(&full, &["--quiet"]).assert_ok();
    render_embedded(&half, &["--half", "--quiet"]).assert_ok();
    render_embedded(&png, &["--quiet", "--exposure", "1", "--tonemap", "aces"]).assert_ok();

    let (bf, bh) = (read(&full), read(&half));
    assert_eq!(&bh[..4], &[0x76, 0x2f, 0x31, 0x01], "not an EXR file");
    assert!(
        bh.len() < bf.len(),
        "a half-float EXR should be smaller than a 32-bit one"
    );
    let (w, h, fpx) = read_exr(&full);
    let (hw, hh, hpx) = read_exr(&half);
    assert_eq!((w, h), (hw, hh));
    for (a, b) in fpx.iter().zip(&hpx) {
        for k in 0..3 {
            let tol = 1e-3 * a[k].abs().max(1e-2);
            assert!(
                (a[k] - b[k]).abs() <= tol,
                "half and full EXR differ: {a:?} vs {b:?}"
            );
        }
    }

    let img = image::open(&png).expect("a readable PNG").to_rgb8();
    assert_eq!(img.dimensions(), (48, 48));
    assert!(img.as_raw().iter().any(|&v| v > 0), "the PNG is black");
    // No partial files are left behind.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}

#[test]
fn quiet_prints_nothing_and_summary_mentions_throughput() {
    let dir = tempfile::tempdir().unwrap();
    let q = render_embedded(&dir.path().join("q.exr"), &["--quiet"]);
    q.assert_ok();
    assert_eq!(q.stdout, "", "--quiet should print nothing on stdout");
    assert_eq!(
        q.stderr, "",
        "--quiet should print nothing on stderr for a clean scene"
    );

    let out = dir.path().join("v.png");
    let v = render_embedded(&out, &[]);
    v.assert_ok();
    assert!(
        v.stdout.contains("samples/s"),
        "the summary should report samples/s: {}",
        v.stdout
    );
    // The scene's preparation (BVH, lights, textures) is reported apart: it is not sampling time.
    assert!(
        v.stdout.contains("scene set-up "),
        "the summary should report the set-up time: {}",
        v.stdout
    );
    assert!(
        v.stdout.contains("48x48"),
        "the summary should report the size: {}",
        v.stdout
    );
    assert!(
        v.stdout.contains(&*out.to_string_lossy()),
        "the summary should name the output: {}",
        v.stdout
    );
}

#[test]
fn unknown_output_extension_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["out.tiff", "out", "out.jpg"] {
        let out = dir.path().join(name);
        let r = render_embedded(&out, &["--quiet"]);
        r.assert_error(&[name, "unknown output format"]);
        assert!(!out.exists(), "{name} should not have been written");
    }
}

#[test]
fn missing_output_folder_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("nosuchdir/out.exr");
    render_embedded(&out, &["--quiet"]).assert_error(&["nosuchdir", "does not exist"]);
}

#[test]
fn camera_by_name_and_index() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("name.exr"), dir.path().join("index.exr"));
    render_embedded(&a, &["--camera", "pbrt_camera", "--quiet"]).assert_ok();
    render_embedded(&b, &["--camera", "0", "--quiet"]).assert_ok();
    assert!(
        read(&a) == read(&b),
        "camera by name and by index should be the same camera"
    );
}

/// `RAYFARM_ISA` forces a code path; each path this CPU runs writes the same bytes, and a path
/// that does not exist is an error that names the variable and the paths there are.
#[test]
fn every_forced_code_path_writes_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let run = |isa: &str, out: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rayfarm"))
            .args([
                "render", "--width", "48", "--height", "48", "--spp", "8", "--quiet",
            ])
            .arg("-o")
            .arg(out)
            .env("RAYFARM_ISA", isa)
            .output()
            .expect("rayfarm starts")
    };
    let mut files = Vec::new();
    for isa in rayfarm_render::isa::Isa::supported() {
        let out = dir.path().join(format!("{}.exr", isa.name()));
        let r = run(isa.name(), &out);
        assert!(
            r.status.success(),
            "RAYFARM_ISA={}: {}",
            isa.name(),
            String::from_utf8_lossy(&r.stderr)
        );
        files.push((isa.name(), read(&out)));
    }
    for (name, bytes) in &files[1..] {
        assert!(
            *bytes == files[0].1,
            "RAYFARM_ISA={name} and RAYFARM_ISA={} wrote different EXR files",
            files[0].0
        );
    }
    let r = run("avx9000", &dir.path().join("x.exr"));
    assert_eq!(r.status.code(), Some(2));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.starts_with("error: RAYFARM_ISA=avx9000: no such path") && err.contains("scalar"),
        "{err}"
    );
    assert!(!dir.path().join("x.exr").exists());
}

/// The whole path loop and the baker's loop are compiled once per code path
/// (`rayfarm_render::isa::run`): a textured scene with normal and emission maps under an
/// environment map, rendered and baked (`--passes complete`), writes the same bytes on every
/// path this CPU runs.
#[test]
fn every_code_path_renders_and_bakes_a_textured_scene_the_same() {
    let Some(shared) = shared_scenes() else {
        return;
    };
    let scene = shared.join("water-bottle/glTF/WaterBottle.gltf");
    let env = shared.join("environments/chinese_garden_1k.hdr");
    let dir = tempfile::tempdir().unwrap();
    let mut renders = Vec::new();
    let mut bakes = Vec::new();
    for isa in rayfarm_render::isa::Isa::supported() {
        let name = isa.name();
        let out = dir.path().join(format!("{name}.exr"));
        rayfarm_env(
            args![
                "render", &scene, "--env", &env, "--width", "40", "--height", "40", "--spp", "8",
                "--quiet", "-o", &out
            ],
            &[("RAYFARM_ISA", name)],
        )
        .assert_ok();
        renders.push((name, read(&out)));
        let baked = dir.path().join(format!("bake-{name}"));
        rayfarm_env(
            args![
                "bake", &scene, "--env", &env, "--size", "64", "--spp", "4", "--passes",
                "complete", "--quiet", "-o", &baked
            ],
            &[("RAYFARM_ISA", name)],
        )
        .assert_ok();
        let mut files: Vec<_> = std::fs::read_dir(&baked)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (p.file_name().unwrap().to_owned(), read(&p))
            })
            .collect();
        files.sort();
        assert!(
            !files.is_empty(),
            "RAYFARM_ISA={name}: the bake wrote nothing"
        );
        bakes.push((name, files));
    }
    for (name, bytes) in &renders[1..] {
        assert!(
            *bytes == renders[0].1,
            "RAYFARM_ISA={name} and RAYFARM_ISA={} rendered different bytes",
            renders[0].0
        );
    }
    for (name, files) in &bakes[1..] {
        assert!(
            *files == bakes[0].1,
            "RAYFARM_ISA={name} and RAYFARM_ISA={} baked different bytes",
            bakes[0].0
        );
    }
}
