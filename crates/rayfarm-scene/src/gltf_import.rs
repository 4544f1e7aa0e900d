//! glTF 2.0 importer (`.gltf` with external or data-URI buffers, and `.glb`).
//!
//! The `gltf` crate parses and validates the JSON; buffers, accessors and images are read here
//! with explicit bounds checks, because a scene file is untrusted input and every failure must
//! name the file and the accessor, image or field at fault instead of panicking.
//!
//! Animations are ignored unless a time is given ([`LoadOptions::time_s`]); then the
//! `animation` submodule poses the animated nodes at that time before the node tree is
//! flattened, so meshes, cameras and lights below them move with them.
//!
//! Compressed data is decoded here, once, so nothing downstream (compiled scene, wire, workers)
//! ever sees it: the `meshopt` submodule decodes EXT_meshopt_compression buffer views, `draco`
//! KHR_draco_mesh_compression primitives (both by rewriting the JSON so that the accessor
//! reader finds decoded bytes), `ktx2` KHR_texture_basisu images and `avif` EXT_texture_avif
//! images.

use crate::types::*;
use crate::{LoadOptions, SceneError, Warnings};
use glam::{Mat3, Mat4, Vec3};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

mod animation;
pub mod avif;
mod draco;
mod ktx2;
mod meshopt;

/// Extensions rayfarm understands (fully or, for transmission without a volume, as thin glass).
/// Sheen, clearcoat, volume, iridescence, anisotropy, dispersion and diffuse transmission are
/// read from the material's JSON by `layer_extensions` (the gltf crate 1.4 parses few of them,
/// and we keep them all in one place).
const SUPPORTED_EXTENSIONS: &[&str] = &[
    "KHR_lights_punctual",
    "KHR_materials_emissive_strength",
    "KHR_materials_specular",
    "KHR_texture_transform",
    "KHR_materials_transmission",
    "KHR_materials_ior",
    "KHR_materials_unlit",
    "KHR_materials_sheen",
    "KHR_materials_clearcoat",
    "KHR_materials_volume",
    "KHR_materials_iridescence",
    "KHR_materials_anisotropy",
    "KHR_materials_dispersion",
    "KHR_materials_diffuse_transmission",
    "KHR_materials_variants",
    "EXT_texture_webp",
    "EXT_texture_avif",
    "KHR_mesh_quantization",
    "EXT_meshopt_compression",
    "KHR_texture_basisu",
    "KHR_draco_mesh_compression",
];

/// Upper bound on the elements of one accessor; far above any real scene, low enough that a
/// hostile `count` cannot make us allocate gigabytes for an accessor without a buffer view.
const MAX_ACCESSOR_ELEMENTS: usize = 1 << 28;

/// Upper bound on the components (elements times 1..16) of an accessor without a buffer view,
/// which is all zeros apart from its sparse values: 16M, e.g. 5.5M VEC3 positions.
const MAX_ZERO_FILLED_COMPONENTS: usize = 1 << 24;

/// Loads a `.gltf` or `.glb` file from disk, in its rest pose.
pub fn load(path: &Path) -> Result<(CompiledScene, Warnings), SceneError> {
    load_with(path, &LoadOptions::default())
}

