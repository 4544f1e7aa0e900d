//! KHR_draco_mesh_compression: a primitive's indices and attributes stored as one Draco stream
//! in a buffer view.
//!
//! As for EXT_meshopt_compression (see the `meshopt` module), decoding happens before the gltf
//! crate builds its document: [`plan`] finds the Draco primitives in the JSON, gives each a
//! buffer of its own with one buffer view per accessor it decodes (sized from the accessors'
//! own count, type and component type) and points the accessors at them; [`decode`] fills
//! those buffers once the file's buffers are loaded, writing every value in its accessor's
//! declared component type, exactly as an uncompressed file would hold it. The accessor reader
//! never knows the data was compressed.
//!
//! The decoder is `draco-core` (pure Rust). Its limits are set to what the accessors declare
//! (faces, and decoded attribute bytes at 4 bytes a component), so a stream that claims more is
//! refused before it allocates; the decoded counts are then checked against the accessors'.

use serde_json::Value;

/// Upper bound on the decoded bytes of all Draco primitives of one file (1 GiB), as for meshopt.
const MAX_DECODED_BYTES: usize = 1 << 30;

const EXT: &str = "KHR_draco_mesh_compression";

/// One accessor a Draco primitive decodes into.
#[derive(Debug)]
struct Target {
    accessor: usize,
    /// The Draco attribute's unique id, or None for the indices.
    draco_id: Option<u32>,
    /// Name in messages: the attribute semantic or "indices".
    name: String,
    count: usize,
    components: usize,
    component_type: u64,
    /// Where its values go in the primitive's buffer.
    offset: usize,
}

#[derive(Debug)]
struct Primitive {
    at: String,
    view: usize,
    targets: Vec<Target>,
    buffer: usize,
    byte_length: usize,
}

/// What [`decode`] must do.
#[derive(Debug, Default)]
pub(super) struct Plan {
    primitives: Vec<Primitive>,
}

impl Plan {
    pub(super) fn is_empty(&self) -> bool {
        self.primitives.is_empty()
    }

    /// The indices of the buffers [`decode`] fills (appended after the file's own).
    pub(super) fn decoded_buffers(&self) -> impl Iterator<Item = usize> + '_ {
        self.primitives.iter().map(|p| p.buffer)
    }
}

fn component_size(component_type: u64) -> Option<usize> {
    match component_type {
        5120 | 5121 => Some(1),
        5122 | 5123 => Some(2),
        5125 | 5126 => Some(4),
        _ => None,
    }
}

fn components(ty: &str) -> Option<usize> {
    Some(match ty {
        "SCALAR" => 1,
        "VEC2" => 2,
        "VEC3" => 3,
        "VEC4" => 4,
        "MAT2" => 4,
        "MAT3" => 9,
        "MAT4" => 16,
        _ => return None,
    })
}

