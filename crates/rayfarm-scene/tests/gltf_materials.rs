//! Import of the layered-material extensions (KHR_materials_sheen, KHR_materials_clearcoat)
//! from tiny generated glTF files.

use base64::Engine;
use rayfarm_scene::gltf_import::load_from_slice;
use rayfarm_scene::{CompiledScene, SceneError, Warnings};
use std::path::Path;

/// A 2x2 RGBA PNG as a data URI.
fn png_uri() -> String {
    let img = image::RgbaImage::from_raw(2, 2, vec![200u8; 16]).unwrap();
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// The accessors, buffer views and buffer of one triangle with UVs (mesh attributes 0 and 1):
/// the end of the files below.
fn triangle_json() -> String {
    let bin: Vec<u8> = [0.0f32, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        .iter()
        .chain(&[0.0f32, 0.0, 1.0, 0.0, 0.0, 1.0])
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(bin);
    format!(
        r#""accessors":[{{"bufferView":0,"componentType":5126,"count":3,"type":"VEC3",
                       "min":[0,0,0],"max":[1,1,0]}},
                     {{"bufferView":1,"componentType":5126,"count":3,"type":"VEC2"}}],
        "bufferViews":[{{"buffer":0,"byteLength":36}},{{"buffer":0,"byteOffset":36,"byteLength":24}}],
        "buffers":[{{"byteLength":60,"uri":"data:application/octet-stream;base64,{b64}"}}]"#
    )
}

/// One triangle with UVs whose material has the given `extensions` JSON; one texture.
fn gltf(extensions: &str) -> String {
    format!(
        r#"{{"asset":{{"version":"2.0"}},
        "extensionsUsed":["KHR_materials_sheen","KHR_materials_clearcoat","KHR_texture_transform",
                          "KHR_materials_volume","KHR_materials_transmission",
                          "KHR_materials_iridescence","KHR_materials_anisotropy",
                          "KHR_materials_dispersion","KHR_materials_diffuse_transmission"],
        "nodes":[{{"mesh":0}}],
        "meshes":[{{"primitives":[{{"attributes":{{"POSITION":0,"TEXCOORD_0":1}},"material":0}}]}}],
        "materials":[{{"name":"fabric","pbrMetallicRoughness":{{"metallicFactor":0}},
                       "extensions":{extensions}}}],
        "textures":[{{"source":0}}],
        "images":[{{"uri":"{png}"}}],
        {triangle}}}"#,
        png = png_uri(),
        triangle = triangle_json()
    )
}

fn load(json: &str) -> Result<(CompiledScene, Warnings), SceneError> {
    load_from_slice(json.as_bytes(), Path::new("chair.gltf"), &|_| {
        Err(std::io::ErrorKind::NotFound.into())
    })
}

fn message(json: &str) -> String {
    match load(json) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// The parameters of the Khronos SheenChair's fabric (sheen colour and roughness from one
/// texture: RGB colour, alpha roughness) plus a ClearCoatTest-like coat with its own normal map.
#[test]
fn sheen_chair_like_material_imports() {
    let (scene, warnings) = load(&gltf(
        r#"{"KHR_materials_sheen":{"sheenColorFactor":[0.9,0.7,0.5],"sheenRoughnessFactor":0.45,
             "sheenColorTexture":{"index":0},"sheenRoughnessTexture":{"index":0,"texCoord":0}},
            "KHR_materials_clearcoat":{"clearcoatFactor":1.0,"clearcoatRoughnessFactor":0.03,
             "clearcoatTexture":{"index":0},
             "clearcoatRoughnessTexture":{"index":0,
               "extensions":{"KHR_texture_transform":{"scale":[2,2]}}},
             "clearcoatNormalTexture":{"index":0,"scale":0.8}}}"#,
    ))
    .unwrap();
    // Neither extension is reported as ignored any more.
    assert!(warnings.is_empty(), "{warnings:?}");
    let m = &scene.materials[0];
    assert_eq!(m.sheen_color, [0.9, 0.7, 0.5]);
    assert_eq!(m.sheen_roughness, 0.45);
    assert!(m.sheen_color_texture.is_some() && m.sheen_roughness_texture.is_some());
    assert_eq!(m.clearcoat, 1.0);
    assert_eq!(m.clearcoat_roughness, 0.03);
    assert!(m.clearcoat_texture.is_some());
    let rough = m.clearcoat_roughness_texture.unwrap();
    assert_eq!(rough.transform, [2.0, 0.0, 0.0, 0.0, 2.0, 0.0]);
    assert_eq!(m.clearcoat_normal_scale, 0.8);
    assert!(m.clearcoat_normal_texture.is_some());
    // One texture, shared by every slot; tangents were generated for the coat's normal map.
    assert_eq!(scene.textures.len(), 1);
    assert_eq!(scene.tangents.len(), scene.positions.len());
    // The compiled scene carries the layers through the blob.
    let blob = rayfarm_scene::blob::encode(&scene);
    assert_eq!(rayfarm_scene::blob::decode(&blob).unwrap(), scene);
}