/// Loads a `.gltf` or `.glb` file from disk, posed as `opts` says (see [`load_from_slice_with`]).
pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<(CompiledScene, Warnings), SceneError> {
    let bytes = crate::read_regular_file(path).map_err(|e| SceneError::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    load_from_slice_with(
        &bytes,
        path,
        &|p: &Path| crate::read_regular_file(&base.join(p)),
        opts,
    )
}

/// Loads a glTF from memory, in its rest pose. `path` names the file in messages; `read_file`
/// reads external buffers and images by their path relative to the glTF file.
pub fn load_from_slice(
    bytes: &[u8],
    path: &Path,
    read_file: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
) -> Result<(CompiledScene, Warnings), SceneError> {
    load_from_slice_with(bytes, path, read_file, &LoadOptions::default())
}

/// Loads a glTF from memory like [`load_from_slice`], posed as `opts` says.
///
/// With `opts.time_s` set, every animation of the file applies at once at that time (in
/// seconds on the file's clock; before a channel's first keyframe it holds the first value,
/// after its last the last). A channel overrides the translation, rotation or scale of its
/// node's local transform; the components no channel animates keep the node's own values. When
/// channels (of the same or different animations) target the same node and property, the first
/// in file order wins and one warning says so. Morph-target weights are not supported: such
/// channels are ignored with one warning. Malformed keyframe data is an error naming the
/// animation and channel. Without a time, animations are not read at all.
pub fn load_from_slice_with(
    bytes: &[u8],
    path: &Path,
    read_file: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    opts: &LoadOptions,
) -> Result<(CompiledScene, Warnings), SceneError> {
    let inv = |what: String| SceneError::invalid(path, what);
    if let Some(t) = opts.time_s {
        if !t.is_finite() {
            return Err(inv(format!(
                "cannot pose the animations at time {t} s: the time must be a finite number of seconds"
            )));
        }
    }
    let mut warnings = Vec::new();
    let parsed = parse(bytes, path, read_file, &mut warnings)?;
    let doc = &parsed.doc;
    let mut b = Builder::new(path, doc, parsed.buffers, read_file, &mut warnings);
    b.scene.resolution = parsed.resolution;
    if let Some(budget) = opts.texture_memory {
        b.texture_budget = budget;
    }
    b.raw_materials = parsed.raw_materials;
    if let Some(name) = &opts.variant {
        b.variant_materials = variant_mappings(&parsed.raw, path, name)?;
    }
    b.predecode_images();
    // Local transforms of the animated nodes at the requested time, by node index.
    let poses = match opts.time_s {
        Some(t) => animation::pose_nodes(&mut b, t)?,
        None => Vec::new(),
    };

    let roots: Vec<gltf::Node> = match doc.default_scene().or_else(|| doc.scenes().next()) {
        Some(s) => s.nodes().collect(),
        None => {
            let mut is_child = vec![false; doc.nodes().len()];
            for n in doc.nodes() {
                for c in n.children() {
                    is_child[c.index()] = true;
                }
            }
            doc.nodes().filter(|n| !is_child[n.index()]).collect()
        }
    };
    // Iterative traversal. glTF requires the nodes to form disjoint trees; a node reached twice
    // (a cycle, or a hostile DAG such as node 0 -> [1, 1, ...] -> [2, 2, ...] -> mesh that
    // would instance the mesh exponentially often) is an error.
    let mut stack: Vec<(gltf::Node, Mat4)> = roots
        .into_iter()
        .rev()
        .map(|n| (n, Mat4::IDENTITY))
        .collect();
    let mut seen = vec![false; doc.nodes().len()];
    while let Some((node, parent)) = stack.pop() {
        let Some(slot) = seen.get_mut(node.index()) else {
            return Err(inv(format!("node {} does not exist", node.index())));
        };
        if std::mem::replace(slot, true) {
            return Err(inv(format!(
                "node {} appears more than once in the node hierarchy \
                 (glTF requires a tree: a node has at most one parent and no cycles)",
                node.index()
            )));
        }
        let local = match poses.get(node.index()) {
            Some(pose) if pose.is_animated() => pose.local_matrix(&node),
            _ => Mat4::from_cols_array_2d(&node.transform().matrix()),
        };
        let world = parent * local;
        if !world.is_finite() {
            return Err(inv(format!(
                "node {} has a non-finite transform",
                node.index()
            )));
        }
        if let Some(mesh) = node.mesh() {
            b.add_mesh(&node, &mesh, world)?;
        }
        if let Some(cam) = node.camera() {
            b.add_camera(&cam, world);
        }
        if let Some(light) = node.light() {
            b.add_light(&light, world);
        }
        for c in node.children().collect::<Vec<_>>().into_iter().rev() {
            stack.push((c, world));
        }
    }
    // Images decoded ahead that no material took (an unused material's).
    b.predecoded = HashMap::new();
    let scene = b.scene;
    if scene.triangles.is_empty() {
        return Err(inv("the scene has no triangles to render".into()));
    }
    // Every entry point (files, memory, the embedded scene) hands out only valid scenes.
    scene.validate().map_err(inv)?;
    Ok((scene, warnings))
}

/// Decodes the base level of a KTX2 image to RGBA8 (width, height, texels) as the importer does
/// for KHR_texture_basisu: Basis Universal (ETC1S, UASTC) and 8-bit uncompressed formats, with
/// the header checked and the size bounded first. Errors say what is wrong with the file.
pub fn decode_ktx2(bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), String> {
    ktx2::decode(bytes).map(|k| (k.width, k.height, k.texels))
}

/// Decodes an AVIF image to RGBA8 (width, height, texels) as the importer does for
/// EXT_texture_avif, with the container and the size checked first. Errors say what is wrong
/// with the file.
pub fn decode_avif(bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), String> {
    avif::decode(bytes).map(|a| (a.width, a.height, a.rgba8))
}

/// Makes the importer decode AVIF images with `f` instead of in this process (see
/// [`avif::set_isolated_decoder`]; the `rayfarm` binary runs itself as a child process, so
/// that rav1d aborting on corrupt data becomes one error line).
pub fn set_isolated_avif_decoder(f: avif::IsolatedDecoder) {
    avif::set_isolated_decoder(f);
}

/// The time span `[start, end]` in seconds covered by the keyframes of all animations of a
/// `.gltf` or `.glb` file, or None when it has none. See [`animation_span_from_slice`].
pub fn animation_span(path: &Path) -> Result<Option<(f32, f32)>, SceneError> {
    let bytes = crate::read_regular_file(path).map_err(|e| SceneError::io(path, e))?;
    let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    animation_span_from_slice(&bytes, path, &|p: &Path| {
        crate::read_regular_file(&base.join(p))
    })
}

/// The time span of a glTF in memory: the earliest first and the latest last keyframe time
/// over every channel of every animation, morph-target channels included. Keyframe times are
/// checked as when loading with a time (at least one, finite, non-decreasing); output values
/// are not read.
pub fn animation_span_from_slice(
    bytes: &[u8],
    path: &Path,
    read_file: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
) -> Result<Option<(f32, f32)>, SceneError> {
    let mut warnings = Vec::new();
    let parsed = parse(bytes, path, read_file, &mut warnings)?;
    let b = Builder::new(path, &parsed.doc, parsed.buffers, read_file, &mut warnings);
    animation::span(&b)
}

/// The names of the KHR_materials_variants variants of a `.gltf` or `.glb` file, in file order
/// (empty when it has none).
pub fn variants(path: &Path) -> Result<Vec<String>, SceneError> {
    let bytes = crate::read_regular_file(path).map_err(|e| SceneError::io(path, e))?;
    let json: &[u8] = if bytes.starts_with(b"glTF") {
        split_glb(&bytes)
            .map_err(|e| SceneError::invalid(path, format!("not a valid .glb file: {e}")))?
            .0
    } else {
        &bytes
    };
    let raw: serde_json::Value = serde_json::from_slice(json)
        .map_err(|e| SceneError::invalid(path, format!("not valid glTF JSON: {e}")))?;
    variant_names(&raw, path)
}

fn variant_names(raw: &serde_json::Value, path: &Path) -> Result<Vec<String>, SceneError> {
    let Some(list) = raw
        .get("extensions")
        .and_then(|e| e.get("KHR_materials_variants"))
        .map(|v| v.get("variants"))
    else {
        return Ok(Vec::new());
    };
    let bad = || {
        SceneError::invalid(
            path,
            "KHR_materials_variants.variants must be an array of objects with a name",
        )
    };
    let list = list.and_then(|l| l.as_array()).ok_or_else(bad)?;
    list.iter()
        .map(|v| v.get("name").and_then(|n| n.as_str()).map(String::from))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(bad)
}

/// For the variant `name`, the material of every (mesh, primitive) that maps one. An unknown
/// name is an error that lists the file's variants; malformed mappings name their primitive.
fn variant_mappings(
    raw: &serde_json::Value,
    path: &Path,
    name: &str,
) -> Result<HashMap<(usize, usize), usize>, SceneError> {
    let names = variant_names(raw, path)?;
    let Some(variant) = names.iter().position(|n| n == name) else {
        let have = if names.is_empty() {
            "the file has no material variants".to_string()
        } else {
            format!("the file's variants are: {}", names.join(", "))
        };
        return Err(SceneError::invalid(
            path,
            format!("no material variant named '{name}'; {have}"),
        ));
    };
    let materials = raw
        .get("materials")
        .and_then(|m| m.as_array())
        .map_or(0, |m| m.len());
    let mut out = HashMap::new();
    let meshes = raw.get("meshes").and_then(|m| m.as_array());
    for (mi, mesh) in meshes.into_iter().flatten().enumerate() {
        let prims = mesh.get("primitives").and_then(|p| p.as_array());
        for (pi, prim) in prims.into_iter().flatten().enumerate() {
            let Some(ext) = prim
                .get("extensions")
                .and_then(|e| e.get("KHR_materials_variants"))
            else {
                continue;
            };
            let at = format!("mesh {mi} primitive {pi} KHR_materials_variants");
            let bad = |what: String| SceneError::invalid(path, format!("{at}: {what}"));
            let mappings = ext
                .get("mappings")
                .and_then(|m| m.as_array())
                .ok_or_else(|| bad("mappings must be an array".into()))?;
            for (k, m) in mappings.iter().enumerate() {
                let material = m
                    .get("material")
                    .and_then(|v| v.as_u64())
                    .ok_or_else(|| bad(format!("mapping {k} has no material index")))?;
                if material as usize >= materials {
                    return Err(bad(format!(
                        "mapping {k} refers to material {material} but there are {materials} materials"
                    )));
                }
                let vs = m
                    .get("variants")
                    .and_then(|v| v.as_array())
                    .ok_or_else(|| bad(format!("mapping {k} has no variants array")))?;
                for v in vs {
                    let v = v
                        .as_u64()
                        .filter(|&v| (v as usize) < names.len())
                        .ok_or_else(|| {
                            bad(format!(
                                "mapping {k} refers to variant {v} but there are {} variants",
                                names.len()
                            ))
                        })?;
                    if v as usize == variant {
                        out.insert((mi, pi), material as usize);
                    }
                }
            }
        }
    }
    Ok(out)
}

/// A parsed and validated glTF document with its buffers loaded.
struct Parsed {
    doc: gltf::Document,
    buffers: Vec<Vec<u8>>,
    resolution: Option<[u32; 2]>,
    /// The JSON of each material, for the extensions the gltf crate does not parse.
    raw_materials: Vec<serde_json::Value>,
    /// The whole JSON document (for KHR_materials_variants).
    raw: serde_json::Value,
}

fn parse(
    bytes: &[u8],
    path: &Path,
    read_file: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    warnings: &mut Warnings,
) -> Result<Parsed, SceneError> {
    let inv = |what: String| SceneError::invalid(path, what);
    // Split a GLB into JSON and BIN chunks ourselves so that a truncated file gets a plain
    // message (and because `gltf::binary::Glb::from_slice` panics on a header length below 12).
    let (json_bytes, glb_bin): (&[u8], Option<&[u8]>) = if bytes.starts_with(b"glTF") {
        split_glb(bytes).map_err(|e| inv(format!("not a valid .glb file: {e}")))?
    } else {
        (bytes, None)
    };

    let mut raw: serde_json::Value =
        serde_json::from_slice(json_bytes).map_err(|e| inv(format!("not valid glTF JSON: {e}")))?;
    check_extensions(&raw, path, warnings)?;
    let resolution = find_resolution(&raw);
    // EXT_meshopt_compression: compressed views are pointed at buffers of their own, decoded
    // below once the file's buffers are loaded.
    let meshopt = meshopt::plan(&mut raw).map_err(inv)?;
    // KHR_draco_mesh_compression: the same, for the accessors of Draco primitives (after
    // meshopt, whose buffers come first).
    let draco = draco::plan(&mut raw).map_err(inv)?;
    let mut not_loaded = meshopt.not_loaded.clone();
    for b in draco.decoded_buffers() {
        if not_loaded.len() <= b {
            not_loaded.resize(b + 1, false);
        }
        not_loaded[b] = true;
    }

    // `check_extensions` accepted every required extension; the gltf crate would refuse those
    // it does not know itself (it reads none of the ones we read from the JSON).
    let dropped_required = raw
        .as_object_mut()
        .and_then(|o| o.remove("extensionsRequired"))
        .is_some();
    let rewritten = !meshopt.is_empty() || !draco.is_empty();
    let root = if use_extension_sources(&mut raw) || dropped_required || rewritten {
        serde_json::from_value::<gltf::json::Root>(raw.clone())
    } else {
        gltf::json::Root::from_slice(json_bytes)
    }
    .map_err(|e| inv(format!("not valid glTF JSON: {e}")))?;
    prevalidate(&root).map_err(inv)?;
    // The gltf crate's message already starts with "invalid glTF:" and ends with ';'.
    let doc = gltf::Document::from_json(root)
        .map_err(|e| inv(e.to_string().trim_end_matches(';').to_string()))?;

    let mut buffers = load_buffers(&doc, path, glb_bin, read_file, &not_loaded)?;
    meshopt::decode(&meshopt, &mut buffers).map_err(inv)?;
    if !draco.is_empty() {
        let views: Vec<_> = doc
            .views()
            .map(|v| (v.buffer().index(), v.offset(), v.length()))
            .collect();
        draco::decode(&draco, &views, &mut buffers).map_err(inv)?;
    }
    let raw_materials = match raw.get("materials") {
        Some(serde_json::Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    Ok(Parsed {
        doc,
        buffers,
        resolution,
        raw_materials,
        raw,
    })
}

/// EXT_texture_webp, EXT_texture_avif and KHR_texture_basisu: a texture's WebP, AVIF or KTX2
/// image is named in its extension (with or without a PNG or JPEG fallback in `source`). We
/// prefer the extension's image (WebP, then AVIF, then KTX2 when a texture has several) and point
/// `source` at it, so the rest of the importer sees an ordinary texture; [`Builder::image`] tells
/// the formats apart by their bytes.
/// Returns whether anything changed.
fn use_extension_sources(raw: &mut serde_json::Value) -> bool {
    let mut changed = false;
    if let Some(textures) = raw.get_mut("textures").and_then(|t| t.as_array_mut()) {
        for t in textures {
            let ext = |name: &str| {
                t.get("extensions")
                    .and_then(|e| e.get(name))
                    .and_then(|w| w.get("source"))
                    .cloned()
            };
            let preferred = ext("EXT_texture_webp")
                .or_else(|| ext("EXT_texture_avif"))
                .or_else(|| ext("KHR_texture_basisu"));
            if let (Some(src), Some(obj)) = (preferred, t.as_object_mut()) {
                obj.insert("source".into(), src);
                changed = true;
            }
        }
    }
    changed
}

/// Checks what the gltf crate (1.4) would otherwise panic on, in its validation or in accessors
/// it trusts validation to have checked. Found by fuzzing (`fuzz/fuzz_targets/gltf_load.rs`).
fn prevalidate(root: &gltf::json::Root) -> Result<(), String> {
    use gltf::json::validation::Checked;
    // `Document::from_json` indexes `accessors` with the POSITION index unchecked.
    for (m, mesh) in root.meshes.iter().enumerate() {
        for (p, prim) in mesh.primitives.iter().enumerate() {
            let pos = prim
                .attributes
                .get(&Checked::Valid(gltf::json::mesh::Semantic::Positions));
            if let Some(i) = pos {
                if i.value() >= root.accessors.len() {
                    return Err(format!(
                        "mesh {m} primitive {p}: POSITION refers to accessor {} but there are {} accessors",
                        i.value(),
                        root.accessors.len()
                    ));
                }
            }
        }
    }
    // `Camera::projection` unwraps the object named by `type`; validation only checks that one
    // of the two exists.
    for (i, cam) in root.cameras.iter().enumerate() {
        use gltf::json::camera::Type;
        let missing = match cam.type_ {
            Checked::Valid(Type::Perspective) if cam.perspective.is_none() => Some("perspective"),
            Checked::Valid(Type::Orthographic) if cam.orthographic.is_none() => {
                Some("orthographic")
            }
            _ => None,
        };
        if let Some(what) = missing {
            return Err(format!(
                "camera {i} is of type {what} but has no '{what}' object"
            ));
        }
        // Values the spec requires and a camera needs: a field of view of 0, negative or
        // beyond a half turn rendered a black or mirrored image without a word.
        let name = cam
            .name
            .as_deref()
            .map_or(format!("camera {i}"), |n| format!("camera {i} ('{n}')"));
        if let Some(p) = &cam.perspective {
            if !(p.yfov > 0.0 && p.yfov < std::f32::consts::PI) {
                return Err(format!(
                    "{name}: perspective.yfov is {}, but must be above 0 and below pi \
                     (radians)",
                    p.yfov
                ));
            }
            if let Some(a) = p.aspect_ratio {
                if !(a > 0.0 && a.is_finite()) {
                    return Err(format!(
                        "{name}: perspective.aspectRatio is {a}, but must be above 0"
                    ));
                }
            }
        }
        if let Some(o) = &cam.orthographic {
            if !(o.xmag != 0.0 && o.ymag != 0.0 && o.xmag.is_finite() && o.ymag.is_finite()) {
                return Err(format!(
                    "{name}: orthographic.xmag and ymag are {} and {}, but must not be 0",
                    o.xmag, o.ymag
                ));
            }
        }
    }
    // `Image::source` unwraps `mimeType` (for buffer views) or `uri`.
    for (i, img) in root.images.iter().enumerate() {
        if img.buffer_view.is_some() && img.mime_type.is_none() {
            return Err(format!(
                "image {i} is stored in a buffer view but has no mimeType"
            ));
        }
        if img.buffer_view.is_none() && img.uri.is_none() {
            return Err(format!("image {i} has neither a uri nor a bufferView"));
        }
    }
    Ok(())
}

/// Splits a GLB container into its JSON chunk and optional BIN chunk, checking every length
/// against the data actually present. Chunks of unknown type after the first two are skipped,
/// as the specification asks.
fn split_glb(bytes: &[u8]) -> Result<(&[u8], Option<&[u8]>), String> {
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let (Some(version), Some(total)) = (u32_at(4), u32_at(8)) else {
        return Err(format!(
            "the file has {} bytes, fewer than the 12-byte header; is it truncated?",
            bytes.len()
        ));
    };
    if version != 2 {
        return Err(format!(
            "GLB container version {version} is not supported (only version 2)"
        ));
    }
    if total > bytes.len() {
        return Err(format!(
            "the header says the file has {total} bytes but it has only {}; is it truncated?",
            bytes.len()
        ));
    }
    if total < 12 + 8 {
        return Err(format!(
            "the header's total length {total} is too small to hold a JSON chunk"
        ));
    }
    let data = &bytes[..total];
    let mut at = 12;
    let mut json = None;
    let mut bin = None;
    let mut index = 0;
    while at < data.len() {
        let (Some(len), Some(ty)) = (u32_at(at), data.get(at + 4..at + 8)) else {
            return Err(format!(
                "chunk {index} at byte {at} is cut short in its 8-byte header; is the file truncated?"
            ));
        };
        let start = at + 8;
        let chunk = start
            .checked_add(len)
            .and_then(|end| data.get(start..end))
            .ok_or_else(|| {
                format!(
                    "chunk {index} at byte {at} claims {len} bytes but only {} remain; is the file truncated?",
                    data.len() - start
                )
            })?;
        match (index, ty) {
            (0, b"JSON") => json = Some(chunk),
            (0, _) => {
                return Err(format!(
                    "the first chunk must be JSON, not {:?}",
                    String::from_utf8_lossy(ty)
                ))
            }
            (1, b"BIN\0") => bin = Some(chunk),
            (_, b"JSON") | (_, b"BIN\0") => {
                return Err(format!(
                    "chunk {index} is a second {} chunk",
                    String::from_utf8_lossy(ty).trim_end_matches('\0')
                ))
            }
            _ => {} // unknown chunk types are ignored
        }
        // Chunks are 4-byte aligned; a chunk length that is not is tolerated.
        at = start + len;
        at += (4 - at % 4) % 4;
        index += 1;
    }
    let json = json.ok_or_else(|| "there is no JSON chunk; is the file truncated?".to_string())?;
    Ok((json, bin))
}

fn check_extensions(
    raw: &serde_json::Value,
    path: &Path,
    warnings: &mut Warnings,
) -> Result<(), SceneError> {
    let names = |key: &str| -> Vec<String> {
        raw.get(key)
            .and_then(|v| v.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let unsupported = |list: Vec<String>| -> Vec<String> {
        list.into_iter()
            .filter(|e| !SUPPORTED_EXTENSIONS.contains(&e.as_str()))
            .collect()
    };
    let required = unsupported(names("extensionsRequired"));
    if !required.is_empty() {
        return Err(SceneError::invalid(
            path,
            format!(
                "the file requires glTF extension(s) rayfarm does not support: {} (export without them)",
                required.join(", ")
            ),
        ));
    }
    let used = unsupported(names("extensionsUsed"));
    if !used.is_empty() {
        warnings.push(format!(
            "{}: ignoring unsupported glTF extension(s): {}",
            path.display(),
            used.join(", ")
        ));
    }
    Ok(())
}

/// A render resolution stored in the root `extras` (directly or one object deep) as
/// `"resolution": [w, h]`.
fn find_resolution(raw: &serde_json::Value) -> Option<[u32; 2]> {
    let extras = raw.get("extras")?;
    let parse = |v: &serde_json::Value| -> Option<[u32; 2]> {
        let a = v.get("resolution")?.as_array()?;
        let w = a.first()?.as_u64()?;
        let h = a.get(1)?.as_u64()?;
        (w >= 1 && h >= 1 && w <= 65536 && h <= 65536).then_some([w as u32, h as u32])
    };
    parse(extras).or_else(|| extras.as_object()?.values().find_map(parse))
}

fn load_buffers(
    doc: &gltf::Document,
    path: &Path,
    glb_bin: Option<&[u8]>,
    read_file: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    not_loaded: &[bool],
) -> Result<Vec<Vec<u8>>, SceneError> {
    let mut out = Vec::new();
    for buf in doc.buffers() {
        if not_loaded.get(buf.index()) == Some(&true) {
            // An EXT_meshopt_compression fallback buffer, or one that receives decoded data.
            out.push(Vec::new());
            continue;
        }
        let data = match buf.source() {
            gltf::buffer::Source::Bin => glb_bin
                .ok_or_else(|| {
                    SceneError::invalid(
                        path,
                        format!(
                            "buffer {} refers to a missing GLB binary chunk",
                            buf.index()
                        ),
                    )
                })?
                .to_vec(),
            gltf::buffer::Source::Uri(uri) => {
                read_uri(uri, path, read_file, &format!("buffer {}", buf.index()))?
            }
        };
        if data.len() < buf.length() {
            return Err(SceneError::invalid(
                path,
                format!(
                    "buffer {} should hold {} bytes but has only {} (truncated file?)",
                    buf.index(),
                    buf.length(),
                    data.len()
                ),
            ));
        }
        out.push(data);
    }
    Ok(out)
}

fn read_uri(
    uri: &str,
    path: &Path,
    read_file: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    what: &str,
) -> Result<Vec<u8>, SceneError> {
    use base64::Engine;
    if let Some(rest) = uri.strip_prefix("data:") {
        let (_, payload) = rest.split_once(";base64,").ok_or_else(|| {
            SceneError::invalid(path, format!("{what}: only base64 data URIs are supported"))
        })?;
        return base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map_err(|e| SceneError::invalid(path, format!("{what}: bad base64 data URI: {e}")));
    }
    let decoded = percent_encoding::percent_decode_str(uri)
        .decode_utf8()
        .map_err(|_| {
            SceneError::invalid(path, format!("{what}: URI '{uri}' is not valid UTF-8"))
        })?;
    let rel = PathBuf::from(decoded.as_ref());
    read_file(&rel).map_err(|e| {
        let full = path.parent().unwrap_or(Path::new("")).join(&rel);
        SceneError::invalid(
            path,
            format!("{what}: cannot read '{}': {e}", full.display()),
        )
    })
}

/// An image decoded to 8-bit RGBA.
pub(crate) struct DecodedImage {
    pub width: u32,
    pub height: u32,
    pub rgba8: Vec<u8>,
}

/// The most bytes one texture may take decoded, as RGBA8 (16384 x 16384 texels): a 0.5 MB PNG
/// of 23170 x 23170 grey texels asked for 2 GiB, and an allocation that fails aborts.
pub const MAX_TEXTURE_BYTES: u64 = 1 << 30;
/// The least budget for the bytes a scene's textures take decoded, together
/// ([`crate::default_texture_memory`]).
pub const MAX_SCENE_TEXTURE_BYTES: u64 = 16 << 30;

/// Why a texture of `width` x `height` texels is too large to decode, if it is.
fn texture_size_problem(width: u32, height: u32) -> Option<String> {
    let bytes = u64::from(width) * u64::from(height) * 4;
    (bytes > MAX_TEXTURE_BYTES).then(|| {
        format!(
            "{width}x{height} texels take {} MiB decoded, more than a texture may ({} MiB, \
             16384 x 16384); scale it down",
            bytes >> 20,
            MAX_TEXTURE_BYTES >> 20
        )
    })
}

/// The bytes an image takes decoded as RGBA8, from its header (`None` where the header cannot
/// be read this way: KTX2, AVIF, or a broken file).
fn decoded_bytes(bytes: &[u8]) -> Option<u64> {
    let (w, h) = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()?
        .into_dimensions()
        .ok()?;
    Some(u64::from(w) * u64::from(h) * 4)
}

/// Decodes an image file's bytes (PNG, JPEG, ... through `image`; KTX2 and AVIF by this crate)
/// to RGBA8; the error says why it cannot be. Images larger than [`MAX_TEXTURE_BYTES`] are
/// refused from their headers, before their texels are allocated.
pub(crate) fn decode_image(bytes: &[u8]) -> Result<DecodedImage, String> {
    let (width, height, rgba8) = if ktx2::is_ktx2(bytes) {
        // KHR_texture_basisu (or any KTX2 image): transcoded to RGBA8 here, once.
        let k = ktx2::decode(bytes).map_err(|e| format!("cannot decode KTX2: {e}"))?;
        (k.width, k.height, k.texels)
    } else if avif::is_avif(bytes) {
        // EXT_texture_avif (or any AVIF image): decoded to RGBA8 here, once.
        let a = avif::decode_for_import(bytes).map_err(|e| format!("cannot decode AVIF: {e}"))?;
        (a.width, a.height, a.rgba8)
    } else if let Some(png) = decode_png_rgba8(bytes) {
        return png;
    } else {
        let dims = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .ok()
            .and_then(|r| r.into_dimensions().ok());
        if let Some(problem) = dims.and_then(|(w, h)| texture_size_problem(w, h)) {
            return Err(format!("cannot decode: {problem}"));
        }
        let decoded = image::load_from_memory(bytes)
            .map_err(|e| format!("cannot decode: {e}"))?
            .into_rgba8();
        let (width, height) = decoded.dimensions();
        (width, height, decoded.into_raw())
    };
    Ok(DecodedImage {
        width,
        height,
        rgba8,
    })
}

/// The most bytes a PNG's decoded pixels may take in the file's own layout (so at most four
/// times that as RGBA8): the `image` crate's default allocation limit, which it applies the
/// same way and under which other formats decode.
const PNG_MAX_BYTES: usize = 512 << 20;

/// An 8-bit PNG decoded straight into RGBA8: the `png` crate expands palettes and low bit
/// depths while unfiltering rows, into the end of the RGBA buffer, and the texels are widened
/// to RGBA in place, where `image`'s `into_rgba8` took a second buffer and a slow generic
/// conversion (a seventh of a textured scene's start-up). The texels are
/// exactly those of `image::load_from_memory(..).into_rgba8()` (tested). `None` for what this
/// path does not take (not a PNG, 16 bits per channel, animated): the caller decodes it with
/// `image`.
fn decode_png_rgba8(bytes: &[u8]) -> Option<Result<DecodedImage, String>> {
    const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    if !bytes.starts_with(&SIGNATURE) {
        return None;
    }
    let limits = png::Limits {
        bytes: PNG_MAX_BYTES,
    };
    let mut decoder = png::Decoder::new_with_limits(std::io::Cursor::new(bytes), limits);
    // Not `ALPHA` as well: the crate adds alpha with a copy call per texel, four times slower
    // than widening the texels here.
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = match decoder.read_info() {
        Ok(r) => r,
        Err(e) => return Some(Err(format!("cannot decode PNG: {e}"))),
    };
    if reader.info().is_animated() {
        return None;
    }
    let (colour, depth) = reader.output_color_type();
    if depth != png::BitDepth::Eight {
        return None;
    }
    let channels = match colour {
        png::ColorType::Rgba => 4,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Grayscale => 1,
        png::ColorType::Indexed => return None,
    };
    let (width, height) = {
        let info = reader.info();
        (info.width, info.height)
    };
    if let Some(problem) = texture_size_problem(width, height) {
        return Some(Err(format!("cannot decode PNG: {problem}")));
    }
    let texels = (width as usize).checked_mul(height as usize);
    let decoded = texels.and_then(|t| t.checked_mul(channels));
    let (Some(texels), Some(rgba_len)) = (
        texels.filter(|_| decoded.is_some_and(|n| n <= PNG_MAX_BYTES)),
        texels.and_then(|t| t.checked_mul(4)),
    ) else {
        return Some(Err(format!(
            "cannot decode PNG: {width}x{height} texels need more than the {} MiB an image may take",
            PNG_MAX_BYTES >> 20
        )));
    };
    // Decoded at the end of the RGBA buffer and widened in place, front to back, a block of
    // texels at a time through a small copy: block b's source starts at `start + b * n *
    // channels`, at or after where its widened texels end up, and the blocks before it were
    // read already.
    let mut out = vec![0u8; rgba_len];
    // `texels * channels` fits: it is `decoded`, checked above.
    let start = rgba_len - texels * channels;
    if let Err(e) = reader.next_frame(&mut out[start..]) {
        return Some(Err(format!("cannot decode PNG: {e}")));
    }
    if channels != 4 {
        const BLOCK: usize = 1024;
        let mut block = [0u8; BLOCK * 3];
        let mut first = 0;
        while first < texels {
            let n = BLOCK.min(texels - first);
            let src = &mut block[..n * channels];
            src.copy_from_slice(&out[start + first * channels..][..n * channels]);
            let dst = &mut out[4 * first..][..4 * n];
            match channels {
                1 => dst.chunks_exact_mut(4).zip(src.iter()).for_each(|(d, &g)| {
                    d.copy_from_slice(&[g, g, g, 255]);
                }),
                2 => dst
                    .chunks_exact_mut(4)
                    .zip(src.chunks_exact(2))
                    .for_each(|(d, s)| d.copy_from_slice(&[s[0], s[0], s[0], s[1]])),
                _ => dst
                    .chunks_exact_mut(4)
                    .zip(src.chunks_exact(3))
                    .for_each(|(d, s)| d.copy_from_slice(&[s[0], s[1], s[2], 255])),
            }
            first += n;
        }
    }
    Some(Ok(DecodedImage {
        width,
        height,
        rgba8: out,
    }))
}

struct Builder<'a> {
    path: &'a Path,
    doc: &'a gltf::Document,
    buffers: Vec<Vec<u8>>,
    scene: CompiledScene,
    warnings: &'a mut Warnings,
    /// glTF texture index (and colour-space-independent) -> compiled texture index.
    texture_map: HashMap<usize, u32>,
    image_map: HashMap<usize, u32>,
    /// Image file URI -> compiled image index: images naming the same file share its texels.
    uri_map: HashMap<String, u32>,
    /// Bytes the compiled images take so far (at most `texture_budget`).
    texture_bytes: u64,
    /// The most bytes the compiled images may take ([`LoadOptions::texture_memory`]).
    texture_budget: u64,
    /// Image file URI -> the glTF image whose decode ahead stands for it.
    predecoded_uri: HashMap<String, usize>,
    /// Images decoded ahead, in parallel ([`Builder::predecode_images`]): glTF image index ->
    /// (name, decoded or the reason it could not be).
    predecoded: HashMap<usize, (String, Result<DecodedImage, String>)>,
    /// glTF material index (None = default material) -> compiled material index.
    material_map: HashMap<Option<usize>, u32>,
    read_file: &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    need_tangents: bool,
    mesh_names: HashMap<String, u32>,
    /// The JSON of each material (see [`Parsed::raw_materials`]).
    raw_materials: Vec<serde_json::Value>,
    /// (mesh, primitive) -> material of the chosen KHR_materials_variants variant.
    variant_materials: HashMap<(usize, usize), usize>,
}

impl<'a> Builder<'a> {
    fn new(
        path: &'a Path,
        doc: &'a gltf::Document,
        buffers: Vec<Vec<u8>>,
        read_file: &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
        warnings: &'a mut Warnings,
    ) -> Self {
        Builder {
            path,
            doc,
            buffers,
            scene: CompiledScene::default(),
            warnings,
            texture_map: HashMap::new(),
            image_map: HashMap::new(),
            uri_map: HashMap::new(),
            texture_bytes: 0,
            texture_budget: crate::default_texture_memory(),
            predecoded_uri: HashMap::new(),
            predecoded: HashMap::new(),
            material_map: HashMap::new(),
            read_file,
            need_tangents: false,
            mesh_names: HashMap::new(),
            raw_materials: Vec::new(),
            variant_materials: HashMap::new(),
        }
    }

    fn err(&self, what: String) -> SceneError {
        SceneError::invalid(self.path, what)
    }

    fn unique_name(&mut self, base: String) -> String {
        let n = self.mesh_names.entry(base.clone()).or_insert(0);
        *n += 1;
        if *n == 1 {
            base
        } else {
            format!("{base}.{:03}", *n - 1)
        }
    }

    fn add_mesh(
        &mut self,
        node: &gltf::Node,
        mesh: &gltf::Mesh,
        world: Mat4,
    ) -> Result<(), SceneError> {
        let name = node
            .name()
            .or(mesh.name())
            .map(String::from)
            .unwrap_or_else(|| format!("mesh{}", mesh.index()));
        let name = self.unique_name(name);
        let first_triangle = self.scene.triangles.len() as u32;
        let normal_matrix = Mat3::from_mat4(world).inverse().transpose();
        let flip = Mat3::from_mat4(world).determinant() < 0.0;
        let mut has_uv = [false; 2];
        for prim in mesh.primitives() {
            let ctx = format!("mesh '{}' primitive {}", name, prim.index());
            let mode = prim.mode();
            use gltf::mesh::Mode;
            if !matches!(
                mode,
                Mode::Triangles | Mode::TriangleStrip | Mode::TriangleFan
            ) {
                self.warnings.push(format!(
                    "{}: {ctx}: skipping {:?} primitive (only triangles are rendered)",
                    self.path.display(),
                    mode
                ));
                continue;
            }
            let pos_acc = prim
                .get(&gltf::Semantic::Positions)
                .ok_or_else(|| self.err(format!("{ctx} has no POSITION attribute")))?;
            let positions: Vec<Vec3> = self
                .read_floats::<3>(&pos_acc, &ctx)?
                .into_iter()
                .map(|p| world.transform_point3(Vec3::from(p)))
                .collect();
            let n = positions.len();
            let read_attr =
                |b: &Self, sem: gltf::Semantic| -> Result<Option<Vec<[f32; 4]>>, SceneError> {
                    match prim.get(&sem) {
                        None => Ok(None),
                        Some(acc) => {
                            let v = b.read_floats::<4>(&acc, &ctx)?;
                            if v.len() != n {
                                return Err(b.err(format!(
                                    "{ctx}: attribute {sem:?} has {} elements but POSITION has {n}",
                                    v.len()
                                )));
                            }
                            Ok(Some(v))
                        }
                    }
                };
            let normals = read_attr(self, gltf::Semantic::Normals)?;
            let tangents = read_attr(self, gltf::Semantic::Tangents)?;
            let uv0 = read_attr(self, gltf::Semantic::TexCoords(0))?;
            let uv1 = read_attr(self, gltf::Semantic::TexCoords(1))?;
            has_uv[0] |= uv0.is_some();
            has_uv[1] |= uv1.is_some();

            let indices: Vec<u32> = match prim.indices() {
                Some(acc) => self.read_indices(&acc, &ctx)?,
                None => (0..n as u32).collect(),
            };
            if let Some(&bad) = indices.iter().find(|&&i| i as usize >= n) {
                return Err(self.err(format!(
                    "{ctx}: index {bad} is out of range (the primitive has {n} vertices)"
                )));
            }
            let mut tris: Vec<[u32; 3]> = match mode {
                Mode::Triangles => indices
                    .chunks_exact(3)
                    .map(|c| [c[0], c[1], c[2]])
                    .collect(),
                Mode::TriangleStrip => (2..indices.len())
                    .map(|i| {
                        if i % 2 == 0 {
                            [indices[i - 2], indices[i - 1], indices[i]]
                        } else {
                            [indices[i - 1], indices[i - 2], indices[i]]
                        }
                    })
                    .collect(),
                _ => (2..indices.len())
                    .map(|i| [indices[i - 1], indices[i], indices[0]])
                    .collect(),
            };
            if flip {
                for t in &mut tris {
                    t.swap(1, 2);
                }
            }

            let material = self
                .variant_materials
                .get(&(mesh.index(), prim.index()))
                .copied()
                .or(prim.material().index());
            let mat_index = self.material(material)?;
            let material = &self.scene.materials[mat_index as usize];
            let wants_tangents = material.needs_tangents();

            // Without normals glTF asks for flat shading: give every triangle its own vertices.
            let (mut positions, mut normals, tangents, mut uv0, mut uv1, mut tris) = if normals
                .is_none()
            {
                let mut p2 = Vec::with_capacity(tris.len() * 3);
                let mut n2 = Vec::with_capacity(tris.len() * 3);
                let dup = |v: &Option<Vec<[f32; 4]>>| {
                    v.as_ref().map(|_| Vec::with_capacity(tris.len() * 3))
                };
                let (mut t2, mut a2, mut b2) = (dup(&tangents), dup(&uv0), dup(&uv1));
                let mut tris2 = Vec::with_capacity(tris.len());
                for t in &tris {
                    let [a, b, c] = t.map(|i| positions[i as usize]);
                    let fnrm = (b - a).cross(c - a).normalize_or(Vec3::Y);
                    let base = p2.len() as u32;
                    for &i in t {
                        p2.push(positions[i as usize]);
                        n2.push(fnrm);
                        for (dst, src) in [(&mut t2, &tangents), (&mut a2, &uv0), (&mut b2, &uv1)] {
                            if let (Some(d), Some(s)) = (dst.as_mut(), src.as_ref()) {
                                d.push(s[i as usize]);
                            }
                        }
                    }
                    tris2.push([base, base + 1, base + 2]);
                }
                (p2, n2, t2, a2, b2, tris2)
            } else {
                let nrm: Vec<Vec3> = normals
                    .unwrap_or_default()
                    .into_iter()
                    .map(|v| {
                        let v = normal_matrix * Vec3::new(v[0], v[1], v[2]);
                        v.normalize_or(Vec3::Y)
                    })
                    .collect();
                (positions, nrm, tangents, uv0, uv1, tris)
            };

            let base = self.scene.positions.len();
            if base + positions.len() > u32::MAX as usize / 2 {
                return Err(self.err("too many vertices (more than 2^31)".into()));
            }
            let tangents_world: Option<Vec<[f32; 4]>> = match tangents {
                Some(t) => Some(
                    t.iter()
                        .zip(&normals)
                        .map(|(t, n)| {
                            let v = Mat3::from_mat4(world) * Vec3::new(t[0], t[1], t[2]);
                            let v = (v - *n * n.dot(v)).normalize_or(n.any_orthonormal_vector());
                            let w = if t[3] < 0.0 { -1.0 } else { 1.0 };
                            [v.x, v.y, v.z, if flip { -w } else { w }]
                        })
                        .collect(),
                ),
                None if wants_tangents => {
                    self.need_tangents = true;
                    let normal_map = material
                        .normal_texture
                        .or(material.clearcoat_normal_texture)
                        .or(material.anisotropy_texture);
                    let corners = uv_for_tangents(&normal_map, &uv0, &uv1)
                        .map(|uv| mikktspace_corner_tangents(&positions, &normals, uv, &tris));
                    corners.map(|corners| {
                        let (tangents, copies) =
                            split_vertices_by_tangent(positions.len(), &mut tris, &corners);
                        // A vertex whose corners got different tangents is split: each copy
                        // repeats the original's every other attribute.
                        for &src in &copies {
                            let src = src as usize;
                            positions.push(positions[src]);
                            normals.push(normals[src]);
                            for uv in [&mut uv0, &mut uv1].into_iter().flatten() {
                                uv.push(uv[src]);
                            }
                        }
                        tangents
                    })
                }
                None => None,
            };
            self.push_vertices(&positions, &normals, tangents_world, uv0, uv1);
            for t in tris {
                self.scene.triangles.push(t.map(|i| i + base as u32));
                self.scene.triangle_materials.push(mat_index);
            }
        }
        let triangle_count = self.scene.triangles.len() as u32 - first_triangle;
        if triangle_count > 0 {
            self.scene.meshes.push(Mesh {
                name,
                first_triangle,
                triangle_count,
                has_uv,
            });
        }
        Ok(())
    }

    /// Appends vertices, keeping every optional array either empty or as long as `positions`.
    fn push_vertices(
        &mut self,
        positions: &[Vec3],
        normals: &[Vec3],
        tangents: Option<Vec<[f32; 4]>>,
        uv0: Option<Vec<[f32; 4]>>,
        uv1: Option<Vec<[f32; 4]>>,
    ) {
        let s = &mut self.scene;
        let old = s.positions.len();
        s.positions.extend(positions.iter().map(|p| p.to_array()));
        s.normals.extend(normals.iter().map(|n| n.to_array()));
        fn extend<const N: usize, T: Copy>(
            dst: &mut Vec<[f32; N]>,
            src: Option<Vec<T>>,
            old: usize,
            count: usize,
            conv: impl Fn(T) -> [f32; N],
        ) {
            match src {
                Some(v) => {
                    if dst.len() < old {
                        dst.resize(old, [0.0; N]);
                    }
                    dst.extend(v.into_iter().map(conv));
                }
                None => {
                    if !dst.is_empty() {
                        dst.resize(old + count, [0.0; N]);
                    }
                }
            }
        }
        let count = positions.len();
        extend(&mut s.tangents, tangents, old, count, |t| t);
        extend(&mut s.uv0, uv0, old, count, |t| [t[0], t[1]]);
        extend(&mut s.uv1, uv1, old, count, |t| [t[0], t[1]]);
    }

    fn add_camera(&mut self, cam: &gltf::Camera, world: Mat4) {
        let projection = match cam.projection() {
            gltf::camera::Projection::Perspective(p) => Projection::Perspective {
                yfov: p.yfov(),
                aspect: p.aspect_ratio(),
            },
            gltf::camera::Projection::Orthographic(o) => Projection::Orthographic {
                xmag: o.xmag(),
                ymag: o.ymag(),
            },
        };
        let position = world.transform_point3(Vec3::ZERO);
        let forward = world.transform_vector3(-Vec3::Z).normalize_or(-Vec3::Z);
        let up0 = world.transform_vector3(Vec3::Y);
        let right = forward.cross(up0).normalize_or(Vec3::X);
        let up = right.cross(forward);
        self.scene.cameras.push(Camera {
            name: cam
                .name()
                .map(String::from)
                .unwrap_or_else(|| format!("camera{}", cam.index())),
            projection,
            position: position.to_array(),
            right: right.to_array(),
            up: up.to_array(),
            forward: forward.to_array(),
        });
    }

    fn add_light(&mut self, light: &gltf::khr_lights_punctual::Light, world: Mat4) {
        use gltf::khr_lights_punctual::Kind;
        let kind = match light.kind() {
            Kind::Point => LightKind::Point,
            Kind::Directional => LightKind::Directional,
            Kind::Spot {
                inner_cone_angle,
                outer_cone_angle,
            } => LightKind::Spot {
                inner_cone: inner_cone_angle,
                outer_cone: outer_cone_angle,
            },
        };
        let dir = world.transform_vector3(-Vec3::Z).normalize_or(-Vec3::Z);
        self.scene.lights.push(Light {
            name: light
                .name()
                .map(String::from)
                .unwrap_or_else(|| format!("light{}", light.index())),
            kind,
            color: light.color(),
            intensity: light.intensity(),
            position: world.transform_point3(Vec3::ZERO).to_array(),
            direction: dir.to_array(),
        });
    }

    fn material(&mut self, index: Option<usize>) -> Result<u32, SceneError> {
        if let Some(&m) = self.material_map.get(&index) {
            return Ok(m);
        }
        let mat = match index {
            None => Material {
                name: "default".into(),
                ..Default::default()
            },
            Some(i) => {
                let m = self
                    .doc
                    .materials()
                    .nth(i)
                    .ok_or_else(|| self.err(format!("material {i} does not exist")))?;
                self.convert_material(&m)?
            }
        };
        let id = self.scene.materials.len() as u32;
        self.scene.materials.push(mat);
        self.material_map.insert(index, id);
        Ok(id)
    }

    fn convert_material(&mut self, m: &gltf::Material) -> Result<Material, SceneError> {
        let pbr = m.pbr_metallic_roughness();
        let name = m
            .name()
            .map(String::from)
            .unwrap_or_else(|| format!("material{}", m.index().unwrap_or(0)));
        let mut out = Material {
            name,
            base_color: pbr.base_color_factor(),
            metallic: pbr.metallic_factor(),
            roughness: pbr.roughness_factor(),
            ..Default::default()
        };
        out.base_color_texture = self.tex_info(pbr.base_color_texture())?;
        out.metallic_roughness_texture = self.tex_info(pbr.metallic_roughness_texture())?;
        if let Some(nt) = m.normal_texture() {
            out.normal_scale = nt.scale();
            out.normal_texture = Some(self.tex_ref(&nt.texture(), nt.tex_coord(), None)?);
        }
        let strength = m.emissive_strength().unwrap_or(1.0);
        out.emissive = m.emissive_factor().map(|c| c * strength);
        out.emissive_texture = self.tex_info(m.emissive_texture())?;
        if let Some(s) = m.specular() {
            out.specular = s.specular_factor();
            out.specular_texture = self.tex_info(s.specular_texture())?;
            out.specular_color = s.specular_color_factor();
            out.specular_color_texture = self.tex_info(s.specular_color_texture())?;
        }
        if let Some(t) = m.transmission() {
            out.transmission = t.transmission_factor();
            out.transmission_texture = self.tex_info(t.transmission_texture())?;
        }
        if let Some(ior) = m.ior() {
            out.ior = ior;
        }
        if let Some(i) = m.index() {
            self.layer_extensions(i, &mut out)?;
        }
        if m.unlit() {
            // KHR_materials_unlit (e.g. a baked map): the surface shows its base colour as is,
            // lit or not. In a path tracer that is emission of the base colour from a black
            // surface, which reflects nothing.
            let [r, g, b, a] = out.base_color;
            out.emissive = [r, g, b];
            out.emissive_texture = out.base_color_texture;
            out.base_color = [0.0, 0.0, 0.0, a];
            out.metallic = 0.0;
            out.specular = 0.0;
            out.transmission = 0.0;
            out.sheen_color = [0.0; 3];
            out.clearcoat = 0.0;
        }
        out.alpha_mode = match m.alpha_mode() {
            gltf::material::AlphaMode::Opaque => AlphaMode::Opaque,
            gltf::material::AlphaMode::Mask => AlphaMode::Mask,
            gltf::material::AlphaMode::Blend => AlphaMode::Blend,
        };
        out.alpha_cutoff = m.alpha_cutoff().unwrap_or(0.5);
        out.double_sided = m.double_sided();
        Ok(out)
    }

    /// Reads KHR_materials_sheen, KHR_materials_clearcoat and KHR_materials_volume from material
    /// `index`'s JSON.
    /// Values outside their range in the specification are errors naming the material and field.
    fn layer_extensions(&mut self, index: usize, out: &mut Material) -> Result<(), SceneError> {
        let Some(ext) = self
            .raw_materials
            .get(index)
            .and_then(|m| m.get("extensions"))
            .cloned()
        else {
            return Ok(());
        };
        let name = out.name.clone();
        if let Some(sheen) = ext.get("KHR_materials_sheen") {
            let at =
                |field: &str| format!("material {index} ('{name}') KHR_materials_sheen.{field}");
            if let Some(v) = sheen.get("sheenColorFactor") {
                out.sheen_color = unit_floats::<3>(v).ok_or_else(|| {
                    self.err(format!(
                        "{} must be 3 numbers in [0, 1], not {v}",
                        at("sheenColorFactor")
                    ))
                })?;
            }
            if let Some(v) = sheen.get("sheenRoughnessFactor") {
                out.sheen_roughness = unit_floats::<1>(v).map(|[x]| x).ok_or_else(|| {
                    self.err(format!(
                        "{} must be a number in [0, 1], not {v}",
                        at("sheenRoughnessFactor")
                    ))
                })?;
            }
            out.sheen_color_texture =
                self.json_tex_info(sheen.get("sheenColorTexture"), &at("sheenColorTexture"))?;
            out.sheen_roughness_texture = self.json_tex_info(
                sheen.get("sheenRoughnessTexture"),
                &at("sheenRoughnessTexture"),
            )?;
        }
        if let Some(coat) = ext.get("KHR_materials_clearcoat") {
            let at = |field: &str| {
                format!("material {index} ('{name}') KHR_materials_clearcoat.{field}")
            };
            for (field, slot) in [
                ("clearcoatFactor", &mut out.clearcoat),
                ("clearcoatRoughnessFactor", &mut out.clearcoat_roughness),
            ] {
                if let Some(v) = coat.get(field) {
                    *slot = unit_floats::<1>(v).map(|[x]| x).ok_or_else(|| {
                        self.err(format!("{} must be a number in [0, 1], not {v}", at(field)))
                    })?;
                }
            }
            out.clearcoat_texture =
                self.json_tex_info(coat.get("clearcoatTexture"), &at("clearcoatTexture"))?;
            out.clearcoat_roughness_texture = self.json_tex_info(
                coat.get("clearcoatRoughnessTexture"),
                &at("clearcoatRoughnessTexture"),
            )?;
            let normal = coat.get("clearcoatNormalTexture");
            out.clearcoat_normal_texture =
                self.json_tex_info(normal, &at("clearcoatNormalTexture"))?;
            if let Some(v) = normal.and_then(|n| n.get("scale")) {
                out.clearcoat_normal_scale = v
                    .as_f64()
                    .map(|x| x as f32)
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| {
                        self.err(format!(
                            "{} must be a number, not {v}",
                            at("clearcoatNormalTexture.scale")
                        ))
                    })?;
            }
        }
        if let Some(ir) = ext.get("KHR_materials_iridescence") {
            let at = |field: &str| {
                format!("material {index} ('{name}') KHR_materials_iridescence.{field}")
            };
            if let Some(v) = ir.get("iridescenceFactor") {
                out.iridescence = self.json_number(v, &at("iridescenceFactor"), NumRange::Unit)?;
            }
            if let Some(v) = ir.get("iridescenceIor") {
                out.iridescence_ior =
                    self.json_number(v, &at("iridescenceIor"), NumRange::AtLeastOne)?;
            }
            if let Some(v) = ir.get("iridescenceThicknessMinimum") {
                out.iridescence_thickness_min =
                    self.json_number(v, &at("iridescenceThicknessMinimum"), NumRange::NonNegative)?;
            }
            if let Some(v) = ir.get("iridescenceThicknessMaximum") {
                out.iridescence_thickness_max =
                    self.json_number(v, &at("iridescenceThicknessMaximum"), NumRange::NonNegative)?;
            }
            out.iridescence_texture =
                self.json_tex_info(ir.get("iridescenceTexture"), &at("iridescenceTexture"))?;
            out.iridescence_thickness_texture = self.json_tex_info(
                ir.get("iridescenceThicknessTexture"),
                &at("iridescenceThicknessTexture"),
            )?;
        }
        if let Some(an) = ext.get("KHR_materials_anisotropy") {
            let at = |field: &str| {
                format!("material {index} ('{name}') KHR_materials_anisotropy.{field}")
            };
            if let Some(v) = an.get("anisotropyStrength") {
                out.anisotropy_strength =
                    self.json_number(v, &at("anisotropyStrength"), NumRange::Unit)?;
            }
            if let Some(v) = an.get("anisotropyRotation") {
                out.anisotropy_rotation =
                    self.json_number(v, &at("anisotropyRotation"), NumRange::Any)?;
            }
            out.anisotropy_texture =
                self.json_tex_info(an.get("anisotropyTexture"), &at("anisotropyTexture"))?;
        }
        if let Some(d) = ext.get("KHR_materials_dispersion") {
            let at = |field: &str| {
                format!("material {index} ('{name}') KHR_materials_dispersion.{field}")
            };
            if let Some(v) = d.get("dispersion") {
                out.dispersion = self.json_number(v, &at("dispersion"), NumRange::NonNegative)?;
            }
        }
        if let Some(dt) = ext.get("KHR_materials_diffuse_transmission") {
            let at = |field: &str| {
                format!("material {index} ('{name}') KHR_materials_diffuse_transmission.{field}")
            };
            if let Some(v) = dt.get("diffuseTransmissionFactor") {
                out.diffuse_transmission =
                    self.json_number(v, &at("diffuseTransmissionFactor"), NumRange::Unit)?;
            }
            if let Some(v) = dt.get("diffuseTransmissionColorFactor") {
                out.diffuse_transmission_color = unit_floats::<3>(v).ok_or_else(|| {
                    self.err(format!(
                        "{} must be 3 numbers in [0, 1], not {v}",
                        at("diffuseTransmissionColorFactor")
                    ))
                })?;
            }
            out.diffuse_transmission_texture = self.json_tex_info(
                dt.get("diffuseTransmissionTexture"),
                &at("diffuseTransmissionTexture"),
            )?;
            out.diffuse_transmission_color_texture = self.json_tex_info(
                dt.get("diffuseTransmissionColorTexture"),
                &at("diffuseTransmissionColorTexture"),
            )?;
        }
        if let Some(vol) = ext.get("KHR_materials_volume") {
            let at =
                |field: &str| format!("material {index} ('{name}') KHR_materials_volume.{field}");
            if let Some(v) = vol.get("thicknessFactor") {
                out.thickness = finite_floats::<1>(v)
                    .map(|[x]| x)
                    .filter(|x| *x >= 0.0)
                    .ok_or_else(|| {
                        self.err(format!(
                            "{} must be a number of at least 0, not {v}",
                            at("thicknessFactor")
                        ))
                    })?;
            }
            if let Some(v) = vol.get("attenuationColor") {
                out.attenuation_color = unit_floats::<3>(v).ok_or_else(|| {
                    self.err(format!(
                        "{} must be 3 numbers in [0, 1], not {v}",
                        at("attenuationColor")
                    ))
                })?;
            }
            if let Some(v) = vol.get("attenuationDistance") {
                out.attenuation_distance = finite_floats::<1>(v)
                    .map(|[x]| x)
                    .filter(|x| *x > 0.0)
                    .ok_or_else(|| {
                        self.err(format!(
                            "{} must be a positive number, not {v}",
                            at("attenuationDistance")
                        ))
                    })?;
            }
        }
        Ok(())
    }

    /// One number of an extension's JSON, checked against the range its specification gives;
    /// the error names the material and field (`at`) and the allowed range.
    fn json_number(
        &self,
        v: &serde_json::Value,
        at: &str,
        range: NumRange,
    ) -> Result<f32, SceneError> {
        let x = finite_floats::<1>(v).map(|[x]| x);
        let (ok, what) = match range {
            NumRange::Unit => (x.is_some_and(|x| (0.0..=1.0).contains(&x)), "in [0, 1]"),
            NumRange::NonNegative => (x.is_some_and(|x| x >= 0.0), "of at least 0"),
            NumRange::AtLeastOne => (x.is_some_and(|x| x >= 1.0), "of at least 1"),
            NumRange::Any => (x.is_some(), "(finite)"),
        };
        match x {
            Some(x) if ok => Ok(x),
            _ => Err(self.err(format!("{at} must be a number {what}, not {v}"))),
        }
    }

    /// A textureInfo object read from JSON (`index`, `texCoord`, KHR_texture_transform).
    fn json_tex_info(
        &mut self,
        info: Option<&serde_json::Value>,
        at: &str,
    ) -> Result<Option<TextureRef>, SceneError> {
        let Some(info) = info else { return Ok(None) };
        let index = info
            .get("index")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| self.err(format!("{at} has no texture index")))?;
        let count = self.doc.textures().len();
        let tex = usize::try_from(index)
            .ok()
            .and_then(|i| self.doc.textures().nth(i))
            .ok_or_else(|| {
                self.err(format!(
                    "{at} refers to texture {index} but there are {count} textures"
                ))
            })?;
        let tex_coord = match info.get("texCoord") {
            None => 0,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| {
                    self.err(format!(
                        "{at}.texCoord must be a non-negative integer, not {v}"
                    ))
                })?
                .min(255) as u32,
        };
        let mut r = self.tex_ref(&tex, tex_coord, None)?;
        if let Some(t) = info
            .get("extensions")
            .and_then(|e| e.get("KHR_texture_transform"))
        {
            let bad = || self.err(format!("{at}: KHR_texture_transform has a malformed field"));
            let pair = |key: &str, default: [f32; 2]| -> Option<[f32; 2]> {
                match t.get(key) {
                    None => Some(default),
                    Some(v) => finite_floats::<2>(v),
                }
            };
            let offset = pair("offset", [0.0, 0.0]).ok_or_else(bad)?;
            let scale = pair("scale", [1.0, 1.0]).ok_or_else(bad)?;
            let rotation = match t.get("rotation") {
                None => 0.0,
                Some(v) => finite_floats::<1>(v).ok_or_else(bad)?[0],
            };
            r.transform = texture_transform_matrix(offset, rotation, scale);
            match t.get("texCoord").and_then(|v| v.as_u64()) {
                Some(tc @ 0..=1) => r.uv_set = tc as u8,
                Some(tc) => self.warnings.push(format!(
                    "{}: {at} uses TEXCOORD_{tc}; only TEXCOORD_0 and TEXCOORD_1 are supported, using TEXCOORD_{}",
                    self.path.display(),
                    r.uv_set
                )),
                None => {}
            }
        }
        Ok(Some(r))
    }

    fn tex_info(
        &mut self,
        info: Option<gltf::texture::Info>,
    ) -> Result<Option<TextureRef>, SceneError> {
        let Some(info) = info else { return Ok(None) };
        let transform = info.texture_transform();
        Ok(Some(self.tex_ref(
            &info.texture(),
            info.tex_coord(),
            transform,
        )?))
    }

    fn tex_ref(
        &mut self,
        tex: &gltf::Texture,
        tex_coord: u32,
        transform: Option<gltf::texture::TextureTransform>,
    ) -> Result<TextureRef, SceneError> {
        let id = self.texture(tex)?;
        let mut r = TextureRef::new(id, tex_coord.min(255) as u8);
        if let Some(t) = transform {
            if let Some(tc) = t.tex_coord() {
                r.uv_set = tc.min(255) as u8;
            }
            r.transform = texture_transform_matrix(t.offset(), t.rotation(), t.scale());
        }
        if r.uv_set > 1 {
            self.warnings.push(format!(
                "{}: texture {} uses TEXCOORD_{}; only TEXCOORD_0 and TEXCOORD_1 are supported, using TEXCOORD_0",
                self.path.display(),
                tex.index(),
                r.uv_set
            ));
            r.uv_set = 0;
        }
        Ok(r)
    }

    fn texture(&mut self, tex: &gltf::Texture) -> Result<u32, SceneError> {
        if let Some(&t) = self.texture_map.get(&tex.index()) {
            return Ok(t);
        }
        let image = self.image(&tex.source())?;
        let s = tex.sampler();
        let wrap = |w: gltf::texture::WrappingMode| match w {
            gltf::texture::WrappingMode::ClampToEdge => WrapMode::ClampToEdge,
            gltf::texture::WrappingMode::MirroredRepeat => WrapMode::MirroredRepeat,
            gltf::texture::WrappingMode::Repeat => WrapMode::Repeat,
        };
        let t = Texture {
            image,
            wrap_s: wrap(s.wrap_s()),
            wrap_t: wrap(s.wrap_t()),
            nearest: matches!(s.mag_filter(), Some(gltf::texture::MagFilter::Nearest)),
        };
        let id = self.scene.textures.len() as u32;
        self.scene.textures.push(t);
        self.texture_map.insert(tex.index(), id);
        Ok(id)
    }

    /// The bytes and display name of image `img` (from a buffer view or a URI).
    fn image_bytes(
        &self,
        img: &gltf::Image,
    ) -> Result<(std::borrow::Cow<'_, [u8]>, String), SceneError> {
        let what = format!("image {}", img.index());
        match img.source() {
            gltf::image::Source::View { view, .. } => {
                let buf = self
                    .buffers
                    .get(view.buffer().index())
                    .ok_or_else(|| self.err(format!("{what}: missing buffer")))?;
                let end = view.offset().checked_add(view.length());
                let data = end.and_then(|e| buf.get(view.offset()..e)).ok_or_else(|| {
                    self.err(format!(
                        "{what}: buffer view {} is out of range",
                        view.index()
                    ))
                })?;
                Ok((data.into(), img.name().unwrap_or(&what).to_string()))
            }
            gltf::image::Source::Uri { uri, .. } => {
                let name = if uri.starts_with("data:") {
                    what.clone()
                } else {
                    uri.to_string()
                };
                Ok((
                    read_uri(uri, self.path, self.read_file, &what)?.into(),
                    name,
                ))
            }
        }
    }

    /// Decodes every image a material's texture slot names (but occlusion, which rayfarm does
    /// not read), several at once: decoding PNGs and JPEGs was most of a textured scene's
    /// start-up, one image after another. Images that cannot be read are left to
    /// [`Builder::image`], which reports them if a material uses them.
    fn predecode_images(&mut self) {
        use rayon::prelude::*;
        fn texture_indices(v: &serde_json::Value, out: &mut Vec<usize>) {
            match v {
                serde_json::Value::Object(o) => {
                    for (k, v) in o {
                        match (k.as_str(), v.as_u64()) {
                            ("index", Some(i)) => out.push(i as usize),
                            ("occlusionTexture", _) => {}
                            _ => texture_indices(v, out),
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| texture_indices(v, out)),
                _ => {}
            }
        }
        let mut textures = Vec::new();
        for m in &self.raw_materials {
            texture_indices(m, &mut textures);
        }
        let all: Vec<gltf::Texture> = self.doc.textures().collect();
        let mut wanted: Vec<usize> = textures
            .iter()
            .filter_map(|&t| all.get(t).map(|t| t.source().index()))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let images: Vec<gltf::Image> = self.doc.images().collect();
        // One decode per file: images naming a file named before share its texels (`image`).
        let mut seen = std::collections::HashSet::new();
        wanted.retain(|&i| match images.get(i).map(|img| img.source()) {
            Some(gltf::image::Source::Uri { uri, .. }) if !uri.starts_with("data:") => {
                seen.insert(uri.to_string())
            }
            _ => true,
        });
        if wanted.len() < 2 {
            return;
        }
        let decoded = {
            // Buffer-view images are decoded from the buffer in place, not copied first.
            let read: Vec<(usize, std::borrow::Cow<'_, [u8]>, String)> = wanted
                .into_iter()
                .filter_map(|i| {
                    let img = images.get(i)?;
                    let (bytes, name) = self.image_bytes(img).ok()?;
                    Some((i, bytes, name))
                })
                .collect();
            // Only as many as the scene's texture budget holds, by their headers: what is
            // decoded ahead is held at once. The rest is left to `image`, which refuses the
            // one that crosses the budget by name.
            let mut total = 0u64;
            let read: Vec<_> = read
                .into_iter()
                .take_while(|(_, bytes, _)| {
                    total = total.saturating_add(decoded_bytes(bytes).unwrap_or(0));
                    total <= self.texture_budget
                })
                .collect();
            read.into_par_iter()
                .map(|(i, bytes, name)| (i, (name, decode_image(&bytes))))
                .collect()
        };
        self.predecoded = decoded;
        // Which predecoded image stands for each file, for images naming a file another
        // image names (`image` shares it).
        self.predecoded_uri = images
            .iter()
            .filter(|img| self.predecoded.contains_key(&img.index()))
            .filter_map(|img| match img.source() {
                gltf::image::Source::Uri { uri, .. } if !uri.starts_with("data:") => {
                    Some((uri.to_string(), img.index()))
                }
                _ => None,
            })
            .collect();
    }

    fn image(&mut self, img: &gltf::Image) -> Result<u32, SceneError> {
        if let Some(&i) = self.image_map.get(&img.index()) {
            return Ok(i);
        }
        let uri = match img.source() {
            gltf::image::Source::Uri { uri, .. } if !uri.starts_with("data:") => {
                Some(uri.to_string())
            }
            _ => None,
        };
        if let Some(&i) = uri.as_ref().and_then(|u| self.uri_map.get(u)) {
            self.image_map.insert(img.index(), i);
            return Ok(i);
        }
        let what = format!("image {}", img.index());
        // This image's own decode ahead, or that of the image standing for its file.
        let ahead = uri
            .as_ref()
            .and_then(|u| self.predecoded_uri.get(u).copied())
            .unwrap_or(img.index());
        let (name, decoded) = match self.predecoded.remove(&ahead) {
            Some(done) => done,
            None => {
                let (bytes, name) = self.image_bytes(img)?;
                let decoded = decode_image(&bytes);
                (name, decoded)
            }
        };
        let d = decoded.map_err(|e| self.err(format!("{what} ('{name}'): {e}")))?;
        self.texture_bytes = self.texture_bytes.saturating_add(d.rgba8.len() as u64);
        if let Some(problem) = crate::texture_budget_problem(
            self.texture_bytes,
            self.texture_budget,
            &format!("{what} ('{name}')"),
        ) {
            return Err(self.err(problem));
        }
        let id = self.scene.images.len() as u32;
        self.scene.images.push(Image {
            name,
            width: d.width,
            height: d.height,
            rgba8: d.rgba8,
        });
        self.image_map.insert(img.index(), id);
        if let Some(u) = uri {
            self.uri_map.insert(u, id);
        }
        Ok(id)
    }

    /// Reads a float accessor into `N`-wide vectors (missing components are 0, `w` is 1 for
    /// VEC3 data read as 4 wide, which no caller relies on). Normalized integers are converted
    /// as the glTF specification says.
    fn read_floats<const N: usize>(
        &self,
        acc: &gltf::Accessor,
        ctx: &str,
    ) -> Result<Vec<[f32; N]>, SceneError> {
        let raw = self.read_accessor(acc, ctx)?;
        let dims = acc.dimensions().multiplicity();
        let mut out = Vec::with_capacity(raw.len() / dims.max(1));
        for chunk in raw.chunks_exact(dims.max(1)) {
            let mut v = [0.0f32; N];
            for (k, slot) in v.iter_mut().enumerate() {
                *slot = chunk.get(k).copied().unwrap_or(0.0);
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(self.err(format!(
                    "{ctx}: accessor {} holds a non-finite value",
                    acc.index()
                )));
            }
            out.push(v);
        }
        Ok(out)
    }

    fn read_indices(&self, acc: &gltf::Accessor, ctx: &str) -> Result<Vec<u32>, SceneError> {
        use gltf::accessor::DataType;
        if !matches!(
            acc.data_type(),
            DataType::U8 | DataType::U16 | DataType::U32
        ) || acc.dimensions() != gltf::accessor::Dimensions::Scalar
        {
            return Err(self.err(format!(
                "{ctx}: index accessor {} must be unsigned integer scalars",
                acc.index()
            )));
        }
        let mut raw = Vec::new();
        self.read_components(acc, ctx, false, &mut |v| raw.push(v as u32))?;
        Ok(raw)
    }

    /// All components of an accessor as f32 (normalization applied), sparse values included.
    fn read_accessor(&self, acc: &gltf::Accessor, ctx: &str) -> Result<Vec<f32>, SceneError> {
        let mut raw = Vec::new();
        self.read_components(acc, ctx, acc.normalized(), &mut |v| raw.push(v as f32))?;
        Ok(raw)
    }

    fn read_components(
        &self,
        acc: &gltf::Accessor,
        ctx: &str,
        normalized: bool,
        push: &mut dyn FnMut(f64),
    ) -> Result<(), SceneError> {
        let count = acc.count();
        let dims = acc.dimensions().multiplicity();
        let comp = acc.data_type();
        let csize = comp.size();
        let elem_size = dims * csize;
        let name = format!("{ctx}: accessor {}", acc.index());
        if count > MAX_ACCESSOR_ELEMENTS {
            return Err(self.err(format!(
                "{name} claims {count} elements, more than rayfarm accepts"
            )));
        }
        let mut values: Vec<f64> = Vec::new();
        match acc.view() {
            Some(view) => {
                let data = self.view_bytes(&view, &name)?;
                let stride = view.stride().unwrap_or(elem_size).max(elem_size);
                if count > 0 {
                    let last_end = (count - 1)
                        .checked_mul(stride)
                        .and_then(|x| x.checked_add(acc.offset()))
                        .and_then(|x| x.checked_add(elem_size));
                    if last_end.is_none_or(|e| e > data.len()) {
                        return Err(self.err(format!(
                            "{name} reads past the end of buffer view {} ({} elements of {} bytes, stride {}, offset {}, view length {})",
                            view.index(), count, elem_size, stride, acc.offset(), data.len()
                        )));
                    }
                }
                values.reserve(count * dims);
                for i in 0..count {
                    let off = acc.offset() + i * stride;
                    for k in 0..dims {
                        let o = off + k * csize;
                        values.push(read_component(&data[o..o + csize], comp, normalized));
                    }
                }
            }
            None => {
                // Zero-filled (sparse-only) accessor: nothing in the file backs `count`, so cap it
                // lower than data-backed ones lest a few bytes of JSON ask for gigabytes.
                if count * dims > MAX_ZERO_FILLED_COMPONENTS {
                    return Err(self.err(format!(
                        "{name} has no buffer view yet claims {count} elements; rayfarm accepts at most {} components in such an accessor",
                        MAX_ZERO_FILLED_COMPONENTS
                    )));
                }
                values.resize(count * dims, 0.0)
            }
        }
        if let Some(sparse) = acc.sparse() {
            let n = sparse.count();
            let idx_view = sparse.indices().view();
            let idx_data = self.view_bytes(&idx_view, &name)?;
            let idx_type = sparse.indices().index_type();
            let isize = match idx_type {
                gltf::accessor::sparse::IndexType::U8 => 1,
                gltf::accessor::sparse::IndexType::U16 => 2,
                gltf::accessor::sparse::IndexType::U32 => 4,
            };
            let val_view = sparse.values().view();
            let val_data = self.view_bytes(&val_view, &name)?;
            let idx_off = sparse.indices().offset();
            let val_off = sparse.values().offset();
            let idx_end = n.checked_mul(isize).and_then(|x| x.checked_add(idx_off));
            let val_end = n
                .checked_mul(elem_size)
                .and_then(|x| x.checked_add(val_off));
            if idx_end.is_none_or(|e| e > idx_data.len())
                || val_end.is_none_or(|e| e > val_data.len())
            {
                return Err(self.err(format!(
                    "{name}: sparse data reads past the end of its buffer view"
                )));
            }
            for j in 0..n {
                let io = idx_off + j * isize;
                let b = &idx_data[io..io + isize];
                let target = match isize {
                    1 => b[0] as usize,
                    2 => u16::from_le_bytes([b[0], b[1]]) as usize,
                    _ => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
                };
                if target >= count {
                    return Err(self.err(format!(
                        "{name}: sparse index {target} is out of range ({count} elements)"
                    )));
                }
                for k in 0..dims {
                    let o = val_off + j * elem_size + k * csize;
                    values[target * dims + k] =
                        read_component(&val_data[o..o + csize], comp, normalized);
                }
            }
        }
        for v in values {
            push(v);
        }
        Ok(())
    }

    fn view_bytes(&self, view: &gltf::buffer::View, name: &str) -> Result<&[u8], SceneError> {
        let buf = self.buffers.get(view.buffer().index()).ok_or_else(|| {
            self.err(format!(
                "{name}: buffer {} is missing",
                view.buffer().index()
            ))
        })?;
        view.offset()
            .checked_add(view.length())
            .and_then(|end| buf.get(view.offset()..end))
            .ok_or_else(|| {
                self.err(format!(
                    "{name}: buffer view {} (offset {}, length {}) lies outside buffer {} ({} bytes)",
                    view.index(),
                    view.offset(),
                    view.length(),
                    view.buffer().index(),
                    buf.len()
                ))
            })
    }
}

fn read_component(b: &[u8], comp: gltf::accessor::DataType, normalized: bool) -> f64 {
    use gltf::accessor::DataType::*;
    match comp {
        I8 => {
            let v = b[0] as i8 as f64;
            if normalized {
                (v / 127.0).max(-1.0)
            } else {
                v
            }
        }
        U8 => {
            let v = b[0] as f64;
            if normalized {
                v / 255.0
            } else {
                v
            }
        }
        I16 => {
            let v = i16::from_le_bytes([b[0], b[1]]) as f64;
            if normalized {
                (v / 32767.0).max(-1.0)
            } else {
                v
            }
        }
        U16 => {
            let v = u16::from_le_bytes([b[0], b[1]]) as f64;
            if normalized {
                v / 65535.0
            } else {
                v
            }
        }
        U32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
        F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
    }
}

/// KHR_texture_transform's `T * R * S` as the row-major 2x3 matrix of [`TextureRef`].
fn texture_transform_matrix(offset: [f32; 2], rotation: f32, scale: [f32; 2]) -> [f32; 6] {
    let [ox, oy] = offset;
    let [sx, sy] = scale;
    let (s, c) = rotation.sin_cos();
    [c * sx, s * sy, ox, -s * sx, c * sy, oy]
}

/// The allowed range of one extension number (see `json_number`).
#[derive(Clone, Copy)]
enum NumRange {
    Unit,
    NonNegative,
    AtLeastOne,
    Any,
}

/// `N` finite numbers from a JSON number (N = 1) or array of N numbers.
fn finite_floats<const N: usize>(v: &serde_json::Value) -> Option<[f32; N]> {
    let mut out = [0.0f32; N];
    match v {
        serde_json::Value::Number(x) if N == 1 => out[0] = x.as_f64()? as f32,
        serde_json::Value::Array(a) if a.len() == N => {
            for (o, x) in out.iter_mut().zip(a) {
                *o = x.as_f64()? as f32;
            }
        }
        _ => return None,
    }
    out.iter().all(|x| x.is_finite()).then_some(out)
}

/// Like [`finite_floats`], each in `[0, 1]`.
fn unit_floats<const N: usize>(v: &serde_json::Value) -> Option<[f32; N]> {
    finite_floats::<N>(v).filter(|a| a.iter().all(|x| (0.0..=1.0).contains(x)))
}

fn uv_for_tangents<'a>(
    normal_tex: &Option<TextureRef>,
    uv0: &'a Option<Vec<[f32; 4]>>,
    uv1: &'a Option<Vec<[f32; 4]>>,
) -> Option<&'a [[f32; 4]]> {
    let set = normal_tex.map(|t| t.uv_set).unwrap_or(0);
    if set == 1 {
        uv1.as_deref()
    } else {
        uv0.as_deref()
    }
}

/// The mesh as MikkTSpace reads it: indexed triangles, one face corner at a time.
struct MikkMesh<'a> {
    positions: &'a [Vec3],
    normals: &'a [Vec3],
    uv: &'a [[f32; 4]],
    tris: &'a [[u32; 3]],
    /// Output: tangent and handedness of each face corner (3 per triangle).
    corners: Vec<[f32; 4]>,
}

impl bevy_mikktspace::Geometry for MikkMesh<'_> {
    fn num_faces(&self) -> usize {
        self.tris.len()
    }
    fn num_vertices_of_face(&self, _face: usize) -> usize {
        3
    }
    fn position(&self, face: usize, vert: usize) -> [f32; 3] {
        self.positions[self.tris[face][vert] as usize].to_array()
    }
    fn normal(&self, face: usize, vert: usize) -> [f32; 3] {
        self.normals[self.tris[face][vert] as usize].to_array()
    }
    fn tex_coord(&self, face: usize, vert: usize) -> [f32; 2] {
        let t = self.uv[self.tris[face][vert] as usize];
        [t[0], t[1]]
    }
    fn set_tangent(
        &mut self,
        tangent_space: Option<bevy_mikktspace::TangentSpace>,
        face: usize,
        vert: usize,
    ) {
        let n = self.normals[self.tris[face][vert] as usize];
        self.corners[face * 3 + vert] = match tangent_space {
            Some(ts) => {
                let [x, y, z, w] = ts.tangent_encoded();
                let t = Vec3::new(x, y, z);
                // MikkTSpace leaves a zero tangent where the UVs give no direction at all.
                let t = (t - n * n.dot(t)).normalize_or(n.any_orthonormal_vector());
                [t.x, t.y, t.z, w]
            }
            // A degenerate triangle with no neighbour to borrow from: any frame will do.
            None => {
                let t = n.any_orthonormal_vector();
                [t.x, t.y, t.z, 1.0]
            }
        };
    }
}

