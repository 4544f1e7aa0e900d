//! Broken scene files through the real CLI: each must fail with exit code != 0 and one line
//! `error: FILE: PROBLEM` on stderr, never a panic.

mod common;

use base64::Engine;
use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Renders `scene` small and fast into `dir/out.exr`.
fn render(scene: &Path, dir: &Path, extra: &[&str]) -> Run {
    let mut a = args![
        "render",
        scene,
        "-o",
        dir.join("out.exr"),
        "--width",
        "16",
        "--height",
        "16",
        "--spp",
        "1",
        "--max-bounces",
        "1"
    ];
    a.extend(extra.iter().map(std::ffi::OsString::from));
    rayfarm(a)
}

fn file_name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

// ---------------------------------------------------------------------------------------------
// A hand-made one-triangle glTF with an embedded (data URI) buffer
// ---------------------------------------------------------------------------------------------

/// Binary layout: positions (3 x VEC3 f32, bytes 0..36), UVs (3 x VEC2 f32, 36..60),
/// indices (3 x u16, 60..66, padded to 68).
fn triangle_bin(indices: [u16; 3]) -> Vec<u8> {
    let mut b = Vec::new();
    for p in [[0.0f32, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]] {
        for c in p {
            b.extend_from_slice(&c.to_le_bytes());
        }
    }
    for uv in [[0.0f32, 0.0], [1.0, 0.0], [0.0, 1.0]] {
        for c in uv {
            b.extend_from_slice(&c.to_le_bytes());
        }
    }
    for i in indices {
        b.extend_from_slice(&i.to_le_bytes());
    }
    b.extend_from_slice(&[0, 0]);
    b
}

fn data_uri(bytes: &[u8]) -> String {
    format!(
        "data:application/octet-stream;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A valid glTF: one triangle, one material, a camera looking at it.
fn triangle_gltf() -> Value {
    let bin = triangle_bin([0, 1, 2]);
    json!({
        "asset": { "version": "2.0" },
        "scene": 0,
        "scenes": [ { "nodes": [0, 1] } ],
        "nodes": [
            { "name": "Triangle", "mesh": 0 },
            { "name": "Cam", "camera": 0, "translation": [0.3, 0.3, 2.0] }
        ],
        "cameras": [ { "name": "cam", "type": "perspective",
                       "perspective": { "yfov": 0.9, "znear": 0.01 } } ],
        "meshes": [ { "primitives": [ {
            "attributes": { "POSITION": 0, "TEXCOORD_0": 1 },
            "indices": 2,
            "material": 0
        } ] } ],
        "materials": [ { "name": "red", "pbrMetallicRoughness": { "baseColorFactor": [1, 0.2, 0.2, 1] } } ],
        "accessors": [
            { "bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3",
              "min": [0, 0, 0], "max": [1, 1, 0] },
            { "bufferView": 1, "componentType": 5126, "count": 3, "type": "VEC2" },
            { "bufferView": 2, "componentType": 5123, "count": 3, "type": "SCALAR" }
        ],
        "bufferViews": [
            { "buffer": 0, "byteOffset": 0, "byteLength": 36 },
            { "buffer": 0, "byteOffset": 36, "byteLength": 24 },
            { "buffer": 0, "byteOffset": 60, "byteLength": 6 }
        ],
        "buffers": [ { "byteLength": bin.len(), "uri": data_uri(&bin) } ]
    })
}

fn write_gltf(dir: &Path, name: &str, doc: &Value) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    p
}

#[test]
fn handmade_triangle_renders() {
    // The baseline the broken variants below start from must itself be fine.
    let dir = tempfile::tempdir().unwrap();
    let p = write_gltf(dir.path(), "tri.gltf", &triangle_gltf());
    render(&p, dir.path(), &["--env-color", "1"]).assert_ok();
    let (w, h, px) = read_exr(&dir.path().join("out.exr"));
    assert!(region_mean(w, &px, 0, w, 0, h) > 0.01);
}

#[test]
fn missing_texture_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    doc["materials"][0]["pbrMetallicRoughness"]["baseColorTexture"] = json!({ "index": 0 });
    doc["textures"] = json!([{ "source": 0 }]);
    doc["images"] = json!([{ "uri": "missing.png" }]);
    let p = write_gltf(dir.path(), "textured.gltf", &doc);
    render(&p, dir.path(), &[]).assert_error(&["textured.gltf", "missing.png", "image 0"]);
}

#[test]
fn undecodable_texture_image() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    doc["materials"][0]["pbrMetallicRoughness"]["baseColorTexture"] = json!({ "index": 0 });
    doc["textures"] = json!([{ "source": 0 }]);
    doc["images"] = json!([{ "uri": "garbage.png" }]);
    std::fs::write(
        dir.path().join("garbage.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    let p = write_gltf(dir.path(), "textured.gltf", &doc);
    render(&p, dir.path(), &[]).assert_error(&["textured.gltf", "garbage.png", "cannot decode"]);
}

#[test]
fn accessor_count_past_the_buffer_view() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    doc["accessors"][0]["count"] = json!(300);
    let p = write_gltf(dir.path(), "acc.gltf", &doc);
    render(&p, dir.path(), &[]).assert_error(&["acc.gltf", "accessor 0", "past the end"]);
}

#[test]
fn accessor_offset_past_the_buffer_view() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    doc["accessors"][1]["byteOffset"] = json!(16);
    let p = write_gltf(dir.path(), "acc.gltf", &doc);
    render(&p, dir.path(), &[]).assert_error(&["acc.gltf", "accessor 1"]);
}

#[test]
fn buffer_view_past_the_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    doc["bufferViews"][0]["byteLength"] = json!(4000);
    doc["accessors"][0]["count"] = json!(300);
    let p = write_gltf(dir.path(), "view.gltf", &doc);
    render(&p, dir.path(), &[]).assert_error(&["view.gltf", "buffer view 0"]);
}