/// KHR_materials_volume: thickness switches transmission from thin glass to a volume, and the
/// attenuation gives the Beer-Lambert coefficient.
#[test]
fn volume_imports() {
    let (scene, warnings) = load(&gltf(
        r#"{"KHR_materials_transmission":{"transmissionFactor":1},
            "KHR_materials_volume":{"thicknessFactor":0.2,"thicknessTexture":{"index":0},
             "attenuationColor":[0.5,1,0.25],"attenuationDistance":2}}"#,
    ))
    .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let m = &scene.materials[0];
    assert!(m.has_volume());
    assert_eq!(m.thickness, 0.2);
    assert_eq!(m.attenuation_distance, 2.0);
    let a = m.absorption();
    assert!(
        (a[0] - 0.5f32.ln().abs() / 2.0).abs() < 1e-6 && a[1] == 0.0,
        "{a:?}"
    );
    // Thin-walled without a thickness; no absorption without a distance.
    let (scene, _) = load(&gltf(
        r#"{"KHR_materials_transmission":{"transmissionFactor":1},
            "KHR_materials_volume":{"attenuationColor":[0.5,0.5,0.5]}}"#,
    ))
    .unwrap();
    assert!(!scene.materials[0].has_volume());
    assert_eq!(scene.materials[0].absorption(), [0.0; 3]);
}