/// Finds the Draco primitives (triangles only: the importer skips other modes), checks their
/// accessors, appends a buffer per primitive and a buffer view per accessor and points the
/// accessors at them. Errors name the mesh and primitive.
pub(super) fn plan(raw: &mut Value) -> Result<Plan, String> {
    let mut primitives = Vec::new();
    let buffer_count = raw
        .get("buffers")
        .and_then(|b| b.as_array())
        .map_or(0, |b| b.len());
    let view_count = raw
        .get("bufferViews")
        .and_then(|b| b.as_array())
        .map_or(0, |b| b.len());
    let accessors = raw
        .get("accessors")
        .and_then(|a| a.as_array())
        .cloned()
        .unwrap_or_default();
    let mut claimed = vec![false; accessors.len()];
    let mut total: usize = 0;
    let meshes = raw.get("meshes").and_then(|m| m.as_array());
    for (mi, mesh) in meshes.into_iter().flatten().enumerate() {
        let prims = mesh.get("primitives").and_then(|p| p.as_array());
        for (pi, prim) in prims.into_iter().flatten().enumerate() {
            let Some(ext) = prim.get("extensions").and_then(|e| e.get(EXT)) else {
                continue;
            };
            if prim.get("mode").is_some_and(|m| m.as_u64() != Some(4)) {
                continue; // not triangles: skipped by the importer with a warning
            }
            let at = format!("mesh {mi} primitive {pi}: {EXT}");
            let view = ext
                .get("bufferView")
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .filter(|&v| v < view_count)
                .ok_or_else(|| {
                    format!(
                        "{at}.bufferView must be the index of one of the {view_count} buffer views"
                    )
                })?;
            let ids = ext
                .get("attributes")
                .and_then(|a| a.as_object())
                .ok_or_else(|| format!("{at} has no attributes object"))?;
            let attrs = prim.get("attributes").and_then(|a| a.as_object());
            let mut wanted: Vec<(String, usize, Option<u32>)> = Vec::new();
            if let Some(i) = prim.get("indices") {
                let i = i
                    .as_u64()
                    .ok_or_else(|| format!("{at}: the primitive's indices must be an index"))?;
                wanted.push(("indices".into(), i as usize, None));
            }
            for (semantic, id) in ids {
                let id = id
                    .as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or_else(|| {
                        format!("{at}.attributes.{semantic} must be a Draco attribute id, not {id}")
                    })?;
                let acc = attrs
                    .and_then(|a| a.get(semantic))
                    .and_then(|a| a.as_u64())
                    .ok_or_else(|| {
                        format!("{at}: attribute {semantic} is compressed but the primitive has no {semantic} accessor")
                    })?;
                wanted.push((semantic.clone(), acc as usize, Some(id)));
            }
            let mut targets = Vec::new();
            let mut offset = 0usize;
            for (name, accessor, draco_id) in wanted {
                let acc = accessors.get(accessor).ok_or_else(|| {
                    format!(
                        "{at}: {name} refers to accessor {accessor} but there are {} accessors",
                        accessors.len()
                    )
                })?;
                if std::mem::replace(&mut claimed[accessor], true) {
                    return Err(format!(
                        "{at}: accessor {accessor} ({name}) is also decoded for another Draco primitive; each needs its own accessors"
                    ));
                }
                let count = acc
                    .get("count")
                    .and_then(|c| c.as_u64())
                    .map(|c| c as usize)
                    .ok_or_else(|| format!("{at}: accessor {accessor} has no count"))?;
                let component_type = acc
                    .get("componentType")
                    .and_then(|c| c.as_u64())
                    .unwrap_or(0);
                let size = component_size(component_type).ok_or_else(|| {
                    format!("{at}: accessor {accessor} has an unknown componentType")
                })?;
                let comps = acc
                    .get("type")
                    .and_then(|t| t.as_str())
                    .and_then(components)
                    .ok_or_else(|| format!("{at}: accessor {accessor} has an unknown type"))?;
                if draco_id.is_none() && (comps != 1 || component_type == 5126) {
                    return Err(format!(
                        "{at}: index accessor {accessor} must be unsigned integer scalars"
                    ));
                }
                let bytes = count
                    .checked_mul(comps * size)
                    .filter(|&b| b <= MAX_DECODED_BYTES)
                    .ok_or_else(|| {
                        format!("{at}: accessor {accessor} claims {count} elements, more than rayfarm accepts")
                    })?;
                // Elements are 4-byte aligned, as glTF asks of vertex attributes.
                offset = offset.next_multiple_of(4);
                targets.push(Target {
                    accessor,
                    draco_id,
                    name,
                    count,
                    components: comps,
                    component_type,
                    offset,
                });
                offset += bytes;
            }
            total = total.saturating_add(offset);
            if total > MAX_DECODED_BYTES {
                return Err(format!(
                    "{at}: the Draco primitives decode to more than {MAX_DECODED_BYTES} bytes, more than rayfarm accepts"
                ));
            }
            primitives.push(Primitive {
                at,
                view,
                targets,
                buffer: 0,
                byte_length: offset,
            });
        }
    }
    if primitives.is_empty() {
        return Ok(Plan { primitives });
    }
    // Rewrite the JSON: a buffer per primitive, a view per accessor.
    let mut new_buffers = Vec::new();
    let mut new_views = Vec::new();
    for (k, p) in primitives.iter_mut().enumerate() {
        p.buffer = buffer_count + k;
        new_buffers.push(serde_json::json!({ "byteLength": p.byte_length.max(1) }));
        for t in &p.targets {
            let view = view_count + new_views.len();
            let size = component_size(t.component_type).unwrap_or(1) * t.components;
            new_views.push(serde_json::json!({
                "buffer": p.buffer,
                "byteOffset": t.offset,
                "byteLength": (t.count * size).max(1),
            }));
            let acc = &mut raw["accessors"][t.accessor];
            acc["bufferView"] = view.into();
            acc["byteOffset"] = 0.into();
        }
    }
    append(raw, "buffers", new_buffers);
    append(raw, "bufferViews", new_views);
    Ok(Plan { primitives })
}

fn append(raw: &mut Value, key: &str, items: Vec<Value>) {
    match raw.get_mut(key).and_then(|b| b.as_array_mut()) {
        Some(list) => list.extend(items),
        None => raw[key] = Value::Array(items),
    }
}