#[test]
fn buffer_shorter_than_declared() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    doc["buffers"][0]["byteLength"] = json!(4000);
    doc["bufferViews"][0]["byteLength"] = json!(3600);
    doc["accessors"][0]["count"] = json!(300);
    let p = write_gltf(dir.path(), "buf.gltf", &doc);
    render(&p, dir.path(), &[]).assert_error(&["buf.gltf", "buffer 0", "4000"]);
}

#[test]
fn missing_external_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    doc["buffers"][0]["uri"] = json!("nosuch.bin");
    let p = write_gltf(dir.path(), "ext.gltf", &doc);
    render(&p, dir.path(), &[]).assert_error(&["ext.gltf", "nosuch.bin", "buffer 0"]);
}

#[test]
fn bad_base64_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    doc["buffers"][0]["uri"] = json!("data:application/octet-stream;base64,@@@not base64@@@");
    let p = write_gltf(dir.path(), "b64.gltf", &doc);
    render(&p, dir.path(), &[]).assert_error(&["b64.gltf", "base64"]);
}

#[test]
fn index_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    let bin = triangle_bin([0, 1, 5]);
    doc["buffers"][0]["uri"] = json!(data_uri(&bin));
    let p = write_gltf(dir.path(), "idx.gltf", &doc);
    render(&p, dir.path(), &[]).assert_error(&["idx.gltf", "index 5", "out of range"]);
}

#[test]
fn float_indices_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    doc["meshes"][0]["primitives"][0]["indices"] = json!(1);
    let p = write_gltf(dir.path(), "fidx.gltf", &doc);
    render(&p, dir.path(), &[]).assert_error(&["fidx.gltf", "index accessor 1"]);
}

#[test]
fn non_finite_position() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    let mut bin = triangle_bin([0, 1, 2]);
    bin[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    doc["buffers"][0]["uri"] = json!(data_uri(&bin));
    let p = write_gltf(dir.path(), "nan.gltf", &doc);
    render(&p, dir.path(), &[]).assert_error(&["nan.gltf", "non-finite"]);
}

#[test]
fn node_reference_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    doc["scenes"][0]["nodes"] = json!([0, 7]);
    let p = write_gltf(dir.path(), "node.gltf", &doc);
    render(&p, dir.path(), &[]).assert_error(&["node.gltf", "invalid glTF"]);
}

#[test]
fn cyclic_node_hierarchy() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    doc["nodes"][0]["children"] = json!([1]);
    doc["nodes"][1]["children"] = json!([0]);
    let p = write_gltf(dir.path(), "cycle.gltf", &doc);
    render(&p, dir.path(), &[]).assert_error(&["cycle.gltf"]);
}

#[test]
fn not_json() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("junk.gltf");
    std::fs::write(&p, b"{ \"asset\": ").unwrap();
    render(&p, dir.path(), &[]).assert_error(&["junk.gltf", "not valid glTF JSON"]);
}

#[test]
fn nonexistent_and_unknown_scene_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nosuch.gltf");
    render(&p, dir.path(), &[]).assert_error(&["nosuch.gltf"]);
    let p = dir.path().join("scene.fbx");
    std::fs::write(&p, b"whatever").unwrap();
    render(&p, dir.path(), &[]).assert_error(&["scene.fbx", "unsupported file type"]);
}

/// The environment map loads beside the scene; its errors still come in the old order: the
/// scene's first, then the view's, then the map's.
#[test]
fn a_missing_environment_map_is_reported_after_the_scene_and_the_view() {
    let dir = tempfile::tempdir().unwrap();
    let env = dir.path().join("nosuch.hdr");
    let env = env.to_str().unwrap();
    let p = dir.path().join("nosuch.gltf");
    render(&p, dir.path(), &["--env", env]).assert_error(&["nosuch.gltf"]);
    let p = write_gltf(dir.path(), "tri.gltf", &triangle_gltf());
    render(&p, dir.path(), &["--env", env, "--camera", "nope"]).assert_error(&["nope"]);
    render(&p, dir.path(), &["--env", env]).assert_error(&["nosuch.hdr"]);
}

#[test]
fn required_unsupported_extension() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    // (KHR_draco_mesh_compression was the example here until rayfarm decoded it.)
    doc["extensionsUsed"] = json!(["EXT_mesh_gpu_instancing"]);
    doc["extensionsRequired"] = json!(["EXT_mesh_gpu_instancing"]);
    let p = write_gltf(dir.path(), "instanced.gltf", &doc);
    render(&p, dir.path(), &[]).assert_error(&[
        "instanced.gltf",
        "EXT_mesh_gpu_instancing",
        "requires",
    ]);
}

#[test]
fn optional_unsupported_extension_warns_and_renders() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    // (KHR_materials_iridescence was the example here until rayfarm rendered it.)
    doc["extensionsUsed"] = json!([
        "KHR_materials_pbrSpecularGlossiness",
        "KHR_texture_transform"
    ]);
    doc["materials"][0]["extensions"] =
        json!({ "KHR_materials_pbrSpecularGlossiness": { "glossinessFactor": 0.5 } });
    let p = write_gltf(dir.path(), "glossy.gltf", &doc);
    let r = render(&p, dir.path(), &["--env-color", "0.5"]);
    r.assert_ok();
    let warnings: Vec<&str> = r
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning:"))
        .collect();
    assert_eq!(warnings.len(), 1, "expected one warning: {}", r.stderr);
    assert!(
        warnings[0].contains("glossy.gltf")
            && warnings[0].contains("KHR_materials_pbrSpecularGlossiness")
    );
    assert!(
        !warnings[0].contains("KHR_texture_transform"),
        "a supported extension was reported"
    );
    assert!(dir.path().join("out.exr").is_file());
    // --quiet silences the warning.
    let q = render(&p, dir.path(), &["--env-color", "0.5", "--quiet"]);
    q.assert_ok();
    assert_eq!(q.stderr, "");
}

