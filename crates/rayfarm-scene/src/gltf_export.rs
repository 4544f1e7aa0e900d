//! glTF 2.0 binary (`.glb`) writer for baked texture maps.
//!
//! [`baked_glb`] turns chosen meshes of a [`CompiledScene`] plus one encoded PNG per baked
//! material into a self-contained `.glb`: one node and mesh per object, its UV set that the map
//! was baked in as `TEXCOORD_0`, and an unlit material that shows the map. This module owns the
//! GLB container layout and the JSON it carries. It must never do file IO: it returns bytes, and
//! the caller decides where they go. The output is a function of the input alone (same input,
//! same bytes), so an export can be compared and hashed like every other rayfarm result.

use crate::types::{CompiledScene, Mesh};
use serde_json::{json, Value};
use std::collections::HashMap;

/// One baked texture map, already encoded as PNG.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BakedMaterial {
    /// Name of the glTF material and image.
    pub name: String,
    /// The encoded PNG file.
    pub png: Vec<u8>,
}

/// A mesh of the scene to export, textured with one of the baked materials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BakedObject {
    /// Index into [`CompiledScene::meshes`].
    pub mesh: usize,
    /// Index into the `materials` slice given to [`baked_glb`].
    pub material: usize,
}

/// Why a `.glb` could not be written. Messages name the object, mesh or material at fault.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("no objects to export (a .glb needs at least one mesh)")]
    NoObjects,
    #[error("uv set {uv_set} does not exist (only uv sets 0 and 1 exist)")]
    UnknownUvSet { uv_set: u8 },
    #[error("object {object}: mesh {mesh} does not exist (the scene has {mesh_count} meshes)")]
    MeshOutOfRange {
        object: usize,
        mesh: usize,
        mesh_count: usize,
    },
    #[error(
        "object {object}: material {material} does not exist ({material_count} baked materials were given)"
    )]
    MaterialOutOfRange {
        object: usize,
        material: usize,
        material_count: usize,
    },
    #[error(
        "mesh '{mesh}' has no uv set {uv_set} (TEXCOORD_{uv_set}); bake it with a uv set it has"
    )]
    MissingUvSet { mesh: String, uv_set: u8 },
    #[error("mesh '{mesh}' has no triangles; leave it out of the export")]
    EmptyMesh { mesh: String },
    /// The compiled scene itself is inconsistent (it did not pass `CompiledScene::validate`).
    #[error("mesh '{mesh}': {what}")]
    InvalidMesh { mesh: String, what: String },
    #[error("baked material '{material}' is not a PNG image (its bytes lack the PNG signature)")]
    NotPng { material: String },
    #[error("the .glb would be {bytes} bytes, more than the 4 GiB the GLB format can hold")]
    TooLarge { bytes: u64 },
}

/// glTF constants, named as in the specification.
const FLOAT: u32 = 5126;
const UNSIGNED_INT: u32 = 5125;
const ARRAY_BUFFER: u32 = 34962;
const ELEMENT_ARRAY_BUFFER: u32 = 34963;
const LINEAR: u32 = 9729;
const CLAMP_TO_EDGE: u32 = 33071;

const UNLIT: &str = "KHR_materials_unlit";
const PNG_SIGNATURE: &[u8; 8] = b"\x89PNG\r\n\x1a\n";

