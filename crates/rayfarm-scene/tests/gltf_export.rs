//! The baked-map `.glb` writer, checked by loading its output back with our own importer and
//! with the `gltf` crate.

use glam::Vec3;
use rayfarm_scene::gltf_export::{baked_glb, BakedMaterial, BakedObject, ExportError};
use rayfarm_scene::{gltf_import, CompiledScene, Material, WrapMode};
use std::path::Path;

/// A `width` x `height` RGBA PNG with a gradient, so different sizes give different files.
fn png(width: u32, height: u32) -> Vec<u8> {
    let mut rgba = Vec::new();
    for y in 0..height {
        for x in 0..width {
            rgba.extend_from_slice(&[(x * 40) as u8, (y * 40) as u8, 128, 255]);
        }
    }
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbaImage::from_raw(width, height, rgba)
        .unwrap()
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// A floor quad, a sphere (whose first vertex no triangle uses, so re-indexing must drop it)
/// and a quad without uv1. `uv1` differs from `uv0` everywhere, so a test can tell the sets
/// apart.
fn scene() -> CompiledScene {
    let mut s = CompiledScene::default();
    let m = s.add_material(Material::default());
    s.add_quad(
        "floor",
        Vec3::new(-2.0, 0.0, 2.0),
        Vec3::new(4.0, 0.0, 0.0),
        Vec3::new(0.0, 0.0, -4.0),
        m,
    );
    s.add_sphere("ball", Vec3::new(0.0, 1.0, 0.0), 0.75, 4, 6, m);
    s.uv1 = s
        .uv0
        .iter()
        .map(|[u, v]| [0.3 + 0.5 * u, 0.1 + 0.5 * v])
        .collect();
    s.meshes[0].has_uv[1] = true;
    s.meshes[1].has_uv[1] = true;
    s.add_quad(
        "wall",
        Vec3::new(-2.0, 0.0, -2.0),
        Vec3::new(4.0, 0.0, 0.0),
        Vec3::new(0.0, 2.0, 0.0),
        m,
    );
    s.validate().unwrap();
    s
}

fn materials() -> Vec<BakedMaterial> {
    vec![
        BakedMaterial {
            name: "floor_baked".into(),
            png: png(4, 2),
        },
        BakedMaterial {
            name: "ball_baked".into(),
            png: png(3, 5),
        },
    ]
}

/// The ball first with the second material, then the floor with the first: neither order
/// matches the scene's.
fn objects() -> Vec<BakedObject> {
    vec![
        BakedObject {
            mesh: 1,
            material: 1,
        },
        BakedObject {
            mesh: 0,
            material: 0,
        },
    ]
}

fn reload(glb: &[u8]) -> (CompiledScene, Vec<String>) {
    gltf_import::load_from_slice(glb, Path::new("baked.glb"), &|_| {
        Err(std::io::ErrorKind::NotFound.into())
    })
    .unwrap()
}

#[test]
fn export_reloads_with_the_baked_uv_set_and_textures() {
    let src = scene();
    let mats = materials();
    let objs = objects();
    let glb = baked_glb(&src, &objs, &mats, 1).unwrap();
    let (back, warnings) = reload(&glb);

    // The importer understands KHR_materials_unlit: no findings.
    assert!(warnings.is_empty(), "{warnings:?}");

    assert_eq!(back.meshes.len(), objs.len());
    let mut used_total = 0;
    for (o, got) in objs.iter().zip(&back.meshes) {
        let want = &src.meshes[o.mesh];
        assert_eq!(got.name, want.name);
        assert_eq!(got.triangle_count, want.triangle_count);
        // TEXCOORD_0 of the file is the exported set; there is no second set.
        assert_eq!(got.has_uv, [true, false]);

        let want_tris =
            &src.triangles[want.first_triangle as usize..][..want.triangle_count as usize];
        let got_tris =
            &back.triangles[got.first_triangle as usize..][..got.triangle_count as usize];
        let mut used = std::collections::BTreeSet::new();
        for (w, g) in want_tris.iter().zip(got_tris) {
            for (&wi, &gi) in w.iter().zip(g) {
                let (wi, gi) = (wi as usize, gi as usize);
                used.insert(wi);
                assert_eq!(back.positions[gi], src.positions[wi]);
                assert_eq!(back.uv0[gi], src.uv1[wi], "uv0 must be the exported uv1");
                let dot: f32 = (0..3)
                    .map(|k| back.normals[gi][k] * src.normals[wi][k])
                    .sum();
                assert!(
                    dot > 0.9999,
                    "normal {:?} vs {:?}",
                    back.normals[gi],
                    src.normals[wi]
                );
            }
        }
        // Re-indexed compactly, in order of first use.
        assert_eq!(got_tris[0].map(|i| i - got_tris[0][0]), [0, 1, 2]);
        let got_vertices = got_tris
            .iter()
            .flatten()
            .collect::<std::collections::BTreeSet<_>>();
        assert_eq!(got_vertices.len(), used.len());
        used_total += used.len();

        // The material shows the object's PNG: read the size back through the texture.
        let mat = &back.materials[back.triangle_materials[got.first_triangle as usize] as usize];
        assert_eq!(mat.name, mats[o.material].name);
        // Unlit: imported as a black surface emitting its base colour (texture).
        assert_eq!(mat.base_color, [0.0, 0.0, 0.0, 1.0]);
        assert_eq!(mat.emissive, [1.0; 3]);
        assert_eq!((mat.metallic, mat.roughness), (0.0, 1.0));
        assert_eq!(mat.emissive_texture, mat.base_color_texture);
        let tex_ref = mat.base_color_texture.expect("a base colour texture");
        assert_eq!(tex_ref.uv_set, 0);
        let tex = &back.textures[tex_ref.texture as usize];
        assert_eq!(
            (tex.wrap_s, tex.wrap_t),
            (WrapMode::ClampToEdge, WrapMode::ClampToEdge)
        );
        assert!(!tex.nearest);
        let img = &back.images[tex.image as usize];
        let decoded = image::load_from_memory(&mats[o.material].png).unwrap();
        assert_eq!((img.width, img.height), (decoded.width(), decoded.height()));
        assert_eq!(img.rgba8, decoded.to_rgba8().into_raw());
    }
    // Only used vertices are exported: the sphere's two unused pole vertices are dropped.
    assert_eq!(back.positions.len(), used_total);
    assert_eq!(used_total, 4 + 35 - 2);
}

#[test]
fn export_is_a_valid_glb_for_the_gltf_crate() {
    let glb = baked_glb(&scene(), &objects(), &materials(), 0).unwrap();

    // Container: header, then a space-padded JSON chunk and a zero-padded BIN chunk.
    assert_eq!(&glb[0..4], b"glTF");
    assert_eq!(u32::from_le_bytes(glb[4..8].try_into().unwrap()), 2);
    assert_eq!(
        u32::from_le_bytes(glb[8..12].try_into().unwrap()) as usize,
        glb.len()
    );
    let json_len = u32::from_le_bytes(glb[12..16].try_into().unwrap()) as usize;
    assert_eq!(&glb[16..20], b"JSON");
    assert_eq!(json_len % 4, 0);
    let bin_at = 20 + json_len;
    let bin_len = u32::from_le_bytes(glb[bin_at..bin_at + 4].try_into().unwrap()) as usize;
    assert_eq!(&glb[bin_at + 4..bin_at + 8], b"BIN\0");
    assert_eq!(bin_len % 4, 0);
    assert_eq!(bin_at + 8 + bin_len, glb.len());

    let gltf = gltf::Gltf::from_slice(&glb).expect("the gltf crate accepts the file");
    let doc = &gltf.document;
    assert_eq!(
        doc.extensions_used().collect::<Vec<_>>(),
        ["KHR_materials_unlit"]
    );
    assert_eq!(doc.extensions_required().count(), 0);
    assert_eq!(
        doc.as_json().asset.generator.as_deref(),
        Some(concat!("rayfarm ", env!("CARGO_PKG_VERSION")))
    );
    let names: Vec<_> = doc.nodes().map(|n| n.name().unwrap().to_string()).collect();
    assert_eq!(names, ["ball", "floor"]);
    for node in doc.nodes() {
        assert_eq!(
            node.transform().matrix(),
            glam::Mat4::IDENTITY.to_cols_array_2d()
        );
        let prim = node.mesh().unwrap().primitives().next().unwrap();
        let pos = prim.get(&gltf::Semantic::Positions).unwrap();
        assert!(pos.min().is_some() && pos.max().is_some());
        assert!(prim.get(&gltf::Semantic::Normals).is_some());
        assert!(prim.get(&gltf::Semantic::TexCoords(0)).is_some());
        assert!(prim.get(&gltf::Semantic::TexCoords(1)).is_none());
        assert_eq!(
            prim.indices().unwrap().data_type(),
            gltf::accessor::DataType::U32
        );
    }
    for view in doc.views() {
        assert_eq!(view.offset() % 4, 0, "buffer view {}", view.index());
        assert!(view.offset() + view.length() <= bin_len);
    }
    for image in doc.images() {
        match image.source() {
            gltf::image::Source::View { mime_type, .. } => assert_eq!(mime_type, "image/png"),
            other => panic!("image {} is not embedded: {other:?}", image.index()),
        }
    }
    let sampler = doc.samplers().next().unwrap();
    assert_eq!(sampler.mag_filter(), Some(gltf::texture::MagFilter::Linear));
    assert_eq!(sampler.min_filter(), Some(gltf::texture::MinFilter::Linear));
    assert_eq!(sampler.wrap_s(), gltf::texture::WrappingMode::ClampToEdge);
    assert_eq!(sampler.wrap_t(), gltf::texture::WrappingMode::ClampToEdge);
}

#[test]
fn export_is_deterministic() {
    let a = baked_glb(&scene(), &objects(), &materials(), 1).unwrap();
    let b = baked_glb(&scene(), &objects(), &materials(), 1).unwrap();
    assert_eq!(a, b);
}

#[test]
fn export_errors_name_what_is_wrong() {
    let s = scene();
    let mats = materials();
    let one = |mesh, material| [BakedObject { mesh, material }];
    let err = |objs: &[BakedObject], mats: &[BakedMaterial], uv_set| {
        baked_glb(&s, objs, mats, uv_set).unwrap_err()
    };

    let e = err(&[], &mats, 0);
    assert!(matches!(e, ExportError::NoObjects), "{e:?}");

    let e = err(&one(3, 0), &mats, 0);
    assert!(
        matches!(
            e,
            ExportError::MeshOutOfRange {
                object: 0,
                mesh: 3,
                mesh_count: 3
            }
        ),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "object 0: mesh 3 does not exist (the scene has 3 meshes)"
    );

    let e = err(&one(0, 2), &mats, 0);
    assert!(
        matches!(
            e,
            ExportError::MaterialOutOfRange {
                object: 0,
                material: 2,
                material_count: 2
            }
        ),
        "{e:?}"
    );

    let e = err(&one(2, 0), &mats, 1);
    assert_eq!(
        e.to_string(),
        "mesh 'wall' has no uv set 1 (TEXCOORD_1); bake it with a uv set it has"
    );
    // The same mesh exports fine by the set it has.
    baked_glb(&s, &one(2, 0), &mats, 0).unwrap();

    let e = err(&one(0, 0), &mats, 2);
    assert!(
        matches!(e, ExportError::UnknownUvSet { uv_set: 2 }),
        "{e:?}"
    );

    let raw = [BakedMaterial {
        name: "raw".into(),
        png: vec![0; 64],
    }];
    let e = err(&one(0, 0), &raw, 0);
    assert_eq!(
        e.to_string(),
        "baked material 'raw' is not a PNG image (its bytes lack the PNG signature)"
    );

    let mut empty = s.clone();
    empty.meshes[0].triangle_count = 0;
    let e = baked_glb(&empty, &one(0, 0), &mats, 0).unwrap_err();
    assert!(
        matches!(e, ExportError::EmptyMesh { ref mesh } if mesh == "floor"),
        "{e:?}"
    );

    // A scene that claims uv1 for a mesh but has no uv1 array is reported, not a panic.
    let mut no_uv1 = s.clone();
    no_uv1.uv1.clear();
    let e = baked_glb(&no_uv1, &one(0, 0), &mats, 1).unwrap_err();
    assert!(
        matches!(e, ExportError::InvalidMesh { ref mesh, .. } if mesh == "floor"),
        "{e:?}"
    );
}