#[test]
fn unknown_camera_lists_the_cameras() {
    let dir = tempfile::tempdir().unwrap();
    let r = rayfarm(args![
        "render",
        "-o",
        dir.path().join("o.exr"),
        "--camera",
        "nosuch",
        "--spp",
        "1"
    ]);
    r.assert_error(&["nosuch", "pbrt_camera"]);
    let p = write_gltf(dir.path(), "tri.gltf", &triangle_gltf());
    render(&p, dir.path(), &["--camera", "5"]).assert_error(&["'5'", "cam"]);
}

// ---------------------------------------------------------------------------------------------
// Compressed geometry and textures (EXT_meshopt_compression, KHR_draco_mesh_compression,
// KHR_texture_basisu), from the files of crates/rayfarm-scene/tests/data/compressed
// ---------------------------------------------------------------------------------------------

fn compressed(name: &str) -> PathBuf {
    repo_root()
        .join("crates/rayfarm-scene/tests/data/compressed")
        .join(name)
}

/// A GLB's JSON and BIN chunks (the test files have both, in that order).
fn split_glb(glb: &[u8]) -> (Value, Vec<u8>) {
    let json_len = u32::from_le_bytes(glb[12..16].try_into().unwrap()) as usize;
    let json = serde_json::from_slice(&glb[20..20 + json_len]).unwrap();
    (json, glb[20 + json_len + 8..].to_vec())
}

/// The compressed Cornell boxes render like the original. Meshopt without quantization keeps
/// every vertex bit for bit, but its index codec may start a triangle at another corner, which
/// moves intersection results by an ulp here and there: the images agree pixel by pixel to
/// 1e-6 of the mean (relative mean absolute difference; measured 4e-8). In the quantized files
/// (14-bit positions, 8- to 10-bit normals) the same tiny moves send paths elsewhere, so pixels
/// differ by sampling noise; their quadrants' mean colours agree to 3% (measured: under 1%).
#[test]
fn compressed_scenes_render_like_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let render_to = |scene: &Path, name: &str| {
        let out = dir.path().join(name);
        let mut a = args!["render", scene, "-o", &out];
        a.extend(
            ["--width", "32", "--height", "32", "--spp", "16", "--quiet"]
                .iter()
                .map(Into::into),
        );
        rayfarm(a).assert_ok();
        read_exr(&out).2
    };
    let quadrants = |px: &[[f32; 3]]| -> Vec<[f64; 3]> {
        [(0, 0), (16, 0), (0, 16), (16, 16)]
            .iter()
            .map(|&(x, y)| region_rgb(32, px, x, x + 16, y, y + 16))
            .collect()
    };
    let original = render_to(&example("cornell_box.gltf"), "original.exr");
    let total: f64 = original.iter().flatten().map(|&v| v as f64).sum();
    let lossless = render_to(&compressed("cornell_box.meshopt.glb"), "meshopt.exr");
    let diff: f64 = lossless
        .iter()
        .flatten()
        .zip(original.iter().flatten())
        .map(|(&a, &b)| (a as f64 - b as f64).abs())
        .sum();
    assert!(diff / total <= 1e-6, "meshopt: {:.2e}", diff / total);
    for name in [
        "cornell_box.meshopt_high.glb",
        "cornell_box.gltfpack.glb",
        "cornell_box.draco.glb",
    ] {
        let image = render_to(&compressed(name), &format!("{name}.exr"));
        for (q, (a, b)) in quadrants(&image)
            .iter()
            .zip(quadrants(&original))
            .enumerate()
        {
            for (c, (x, y)) in a.iter().zip(b).enumerate() {
                let rel = (x - y).abs() / y.max(1e-3);
                println!("{name}: quadrant {q} channel {c}: {rel:.4}");
                assert!(
                    rel <= 0.03,
                    "{name}: quadrant {q} channel {c} differs by {rel:.4}"
                );
            }
        }
    }
}

#[test]
fn corrupt_meshopt_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (json, mut bin) = split_glb(&std::fs::read(compressed("cornell_box.meshopt.glb")).unwrap());
    // The header byte of buffer view 2's stream (0xa0: vertex codec version 0).
    let at = json["bufferViews"][2]["extensions"]["EXT_meshopt_compression"]["byteOffset"]
        .as_u64()
        .unwrap() as usize;
    bin[at] = 0x13;
    let p = dir.path().join("meshopt.glb");
    std::fs::write(&p, pack_glb(&serde_json::to_vec(&json).unwrap(), &bin)).unwrap();
    render(&p, dir.path(), &[]).assert_error(&[
        "meshopt.glb",
        "buffer view 2",
        "EXT_meshopt_compression",
        "cannot decode",
    ]);
}

#[test]
fn truncated_draco_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (mut json, bin) = split_glb(&std::fs::read(compressed("cornell_box.draco.glb")).unwrap());
    // Mesh 1's Draco stream, cut to 40 bytes.
    let view = json["meshes"][1]["primitives"][0]["extensions"]["KHR_draco_mesh_compression"]
        ["bufferView"]
        .as_u64()
        .unwrap() as usize;
    json["bufferViews"][view]["byteLength"] = json!(40);
    let p = dir.path().join("draco.glb");
    std::fs::write(&p, pack_glb(&serde_json::to_vec(&json).unwrap(), &bin)).unwrap();
    render(&p, dir.path(), &[]).assert_error(&[
        "draco.glb",
        "mesh 1 primitive 0",
        "KHR_draco_mesh_compression",
        "cannot decode",
    ]);
}