/// Writes a `.glb` holding `objects`, each textured with its baked material, laid out by
/// `uv_set` (0 or 1) of the scene, which becomes the file's `TEXCOORD_0`.
///
/// Positions are world space already, so every node has the identity transform. Each object's
/// vertices are re-indexed to only those its triangles use, in order of first use.
pub fn baked_glb(
    scene: &CompiledScene,
    objects: &[BakedObject],
    materials: &[BakedMaterial],
    uv_set: u8,
) -> Result<Vec<u8>, ExportError> {
    if objects.is_empty() {
        return Err(ExportError::NoObjects);
    }
    let uvs = match uv_set {
        0 => &scene.uv0,
        1 => &scene.uv1,
        _ => return Err(ExportError::UnknownUvSet { uv_set }),
    };
    // Check every reference before writing anything, so the error is about the first bad
    // object rather than a half-built file.
    for (object, o) in objects.iter().enumerate() {
        let mesh = scene
            .meshes
            .get(o.mesh)
            .ok_or(ExportError::MeshOutOfRange {
                object,
                mesh: o.mesh,
                mesh_count: scene.meshes.len(),
            })?;
        if o.material >= materials.len() {
            return Err(ExportError::MaterialOutOfRange {
                object,
                material: o.material,
                material_count: materials.len(),
            });
        }
        if !mesh.has_uv[uv_set as usize] {
            return Err(ExportError::MissingUvSet {
                mesh: mesh.name.clone(),
                uv_set,
            });
        }
        if mesh.triangle_count == 0 {
            return Err(ExportError::EmptyMesh {
                mesh: mesh.name.clone(),
            });
        }
    }
    for m in materials {
        if !m.png.starts_with(PNG_SIGNATURE) {
            return Err(ExportError::NotPng {
                material: m.name.clone(),
            });
        }
    }

    let mut bin = BinBuilder::default();
    let mut accessors = Vec::new();
    let mut meshes = Vec::new();
    let mut nodes = Vec::new();
    for o in objects {
        let mesh = &scene.meshes[o.mesh];
        let v = compact_vertices(scene, mesh, uvs)?;
        let count = v.positions.len();

        let mut min = [f32::INFINITY; 3];
        let mut max = [f32::NEG_INFINITY; 3];
        for p in &v.positions {
            for k in 0..3 {
                min[k] = min[k].min(p[k]);
                max[k] = max[k].max(p[k]);
            }
        }
        let position = accessors.len();
        accessors.push(json!({
            "bufferView": bin.push_f32s(v.positions.iter().flatten(), Some(ARRAY_BUFFER)),
            "componentType": FLOAT,
            "count": count,
            "type": "VEC3",
            "min": min,
            "max": max,
        }));
        let normal = accessors.len();
        accessors.push(json!({
            "bufferView": bin.push_f32s(v.normals.iter().flatten(), Some(ARRAY_BUFFER)),
            "componentType": FLOAT,
            "count": count,
            "type": "VEC3",
        }));
        let texcoord = accessors.len();
        accessors.push(json!({
            "bufferView": bin.push_f32s(v.uvs.iter().flatten(), Some(ARRAY_BUFFER)),
            "componentType": FLOAT,
            "count": count,
            "type": "VEC2",
        }));
        let indices = accessors.len();
        let index_bytes: Vec<u8> = v
            .triangles
            .iter()
            .flatten()
            .flat_map(|i| i.to_le_bytes())
            .collect();
        accessors.push(json!({
            "bufferView": bin.push(&index_bytes, Some(ELEMENT_ARRAY_BUFFER)),
            "componentType": UNSIGNED_INT,
            "count": v.triangles.len() * 3,
            "type": "SCALAR",
        }));

        nodes.push(json!({ "name": mesh.name, "mesh": meshes.len() }));
        meshes.push(json!({
            "name": mesh.name,
            "primitives": [{
                "attributes": {
                    "POSITION": position,
                    "NORMAL": normal,
                    "TEXCOORD_0": texcoord,
                },
                "indices": indices,
                "material": o.material,
            }],
        }));
    }

    let mut images = Vec::new();
    let mut textures = Vec::new();
    let mut gltf_materials = Vec::new();
    for (i, m) in materials.iter().enumerate() {
        images.push(json!({
            "name": m.name,
            "bufferView": bin.push(&m.png, None),
            "mimeType": "image/png",
        }));
        textures.push(json!({ "sampler": 0, "source": i }));
        // The baked map already holds the lit result, so it is shown unlit. The metallic-
        // roughness values are the fallback the unlit extension recommends, so viewers that do
        // not know the extension still show the map as a diffuse colour.
        gltf_materials.push(json!({
            "name": m.name,
            "pbrMetallicRoughness": {
                "baseColorTexture": { "index": i },
                "baseColorFactor": [1.0, 1.0, 1.0, 1.0],
                "metallicFactor": 0.0,
                "roughnessFactor": 1.0,
            },
            "extensions": { UNLIT: {} },
        }));
    }

    let bin = bin.finish();
    let root = json!({
        "asset": {
            "version": "2.0",
            "generator": concat!("rayfarm ", env!("CARGO_PKG_VERSION")),
        },
        // Used, not required: the fallback above keeps the file readable without it.
        "extensionsUsed": [UNLIT],
        "scene": 0,
        "scenes": [{ "nodes": (0..nodes.len()).collect::<Vec<_>>() }],
        "nodes": nodes,
        "meshes": meshes,
        "accessors": accessors,
        "bufferViews": bin.views,
        "buffers": [{ "byteLength": bin.data.len() }],
        "materials": gltf_materials,
        "textures": textures,
        "images": images,
        // Clamping keeps bilinear lookups at a chart's border from blending in the opposite
        // edge of the atlas.
        "samplers": [{
            "magFilter": LINEAR,
            "minFilter": LINEAR,
            "wrapS": CLAMP_TO_EDGE,
            "wrapT": CLAMP_TO_EDGE,
        }],
    });
    pack_glb(root.to_string().into_bytes(), bin.data)
}