/// KHR_materials_iridescence, _anisotropy, _dispersion and _diffuse_transmission (the
/// parameters of the Khronos IridescenceLamp, AnisotropyBarnLamp, DispersionTest and
/// DiffuseTransmissionPlant samples): read without warnings, carried through the blob.
#[test]
fn iridescence_anisotropy_dispersion_diffuse_transmission_import() {
    let (scene, warnings) = load(&gltf(
        r#"{"KHR_materials_iridescence":{"iridescenceFactor":0.8,"iridescenceIor":1.5,
             "iridescenceThicknessMinimum":200,"iridescenceThicknessMaximum":800,
             "iridescenceTexture":{"index":0},"iridescenceThicknessTexture":{"index":0}},
            "KHR_materials_anisotropy":{"anisotropyStrength":0.6,"anisotropyRotation":1.57,
             "anisotropyTexture":{"index":0}},
            "KHR_materials_transmission":{"transmissionFactor":1},
            "KHR_materials_volume":{"thicknessFactor":1},
            "KHR_materials_dispersion":{"dispersion":0.5},
            "KHR_materials_diffuse_transmission":{"diffuseTransmissionFactor":0.25,
             "diffuseTransmissionColorFactor":[1,0.5,0.25],
             "diffuseTransmissionTexture":{"index":0},
             "diffuseTransmissionColorTexture":{"index":0}}}"#,
    ))
    .unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    let m = &scene.materials[0];
    assert!(m.has_iridescence() && m.has_anisotropy() && m.has_dispersion());
    assert!(m.has_diffuse_transmission());
    assert_eq!(
        (
            m.iridescence,
            m.iridescence_ior,
            m.iridescence_thickness_min,
            m.iridescence_thickness_max
        ),
        (0.8, 1.5, 200.0, 800.0)
    );
    assert!(m.iridescence_texture.is_some() && m.iridescence_thickness_texture.is_some());
    assert_eq!((m.anisotropy_strength, m.anisotropy_rotation), (0.6, 1.57));
    assert!(m.anisotropy_texture.is_some());
    assert_eq!(m.dispersion, 0.5);
    assert_eq!(m.diffuse_transmission, 0.25);
    assert_eq!(m.diffuse_transmission_color, [1.0, 0.5, 0.25]);
    assert!(m.diffuse_transmission_texture.is_some());
    assert!(m.diffuse_transmission_color_texture.is_some());
    // Anisotropy is defined in tangent space: tangents were generated.
    assert_eq!(scene.tangents.len(), scene.positions.len());
    let blob = rayfarm_scene::blob::encode(&scene);
    assert_eq!(rayfarm_scene::blob::decode(&blob).unwrap(), scene);
    // The extensions' defaults.
    let (scene, _) = load(&gltf(
        r#"{"KHR_materials_iridescence":{"iridescenceFactor":1},
            "KHR_materials_diffuse_transmission":{}}"#,
    ))
    .unwrap();
    let m = &scene.materials[0];
    assert_eq!(
        (
            m.iridescence_ior,
            m.iridescence_thickness_min,
            m.iridescence_thickness_max
        ),
        (1.3, 100.0, 400.0)
    );
    assert!(!m.has_diffuse_transmission());
    assert_eq!(m.diffuse_transmission_color, [1.0; 3]);
    // Dispersion without a volume does nothing (thin-walled materials don't refract).
    let (scene, _) = load(&gltf(r#"{"KHR_materials_dispersion":{"dispersion":1}}"#)).unwrap();
    assert!(!scene.materials[0].has_dispersion());
}

#[test]
fn absent_layers_are_off() {
    let (scene, _) = load(&gltf("{}")).unwrap();
    assert!(!scene.materials[0].has_sheen());
    assert!(!scene.materials[0].has_clearcoat());
}

#[test]
fn bad_layer_values_name_file_material_and_field() {
    let cases = [
        (
            r#"{"KHR_materials_sheen":{"sheenColorFactor":[2,0,0]}}"#,
            "chair.gltf: material 0 ('fabric') KHR_materials_sheen.sheenColorFactor must be 3 numbers in [0, 1]",
        ),
        (
            r#"{"KHR_materials_sheen":{"sheenRoughnessFactor":"rough"}}"#,
            "KHR_materials_sheen.sheenRoughnessFactor must be a number in [0, 1]",
        ),
        (
            r#"{"KHR_materials_clearcoat":{"clearcoatFactor":-0.5}}"#,
            "KHR_materials_clearcoat.clearcoatFactor must be a number in [0, 1], not -0.5",
        ),
        (
            r#"{"KHR_materials_clearcoat":{"clearcoatTexture":{"index":7}}}"#,
            "KHR_materials_clearcoat.clearcoatTexture refers to texture 7 but there are 1 textures",
        ),
        (
            r#"{"KHR_materials_clearcoat":{"clearcoatNormalTexture":{"scale":1}}}"#,
            "KHR_materials_clearcoat.clearcoatNormalTexture has no texture index",
        ),
        (
            r#"{"KHR_materials_sheen":{"sheenColorTexture":{"index":0,
                "extensions":{"KHR_texture_transform":{"offset":[1]}}}}}"#,
            "sheenColorTexture: KHR_texture_transform has a malformed field",
        ),
        (
            r#"{"KHR_materials_volume":{"thicknessFactor":-1}}"#,
            "KHR_materials_volume.thicknessFactor must be a number of at least 0, not -1",
        ),
        (
            r#"{"KHR_materials_volume":{"attenuationDistance":0}}"#,
            "KHR_materials_volume.attenuationDistance must be a positive number, not 0",
        ),
        (
            r#"{"KHR_materials_volume":{"attenuationColor":[1,1]}}"#,
            "KHR_materials_volume.attenuationColor must be 3 numbers in [0, 1]",
        ),
        (
            r#"{"KHR_materials_iridescence":{"iridescenceFactor":1.5}}"#,
            "KHR_materials_iridescence.iridescenceFactor must be a number in [0, 1], not 1.5",
        ),
        (
            r#"{"KHR_materials_iridescence":{"iridescenceIor":0.5}}"#,
            "KHR_materials_iridescence.iridescenceIor must be a number of at least 1, not 0.5",
        ),
        (
            r#"{"KHR_materials_iridescence":{"iridescenceThicknessMaximum":-3}}"#,
            "KHR_materials_iridescence.iridescenceThicknessMaximum must be a number of at least 0",
        ),
        (
            r#"{"KHR_materials_anisotropy":{"anisotropyStrength":2}}"#,
            "KHR_materials_anisotropy.anisotropyStrength must be a number in [0, 1], not 2",
        ),
        (
            r#"{"KHR_materials_anisotropy":{"anisotropyRotation":"left"}}"#,
            "KHR_materials_anisotropy.anisotropyRotation must be a number (finite), not \"left\"",
        ),
        (
            r#"{"KHR_materials_anisotropy":{"anisotropyTexture":{"index":3}}}"#,
            "KHR_materials_anisotropy.anisotropyTexture refers to texture 3 but there are 1 textures",
        ),
        (
            r#"{"KHR_materials_dispersion":{"dispersion":-0.1}}"#,
            "KHR_materials_dispersion.dispersion must be a number of at least 0, not -0.1",
        ),
        (
            r#"{"KHR_materials_diffuse_transmission":{"diffuseTransmissionFactor":-1}}"#,
            "KHR_materials_diffuse_transmission.diffuseTransmissionFactor must be a number in [0, 1]",
        ),
        (
            r#"{"KHR_materials_diffuse_transmission":{"diffuseTransmissionColorFactor":[1,2,0]}}"#,
            "KHR_materials_diffuse_transmission.diffuseTransmissionColorFactor must be 3 numbers in [0, 1]",
        ),
    ];
    for (ext, want) in cases {
        let msg = message(&gltf(ext));
        assert!(msg.contains(want), "{msg}\n  wanted: {want}");
        assert!(msg.contains("chair.gltf"), "{msg}");
        assert_eq!(msg.lines().count(), 1, "{msg}");
    }
}