#[test]
fn truncated_ktx2_texture() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    doc["extensionsUsed"] = json!(["KHR_texture_basisu"]);
    doc["extensionsRequired"] = json!(["KHR_texture_basisu"]);
    doc["materials"][0]["pbrMetallicRoughness"]["baseColorTexture"] = json!({ "index": 0 });
    doc["textures"] = json!([{ "extensions": { "KHR_texture_basisu": { "source": 0 } } }]);
    doc["images"] = json!([{ "uri": "tex.ktx2" }]);
    let ktx2 = std::fs::read(compressed("texture_etc1s.ktx2")).unwrap();
    let p = write_gltf(dir.path(), "basisu.gltf", &doc);
    // The whole file renders; cut short it is an error naming the image.
    std::fs::write(dir.path().join("tex.ktx2"), &ktx2).unwrap();
    render(&p, dir.path(), &["--quiet"]).assert_ok();
    std::fs::write(dir.path().join("tex.ktx2"), &ktx2[..ktx2.len() - 100]).unwrap();
    render(&p, dir.path(), &[]).assert_error(&["basisu.gltf", "image 0", "tex.ktx2", "KTX2"]);
}

/// EXT_texture_avif through the CLI, whose importer decodes AVIF in a child process: a valid
/// image renders; one whose AV1 data makes rav1d 1.1 abort (found by the `avif_decode` fuzz
/// target; in-process it would kill rayfarm) is one error line naming the file and image, and
/// exit status 1.
#[test]
fn avif_that_aborts_the_decoder_is_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    doc["extensionsUsed"] = json!(["EXT_texture_avif"]);
    doc["extensionsRequired"] = json!(["EXT_texture_avif"]);
    doc["materials"][0]["pbrMetallicRoughness"]["baseColorTexture"] = json!({ "index": 0 });
    doc["textures"] = json!([{ "extensions": { "EXT_texture_avif": { "source": 0 } } }]);
    doc["images"] = json!([{ "uri": "tex.avif" }]);
    let p = write_gltf(dir.path(), "avif.gltf", &doc);
    let good = repo_root().join("crates/rayfarm-scene/tests/data/avif/rgb.avif");
    std::fs::copy(good, dir.path().join("tex.avif")).unwrap();
    render(&p, dir.path(), &["--quiet"]).assert_ok();
    let bad = repo_root().join("crates/rayfarm/tests/data/rav1d-abort.avif");
    std::fs::copy(bad, dir.path().join("tex.avif")).unwrap();
    render(&p, dir.path(), &[]).assert_error(&["avif.gltf", "image 0", "AV1 decoder"]);
}

// ---------------------------------------------------------------------------------------------
// GLB
// ---------------------------------------------------------------------------------------------

#[test]
fn glb_renders_like_the_gltf() {
    let dir = tempfile::tempdir().unwrap();
    let glb = dir.path().join("cornell.glb");
    std::fs::write(&glb, cornell_glb()).unwrap();
    let a = dir.path().join("glb.exr");
    let b = dir.path().join("gltf.exr");
    let common = ["--width", "24", "--height", "24", "--spp", "2", "--quiet"];
    let mut args_a = args!["render", &glb, "-o", &a];
    args_a.extend(common.iter().map(Into::into));
    rayfarm(args_a).assert_ok();
    let mut args_b = args!["render", example("cornell_box.gltf"), "-o", &b];
    args_b.extend(common.iter().map(Into::into));
    rayfarm(args_b).assert_ok();
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "the GLB and the glTF of the same scene rendered differently"
    );
}

#[test]
fn truncated_glb() {
    let dir = tempfile::tempdir().unwrap();
    let full = cornell_glb();
    let json_len = u32::from_le_bytes(full[12..16].try_into().unwrap()) as usize;
    let bin_start = 20 + json_len;
    let mut lengths = vec![
        0,
        3,
        4,
        8,
        11,
        12,
        16,
        19,
        20,
        20 + json_len / 2,
        bin_start - 1,
        bin_start,
        bin_start + 4,
        bin_start + 8,
        bin_start + 100,
        full.len() - 4,
        full.len() - 1,
    ];
    lengths.dedup();
    for len in lengths {
        let p = dir.path().join(format!("cut{len}.glb"));
        std::fs::write(&p, &full[..len]).unwrap();
        render(&p, dir.path(), &[]).assert_error(&[&file_name(&p)]);
    }
}

#[test]
fn glb_with_inconsistent_headers() {
    let dir = tempfile::tempdir().unwrap();
    let full = cornell_glb();
    let json_len = u32::from_le_bytes(full[12..16].try_into().unwrap()) as usize;
    let bin_start = 20 + json_len;
    let set_u32 =
        |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    // Truncated after the JSON chunk, with the total length "repaired": no BIN chunk at all.
    let mut c = full[..bin_start].to_vec();
    set_u32(&mut c, 8, bin_start as u32);
    cases.push(("nobin".into(), c));
    // Total length smaller than the header itself (and 0).
    for v in [0u32, 5, 11] {
        let mut c = full.clone();
        set_u32(&mut c, 8, v);
        cases.push((format!("len{v}"), c));
    }
    // Total length larger than the file.
    let mut c = full.clone();
    set_u32(&mut c, 8, u32::MAX);
    cases.push(("lenmax".into(), c));
    // JSON chunk length past the end.
    let mut c = full.clone();
    set_u32(&mut c, 12, u32::MAX - 3);
    cases.push(("jsonlen".into(), c));
    // BIN chunk length past the end.
    let mut c = full.clone();
    set_u32(&mut c, bin_start, u32::MAX - 3);
    cases.push(("binlen".into(), c));
    // BIN chunk shorter than the buffer it holds.
    let mut c = full.clone();
    set_u32(&mut c, bin_start, 64);
    cases.push(("binshort".into(), c));
    // Wrong version, wrong first chunk type.
    let mut c = full.clone();
    set_u32(&mut c, 4, 1);
    cases.push(("version1".into(), c));
    let mut c = full.clone();
    c[16..20].copy_from_slice(b"BIN\0");
    cases.push(("chunktype".into(), c));
    for (name, bytes) in cases {
        let p = dir.path().join(format!("{name}.glb"));
        std::fs::write(&p, &bytes).unwrap();
        render(&p, dir.path(), &[]).assert_error(&[&file_name(&p)]);
    }
}

