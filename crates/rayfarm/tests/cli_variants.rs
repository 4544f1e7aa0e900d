//! `rayfarm render --variant` and `rayfarm info` on a glTF with KHR_materials_variants.

mod common;

use base64::Engine;
use common::*;
use std::path::Path;

/// One triangle whose default material is black and whose variant "lit" makes it emit 1;
/// the variant "dark" maps nothing.
fn write_scene(path: &Path) {
    let bin: Vec<u8> = [-1.0f32, -1.0, 0.0, 1.0, -1.0, 0.0, 0.0, 1.0, 0.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(bin);
    let json = format!(
        r#"{{"asset":{{"version":"2.0"}},"extensionsUsed":["KHR_materials_variants"],
        "extensions":{{"KHR_materials_variants":{{"variants":[{{"name":"dark"}},{{"name":"lit"}}]}}}},
        "nodes":[{{"mesh":0}}],
        "meshes":[{{"primitives":[{{"attributes":{{"POSITION":0}},"material":0,
            "extensions":{{"KHR_materials_variants":{{"mappings":[{{"material":1,"variants":[1]}}]}}}}}}]}}],
        "materials":[{{"name":"black","pbrMetallicRoughness":{{"baseColorFactor":[0,0,0,1]}}}},
                     {{"name":"glow","emissiveFactor":[1,1,1],
                       "pbrMetallicRoughness":{{"baseColorFactor":[0,0,0,1]}}}}],
        "accessors":[{{"bufferView":0,"componentType":5126,"count":3,"type":"VEC3",
                       "min":[-1,-1,0],"max":[1,1,0]}}],
        "bufferViews":[{{"buffer":0,"byteLength":36}}],
        "buffers":[{{"byteLength":36,"uri":"data:application/octet-stream;base64,{b64}"}}]}}"#
    );
    std::fs::write(path, json).unwrap();
}

fn mean_of(out: &Path) -> f64 {
    let (w, h, px) = read_exr(out);
    region_mean(w, &px, 0, w, 0, h)
}

#[test]
fn variant_picks_materials_and_info_lists_them() {
    let dir = tempfile::tempdir().unwrap();
    let scene = dir.path().join("variants.gltf");
    write_scene(&scene);
    let render = |out: &Path, extra: &[&str]| {
        let mut a = args![
            "render",
            &scene,
            "-o",
            out,
            "--width",
            "16",
            "--height",
            "16",
            "--spp",
            "2",
            "--env-color",
            "0",
            "--quiet"
        ];
        a.extend(extra.iter().map(std::ffi::OsString::from));
        rayfarm(a)
    };
    let (plain, lit) = (dir.path().join("plain.exr"), dir.path().join("lit.exr"));
    render(&plain, &[]).assert_ok();
    render(&lit, &["--variant", "lit"]).assert_ok();
    assert_eq!(mean_of(&plain), 0.0);
    assert!(mean_of(&lit) > 0.05, "the lit variant should glow");

    render(&dir.path().join("x.exr"), &["--variant", "chrome"]).assert_error(&[
        "variants.gltf",
        "no material variant named 'chrome'",
        "dark, lit",
    ]);

    let info = rayfarm(args!["info", &scene]);
    info.assert_ok();
    assert!(
        info.stdout
            .contains("material variants (render --variant NAME): dark, lit"),
        "{}",
        info.stdout
    );
}

/// `rayfarm info SCENE | head -1`: a reader that stops early closes the pipe, which is no
/// error (it used to panic with "failed printing to stdout: Broken pipe").
#[test]
fn info_into_a_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let scene = dir.path().join("variants.gltf");
    write_scene(&scene);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rayfarm"))
        .arg("info")
        .arg(&scene)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the scene is loaded and anything is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// `rayfarm info` says how many emissive triangles a scene has and how light samples pick.
#[test]
fn info_counts_emissive_triangles() {
    let dir = tempfile::tempdir().unwrap();
    let scene = dir.path().join("variants.gltf");
    write_scene(&scene);
    // The same triangle with the glowing material as its own.
    let text = std::fs::read_to_string(&scene)
        .unwrap()
        .replace(r#""material":0,"#, r#""material":1,"#);
    std::fs::write(&scene, text).unwrap();
    let info = rayfarm(args!["info", &scene]);
    info.assert_ok();
    assert!(
        info.stdout
            .contains("1 emissive triangle; light samples pick by power"),
        "{}",
        info.stdout
    );
}