/// One triangle with two materials and two variants: "red" maps material 1, "green" maps
/// nothing (the default material stays).
fn variants_gltf(mappings: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(
        [0.0f32, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    );
    format!(
        r#"{{"asset":{{"version":"2.0"}},"extensionsUsed":["KHR_materials_variants"],
        "extensions":{{"KHR_materials_variants":{{"variants":[{{"name":"red"}},{{"name":"green"}}]}}}},
        "nodes":[{{"mesh":0}}],
        "meshes":[{{"primitives":[{{"attributes":{{"POSITION":0}},"material":0,
            "extensions":{{"KHR_materials_variants":{{"mappings":{mappings}}}}}}}]}}],
        "materials":[{{"name":"plain"}},{{"name":"red paint"}}],
        "accessors":[{{"bufferView":0,"componentType":5126,"count":3,"type":"VEC3",
                       "min":[0,0,0],"max":[1,1,0]}}],
        "bufferViews":[{{"buffer":0,"byteLength":36}}],
        "buffers":[{{"byteLength":36,"uri":"data:application/octet-stream;base64,{b64}"}}]}}"#
    )
}

fn load_variant(json: &str, variant: Option<&str>) -> Result<CompiledScene, SceneError> {
    let opts = rayfarm_scene::LoadOptions {
        variant: variant.map(String::from),
        ..Default::default()
    };
    rayfarm_scene::gltf_import::load_from_slice_with(
        json.as_bytes(),
        Path::new("shoe.gltf"),
        &|_| Err(std::io::ErrorKind::NotFound.into()),
        &opts,
    )
    .map(|(s, _)| s)
}