// ---------------------------------------------------------------------------------------------
// OBJ
// ---------------------------------------------------------------------------------------------

#[test]
fn obj_face_index_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.obj");
    std::fs::write(&p, "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 99\n").unwrap();
    render(&p, dir.path(), &[]).assert_error(&["bad.obj", "99"]);
}

#[test]
fn obj_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    render(&dir.path().join("none.obj"), dir.path(), &[]).assert_error(&["none.obj"]);
}

// ---------------------------------------------------------------------------------------------
// Compiled scene blobs
// ---------------------------------------------------------------------------------------------

#[test]
fn compiled_blob_renders_and_corruption_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let blob_path = dir.path().join("cornell.rfscene");
    let info = rayfarm(args![
        "info",
        example("cornell_box.gltf"),
        "--compile-to",
        &blob_path
    ]);
    info.assert_ok();
    assert!(info.stdout.contains("content hash"), "{}", info.stdout);
    let blob = std::fs::read(&blob_path).unwrap();
    assert!(blob.len() > 64);

    // The blob renders the same image as the glTF it was compiled from.
    let common = ["--width", "24", "--height", "24", "--spp", "2", "--quiet"];
    let a = dir.path().join("blob.exr");
    let b = dir.path().join("gltf.exr");
    let mut args_a = args!["render", &blob_path, "-o", &a];
    args_a.extend(common.iter().map(Into::into));
    rayfarm(args_a).assert_ok();
    let mut args_b = args!["render", example("cornell_box.gltf"), "-o", &b];
    args_b.extend(common.iter().map(Into::into));
    rayfarm(args_b).assert_ok();
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "the compiled blob rendered differently from its glTF"
    );

    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for at in [
        0,
        5,
        8,
        12,
        20,
        40,
        63,
        64,
        70,
        blob.len() / 2,
        blob.len() - 1,
    ] {
        let mut c = blob.clone();
        c[at] ^= 0x5a;
        cases.push((format!("flip{at}"), c));
    }
    for len in [0, 10, 63, 64, 65, blob.len() / 2, blob.len() - 1] {
        cases.push((format!("cut{len}"), blob[..len].to_vec()));
    }
    let mut c = blob.clone();
    c.push(0);
    cases.push(("extra".into(), c));
    for (name, bytes) in cases {
        let p = dir.path().join(format!("{name}.rfscene"));
        std::fs::write(&p, &bytes).unwrap();
        render(&p, dir.path(), &[]).assert_error(&[&file_name(&p), "compiled scene"]);
    }
    render(&dir.path().join("nosuch.rfscene"), dir.path(), &[]).assert_error(&["nosuch.rfscene"]);
}

/// A scene whose coordinates overflow single precision in the ray-triangle test (1e30 here)
/// renders, and the user is told why its image is black and what to do. Such a scene crashed
/// every node before session 18 (`rayfarm-render/tests/hostile_scenes.rs`).
#[test]
fn a_scene_beyond_single_precision_renders_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.obj");
    std::fs::write(
        &p,
        "v 1e30 0 0\nv 1e30 1e30 0\nv 0 0 1e30\nv -5 0 -5\nv 5 0 -5\nv 0 0 5\nf 1 2 3\nf 4 5 6\n",
    )
    .unwrap();
    let run = render(&p, dir.path(), &[]);
    run.assert_ok();
    assert!(
        run.stderr.contains("1.0e30 units") && run.stderr.contains("scale the scene down"),
        "no warning about the scene's size:\n{}",
        run.stderr
    );
}

/// A spot light of intensity 3e38 (f32's largest is 3.4e38) and an emissive material of
/// strength 1e30: their samples overflow. Before session 19 the only word was "N samples were
/// not finite ... a renderer bug"; now each is named with what to do, and the render finishes.
#[test]
fn lights_brighter_than_single_precision_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    doc["extensionsUsed"] = json!(["KHR_lights_punctual", "KHR_materials_emissive_strength"]);
    doc["extensions"] = json!({ "KHR_lights_punctual": { "lights": [
        { "name": "Stadium", "type": "spot", "intensity": 3e38,
          "spot": { "innerConeAngle": 0.3, "outerConeAngle": 0.6 } }
    ] } });
    doc["nodes"].as_array_mut().unwrap().push(
        json!({ "extensions": { "KHR_lights_punctual": { "light": 0 } },
                      "translation": [0.3, 0.3, 1.0] }),
    );
    doc["scenes"][0]["nodes"] = json!([0, 1, 2]);
    doc["materials"][0]["emissiveFactor"] = json!([1.0, 1.0, 1.0]);
    doc["materials"][0]["extensions"] =
        json!({ "KHR_materials_emissive_strength": { "emissiveStrength": 1e30 } });
    let p = write_gltf(dir.path(), "bright.gltf", &doc);
    let run = render(&p, dir.path(), &[]);
    run.assert_ok();
    for needle in [
        "light \"Stadium\" (number 0): colour x intensity reaches 3.0e38",
        "material \"red\" (number 0): its emission (factor x strength) reaches 1.0e30",
        "lower it",
    ] {
        assert!(
            run.stderr.contains(needle),
            "no {needle:?} in:\n{}",
            run.stderr
        );
    }
    // A scene within bounds says nothing of the kind.
    let plain = write_gltf(dir.path(), "plain.gltf", &triangle_gltf());
    let run = render(&plain, dir.path(), &["--env-color", "1e5,1e5,1e5"]);
    run.assert_ok();
    assert!(!run.stderr.contains("renders safely"), "{}", run.stderr);
    // Nor does the environment, until it is too bright.
    let run = render(&plain, dir.path(), &["--env-color", "1e25,1,1"]);
    run.assert_ok();
    assert!(
        run.stderr
            .contains("the environment's radiance reaches 1.0e25"),
        "{}",
        run.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// Sizes and files from a scene that would take the machine's memory (found by fuzzing the CLI
// in session 18: each aborted with "memory allocation of N bytes failed" or read without end)
// ---------------------------------------------------------------------------------------------

/// An image size worked out from a camera's aspect ratio is bounded like --width and --height.
#[test]
fn an_image_size_from_an_absurd_camera_aspect_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    doc["cameras"][0]["perspective"]["aspectRatio"] = json!(1e30);
    let p = write_gltf(dir.path(), "wide.gltf", &doc);
    for extra in [&["--height", "16"][..], &[]] {
        let mut a = args!["render", &p, "-o", dir.path().join("out.exr"), "--spp", "1"];
        a.extend(extra.iter().map(std::ffi::OsString::from));
        rayfarm(a).assert_error(&["aspect ratio", "cam", "--width and --height"]);
    }
}