/// Decodes every planned primitive from its buffer view in the loaded `buffers` (the
/// buffer views' ranges as in `views`: (buffer, offset, length) per view) into its buffer.
pub(super) fn decode(
    plan: &Plan,
    views: &[(usize, usize, usize)],
    buffers: &mut [Vec<u8>],
) -> Result<(), String> {
    for p in &plan.primitives {
        let &(buffer, offset, length) = views
            .get(p.view)
            .ok_or_else(|| format!("{}: buffer view {} does not exist", p.at, p.view))?;
        let src = offset
            .checked_add(length)
            .and_then(|end| buffers.get(buffer)?.get(offset..end))
            .ok_or_else(|| {
                format!(
                    "{}: buffer view {} (offset {offset}, length {length}) lies outside buffer {buffer}",
                    p.at, p.view
                )
            })?;
        let out = decode_primitive(p, src).map_err(|e| format!("{}: {e}", p.at))?;
        let slot = buffers.get_mut(p.buffer).ok_or_else(|| {
            format!(
                "{}: internal error: no buffer slot for the decoded data",
                p.at
            )
        })?;
        *slot = out;
    }
    Ok(())
}

fn decode_primitive(p: &Primitive, src: &[u8]) -> Result<Vec<u8>, String> {
    let points = p
        .targets
        .iter()
        .find(|t| t.draco_id.is_some())
        .map_or(0, |t| t.count);
    let faces = p
        .targets
        .iter()
        .find(|t| t.draco_id.is_none())
        .map_or(0, |t| t.count / 3);
    // The stream may decode to what the accessors declare and no more (decoded attribute bytes
    // may be wider than the accessors', e.g. dequantized floats: allow 4 bytes a component).
    let max_bytes: u64 = p
        .targets
        .iter()
        .map(|t| (t.count * t.components * 4) as u64)
        .sum();
    let limits = draco_core::DecodeLimits::default()
        .with_max_points(points as u64)
        .with_max_faces(faces as u64)
        .with_max_decoded_bytes(max_bytes.max(1));
    let mut buffer = draco_core::DecoderBuffer::new(src).with_limits(limits);
    let mut mesh = draco_core::Mesh::new();
    draco_core::MeshDecoder::new()
        .decode(&mut buffer, &mut mesh)
        .map_err(|e| format!("cannot decode the Draco stream ({} bytes): {e}", src.len()))?;
    // Counts first, so that the output (sized from the accessors) is only allocated for a
    // stream that really decodes to that much.
    for t in &p.targets {
        let (decoded, what) = match t.draco_id {
            None => (mesh.faces().len() * 3, "indices"),
            Some(_) => (mesh.num_points(), "vertices"),
        };
        if decoded != t.count {
            return Err(format!(
                "the Draco stream decodes to {decoded} {what} but accessor {} ({}) has {}",
                t.accessor, t.name, t.count
            ));
        }
    }
    let mut out = vec![0u8; p.byte_length];
    for t in &p.targets {
        let dst = &mut out[t.offset
            ..t.offset + t.count * t.components * component_size(t.component_type).unwrap_or(1)];
        match t.draco_id {
            None => {
                let indices = mesh.faces().iter().flat_map(|f| f.map(|v| v.0 as f64));
                write_values(dst, t.component_type, indices).map_err(|v| {
                    format!(
                        "index {v} does not fit the indices accessor {}'s component type",
                        t.accessor
                    )
                })?;
            }
            Some(id) => {
                let attr = mesh.attribute_by_unique_id(id).ok_or_else(|| {
                    format!(
                        "the Draco stream has no attribute with id {id} ({})",
                        t.name
                    )
                })?;
                let values = attr.read_f32s(t.count, t.components);
                write_values(dst, t.component_type, values.into_iter().map(f64::from)).map_err(
                    |v| {
                        format!(
                            "{} value {v} does not fit accessor {}'s component type",
                            t.name, t.accessor
                        )
                    },
                )?;
            }
        }
    }
    Ok(out)
}

/// Writes `values` little-endian in glTF component type `component_type`. Integer types take
/// the values as they are (Draco decodes integer attributes to their integer values); a value
/// that is not an integer in the type's range is returned as the error.
fn write_values(
    dst: &mut [u8],
    component_type: u64,
    values: impl Iterator<Item = f64>,
) -> Result<(), f64> {
    let size = component_size(component_type).unwrap_or(1);
    for (slot, v) in dst.chunks_exact_mut(size).zip(values) {
        let int = |lo: f64, hi: f64| {
            if v.fract() == 0.0 && (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(v)
            }
        };
        match component_type {
            5120 => slot.copy_from_slice(&(int(-128.0, 127.0)? as i8).to_le_bytes()),
            5121 => slot.copy_from_slice(&(int(0.0, 255.0)? as u8).to_le_bytes()),
            5122 => slot.copy_from_slice(&(int(-32768.0, 32767.0)? as i16).to_le_bytes()),
            5123 => slot.copy_from_slice(&(int(0.0, 65535.0)? as u16).to_le_bytes()),
            5125 => slot.copy_from_slice(&(int(0.0, u32::MAX as f64)? as u32).to_le_bytes()),
            _ => slot.copy_from_slice(&(v as f32).to_le_bytes()),
        }
    }
    Ok(())
}
