//! End-to-end tests of `rayfarm bake` through the real binary: single- vs multi-pass bytes,
//! the baked glTF, and bad input refused before any work.

mod common;

use common::{rayfarm, repo_root};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn scene() -> PathBuf {
    repo_root().join("crates/rayfarm/tests/data/two-charts.obj")
}

/// Every file in `dir`, by name.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn bake(out: &Path, extra: &[&str]) -> common::Run {
    let mut args = vec![
        "bake".to_string(),
        scene().display().to_string(),
        "--out".into(),
        out.display().to_string(),
        "--size".into(),
        "64".into(),
        "--spp".into(),
        "8".into(),
        "--max-bounces".into(),
        "3".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    rayfarm(args)
}

#[test]
fn single_and_multi_pass_give_the_same_bytes() {
    let t = tempfile::tempdir().unwrap();
    let (s, m) = (t.path().join("single"), t.path().join("multi"));
    bake(&s, &["--mode", "single"]).assert_ok();
    bake(&m, &["--mode", "multi"]).assert_ok();
    let (fs, fm) = (files(&s), files(&m));
    assert_eq!(fs.len(), 10, "5 passes x EXR + PNG: {:?}", fs.keys());
    assert_eq!(fs.keys().collect::<Vec<_>>(), fm.keys().collect::<Vec<_>>());
    for (name, bytes) in &fs {
        assert!(
            bytes == &fm[name],
            "{name} differs between single and multi"
        );
    }
    // The lit pass is not trivially uniform (the fin's shadow, the red floor's bleeding).
    let (w, _, px) = common::read_exr(&s.join("atlas_complete_64.exr"));
    let left = common::region_mean(w, &px, 8, 24, 8, 56);
    let right = common::region_mean(w, &px, 40, 56, 8, 56);
    assert!(
        left > 0.0 && right > 0.0 && (left - right).abs() > 1e-3,
        "{left} {right}"
    );
}

#[test]
fn multi_pass_with_several_threads_and_tiles_is_the_same() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    bake(&a, &["--passes", "lightmap", "--threads", "1"]).assert_ok();
    bake(
        &b,
        &[
            "--passes",
            "lightmap",
            "--mode",
            "multi",
            "--threads",
            "2",
            "--tile",
            "7",
            "--samples-per-unit",
            "3",
        ],
    )
    .assert_ok();
    assert_eq!(files(&a), files(&b));
}

#[test]
fn baked_gltf_shows_the_complete_map() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("maps");
    let glb = t.path().join("baked.glb");
    bake(
        &out,
        &[
            "--passes",
            "complete,ao",
            "--gltf-out",
            glb.to_str().unwrap(),
        ],
    )
    .assert_ok();
    let bytes = std::fs::read(&glb).unwrap();
    assert_eq!(&bytes[..4], b"glTF");
    // The complete map's PNG is embedded as it was written.
    let png = std::fs::read(out.join("atlas_complete_64.png")).unwrap();
    assert!(
        bytes.windows(png.len()).any(|w| w == png.as_slice()),
        "the complete map is not in the GLB"
    );
    let info = rayfarm(["info".to_string(), glb.display().to_string()]);
    info.assert_ok();
    assert!(info.stdout.contains("2 meshes"), "{}", info.stdout);
    assert!(info.stdout.contains("'Left'") && info.stdout.contains("'Right'"));
    // Without the complete pass there is nothing to assign.
    bake(
        &t.path().join("x"),
        &["--passes", "ao", "--gltf-out", glb.to_str().unwrap()],
    )
    .assert_error(&["--gltf-out", "complete"]);
}

#[test]
fn bad_bake_requests_are_refused_before_any_work() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("never");
    bake(&out, &["--uv-set", "1"]).assert_error(&["two-charts.obj", "UV set 1"]);
    bake(&out, &["--objects", "Left,Nope"]).assert_error(&["Nope", "Left", "Right"]);
    bake(&out, &["--objects", "Lamp"]).assert_error(&["Lamp", "UV set 0"]);
    for size in ["0", "100000"] {
        let mut args = vec![
            "bake".to_string(),
            scene().display().to_string(),
            "--out".into(),
            out.display().to_string(),
            "--size".into(),
            size.into(),
        ];
        args.push("--quiet".into());
        rayfarm(args).assert_error(&["--size", size]);
    }
    assert!(!out.exists(), "a refused bake created {}", out.display());
}