/// The scene's own resolution (extras.resolution) and explicit sizes are bounded, the total
/// too: 32768 x 32768 would need 48 GiB of film.
#[test]
fn image_sizes_beyond_the_film_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    doc["extras"] = json!({ "resolution": [65536, 65536] });
    let p = write_gltf(dir.path(), "big.gltf", &doc);
    rayfarm(args![
        "render",
        &p,
        "-o",
        dir.path().join("out.exr"),
        "--spp",
        "1"
    ])
    .assert_error(&["scene's resolution", "65536x65536", "--width"]);
    let p = write_gltf(dir.path(), "tri.gltf", &triangle_gltf());
    rayfarm(args![
        "render",
        &p,
        "-o",
        dir.path().join("out.exr"),
        "--width",
        "32768",
        "--height",
        "32768"
    ])
    .assert_error(&["32768x32768", "M pixels"]);
}

/// A buffer (or image, or MTL library) that is a device reads nothing: /dev/zero was read until
/// memory ran out.
#[cfg(unix)]
#[test]
fn a_buffer_that_is_a_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut doc = triangle_gltf();
    doc["buffers"][0]["uri"] = json!("/dev/zero");
    let p = write_gltf(dir.path(), "zero.gltf", &doc);
    render(&p, dir.path(), &[]).assert_error(&["zero.gltf", "/dev/zero", "not a regular file"]);
}

/// An EXR environment map is refused by the size its header declares, before its pixels are
/// allocated (a 313-byte file declaring 65536 x 65536 asked for 48 GiB).
#[test]
fn an_exr_environment_declaring_a_huge_size_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_gltf(dir.path(), "tri.gltf", &triangle_gltf());
    let env = repo_root().join("crates/rayfarm/tests/data/env_header_65536.exr");
    render(&p, dir.path(), &["--env", env.to_str().unwrap()])
        .assert_error(&["env_header_65536.exr", "65536x65536"]);
}

/// `--threads` is bounded: 100,000 threads took the machine's memory before the first sample.
#[test]
fn too_many_threads_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = write_gltf(dir.path(), "tri.gltf", &triangle_gltf());
    render(&p, dir.path(), &["--threads", "100000"]).assert_error(&["--threads 100000", "4096"]);
}

/// A camera whose field of view or magnification cannot make an image is refused by name
/// (it rendered a black or mirrored image without a word).
#[test]
fn cameras_that_cannot_make_an_image_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (field, value, needle) in [
        ("yfov", json!(0.0), "yfov is 0"),
        ("yfov", json!(-0.5), "yfov is -0.5"),
        ("yfov", json!(4.0), "yfov is 4"),
        ("aspectRatio", json!(0.0), "aspectRatio is 0"),
    ] {
        let mut doc = triangle_gltf();
        doc["cameras"][0]["perspective"][field] = value;
        let p = write_gltf(dir.path(), "cam.gltf", &doc);
        render(&p, dir.path(), &[]).assert_error(&["cam.gltf", "camera 0 ('cam')", needle]);
    }
    let mut doc = triangle_gltf();
    doc["cameras"][0] = json!({ "type": "orthographic",
        "orthographic": { "xmag": 0.0, "ymag": 1.0, "znear": 0.01, "zfar": 10.0 } });
    let p = write_gltf(dir.path(), "ortho.gltf", &doc);
    render(&p, dir.path(), &[]).assert_error(&["ortho.gltf", "xmag and ymag are 0 and 1"]);
}

/// Runs `rayfarm ARGS` with its address space capped at about 1.4 GiB (`ulimit -v`), so an
/// allocation of gigabytes fails (and aborts) instead of passing on this machine.
fn rayfarm_capped(args: &[std::ffi::OsString]) -> std::process::Output {
    std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 1500000; exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_rayfarm"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("cannot start sh")
}

