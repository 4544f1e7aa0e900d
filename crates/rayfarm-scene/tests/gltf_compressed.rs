//! Compressed and quantized glTF data: EXT_texture_webp and KHR_mesh_quantization give the
//! same compiled scene as the uncompressed original when the encoding is lossless, and corrupt
//! data is one error line naming the file and the element.

use base64::Engine;
use rayfarm_scene::gltf_import::load_from_slice;
use rayfarm_scene::{blob, CompiledScene, SceneError, Warnings};
use std::path::Path;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn load(json: &str) -> Result<(CompiledScene, Warnings), SceneError> {
    load_from_slice(json.as_bytes(), Path::new("model.gltf"), &|_| {
        Err(std::io::ErrorKind::NotFound.into())
    })
}

fn pixels() -> image::RgbaImage {
    let px: Vec<u8> = (0..16u8).map(|i| i * 15 + 3).collect();
    image::RgbaImage::from_raw(2, 2, px).unwrap()
}

fn encode(format: image::ImageFormat) -> Vec<u8> {
    let mut out = Vec::new();
    pixels()
        .write_to(&mut std::io::Cursor::new(&mut out), format)
        .unwrap();
    out
}

/// One textured triangle; `texture` is the JSON of texture 0 and `image` the data URI of image 0.
fn textured(texture: &str, mime: &str, image: &[u8], required: &str) -> String {
    let bin: Vec<u8> = [0.0f32, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        .iter()
        .chain(&[0.0f32, 0.0, 1.0, 0.0, 0.0, 1.0])
        .flat_map(|v| v.to_le_bytes())
        .collect();
    format!(
        r#"{{"asset":{{"version":"2.0"}},"extensionsUsed":[{required}],"extensionsRequired":[{required}],
        "nodes":[{{"mesh":0}}],
        "meshes":[{{"primitives":[{{"attributes":{{"POSITION":0,"TEXCOORD_0":1}},"material":0}}]}}],
        "materials":[{{"pbrMetallicRoughness":{{"baseColorTexture":{{"index":0}}}}}}],
        "textures":[{texture}],
        "images":[{{"uri":"data:{mime};base64,{img}"}}],
        "accessors":[{{"bufferView":0,"componentType":5126,"count":3,"type":"VEC3",
                       "min":[0,0,0],"max":[1,1,0]}},
                     {{"bufferView":1,"componentType":5126,"count":3,"type":"VEC2"}}],
        "bufferViews":[{{"buffer":0,"byteLength":36}},{{"buffer":0,"byteOffset":36,"byteLength":24}}],
        "buffers":[{{"byteLength":60,"uri":"data:application/octet-stream;base64,{bin}"}}]}}"#,
        img = b64(image),
        bin = b64(&bin),
    )
}

/// A lossless WebP texture (no fallback) compiles to the same bytes as the PNG original.
#[test]
fn webp_texture_equals_png_original() {
    let png = textured(
        r#"{"source":0}"#,
        "image/png",
        &encode(image::ImageFormat::Png),
        "",
    );
    let webp_bytes = encode(image::ImageFormat::WebP);
    let webp = textured(
        r#"{"extensions":{"EXT_texture_webp":{"source":0}}}"#,
        "image/webp",
        &webp_bytes,
        r#""EXT_texture_webp""#,
    );
    let (a, _) = load(&png).unwrap();
    let (b, warnings) = load(&webp).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(b.images[0].rgba8, pixels().into_raw());
    assert!(
        blob::encode(&a) == blob::encode(&b),
        "the WebP scene differs from the PNG one"
    );
}