/// MikkTSpace tangents (glTF's choice for meshes without a TANGENT attribute) of every face
/// corner, 3 per triangle in `tris` order. MikkTSpace takes unwelded corners, welds what it may
/// share itself, and can give the corners of one of our vertices different tangents (at mirrored
/// UVs, or where the normals' angle splits a group); [`split_vertices_by_tangent`] resolves that.
/// The data is world-space with `tris` wound counter-clockwise about the normals, so the
/// handedness `w` needs no correction for mirroring transforms.
fn mikktspace_corner_tangents(
    positions: &[Vec3],
    normals: &[Vec3],
    uv: &[[f32; 4]],
    tris: &[[u32; 3]],
) -> Vec<[f32; 4]> {
    let mut mesh = MikkMesh {
        positions,
        normals,
        uv,
        tris,
        corners: vec![[1.0, 0.0, 0.0, 1.0]; tris.len() * 3],
    };
    // The error type has no values: generation cannot fail.
    let _ = bevy_mikktspace::generate_tangents(&mut mesh);
    mesh.corners
}

/// Per-vertex tangents from per-corner ones, as glTF viewers get them by computing on unindexed
/// geometry: a vertex keeps the tangent of its first corner (in triangle order); a corner whose
/// tangent differs (bit for bit) from its vertex's gets a new vertex instead, shared by every
/// later corner of the same vertex with the same tangent. Rewrites `tris`; returns the tangents
/// of the `vertex_count + copies.len()` vertices and, for each new vertex, the vertex it copies.
fn split_vertices_by_tangent(
    vertex_count: usize,
    tris: &mut [[u32; 3]],
    corners: &[[f32; 4]],
) -> (Vec<[f32; 4]>, Vec<u32>) {
    let mut tangents: Vec<Option<[f32; 4]>> = vec![None; vertex_count];
    // The copies made of each original vertex so far (few: usually none).
    let mut copies_of: std::collections::BTreeMap<u32, Vec<u32>> = Default::default();
    let mut copies = Vec::new();
    let same =
        |a: &[f32; 4], b: &[f32; 4]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
    for (f, tri) in tris.iter_mut().enumerate() {
        for (k, v) in tri.iter_mut().enumerate() {
            let c = corners[f * 3 + k];
            let orig = *v as usize;
            match &tangents[orig] {
                None => tangents[orig] = Some(c),
                Some(t) if same(t, &c) => {}
                Some(_) => {
                    let list = copies_of.entry(*v).or_default();
                    let found = list
                        .iter()
                        .copied()
                        .find(|&i| tangents[i as usize].is_some_and(|t| same(&t, &c)));
                    let new = found.unwrap_or_else(|| {
                        let i = tangents.len() as u32;
                        tangents.push(Some(c));
                        copies.push(*v);
                        list.push(i);
                        i
                    });
                    *v = new;
                }
            }
        }
    }
    // Vertices no triangle uses keep any tangent.
    let tangents = tangents
        .into_iter()
        .map(|t| t.unwrap_or([1.0, 0.0, 0.0, 1.0]))
        .collect();
    (tangents, copies)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    fn load(bytes: &[u8]) -> Result<(CompiledScene, Warnings), SceneError> {
        load_from_slice(bytes, Path::new("test.glb"), &|_| {
            Err(std::io::ErrorKind::NotFound.into())
        })
    }

    /// A PNG of `w` x `h` texels in the given layout, with pseudo-random samples (and a
    /// palette and tRNS chunk where `palette` / `trns` say so).
    fn png_file(
        (w, h): (u32, u32),
        colour: png::ColorType,
        depth: png::BitDepth,
        trns: Option<Vec<u8>>,
        seed: u64,
    ) -> Vec<u8> {
        let mut state = seed;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as u8
        };
        let bits = depth as usize * colour.samples();
        let row = (w as usize * bits).div_ceil(8);
        let data: Vec<u8> = (0..row * h as usize).map(|_| next()).collect();
        let mut file = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut file, w, h);
            enc.set_color(colour);
            enc.set_depth(depth);
            if colour == png::ColorType::Indexed {
                // 256 entries, so that every index a random byte makes is defined.
                let palette: Vec<u8> = (0..768).map(|_| next()).collect();
                enc.set_palette(palette);
            }
            if let Some(t) = trns {
                enc.set_trns(t);
            }
            let mut writer = enc.write_header().expect("a PNG header");
            writer.write_image_data(&data).expect("PNG data");
        }
        file
    }

    /// Found by fuzzing (session 20): a PNG of a few kilobytes can declare 16385 x 16385 (or
    /// 23170 x 23170) texels, more than 1 GiB as RGBA8; two such images in one glTF, or in an
    /// MTL file (whose decoder panicked when the allocation failed), aborted the process.
    /// Both decoders now refuse it from the header, before the texels are allocated.
    #[test]
    fn a_texture_too_large_to_decode_is_refused_from_its_header() {
        let side = 16385u32;
        for depth in [png::BitDepth::One, png::BitDepth::Sixteen] {
            let row = (side as usize * depth as usize).div_ceil(8);
            let mut file = Vec::new();
            {
                let mut enc = png::Encoder::new(&mut file, side, side);
                enc.set_color(png::ColorType::Grayscale);
                enc.set_depth(depth);
                enc.set_compression(png::Compression::Fast);
                let mut w = enc.write_header().unwrap();
                w.write_image_data(&vec![0u8; row * side as usize]).unwrap();
            }
            assert!(file.len() < 4 << 20, "{} bytes", file.len());
            let e = decode_image(&file).err().expect("refused");
            assert!(
                e.contains("16385x16385") && e.contains("more than a texture may"),
                "{e}"
            );
        }
        assert!(decode_image(&png_file(
            (4, 4),
            png::ColorType::Rgba,
            png::BitDepth::Eight,
            None,
            1
        ))
        .is_ok());
    }

    #[test]
    fn pngs_decode_straight_to_rgba8_exactly_as_the_image_crate_does() {
        use png::{BitDepth as D, ColorType as C};
        let cases: Vec<(C, D, Option<Vec<u8>>)> = vec![
            (C::Rgba, D::Eight, None),
            (C::Rgb, D::Eight, None),
            (C::Rgb, D::Eight, Some(vec![0, 7, 0, 9, 0, 200])),
            (C::GrayscaleAlpha, D::Eight, None),
            (C::Grayscale, D::Eight, None),
            (C::Grayscale, D::Eight, Some(vec![0, 77])),
            (C::Grayscale, D::One, None),
            (C::Grayscale, D::Two, None),
            (C::Grayscale, D::Four, Some(vec![0, 5])),
            (C::Indexed, D::Eight, None),
            (C::Indexed, D::Eight, Some((0..40).map(|i| i * 6).collect())),
            (C::Indexed, D::Four, Some(vec![0, 128, 255])),
            (C::Indexed, D::One, None),
        ];
        let mut checked = 0;
        for (i, (colour, depth, trns)) in cases.into_iter().enumerate() {
            // (1100, 3): several blocks of the in-place widening and a partial last one.
            for size in [(1, 1), (13, 7), (33, 20), (1100, 3)] {
                let file = png_file(size, colour, depth, trns.clone(), i as u64);
                let want = image::load_from_memory(&file)
                    .expect("the image crate decodes it")
                    .into_rgba8();
                let DecodedImage {
                    width: w,
                    height: h,
                    rgba8: got,
                } = decode_png_rgba8(&file)
                    .expect("an 8-bit PNG takes the direct path")
                    .expect("it decodes");
                assert_eq!((w, h), want.dimensions(), "{colour:?} {depth:?} {size:?}");
                assert!(
                    got == want.as_raw()[..],
                    "{colour:?} {depth:?} tRNS {trns:?} {size:?}: texels differ"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 52);
        // Sixteen bits per channel go to the image crate (its rounding to 8 bits).
        let wide = png_file((5, 5), C::Rgb, D::Sixteen, None, 9);
        assert!(decode_png_rgba8(&wide).is_none());
        assert!(decode_image(&wide).is_ok());
        // Not a PNG: not this path's to judge.
        assert!(decode_png_rgba8(b"GIF89a").is_none());
    }

    #[test]
    fn a_broken_or_oversized_png_is_an_error_that_says_so() {
        let file = png_file((16, 16), png::ColorType::Rgb, png::BitDepth::Eight, None, 1);
        let cut = &file[..file.len() - 30];
        let err = decode_image(cut)
            .err()
            .expect("a truncated PNG is an error");
        assert!(err.contains("cannot decode PNG"), "{err}");
        // A header claiming 2^16 x 2^16 texels (12 GiB as RGB) is refused before allocating:
        // a header, then an empty image data chunk, so that only the size stops it.
        let mut huge = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut huge, 65536, 65536);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut writer = enc.write_header().expect("a PNG header");
            writer
                .write_chunk(png::chunk::IDAT, &[])
                .expect("an image data chunk");
        }
        let err = decode_image(&huge)
            .err()
            .expect("an oversized PNG is an error");
        assert!(
            err.contains("cannot decode PNG") && err.contains("MiB"),
            "{err}"
        );
    }

    fn message(r: Result<(CompiledScene, Warnings), SceneError>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_tangent(got: [f32; 4], want: [f32; 4]) {
        assert!(
            got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5),
            "tangent {got:?}, expected {want:?}"
        );
    }

    #[test]
    fn mikktspace_tangents_of_a_uv_mapped_quad() {
        // A unit quad in the z = 0 plane facing +Z, mapped as glTF maps images (v grows
        // downwards, so along -Y): the tangent is +X and the bitangent -Y = -(N x T), w = -1.
        let positions = [Vec3::ZERO, Vec3::X, Vec3::new(1.0, 1.0, 0.0), Vec3::Y];
        let normals = [Vec3::Z; 4];
        let uv: Vec<[f32; 4]> = positions
            .iter()
            .map(|p| [p.x, 1.0 - p.y, 0.0, 0.0])
            .collect();
        let mut tris = vec![[0, 1, 2], [0, 2, 3]];
        let corners = mikktspace_corner_tangents(&positions, &normals, &uv, &tris);
        assert_eq!(corners.len(), 6);
        let (tangents, copies) = split_vertices_by_tangent(4, &mut tris, &corners);
        assert!(
            copies.is_empty(),
            "a consistently mapped quad splits nothing"
        );
        assert_eq!(tris, vec![[0, 1, 2], [0, 2, 3]]);
        for t in tangents {
            assert_tangent(t, [1.0, 0.0, 0.0, -1.0]);
        }
    }

    #[test]
    fn mikktspace_splits_vertices_on_a_mirrored_uv_seam() {
        // Two quads side by side sharing the edge x = 1, the right one's U mirrored (u = 2 - x):
        // left tangent +X, right tangent -X, and the two seam vertices must be split.
        //   3 - 4 - 5
        //   |   |   |
        //   0 - 1 - 2
        let positions: Vec<Vec3> = (0..6)
            .map(|i| Vec3::new((i % 3) as f32, (i / 3) as f32, 0.0))
            .collect();
        let normals = vec![Vec3::Z; 6];
        let uv: Vec<[f32; 4]> = positions
            .iter()
            .map(|p| [1.0 - (p.x - 1.0).abs(), p.y, 0.0, 0.0])
            .collect();
        let mut tris = vec![[0, 1, 4], [0, 4, 3], [1, 2, 5], [1, 5, 4]];
        let corners = mikktspace_corner_tangents(&positions, &normals, &uv, &tris);
        let (tangents, copies) = split_vertices_by_tangent(6, &mut tris, &corners);
        assert_eq!(
            copies,
            vec![1, 4],
            "the seam's two vertices are copied once each"
        );
        assert_eq!(tangents.len(), 8);
        // The right quad now uses the copies (6 for vertex 1, 7 for vertex 4).
        assert_eq!(tris, vec![[0, 1, 4], [0, 4, 3], [6, 2, 5], [6, 5, 7]]);
        for v in [0, 1, 3, 4] {
            assert_tangent(tangents[v], [1.0, 0.0, 0.0, 1.0]);
        }
        for v in [2, 5, 6, 7] {
            assert_tangent(tangents[v], [-1.0, 0.0, 0.0, -1.0]);
        }
    }

    fn triangle_bin() -> Vec<u8> {
        [0.0f32, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    /// One triangle; `buffer` is the JSON of the single buffer.
    fn triangle_json(buffer: &str) -> String {
        format!(
            r#"{{"asset":{{"version":"2.0"}},"nodes":[{{"mesh":0}}],
            "meshes":[{{"primitives":[{{"attributes":{{"POSITION":0}}}}]}}],
            "accessors":[{{"bufferView":0,"componentType":5126,"count":3,"type":"VEC3",
                          "min":[0,0,0],"max":[1,1,0]}}],
            "bufferViews":[{{"buffer":0,"byteLength":36}}],
            "buffers":[{buffer}]}}"#
        )
    }

    fn data_uri_triangle() -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(triangle_bin());
        triangle_json(&format!(
            r#"{{"byteLength":36,"uri":"data:application/octet-stream;base64,{b64}"}}"#
        ))
    }

    fn pack_glb(chunks: &[(&[u8; 4], &[u8], u8)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (ty, data, pad) in chunks {
            let len = data.len().div_ceil(4) * 4;
            body.extend_from_slice(&(len as u32).to_le_bytes());
            body.extend_from_slice(*ty);
            body.extend_from_slice(data);
            body.resize(body.len() + len - data.len(), *pad);
        }
        let mut out = b"glTF".to_vec();
        out.extend_from_slice(&2u32.to_le_bytes());
        out.extend_from_slice(&(12 + body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        out
    }

    fn triangle_glb() -> Vec<u8> {
        let json = triangle_json(r#"{"byteLength":36}"#);
        pack_glb(&[
            (b"JSON", json.as_bytes(), b' '),
            (b"BIN\0", &triangle_bin(), 0),
        ])
    }

    #[test]
    fn triangle_gltf_and_glb_load() {
        let (scene, warnings) = load(data_uri_triangle().as_bytes()).unwrap();
        assert_eq!(scene.triangles.len(), 1);
        assert!(warnings.is_empty(), "{warnings:?}");
        let (scene, _) = load(&triangle_glb()).unwrap();
        assert_eq!(scene.triangles.len(), 1);
        assert_eq!(scene.positions[1], [1.0, 0.0, 0.0]);
    }

    /// Regression: `gltf::binary::Glb::from_slice` computes `header.length - 12` unchecked, an
    /// arithmetic overflow panic for a header length below 12. We split GLBs ourselves now.
    #[test]
    fn glb_header_length_below_12() {
        for claimed in [0u32, 1, 11, 12, 19] {
            let mut glb = triangle_glb();
            glb[8..12].copy_from_slice(&claimed.to_le_bytes());
            let msg = message(load(&glb));
            assert!(msg.starts_with("test.glb: not a valid .glb file"), "{msg}");
        }
    }

    #[test]
    fn every_truncation_of_a_glb_is_an_error() {
        let glb = triangle_glb();
        for len in 0..glb.len() {
            let r = load(&glb[..len]);
            assert!(
                r.is_err(),
                "a GLB cut to {len} of {} bytes loaded",
                glb.len()
            );
        }
        // Also with the header's total length "repaired" to match the cut.
        for len in 12..glb.len() {
            let mut cut = glb[..len].to_vec();
            cut[8..12].copy_from_slice(&(len as u32).to_le_bytes());
            assert!(
                load(&cut).is_err(),
                "a GLB cut to {len} bytes with a fixed header loaded"
            );
        }
    }

    #[test]
    fn glb_chunk_problems_are_named() {
        let json = triangle_json(r#"{"byteLength":36}"#);
        let bin = triangle_bin();
        // Chunk length past the end of the file.
        let mut glb = triangle_glb();
        glb[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(message(load(&glb)).contains("chunk 0"));
        // First chunk not JSON.
        let glb = pack_glb(&[(b"BIN\0", &bin, 0), (b"JSON", json.as_bytes(), b' ')]);
        assert!(message(load(&glb)).contains("must be JSON"));
        // Version 1.
        let mut glb = triangle_glb();
        glb[4] = 1;
        assert!(message(load(&glb)).contains("version 1"));
        // No BIN chunk although the buffer needs one.
        let glb = pack_glb(&[(b"JSON", json.as_bytes(), b' ')]);
        assert!(message(load(&glb)).contains("missing GLB binary chunk"));
    }

    #[test]
    fn glb_unknown_chunks_are_skipped() {
        let json = triangle_json(r#"{"byteLength":36}"#);
        let glb = pack_glb(&[
            (b"JSON", json.as_bytes(), b' '),
            (b"BIN\0", &triangle_bin(), 0),
            (b"XTRA", b"hello", 0),
        ]);
        assert_eq!(load(&glb).unwrap().0.triangles.len(), 1);
        // Trailing bytes beyond the header's total length are ignored too.
        let mut glb = triangle_glb();
        glb.extend_from_slice(b"trailing");
        assert_eq!(load(&glb).unwrap().0.triangles.len(), 1);
    }

    /// Regression: a node DAG (each level listing the next node 8 times) used to be expanded
    /// as a tree, instancing the mesh 8^depth times until memory ran out; nodes reached twice
    /// are an error now, as are cycles.
    #[test]
    fn node_dag_is_not_expanded_exponentially() {
        let mut nodes: Vec<String> = (0..12)
            .map(|i| {
                format!(
                    r#"{{"children":[{}]}}"#,
                    vec![(i + 1).to_string(); 8].join(",")
                )
            })
            .collect();
        nodes.push(r#"{"mesh":0}"#.into());
        let json = data_uri_triangle().replace(
            r#""nodes":[{"mesh":0}]"#,
            &format!(r#""nodes":[{}]"#, nodes.join(",")),
        );
        let msg = message(load(json.as_bytes()));
        assert!(
            msg.contains("appears more than once in the node hierarchy"),
            "{msg}"
        );

        let json = data_uri_triangle().replace(
            r#""nodes":[{"mesh":0}]"#,
            r#""scenes":[{"nodes":[0]}],"nodes":[{"mesh":0,"children":[1]},{"children":[0]}]"#,
        );
        let msg = message(load(json.as_bytes()));
        assert!(msg.contains("appears more than once"), "{msg}");
    }

    /// Regression: an accessor without a buffer view (zeros plus sparse values) could claim up
    /// to 2^28 MAT4 elements, 32 GB of zeros, from a few bytes of JSON.
    #[test]
    fn zero_filled_accessor_count_is_capped() {
        let sparse = r#"{"componentType":5126,"count":COUNT,"type":"MAT4",
            "sparse":{"count":1,"indices":{"bufferView":0,"componentType":5125},
                      "values":{"bufferView":0}}}"#;
        let json = data_uri_triangle()
            .replace(r#""POSITION":0}"#, r#""POSITION":0,"TEXCOORD_0":1}"#)
            .replace(
                r#""max":[1,1,0]}]"#,
                &format!(
                    r#""max":[1,1,0]}},{}]"#,
                    sparse.replace("COUNT", "268435455")
                ),
            );
        let msg = message(load(json.as_bytes()));
        assert!(
            msg.contains("has no buffer view yet claims 268435455"),
            "{msg}"
        );
    }

    /// Regression (fuzz): gltf-json's validation indexes `accessors` with a primitive's
    /// POSITION index before checking it, panicking for an index out of range.
    #[test]
    fn position_accessor_index_out_of_range() {
        let json = data_uri_triangle().replace(r#""POSITION":0"#, r#""POSITION":7"#);
        let msg = message(load(json.as_bytes()));
        assert!(
            msg.contains("POSITION refers to accessor 7 but there are 1 accessors"),
            "{msg}"
        );
    }

    /// Regression: gltf's `Camera::projection` unwraps the object named by `type`.
    #[test]
    fn camera_type_without_its_projection() {
        let cam = r#""cameras":[{"type":"perspective","orthographic":{"xmag":1,"ymag":1,"zfar":10,"znear":0.1}}],
            "nodes":[{"mesh":0},{"camera":0}]"#;
        let json = data_uri_triangle().replace(r#""nodes":[{"mesh":0}]"#, cam);
        let msg = message(load(json.as_bytes()));
        assert!(
            msg.contains("camera 0 is of type perspective but has no 'perspective' object"),
            "{msg}"
        );
    }

    /// Regression: gltf's `Image::source` unwraps `mimeType` for buffer-view images and `uri`
    /// otherwise.
    #[test]
    fn image_without_mime_type_or_uri() {
        for (image, expected) in [
            (
                r#"{"bufferView":0}"#,
                "image 0 is stored in a buffer view but has no mimeType",
            ),
            (
                r#"{"name":"nothing"}"#,
                "image 0 has neither a uri nor a bufferView",
            ),
        ] {
            let json = data_uri_triangle().replace(
                r#""nodes":[{"mesh":0}]"#,
                &format!(
                    r#""nodes":[{{"mesh":0}}],"images":[{image}],"textures":[{{"source":0}}],
                    "materials":[{{"pbrMetallicRoughness":{{"baseColorTexture":{{"index":0}}}}}}]"#
                ),
            );
            let json = json.replace(r#""POSITION":0}"#, r#""POSITION":0},"material":0"#);
            let msg = message(load(json.as_bytes()));
            assert!(msg.contains(expected), "{msg}");
        }
    }

    #[test]
    fn validation_message_is_not_doubled() {
        let json =
            data_uri_triangle().replace(r#""nodes":[{"mesh":0}]"#, r#""nodes":[{"mesh":3}]"#);
        let msg = message(load(json.as_bytes()));
        assert_eq!(msg.matches("invalid glTF").count(), 1, "{msg}");
        assert!(!msg.ends_with(';'), "{msg}");
    }
}
