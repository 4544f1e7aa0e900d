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