#[test]
fn corrupt_webp_is_one_error_line() {
    let webp_bytes = encode(image::ImageFormat::WebP);
    for cut in [webp_bytes.len() / 2, 20, 12] {
        let mut broken = webp_bytes[..cut].to_vec();
        if cut == 20 {
            // Keep the length, corrupt the stream.
            broken = webp_bytes.clone();
            for b in &mut broken[20..] {
                *b ^= 0x5a;
            }
        }
        let json = textured(
            r#"{"extensions":{"EXT_texture_webp":{"source":0}}}"#,
            "image/webp",
            &broken,
            r#""EXT_texture_webp""#,
        );
        let e = load(&json).unwrap_err().to_string();
        assert!(e.starts_with("model.gltf: image 0"), "{e}");
        assert!(e.contains("cannot decode"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
    // A WebP source that does not exist.
    let json = textured(
        r#"{"extensions":{"EXT_texture_webp":{"source":4}}}"#,
        "image/webp",
        &webp_bytes,
        r#""EXT_texture_webp""#,
    );
    let e = load(&json).unwrap_err().to_string();
    assert!(e.starts_with("model.gltf: ") && e.contains("source"), "{e}");
}

/// The same triangle stored as floats and as KHR_mesh_quantization integers (positions as
/// SHORT scaled by the node, normals as normalized BYTE, UVs as normalized UNSIGNED_SHORT).
fn triangle(quantized: bool) -> String {
    let mut bin = Vec::new();
    let (pos, nrm, uv, scale, required);
    if quantized {
        for p in [[0i16, 0, 0], [2, 0, 0], [0, 2, 0]] {
            for c in p {
                bin.extend_from_slice(&c.to_le_bytes());
            }
            bin.extend_from_slice(&[0, 0]); // stride 8
        }
        for _ in 0..3 {
            bin.extend_from_slice(&[0u8, 0, 127, 0]); // stride 4
        }
        for t in [[0u16, 0], [65535, 0], [0, 65535]] {
            for c in t {
                bin.extend_from_slice(&c.to_le_bytes());
            }
        }
        pos = r#"{"bufferView":0,"componentType":5122,"count":3,"type":"VEC3","min":[0,0,0],"max":[2,2,0]}"#;
        nrm = r#"{"bufferView":1,"componentType":5120,"normalized":true,"count":3,"type":"VEC3"}"#;
        uv = r#"{"bufferView":2,"componentType":5123,"normalized":true,"count":3,"type":"VEC2"}"#;
        scale = r#","scale":[0.5,0.5,0.5]"#;
        required = r#""KHR_mesh_quantization""#;
    } else {
        for v in [0.0f32, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0] {
            bin.extend_from_slice(&v.to_le_bytes());
        }
        for _ in 0..3 {
            for v in [0.0f32, 0.0, 1.0] {
                bin.extend_from_slice(&v.to_le_bytes());
            }
        }
        for v in [0.0f32, 0.0, 1.0, 0.0, 0.0, 1.0] {
            bin.extend_from_slice(&v.to_le_bytes());
        }
        pos = r#"{"bufferView":0,"componentType":5126,"count":3,"type":"VEC3","min":[0,0,0],"max":[1,1,0]}"#;
        nrm = r#"{"bufferView":1,"componentType":5126,"count":3,"type":"VEC3"}"#;
        uv = r#"{"bufferView":2,"componentType":5126,"count":3,"type":"VEC2"}"#;
        scale = "";
        required = "";
    }
    let views = if quantized {
        r#"[{"buffer":0,"byteLength":24,"byteStride":8},{"buffer":0,"byteOffset":24,"byteLength":12,"byteStride":4},{"buffer":0,"byteOffset":36,"byteLength":12}]"#
    } else {
        r#"[{"buffer":0,"byteLength":36},{"buffer":0,"byteOffset":36,"byteLength":36},{"buffer":0,"byteOffset":72,"byteLength":24}]"#
    };
    format!(
        r#"{{"asset":{{"version":"2.0"}},"extensionsUsed":[{required}],"extensionsRequired":[{required}],
        "nodes":[{{"mesh":0{scale}}}],
        "meshes":[{{"name":"tri","primitives":[{{"attributes":{{"POSITION":0,"NORMAL":1,"TEXCOORD_0":2}}}}]}}],
        "accessors":[{pos},{nrm},{uv}],
        "bufferViews":{views},
        "buffers":[{{"byteLength":{len},"uri":"data:application/octet-stream;base64,{data}"}}]}}"#,
        len = bin.len(),
        data = b64(&bin),
    )
}

#[test]
fn quantized_mesh_equals_float_original() {
    let (a, _) = load(&triangle(false)).unwrap();
    let (b, warnings) = load(&triangle(true)).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(blob::encode(&a) == blob::encode(&b), "{a:?}\n{b:?}");
}

// ---------------------------------------------------------------------------------------------
// EXT_meshopt_compression (files made from examples/cornell-box; see tests/data/compressed/README.md)
// ---------------------------------------------------------------------------------------------

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/compressed")
        .join(name)
}