#[test]
fn variants_pick_their_materials() {
    let json = variants_gltf(r#"[{"material":1,"variants":[0]}]"#);
    let name = |s: CompiledScene| s.materials[s.triangle_materials[0] as usize].name.clone();
    assert_eq!(name(load_variant(&json, None).unwrap()), "plain");
    assert_eq!(name(load_variant(&json, Some("red")).unwrap()), "red paint");
    assert_eq!(name(load_variant(&json, Some("green")).unwrap()), "plain");
    let e = load_variant(&json, Some("blue")).unwrap_err().to_string();
    assert_eq!(
        e,
        "shoe.gltf: no material variant named 'blue'; the file's variants are: red, green"
    );
    // `variants` lists them from the file.
    let path = std::env::temp_dir().join(format!("rayfarm-variants-{}.gltf", std::process::id()));
    std::fs::write(&path, &json).unwrap();
    let listed = rayfarm_scene::variants(&path);
    std::fs::remove_file(&path).ok();
    assert_eq!(listed.unwrap(), ["red", "green"]);
}

#[test]
fn bad_variant_mappings_name_the_primitive() {
    for (mappings, want) in [
        (
            r#"[{"material":9,"variants":[0]}]"#,
            "shoe.gltf: mesh 0 primitive 0 KHR_materials_variants: mapping 0 refers to material 9 but there are 2 materials",
        ),
        (
            r#"[{"material":1,"variants":[5]}]"#,
            "shoe.gltf: mesh 0 primitive 0 KHR_materials_variants: mapping 0 refers to variant 5 but there are 2 variants",
        ),
        (
            r#"{"material":1}"#,
            "shoe.gltf: mesh 0 primitive 0 KHR_materials_variants: mappings must be an array",
        ),
    ] {
        let e = load_variant(&variants_gltf(mappings), Some("red"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, want);
    }
}

/// One triangle whose material uses texture `base` for its base colour and texture `emissive`
/// for emission; three textures over three images, image 1 not an image at all. Images are
/// decoded ahead of the materials, several at once: an image no material uses may be broken,
/// one a material uses is reported by index and name.
fn three_images(base: u32, emissive: u32) -> String {
    let broken = base64::engine::general_purpose::STANDARD.encode(b"\x89PNG not really");
    format!(
        r#"{{"asset":{{"version":"2.0"}},
        "nodes":[{{"mesh":0}}],
        "meshes":[{{"primitives":[{{"attributes":{{"POSITION":0,"TEXCOORD_0":1}},"material":0}}]}}],
        "materials":[{{"name":"label","emissiveFactor":[1,1,1],
                       "emissiveTexture":{{"index":{emissive}}},
                       "pbrMetallicRoughness":{{"baseColorTexture":{{"index":{base}}}}}}}],
        "textures":[{{"source":0}},{{"source":1}},{{"source":2}}],
        "images":[{{"uri":"{png}"}},{{"uri":"data:image/png;base64,{broken}"}},{{"uri":"{png}"}}],
        {triangle}}}"#,
        png = png_uri(),
        triangle = triangle_json()
    )
}

#[test]
fn images_decoded_ahead_keep_order_and_errors() {
    let (scene, _) = load(&three_images(2, 0)).unwrap();
    // In the order materials first use them: base colour (image 2), then emission (image 0).
    assert_eq!(scene.images.len(), 2);
    assert!(scene.images.iter().all(|i| (i.width, i.height) == (2, 2)));
    assert_eq!(
        scene.images.iter().map(|i| i.rgba8.len()).sum::<usize>(),
        32
    );
    let m = &scene.materials[0];
    let image_of = |t: &rayfarm_scene::TextureRef| scene.textures[t.texture as usize].image;
    assert_eq!(image_of(m.base_color_texture.as_ref().unwrap()), 0);
    assert_eq!(image_of(m.emissive_texture.as_ref().unwrap()), 1);
    let e = message(&three_images(0, 1));
    assert!(
        e.starts_with("chair.gltf: image 1 ('image 1'): cannot decode"),
        "{e}"
    );
}