/// Found by fuzzing (session 20): a 128 KB compiled scene whose header claims a 2 GiB body of
/// zstd RLE blocks (each expands one byte to 128 KiB) made `rayfarm render` hold the whole
/// claimed body before it could check the hash (it aborted under a memory limit). The body is
/// now checked against the hash in constant memory first. The same cap lets a real render
/// through, so the test tells the two apart.
#[test]
fn a_compiled_scene_that_claims_a_huge_body_is_refused_in_constant_memory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let small = args!["render", "-o", &out, "--width", "16", "--height", "16", "--spp", "1", "-q"];
    let ok = rayfarm_capped(&small);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // A zstd frame of RLE blocks (128 KiB of zeros each): magic, a descriptor without content
    // size, a 128 KiB window, then 3-byte block headers (size << 3 | RLE << 1 | last) + 1 byte.
    let claim: u64 = 2 << 30;
    let blocks = claim / (128 << 10);
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38];
    for b in 0..blocks {
        let header = (128u32 << 10) << 3 | 1 << 1 | u32::from(b + 1 == blocks);
        frame.extend_from_slice(&header.to_le_bytes()[..3]);
        frame.push(0);
    }
    let genuine = rayfarm_scene::blob::encode(&rayfarm_scene::CompiledScene::default());
    let mut bomb = genuine[..rayfarm_scene::blob::HEADER_LEN].to_vec();
    bomb[16..24].copy_from_slice(&claim.to_le_bytes());
    bomb[24..32].copy_from_slice(&(frame.len() as u64).to_le_bytes());
    bomb.extend_from_slice(&frame);
    let path = dir.path().join("bomb.rfscene");
    std::fs::write(&path, &bomb).unwrap();
    let bomb_args = args!["render", &path, "-o", &out, "--width", "16", "--height", "16"];
    let r = rayfarm_capped(&bomb_args);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bomb.rfscene") && err.contains("hash mismatch"),
        "{err}"
    );
}

/// Found by fuzzing (session 20): a file a scene names that is a named pipe (a buffer, an
/// image, an MTL library, the scene itself, an environment map) hung the load forever, since
/// opening a pipe waits for a writer. It is now refused like a device.
#[test]
fn a_named_pipe_is_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let pipe = dir.path().join("pipe.hdr");
    let made = std::process::Command::new("mkfifo")
        .arg(&pipe)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let scene = dir.path().join("pipe.obj");
    std::fs::write(dir.path().join("pipe.mtl"), "").unwrap();
    std::fs::write(
        &scene,
        "mtllib pipe.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n",
    )
    .unwrap();
    let gltf = write_gltf(dir.path(), "pipe.gltf", &{
        let mut doc = triangle_gltf();
        doc["buffers"][0]["uri"] = json!("pipe.hdr");
        doc
    });
    let t = std::time::Instant::now();
    for (what, r) in [
        ("a buffer", render(&gltf, dir.path(), &[])),
        (
            "the environment map",
            render(&scene, dir.path(), &["--env", pipe.to_str().unwrap()]),
        ),
        ("the scene", render(&pipe, dir.path(), &[])),
    ] {
        assert!(!r.success, "{what}: {}", r.stderr);
        assert!(r.stderr.contains("pipe.hdr"), "{what}: {}", r.stderr);
    }
    assert!(
        t.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        t.elapsed()
    );
}

/// Found by fuzzing (session 20): a scene whose extent overflows single precision has no
/// default ambient-occlusion distance (10% of an infinite diagonal), and `bake` said "internal
/// error: the bake's plan is invalid". It now names the scene and says what to do; a bake
/// without the ao pass needs no distance and goes through.
#[test]
fn a_scene_too_large_for_a_default_ao_distance_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let scene = dir.path().join("huge.obj");
    std::fs::write(
        &scene,
        "v -1e38 -1e38 0\nv 1e38 -1e38 0\nv 0 1e38 1e38\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n",
    )
    .unwrap();
    let bake = |passes: &str| {
        rayfarm(args![
            "bake",
            &scene,
            "--out",
            dir.path().join("maps"),
            "--size",
            "16",
            "--spp",
            "1",
            "--passes",
            passes,
            "-q"
        ])
    };
    let r = bake("ao");
    assert!(!r.success);
    assert!(
        r.stderr.contains("huge.obj")
            && r.stderr.contains("--ao-distance")
            && !r.stderr.contains("internal"),
        "{}",
        r.stderr
    );
    let r = bake("albedo");
    assert!(r.success, "{}", r.stderr);
}

/// Images that name the same file share its texels: a glTF naming one file from many image
/// entries (the fuzzer's two references to one large PNG took its memory twice).
/// The triangle with a base colour texture from image `a` and an emissive one from `b`.
fn two_textures_gltf(a: &str, b: &str) -> Value {
    let mut doc = triangle_gltf();
    doc["materials"][0]["pbrMetallicRoughness"]["baseColorTexture"] = json!({ "index": 0 });
    doc["materials"][0]["emissiveTexture"] = json!({ "index": 1 });
    doc["materials"][0]["emissiveFactor"] = json!([1.0, 1.0, 1.0]);
    doc["textures"] = json!([{ "source": 0 }, { "source": 1 }]);
    doc["images"] = json!([{ "uri": a }, { "uri": b }]);
    doc
}