/// One object's vertices, re-indexed to those its triangles use.
struct Compact {
    positions: Vec<[f32; 3]>,
    normals: Vec<[f32; 3]>,
    uvs: Vec<[f32; 2]>,
    triangles: Vec<[u32; 3]>,
}

/// Gathers the vertices `mesh`'s triangles use, in order of first use, checking every index
/// and value it touches, because a hand-built or damaged scene must give an error, not a panic
/// or a file that other tools reject.
fn compact_vertices(
    scene: &CompiledScene,
    mesh: &Mesh,
    uvs: &[[f32; 2]],
) -> Result<Compact, ExportError> {
    let invalid = |what: String| ExportError::InvalidMesh {
        mesh: mesh.name.clone(),
        what,
    };
    let first = mesh.first_triangle as usize;
    let end = first + mesh.triangle_count as usize;
    let triangles = scene.triangles.get(first..end).ok_or_else(|| {
        invalid(format!(
            "covers triangles {first}..{end} but the scene has {}",
            scene.triangles.len()
        ))
    })?;
    let mut out = Compact {
        positions: Vec::new(),
        normals: Vec::new(),
        uvs: Vec::new(),
        triangles: Vec::with_capacity(triangles.len()),
    };
    let mut new_index: HashMap<u32, u32> = HashMap::with_capacity(triangles.len() * 3);
    for t in triangles {
        let mut nt = [0u32; 3];
        for (slot, &old) in nt.iter_mut().zip(t) {
            if let Some(&n) = new_index.get(&old) {
                *slot = n;
                continue;
            }
            let i = old as usize;
            let (Some(p), Some(n), Some(uv)) =
                (scene.positions.get(i), scene.normals.get(i), uvs.get(i))
            else {
                return Err(invalid(format!(
                    "vertex {i} lacks a position, normal or uv (the scene has {} positions, {} normals, {} uvs in the set)",
                    scene.positions.len(),
                    scene.normals.len(),
                    uvs.len()
                )));
            };
            if !p.iter().chain(n).chain(uv).all(|c| c.is_finite()) {
                return Err(invalid(format!(
                    "vertex {i} has a non-finite position, normal or uv"
                )));
            }
            // New indices count distinct u32 old indices, so they fit in a u32 too.
            let n_new = out.positions.len() as u32;
            out.positions.push(*p);
            out.normals.push(*n);
            out.uvs.push(*uv);
            new_index.insert(old, n_new);
            *slot = n_new;
        }
        out.triangles.push(nt);
    }
    Ok(out)
}

/// The BIN chunk under construction and the buffer views into it.
#[derive(Default)]
struct BinBuilder {
    data: Vec<u8>,
    views: Vec<Value>,
}

impl BinBuilder {
    /// Appends `bytes` as a new buffer view starting on a 4-byte boundary (which every
    /// component type needs) and returns the view's index.
    fn push(&mut self, bytes: &[u8], target: Option<u32>) -> usize {
        self.pad();
        let mut view = json!({
            "buffer": 0,
            "byteOffset": self.data.len(),
            "byteLength": bytes.len(),
        });
        if let Some(t) = target {
            view["target"] = json!(t);
        }
        self.data.extend_from_slice(bytes);
        self.views.push(view);
        self.views.len() - 1
    }

    fn push_f32s<'a>(
        &mut self,
        values: impl Iterator<Item = &'a f32>,
        target: Option<u32>,
    ) -> usize {
        let bytes: Vec<u8> = values.flat_map(|v| v.to_le_bytes()).collect();
        self.push(&bytes, target)
    }

    fn pad(&mut self) {
        self.data.resize(self.data.len().next_multiple_of(4), 0);
    }

    fn finish(mut self) -> Self {
        self.pad();
        self
    }
}

/// Packs the GLB container: 12-byte header, the JSON chunk padded with spaces and the BIN chunk
/// padded with zeros, each to 4 bytes as the specification requires.
pub fn pack_glb(mut json: Vec<u8>, mut bin: Vec<u8>) -> Result<Vec<u8>, ExportError> {
    json.resize(json.len().next_multiple_of(4), b' ');
    bin.resize(bin.len().next_multiple_of(4), 0);
    let total = 12 + 8 + json.len() as u64 + 8 + bin.len() as u64;
    let too_large = || ExportError::TooLarge { bytes: total };
    let total32 = u32::try_from(total).map_err(|_| too_large())?;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(b"glTF");
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&total32.to_le_bytes());
    // Both chunk lengths are below `total`, which fits in a u32.
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(b"JSON");
    out.extend_from_slice(&json);
    out.extend_from_slice(&(bin.len() as u32).to_le_bytes());
    out.extend_from_slice(b"BIN\0");
    out.extend_from_slice(&bin);
    Ok(out)
}