fn cornell_box() -> CompiledScene {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cornell-box/cornell_box.gltf");
    rayfarm_scene::load(&path).unwrap().0
}

/// Without quantization meshopt is lossless for vertex data: every vertex attribute, material
/// and mesh is the original's, bit for bit. The TRIANGLES index codec keeps the order and
/// winding of triangles but may start a triangle at another of its corners (meshoptimizer
/// rotates them for compression), so triangles are compared up to that rotation; with the
/// rotation undone the compiled scene is the original's, byte for byte.
#[test]
fn meshopt_lossless_equals_original() {
    let (mut b, warnings) = rayfarm_scene::load(&data("cornell_box.meshopt.glb")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let a = cornell_box();
    assert_eq!(a.triangles.len(), b.triangles.len());
    for (i, (ta, tb)) in a.triangles.iter().zip(b.triangles.iter_mut()).enumerate() {
        let r = (0..3)
            .find(|&r| (0..3).all(|k| ta[k] == tb[(k + r) % 3]))
            .unwrap_or_else(|| panic!("triangle {i}: {tb:?} is not a rotation of {ta:?}"));
        tb.rotate_left(r);
    }
    assert!(
        blob::encode(&a) == blob::encode(&b),
        "the meshopt scene differs from the original"
    );
}

/// The material without its name: gltfpack merges identical materials under one name.
fn unnamed(m: &rayfarm_scene::Material) -> rayfarm_scene::Material {
    rayfarm_scene::Material {
        name: String::new(),
        ..m.clone()
    }
}

/// Every triangle of `b` matches a triangle of `a` with the same material (but for its name),
/// vertex for vertex (in any rotation of its corners): positions within `pos_tol`, normals
/// within `nrm_tol`. Vertex and triangle order may differ (the encoders reorder for
/// compression, gltfpack merges meshes).
fn assert_same_triangles(a: &CompiledScene, b: &CompiledScene, pos_tol: f32, nrm_tol: f32) {
    assert_eq!(
        a.triangles.len(),
        b.triangles.len(),
        "triangle counts differ"
    );
    let close = |p: [f32; 3], q: [f32; 3], tol: f32| (0..3).all(|k| (p[k] - q[k]).abs() <= tol);
    let mut used = vec![false; a.triangles.len()];
    for (tb, &mb) in b.triangles.iter().zip(&b.triangle_materials) {
        let material = unnamed(&b.materials[mb as usize]);
        let name = &b.materials[mb as usize].name;
        let found = a.triangles.iter().enumerate().position(|(i, ta)| {
            !used[i]
                && unnamed(&a.materials[a.triangle_materials[i] as usize]) == material
                && (0..3).any(|r| {
                    (0..3).all(|k| {
                        let (va, vb) = (ta[(k + r) % 3] as usize, tb[k] as usize);
                        close(a.positions[va], b.positions[vb], pos_tol)
                            && close(a.normals[va], b.normals[vb], nrm_tol)
                    })
                })
        });
        let Some(i) = found else {
            panic!(
                "triangle {:?} (material {name}) has no counterpart in the original",
                tb.map(|v| b.positions[v as usize])
            );
        };
        used[i] = true;
    }
}

/// Quantized and filtered (16-bit positions, OCTAHEDRAL 8-bit normals, reordered vertices):
/// close, not equal. The tolerances are the quantization steps with a margin: 14-bit
/// positions over the scene's extent (about 2 units, so steps of 1.3e-4; 1e-3 allowed) and
/// 8-bit octahedral normals (steps of 1/127 per component; 0.02 allowed).
#[test]
fn meshopt_quantized_is_close_to_original() {
    let a = cornell_box();
    for name in ["cornell_box.meshopt_high.glb", "cornell_box.gltfpack.glb"] {
        let (b, warnings) = rayfarm_scene::load(&data(name)).unwrap();
        assert!(warnings.is_empty(), "{name}: {warnings:?}");
        assert_same_triangles(&a, &b, 1e-3, 0.02);
    }
}

/// The test file `name`, with its JSON edited by `edit` and its BIN chunk by `edit_bin`.
fn edited_glb(
    name: &str,
    edit: impl Fn(&mut serde_json::Value),
    edit_bin: impl Fn(&serde_json::Value, &mut Vec<u8>),
) -> Vec<u8> {
    let glb = std::fs::read(data(name)).unwrap();
    let json_len = u32::from_le_bytes(glb[12..16].try_into().unwrap()) as usize;
    let mut json: serde_json::Value = serde_json::from_slice(&glb[20..20 + json_len]).unwrap();
    let mut bin = glb[20 + json_len + 8..].to_vec();
    edit(&mut json);
    edit_bin(&json, &mut bin);
    rayfarm_scene::gltf_export::pack_glb(serde_json::to_vec(&json).unwrap(), bin).unwrap()
}

fn load_glb(bytes: &[u8]) -> Result<(CompiledScene, Warnings), SceneError> {
    load_from_slice(bytes, Path::new("model.glb"), &|_| {
        Err(std::io::ErrorKind::NotFound.into())
    })
}

fn ext(json: &serde_json::Value, view: usize) -> &serde_json::Value {
    &json["bufferViews"][view]["extensions"]["EXT_meshopt_compression"]
}

#[test]
fn corrupt_meshopt_is_one_error_line_naming_the_view() {
    // The edit, and what the message must contain. Views 0 (ATTRIBUTES) and 3 (TRIANGLES).
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    type BinEdit = Box<dyn Fn(&serde_json::Value, &mut Vec<u8>)>;
    let none = || -> Edit { Box::new(|_| {}) };
    let no_bin = || -> BinEdit { Box::new(|_, _| {}) };
    let header_of = |view: usize| -> BinEdit {
        Box::new(move |j, bin| {
            let at = ext(j, view)["byteOffset"].as_u64().unwrap() as usize;
            bin[at] = 0xff; // not a version-0/1 header byte
        })
    };
    let set = |view: usize, key: &'static str, v: serde_json::Value| -> Edit {
        Box::new(move |j| {
            j["bufferViews"][view]["extensions"]["EXT_meshopt_compression"][key] = v.clone()
        })
    };
    let cases: Vec<(Edit, BinEdit, &str)> = vec![
        (none(), header_of(0), "buffer view 0: EXT_meshopt_compression: cannot decode the Attributes stream"),
        (none(), header_of(3), "buffer view 3: EXT_meshopt_compression: cannot decode the Triangles stream"),
        // Truncated streams.
        (set(0, "byteLength", 20.into()), no_bin(), "buffer view 0: EXT_meshopt_compression: cannot decode"),
        (set(3, "byteLength", 17.into()), no_bin(), "buffer view 3: EXT_meshopt_compression: cannot decode"),
        // Wrong sizes and parameters.
        (set(0, "byteLength", 100000.into()), no_bin(), "buffer view 0: EXT_meshopt_compression: the compressed data (offset 0, length 100000) lies outside buffer 0"),
        (set(0, "byteStride", 6.into()), no_bin(), "buffer view 0: EXT_meshopt_compression: byteStride 6 is not allowed"),
        (set(3, "count", 107.into()), no_bin(), "buffer view 3: EXT_meshopt_compression: count 107 is not a multiple of 3"),
        (set(0, "count", 4_000_000_000u64.into()), no_bin(), "buffer view 0: EXT_meshopt_compression: 4000000000 elements of 12 bytes are more than rayfarm accepts"),
        (set(0, "count", 1_000_000.into()), no_bin(), "buffer view 0: EXT_meshopt_compression: 61 compressed bytes cannot hold 1000000 elements"),
        (set(0, "mode", "VERTICES".into()), no_bin(), "buffer view 0: EXT_meshopt_compression.mode must be"),
        (set(0, "filter", "QUATERNION".into()), no_bin(), "buffer view 0: EXT_meshopt_compression: filter Quaternion is not allowed"),
        (set(3, "filter", "OCTAHEDRAL".into()), no_bin(), "buffer view 3: EXT_meshopt_compression: filter Octahedral is not allowed"),
        (set(0, "buffer", 1.into()), no_bin(), "buffer view 0: EXT_meshopt_compression.buffer refers to buffer 1, a fallback buffer"),
        (set(0, "buffer", 9.into()), no_bin(), "buffer view 0: EXT_meshopt_compression.buffer refers to buffer 9 but there are 2 buffers"),
        // The decoded view is shorter than the view claims.
        (Box::new(|j| j["bufferViews"][0]["byteLength"] = 96.into()), no_bin(), "buffer view 0 (offset 0, length 96) lies outside buffer 2 (48 bytes)"),
    ];
    for (edit, edit_bin, expected) in cases {
        let glb = edited_glb("cornell_box.meshopt.glb", edit, edit_bin);
        let e = load_glb(&glb).unwrap_err().to_string();
        assert!(e.starts_with("model.glb: "), "{e}");
        assert!(e.contains(expected), "expected '{expected}' in: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// KHR_texture_basisu (KTX2 images, see tests/data/compressed/README.md)
// ---------------------------------------------------------------------------------------------

fn basisu_texture(ktx2: &[u8]) -> String {
    textured(
        r#"{"extensions":{"KHR_texture_basisu":{"source":0}}}"#,
        "image/ktx2",
        ktx2,
        r#""KHR_texture_basisu""#,
    )
}

fn png_scene() -> CompiledScene {
    let png = std::fs::read(data("texture.png")).unwrap();
    load(&textured(r#"{"source":0}"#, "image/png", &png, ""))
        .unwrap()
        .0
}

/// A Zstandard-supercompressed RGBA8 KTX2 image is lossless: the same compiled scene as the PNG.
#[test]
fn ktx2_rgba8_zstd_equals_png_original() {
    let (b, warnings) = load(&basisu_texture(
        &std::fs::read(data("texture_rgba8_zstd.ktx2")).unwrap(),
    ))
    .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let a = png_scene();
    assert_eq!(a.images[0].rgba8, b.images[0].rgba8);
    assert!(
        blob::encode(&a) == blob::encode(&b),
        "the KTX2 scene differs from the PNG one"
    );
}

/// Basis Universal is lossy, so the transcoded texels are compared twice:
/// - with the reference transcoder's (Binomial's C++ `basisu -unpack`, which transcodes to
///   GPU formats: ETC1S to ETC2 RGBA and UASTC to ASTC 4x4 are exact, decoded to PNG): equal,
///   byte for byte;
/// - with the PNG original: each channel of each texel within `max_error`, and the mean
///   absolute error at most `mean_error`. ETC1S keeps a small codebook of endpoints and
///   selectors (measured on this texture: max 55, mean 6.0); UASTC is near-lossless (measured:
///   max 13, mean 1.8). The bounds leave a margin over those.
#[test]
fn basisu_textures_equal_reference_transcoder_and_are_close_to_png() {
    let a = png_scene();
    for (name, reference, max_error, mean_error) in [
        (
            "texture_etc1s.ktx2",
            "texture_etc1s.reference.png",
            64u8,
            7.0f64,
        ),
        ("texture_uastc.ktx2", "texture_uastc.reference.png", 20, 2.5),
        (
            "texture_uastc_zstd.ktx2",
            "texture_uastc.reference.png",
            20,
            2.5,
        ),
    ] {
        let (b, warnings) = load(&basisu_texture(&std::fs::read(data(name)).unwrap())).unwrap();
        assert!(warnings.is_empty(), "{name}: {warnings:?}");
        let (ia, ib) = (&a.images[0], &b.images[0]);
        assert_eq!((ib.width, ib.height), (ia.width, ia.height), "{name}");
        let expected = image::open(data(reference)).unwrap().to_rgba8().into_raw();
        assert!(
            ib.rgba8 == expected,
            "{name}: the texels differ from {reference}"
        );
        let diffs: Vec<u8> = ia
            .rgba8
            .iter()
            .zip(&ib.rgba8)
            .map(|(x, y)| x.abs_diff(*y))
            .collect();
        let max = *diffs.iter().max().unwrap();
        let mean = diffs.iter().map(|&d| d as f64).sum::<f64>() / diffs.len() as f64;
        println!("{name}: max error {max}, mean {mean:.2}");
        assert!(
            max <= max_error && mean <= mean_error,
            "{name}: max error {max}, mean {mean:.2}"
        );
        // Everything but the image is the PNG scene's.
        assert_eq!(a.materials, b.materials, "{name}");
        assert_eq!(a.textures, b.textures, "{name}");
    }
}

#[test]
fn corrupt_ktx2_is_one_error_line_naming_the_image() {
    let read = |n: &str| std::fs::read(data(n)).unwrap();
    let (etc1s, uastc_zstd, rgba) = (
        read("texture_etc1s.ktx2"),
        read("texture_uastc_zstd.ktx2"),
        read("texture_rgba8_zstd.ktx2"),
    );
    let with = |mut b: Vec<u8>, at: usize, v: &[u8]| {
        b[at..at + v.len()].copy_from_slice(v);
        b
    };
    let level0_offset = |b: &[u8]| u64::from_le_bytes(b[80..88].try_into().unwrap()) as usize;
    let mut cases: Vec<(Vec<u8>, &str)> = vec![
        (etc1s[..40].to_vec(), "fewer than the 80-byte KTX2 header"),
        (etc1s[..100].to_vec(), "is it truncated?"),
        (
            uastc_zstd[..uastc_zstd.len() - 10].to_vec(),
            "level 0 (offset",
        ),
        (rgba[..rgba.len() - 1].to_vec(), "level 0 (offset"),
        // Dimensions and counts.
        (
            with(etc1s.clone(), 20, &100_000u32.to_le_bytes()),
            "larger than rayfarm accepts",
        ),
        (
            with(etc1s.clone(), 28, &4u32.to_le_bytes()),
            "only 2D textures are supported",
        ),
        (
            with(etc1s.clone(), 40, &4000u32.to_le_bytes()),
            "levelCount 4000",
        ),
        (
            with(rgba.clone(), 12, &100u32.to_le_bytes()),
            "vkFormat 100 is not supported",
        ),
        // Lengths that would make a decoder allocate or read what is not there.
        (
            with(rgba.clone(), 96, &(1u64 << 40).to_le_bytes()),
            "claims 1099511627776 uncompressed bytes",
        ),
        (
            with(uastc_zstd.clone(), 96, &(1u64 << 40).to_le_bytes()),
            "claims 1099511627776 uncompressed bytes",
        ),
        (
            with(etc1s.clone(), 80, &u64::MAX.to_le_bytes()),
            "level 0 (offset 18446744073709551615",
        ),
        (
            with(etc1s.clone(), 64, &u64::MAX.to_le_bytes()),
            "the supercompression global data",
        ),
        (
            with(rgba.clone(), 44, &3u32.to_le_bytes()),
            "supercompression scheme 3 is not supported",
        ),
    ];
    // Corrupt payloads: the stream bytes flipped, lengths kept.
    for (b, bad) in [
        (&etc1s, "cannot transcode"),
        (&uastc_zstd, "cannot transcode"),
        (&rgba, "cannot decompress"),
    ] {
        let mut broken = b.clone();
        let start = level0_offset(b);
        for x in &mut broken[start..] {
            *x ^= 0x5a;
        }
        cases.push((broken, bad));
    }
    for (i, (bytes, expected)) in cases.into_iter().enumerate() {
        let e = load(&basisu_texture(&bytes)).unwrap_err().to_string();
        assert!(
            e.starts_with("model.gltf: image 0 ('image 0'): cannot decode KTX2: "),
            "case {i}: {e}"
        );
        assert!(
            e.contains(expected),
            "case {i}: expected '{expected}' in: {e}"
        );
        assert_eq!(e.lines().count(), 1, "case {i}: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// KHR_draco_mesh_compression (files made from examples/cornell-box)
// ---------------------------------------------------------------------------------------------

/// Draco quantizes (14-bit positions over each mesh's extent, 10-bit octahedral normals) and
/// may reorder vertices: close, not equal. Tolerances as for meshopt: the cornell box's meshes
/// span at most 2 units, so a 14-bit step is 1.2e-4 (1e-3 allowed); a 10-bit normal step is
/// about 2e-3 per component (0.02 allowed).
#[test]
fn draco_is_close_to_original() {
    let a = cornell_box();
    for name in ["cornell_box.draco.glb", "cornell_box.draco_sequential.glb"] {
        let (b, warnings) = rayfarm_scene::load(&data(name)).unwrap();
        assert!(warnings.is_empty(), "{name}: {warnings:?}");
        assert_same_triangles(&a, &b, 1e-3, 0.02);
        assert_eq!(a.materials, b.materials, "{name}");
        assert_eq!(a.meshes, b.meshes, "{name}");
    }
}

#[test]
fn corrupt_draco_is_one_error_line_naming_the_primitive() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    type BinEdit = Box<dyn Fn(&serde_json::Value, &mut Vec<u8>)>;
    let none = || -> Edit { Box::new(|_| {}) };
    let no_bin = || -> BinEdit { Box::new(|_, _| {}) };
    // Flips the bytes of buffer view 0 (mesh 0's Draco stream) from `from` on.
    let flip = |from: usize| -> BinEdit {
        Box::new(move |j, bin| {
            let v = &j["bufferViews"][0];
            let (o, l) = (
                v["byteOffset"].as_u64().unwrap_or(0) as usize,
                v["byteLength"].as_u64().unwrap() as usize,
            );
            for b in &mut bin[o + from..o + l] {
                *b ^= 0x5a;
            }
        })
    };
    let cases: Vec<(Edit, BinEdit, &str)> = vec![
        (none(), flip(0), "cannot decode the Draco stream"),
        (
            none(),
            flip(20),
            "mesh 0 primitive 0: KHR_draco_mesh_compression: ",
        ),
        // Truncated stream.
        (
            Box::new(|j| j["bufferViews"][0]["byteLength"] = 30.into()),
            no_bin(),
            "cannot decode the Draco stream (30 bytes)",
        ),
        // Counts that disagree with the stream.
        (
            Box::new(|j| j["accessors"][1]["count"] = 5.into()),
            no_bin(),
            "the Draco stream decodes to 4 vertices but accessor 1 (POSITION) has 5",
        ),
        (
            Box::new(|j| j["accessors"][1]["count"] = 3.into()),
            no_bin(),
            "the Draco stream decodes to 4 vertices but accessor 1 (POSITION) has 3",
        ),
        (
            Box::new(|j| j["accessors"][0]["count"] = 3.into()),
            no_bin(),
            "cannot decode the Draco stream",
        ),
        (
            Box::new(|j| j["accessors"][1]["count"] = 4_000_000_000u64.into()),
            no_bin(),
            "accessor 1 claims 4000000000 elements, more than rayfarm accepts",
        ),
        // References that do not exist.
        (
            Box::new(|j| {
                j["meshes"][0]["primitives"][0]["extensions"]["KHR_draco_mesh_compression"]
                    ["bufferView"] = 99.into()
            }),
            no_bin(),
            "bufferView must be the index of one of the",
        ),
        (
            Box::new(|j| {
                j["meshes"][0]["primitives"][0]["extensions"]["KHR_draco_mesh_compression"]
                    ["attributes"]["POSITION"] = 7.into()
            }),
            no_bin(),
            "the Draco stream has no attribute with id 7 (POSITION)",
        ),
        (
            Box::new(|j| {
                j["meshes"][0]["primitives"][0]["extensions"]["KHR_draco_mesh_compression"]
                    ["attributes"]["TEXCOORD_1"] = 2.into()
            }),
            no_bin(),
            "attribute TEXCOORD_1 is compressed but the primitive has no TEXCOORD_1 accessor",
        ),
        // Indices stored as u8 cannot hold what they would need to, and floats are not indices.
        (
            Box::new(|j| j["accessors"][0]["componentType"] = 5126.into()),
            no_bin(),
            "index accessor 0 must be unsigned integer scalars",
        ),
        // Two Draco primitives sharing an accessor.
        (
            Box::new(|j| j["meshes"][1]["primitives"][0]["attributes"]["POSITION"] = 1.into()),
            no_bin(),
            "accessor 1 (POSITION) is also decoded for another Draco primitive",
        ),
    ];
    for (i, (edit, edit_bin, expected)) in cases.into_iter().enumerate() {
        let glb = edited_glb("cornell_box.draco.glb", edit, edit_bin);
        let e = load_glb(&glb).unwrap_err().to_string();
        assert!(e.starts_with("model.glb: mesh "), "case {i}: {e}");
        assert!(
            e.contains(expected),
            "case {i}: expected '{expected}' in: {e}"
        );
        assert_eq!(e.lines().count(), 1, "case {i}: {e}");
    }
}

fn close(got: &[u8], want: [u8; 4]) -> bool {
    got.iter().zip(want).all(|(&g, w)| g.abs_diff(w) <= 3)
}

/// EXT_texture_avif (required, no fallback): an 8-bit 4:4:4 AVIF and one with an alpha image
/// decode to what Pillow (libavif) decodes them to, within rounding.
#[test]
fn avif_textures_decode_like_libavif() {
    let rgb = textured(
        r#"{"extensions":{"EXT_texture_avif":{"source":0}}}"#,
        "image/avif",
        include_bytes!("data/avif/rgb.avif"),
        r#""EXT_texture_avif""#,
    );
    let (s, warnings) = load(&rgb).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let img = &s.images[0];
    assert_eq!((img.width, img.height), (8, 8));
    let px = |x: usize, y: usize| &img.rgba8[(y * 8 + x) * 4..][..4];
    assert!(close(px(0, 0), [201, 30, 30, 255]), "{:?}", px(0, 0));
    assert!(close(px(7, 7), [29, 30, 199, 255]), "{:?}", px(7, 7));

    let rgba = textured(
        r#"{"extensions":{"EXT_texture_avif":{"source":0}}}"#,
        "image/avif",
        include_bytes!("data/avif/rgba.avif"),
        r#""EXT_texture_avif""#,
    );
    let (s, _) = load(&rgba).unwrap();
    let img = &s.images[0];
    let px = |x: usize, y: usize| &img.rgba8[(y * 8 + x) * 4..][..4];
    assert!(close(px(0, 0), [39, 180, 41, 255]), "{:?}", px(0, 0));
    assert!(close(px(7, 7), [39, 180, 41, 64]), "{:?}", px(7, 7));
}

#[test]
fn corrupt_avif_is_one_error_line() {
    let avif: &[u8] = include_bytes!("data/avif/rgb.avif");
    let truncated = avif[..avif.len() / 2].to_vec();
    let mut scrambled = avif.to_vec();
    // Keep the container, scramble the AV1 data at the end.
    let n = scrambled.len();
    for b in &mut scrambled[n - 40..] {
        *b ^= 0x5a;
    }
    // The file type box alone.
    let no_image = avif[..32].to_vec();
    for (broken, must_fail) in [(truncated, true), (no_image, true), (scrambled, false)] {
        let json = textured(
            r#"{"extensions":{"EXT_texture_avif":{"source":0}}}"#,
            "image/avif",
            &broken,
            r#""EXT_texture_avif""#,
        );
        // Scrambled AV1 data may still decode (to other pixels); it must not panic.
        let e = match load(&json) {
            Ok(_) if !must_fail => continue,
            Ok(_) => panic!("a broken AVIF file loaded"),
            Err(e) => e.to_string(),
        };
        assert!(e.starts_with("model.gltf: image 0"), "{e}");
        assert!(e.contains("cannot decode AVIF"), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

/// A texture that only uses EXT_texture_avif (a PNG fallback in `source`, the extension in
/// `extensionsUsed` alone) is read from its AVIF image, like WebP.
#[test]
fn avif_is_preferred_over_its_fallback() {
    let avif: &[u8] = include_bytes!("data/avif/rgb.avif");
    let png = encode(image::ImageFormat::Png);
    let json = textured(
        r#"{"source":1,"extensions":{"EXT_texture_avif":{"source":0}}}"#,
        "image/avif",
        avif,
        r#""EXT_texture_avif""#,
    )
    .replace(r#""extensionsRequired":["EXT_texture_avif"],"#, "")
    // The first `"}],` closes the images (the accessors' closes later).
    .replacen(
        r#""}],"#,
        &format!(r#""}},{{"uri":"data:image/png;base64,{}"}}],"#, b64(&png)),
        1,
    );
    assert!(json.contains("image/png") && !json.contains("extensionsRequired"));
    let (s, warnings) = load(&json).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(s.images.len(), 1, "the fallback is not loaded");
    assert_eq!((s.images[0].width, s.images[0].height), (8, 8));
}