/// A scene's textures together may take as much memory as its budget: three quarters of the
/// machine's memory (at least 16 GiB) unless `RAYFARM_TEXTURE_MEMORY` says otherwise. Past it
/// the import stops, naming the texture that crossed it and how to raise the budget; a wrong
/// setting is named too. Two 64x64 textures take 32 KiB; a budget of 24 KiB holds one.
#[test]
fn a_scene_over_its_texture_budget_names_the_texture_and_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    for (name, c) in [("a.png", 200u8), ("b.png", 100)] {
        image::RgbaImage::from_pixel(64, 64, image::Rgba([c, 50, 50, 255]))
            .save(dir.path().join(name))
            .unwrap();
    }
    let gltf = write_gltf(dir.path(), "two.gltf", &two_textures_gltf("a.png", "b.png"));
    // OBJ: two materials, each with its own texture.
    std::fs::write(
        dir.path().join("two.mtl"),
        "newmtl a\nmap_Kd a.png\nnewmtl b\nmap_Kd b.png\n",
    )
    .unwrap();
    let obj = dir.path().join("two.obj");
    std::fs::write(
        &obj,
        "mtllib two.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\n\
         usemtl a\nf 1/1 2/2 3/3\nusemtl b\nf 1/1 3/3 2/2\n",
    )
    .unwrap();
    let budget = format!("{}", 24.0 / (1024.0 * 1024.0));
    for (scene, at) in [
        (&gltf, "image 1 ('b.png')"),
        (&obj, "line 4: texture 'b.png'"),
    ] {
        let r = rayfarm(args!["info", scene]);
        assert!(r.success, "{}", r.stderr);
        rayfarm_env(args!["info", scene], &[("RAYFARM_TEXTURE_MEMORY", &budget)]).assert_error(&[
            at,
            "more than its texture budget of 24.0 KiB",
            "RAYFARM_TEXTURE_MEMORY",
        ]);
        let r = rayfarm_env(args!["info", scene], &[("RAYFARM_TEXTURE_MEMORY", "0.5")]);
        assert!(r.success, "{}", r.stderr);
    }
    for wrong in ["lots", "0", "-1", "inf"] {
        rayfarm_env(args!["info", &gltf], &[("RAYFARM_TEXTURE_MEMORY", wrong)]).assert_error(&[
            &format!("RAYFARM_TEXTURE_MEMORY={wrong}"),
            "positive number",
        ]);
    }
}

#[test]
fn images_naming_the_same_file_are_decoded_once() {
    let dir = tempfile::tempdir().unwrap();
    image::RgbaImage::from_pixel(2, 2, image::Rgba([200, 100, 50, 255]))
        .save(dir.path().join("a.png"))
        .unwrap();
    let p = write_gltf(
        dir.path(),
        "shared.gltf",
        &two_textures_gltf("a.png", "a.png"),
    );
    let r = rayfarm(args!["info", &p]);
    assert!(r.success, "{}", r.stderr);
    assert!(r.stdout.contains(", 1 images,"), "{}", r.stdout);
    assert!(render(&p, dir.path(), &[]).success);
}

/// Outputs of `info --compile-to` and `bake --gltf-out` are new files renamed into place: a
/// symlink planted at the name (in a shared folder) is replaced, not written through; a named
/// pipe there does not hang the command; and neither output may be the scene being read.
#[test]
fn compiled_and_baked_outputs_never_go_through_a_planted_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let scene = example("cornell_box.gltf");
    let copy = d.join("copy.obj");
    std::fs::write(
        &copy,
        "v 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nf 1/1 2/2 3/3\n",
    )
    .unwrap();
    let victim = d.join("authorized_keys");
    std::fs::write(&victim, "ssh-ed25519 AAAA victim\n").unwrap();
    let planted = d.join("out.rfscene");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    rayfarm(args!["info", &scene, "--compile-to", &planted]).assert_ok();
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "ssh-ed25519 AAAA victim\n"
    );
    assert!(std::fs::symlink_metadata(&planted).unwrap().is_file());
    let fifo = d.join("fifo.rfscene");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    rayfarm(args!["info", &scene, "--compile-to", &fifo]).assert_ok();
    assert!(std::fs::metadata(&fifo).unwrap().is_file());
    // The scene itself, by another name or through a link: refused, the scene untouched.
    let before = std::fs::read(&copy).unwrap();
    let link = d.join("link.rfscene");
    std::os::unix::fs::symlink(&copy, &link).unwrap();
    rayfarm(args!["info", &copy, "--compile-to", &link])
        .assert_error(&["--compile-to names the scene being read"]);
    rayfarm(args!["info", &copy, "--compile-to", &copy]).assert_error(&["FILE.rfscene"]);
    let glb = d.join("copy.glb");
    std::fs::hard_link(&copy, &glb).unwrap();
    let out = d.join("maps");
    let bake_to = |gltf_out: &std::path::Path| {
        rayfarm(args![
            "bake",
            &copy,
            "-o",
            &out,
            "--size",
            "16",
            "--spp",
            "1",
            "--gltf-out",
            gltf_out
        ])
    };
    bake_to(&glb).assert_error(&["--gltf-out names the scene being read"]);
    bake_to(&copy).assert_error(&["FILE.glb"]);
    assert_eq!(std::fs::read(&copy).unwrap(), before);
}

/// Map names keep only letters, digits, `_` and `-`: objects `Floor.001` and `Floor_001` (or
/// two objects named alike, common in OBJ files) would write the same files, and a local bake
/// lost the first object's maps without a word. Now it refuses before baking, naming both.
#[test]
fn objects_whose_maps_would_share_a_name_are_refused_before_baking() {
    let dir = tempfile::tempdir().unwrap();
    let obj = dir.path().join("collide.obj");
    std::fs::write(
        &obj,
        "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 2 0 0\nv 3 0 0\nv 2 1 0\n\
         vt 0 0\nvt 1 0\nvt 0 1\n\
         o Floor.001\nf 1/1 2/2 3/3\no Floor_001\nf 4/1 5/2 6/3\n",
    )
    .unwrap();
    let out = dir.path().join("maps");
    let bake = |extra: &[&str]| {
        let mut a = args!["bake", &obj, "-o", &out, "--size", "16", "--spp", "1"];
        a.extend(extra.iter().map(std::ffi::OsString::from));
        rayfarm(a)
    };
    bake(&["--per-object"]).assert_error(&["'Floor.001' and 'Floor_001'", "rename one"]);
    assert!(!out.join("Floor_001_complete_16.png").exists());
    // Baked together into one atlas, they have one name.
    bake(&[]).assert_ok();
}
