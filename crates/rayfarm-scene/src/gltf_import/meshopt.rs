//! EXT_meshopt_compression: buffer views whose bytes are stored meshopt-encoded in another
//! buffer.
//!
//! The importer decodes every compressed view at import, before the gltf crate builds its
//! document: [`plan`] reads the extension objects from the JSON, checks their parameters and
//! points each compressed view at a buffer of its own appended to `buffers` (offset 0), and
//! [`decode`] fills those buffers once the source buffers are loaded. After that the views are
//! ordinary views and the accessor reader never knows they were compressed. Fallback buffers
//! (`EXT_meshopt_compression.fallback: true`, often without a `uri`) are never loaded, as the
//! specification allows for loaders that support the extension.
//!
//! The decoders are meshoptimizer's (C++, built by the `meshopt` crate's build script). They
//! are safe for untrusted input when called as documented, but they `assert` their
//! preconditions (strides, counts, index sizes), and asserts abort in debug builds, so every
//! precondition is checked here first. Sizes claimed by the JSON are bounded before anything
//! is allocated: see [`MAX_DECODED_BYTES`] and [`MAX_EXPANSION`].

use serde_json::Value;

/// Upper bound on the decoded bytes of all compressed views of one file (1 GiB).
pub(super) const MAX_DECODED_BYTES: usize = 1 << 30;

/// Upper bound on decoded bytes per compressed byte. No valid meshopt stream expands more: the
/// vertex codec spends at least one control byte per four byte lanes of a block of at most 256
/// vertices (512:1), the index codecs at least one byte per triangle or index (12:1, 4:1). A
/// view that claims more is refused before its output is allocated.
pub(super) const MAX_EXPANSION: usize = 1024;

const EXT: &str = "EXT_meshopt_compression";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Attributes,
    Triangles,
    Indices,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Filter {
    None,
    Octahedral,
    Quaternion,
    Exponential,
}

/// One compressed buffer view, checked against the specification's rules.
#[derive(Debug)]
struct View {
    index: usize,
    source_buffer: usize,
    source_offset: usize,
    source_length: usize,
    stride: usize,
    count: usize,
    mode: Mode,
    filter: Filter,
    /// The buffer (appended after the file's own) that receives the decoded bytes.
    target_buffer: usize,
}

/// What [`decode`] must do, and which buffers the importer must not load.
#[derive(Debug, Default)]
pub(super) struct Plan {
    views: Vec<View>,
    /// Per buffer of the rewritten JSON: true for fallback buffers and for the buffers that
    /// receive decoded views, which are not loaded from the file.
    pub(super) not_loaded: Vec<bool>,
}

impl Plan {
    pub(super) fn is_empty(&self) -> bool {
        self.views.is_empty()
    }
}

/// Finds the compressed buffer views in the glTF JSON, checks their parameters, appends one
/// buffer per view to `buffers` and points the view at it. Errors name the buffer view.
pub(super) fn plan(raw: &mut Value) -> Result<Plan, String> {
    let buffer_count = raw
        .get("buffers")
        .and_then(|b| b.as_array())
        .map_or(0, |b| b.len());
    let mut not_loaded = vec![false; buffer_count];
    if let Some(buffers) = raw.get("buffers").and_then(|b| b.as_array()) {
        for (i, b) in buffers.iter().enumerate() {
            let fallback = b.get("extensions").and_then(|e| e.get(EXT));
            if let Some(f) = fallback {
                match f.get("fallback") {
                    None | Some(Value::Bool(_)) => {}
                    Some(v) => {
                        return Err(format!(
                            "buffer {i}: {EXT}.fallback must be true or false, not {v}"
                        ))
                    }
                }
            }
            not_loaded[i] = fallback
                .and_then(|f| f.get("fallback"))
                .and_then(|f| f.as_bool())
                .unwrap_or(false);
        }
    }
    let mut views = Vec::new();
    let mut total: usize = 0;
    if let Some(list) = raw.get("bufferViews").and_then(|v| v.as_array()) {
        for (index, view) in list.iter().enumerate() {
            let Some(ext) = view.get("extensions").and_then(|e| e.get(EXT)) else {
                continue;
            };
            let v = parse_view(index, ext, buffer_count)?;
            let bytes = v.count * v.stride; // checked in parse_view
            total = total.saturating_add(bytes);
            if total > MAX_DECODED_BYTES {
                return Err(format!(
                    "buffer view {index}: {EXT}: the compressed views decode to more than {MAX_DECODED_BYTES} bytes, more than rayfarm accepts"
                ));
            }
            views.push(v);
        }
    }
    if views.is_empty() {
        return Ok(Plan { views, not_loaded });
    }
    // Point every compressed view at a buffer of its own, appended after the file's buffers.
    for (k, v) in views.iter_mut().enumerate() {
        v.target_buffer = buffer_count + k;
        let view = &mut raw["bufferViews"][v.index];
        view["buffer"] = v.target_buffer.into();
        view["byteOffset"] = 0.into();
        not_loaded.push(true);
    }
    // glTF requires byteLength >= 1; a view that decodes to 0 bytes gets an empty buffer.
    let new_buffers: Vec<Value> = views
        .iter()
        .map(|v| serde_json::json!({ "byteLength": (v.count * v.stride).max(1) }))
        .collect();
    match raw.get_mut("buffers").and_then(|b| b.as_array_mut()) {
        Some(b) => b.extend(new_buffers),
        None => raw["buffers"] = Value::Array(new_buffers),
    }
    Ok(Plan { views, not_loaded })
}

fn parse_view(index: usize, ext: &Value, buffer_count: usize) -> Result<View, String> {
    let at = format!("buffer view {index}: {EXT}");
    let uint = |key: &str, required: bool| -> Result<usize, String> {
        match ext.get(key) {
            None if !required => Ok(0),
            None => Err(format!("{at} has no {key}")),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| format!("{at}.{key} must be a non-negative integer, not {v}")),
        }
    };
    let source_buffer = uint("buffer", true)?;
    if source_buffer >= buffer_count {
        return Err(format!(
            "{at}.buffer refers to buffer {source_buffer} but there are {buffer_count} buffers"
        ));
    }
    let source_offset = uint("byteOffset", false)?;
    let source_length = uint("byteLength", true)?;
    let stride = uint("byteStride", true)?;
    let count = uint("count", true)?;
    let mode = match ext.get("mode").and_then(|m| m.as_str()) {
        Some("ATTRIBUTES") => Mode::Attributes,
        Some("TRIANGLES") => Mode::Triangles,
        Some("INDICES") => Mode::Indices,
        _ => {
            return Err(format!(
                "{at}.mode must be \"ATTRIBUTES\", \"TRIANGLES\" or \"INDICES\", not {}",
                ext.get("mode").unwrap_or(&Value::Null)
            ))
        }
    };
    let filter = match ext.get("filter").map(|f| f.as_str()) {
        None | Some(Some("NONE")) => Filter::None,
        Some(Some("OCTAHEDRAL")) => Filter::Octahedral,
        Some(Some("QUATERNION")) => Filter::Quaternion,
        Some(Some("EXPONENTIAL")) => Filter::Exponential,
        Some(_) => {
            return Err(format!(
                "{at}.filter must be \"NONE\", \"OCTAHEDRAL\", \"QUATERNION\" or \"EXPONENTIAL\", not {}",
                ext["filter"]
            ))
        }
    };
    // The specification's (and the decoders') constraints on stride, count and filter.
    let stride_ok = match mode {
        Mode::Attributes => stride > 0 && stride <= 256 && stride % 4 == 0,
        Mode::Triangles | Mode::Indices => stride == 2 || stride == 4,
    };
    if !stride_ok {
        return Err(format!(
            "{at}: byteStride {stride} is not allowed in mode {mode:?} (ATTRIBUTES: a multiple of 4 up to 256; TRIANGLES and INDICES: 2 or 4)"
        ));
    }
    if mode == Mode::Triangles && count % 3 != 0 {
        return Err(format!(
            "{at}: count {count} is not a multiple of 3 in mode TRIANGLES"
        ));
    }
    let filter_ok = match filter {
        Filter::None => true,
        _ if mode != Mode::Attributes => false,
        Filter::Octahedral => stride == 4 || stride == 8,
        Filter::Quaternion => stride == 8,
        Filter::Exponential => true, // any ATTRIBUTES stride (a multiple of 4)
    };
    if !filter_ok {
        return Err(format!(
            "{at}: filter {filter:?} is not allowed with mode {mode:?} and byteStride {stride}"
        ));
    }
    let decoded = count
        .checked_mul(stride)
        .filter(|&d| d <= MAX_DECODED_BYTES)
        .ok_or_else(|| {
            format!("{at}: {count} elements of {stride} bytes are more than rayfarm accepts")
        })?;
    if decoded
        > source_length
            .saturating_mul(MAX_EXPANSION)
            .saturating_add(4096)
    {
        return Err(format!(
            "{at}: {source_length} compressed bytes cannot hold {count} elements of {stride} bytes"
        ));
    }
    Ok(View {
        index,
        source_buffer,
        source_offset,
        source_length,
        stride,
        count,
        mode,
        filter,
        target_buffer: usize::MAX,
    })
}

/// Decodes every planned view from the loaded `buffers` into its target buffer (pushed in
/// order: `buffers` must hold exactly the file's own buffers plus one slot per planned view).
pub(super) fn decode(plan: &Plan, buffers: &mut [Vec<u8>]) -> Result<(), String> {
    for v in &plan.views {
        let at = format!("buffer view {}: {EXT}", v.index);
        let src = buffers.get(v.source_buffer).ok_or_else(|| {
            format!(
                "{at}.buffer refers to buffer {} which is not loaded",
                v.source_buffer
            )
        })?;
        if plan.not_loaded.get(v.source_buffer) == Some(&true) {
            return Err(format!(
                "{at}.buffer refers to buffer {}, a fallback buffer with no data",
                v.source_buffer
            ));
        }
        let data = v
            .source_offset
            .checked_add(v.source_length)
            .and_then(|end| src.get(v.source_offset..end))
            .ok_or_else(|| {
                format!(
                    "{at}: the compressed data (offset {}, length {}) lies outside buffer {} ({} bytes)",
                    v.source_offset,
                    v.source_length,
                    v.source_buffer,
                    src.len()
                )
            })?;
        let decoded = decode_view(v, data).map_err(|e| format!("{at}: {e}"))?;
        let slot = buffers
            .get_mut(v.target_buffer)
            .ok_or_else(|| format!("{at}: internal error: no buffer slot for the decoded data"))?;
        *slot = decoded;
    }
    Ok(())
}

/// Decodes one view's stream and applies its filter. Returns `count * stride` bytes.
fn decode_view(v: &View, data: &[u8]) -> Result<Vec<u8>, String> {
    let len = v.count * v.stride;
    if v.count == 0 {
        return Ok(Vec::new());
    }
    // Decode into u32 words: the decoders and filters write 16- and 32-bit values through
    // typed pointers, which must be aligned.
    let mut words = vec![0u32; len.div_ceil(4)];
    let dst = words.as_mut_ptr().cast::<std::ffi::c_void>();
    // SAFETY: `dst` has room for `count * stride` bytes; the strides, counts and index sizes
    // were checked against each function's preconditions in `parse_view`; the decoders bound
    // every read by `data.len()`.
    let rc = unsafe {
        match v.mode {
            Mode::Attributes => meshopt::ffi::meshopt_decodeVertexBuffer(
                dst,
                v.count,
                v.stride,
                data.as_ptr(),
                data.len(),
            ),
            Mode::Triangles => meshopt::ffi::meshopt_decodeIndexBuffer(
                dst,
                v.count,
                v.stride,
                data.as_ptr(),
                data.len(),
            ),
            Mode::Indices => meshopt::ffi::meshopt_decodeIndexSequence(
                dst,
                v.count,
                v.stride,
                data.as_ptr(),
                data.len(),
            ),
        }
    };
    if rc != 0 {
        return Err(format!(
            "cannot decode the {:?} stream ({} bytes) into {} elements of {} bytes: the data is corrupt or truncated (meshoptimizer error {rc})",
            v.mode,
            data.len(),
            v.count,
            v.stride
        ));
    }
    // SAFETY: as above; each filter's stride condition was checked in `parse_view`.
    unsafe {
        match v.filter {
            Filter::None => {}
            Filter::Octahedral => meshopt::ffi::meshopt_decodeFilterOct(dst, v.count, v.stride),
            Filter::Quaternion => meshopt::ffi::meshopt_decodeFilterQuat(dst, v.count, v.stride),
            Filter::Exponential => meshopt::ffi::meshopt_decodeFilterExp(dst, v.count, v.stride),
        }
    }
    let mut out: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshopt::ffi;

    fn view(mode: Mode, filter: Filter, stride: usize, count: usize) -> View {
        View {
            index: 0,
            source_buffer: 0,
            source_offset: 0,
            source_length: 0,
            stride,
            count,
            mode,
            filter,
            target_buffer: 1,
        }
    }

    fn encode_vertices(bytes: &[u8], stride: usize) -> Vec<u8> {
        let count = bytes.len() / stride;
        // SAFETY: the bound is computed for exactly this count and stride.
        unsafe {
            let mut out = vec![0u8; ffi::meshopt_encodeVertexBufferBound(count, stride)];
            let n = ffi::meshopt_encodeVertexBuffer(
                out.as_mut_ptr(),
                out.len(),
                bytes.as_ptr().cast(),
                count,
                stride,
            );
            out.truncate(n);
            out
        }
    }

    fn floats(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// Encodes `values` (`per` floats per element) with `encode_filter` into `stride`-byte
    /// elements, then meshopt-encodes those; returns the stream and the element count.
    fn filtered(
        values: &[f32],
        per: usize,
        stride: usize,
        encode_filter: impl Fn(*mut std::ffi::c_void, usize, *const f32),
    ) -> (Vec<u8>, usize) {
        let count = values.len() / per;
        let mut words = vec![0u32; count * stride / 4];
        encode_filter(words.as_mut_ptr().cast(), count, values.as_ptr());
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        (encode_vertices(&bytes, stride), count)
    }

    #[test]
    fn octahedral_normals_decode_to_unit_vectors() {
        let normals = [
            0.0f32, 0.0, 1.0, 0.6, 0.0, 0.8, -0.48, 0.6, -0.64, 0.0, -1.0, 0.0,
        ];
        for (stride, bits, tol) in [(4usize, 8, 0.02f32), (8, 16, 1e-4)] {
            // The encoder wants 4 floats per element (w is kept).
            let padded: Vec<f32> = normals
                .chunks(3)
                .flat_map(|n| [n[0], n[1], n[2], 0.0])
                .collect();
            let (stream, count) = filtered(&padded, 4, stride, |dst, n, src| unsafe {
                ffi::meshopt_encodeFilterOct(dst, n, stride, bits, src)
            });
            let out = decode_view(
                &view(Mode::Attributes, Filter::Octahedral, stride, count),
                &stream,
            )
            .unwrap();
            assert_eq!(out.len(), count * stride);
            for (i, n) in normals.chunks(3).enumerate() {
                let e = &out[i * stride..(i + 1) * stride];
                let c = stride / 4; // bytes per component
                let get = |k: usize| -> f32 {
                    if c == 1 {
                        e[k] as i8 as f32 / 127.0
                    } else {
                        i16::from_le_bytes([e[2 * k], e[2 * k + 1]]) as f32 / 32767.0
                    }
                };
                for (k, &want) in n.iter().enumerate() {
                    let got = get(k);
                    assert!(
                        (got - want).abs() <= tol,
                        "stride {stride}: {i}.{k}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn quaternion_and_exponential_filters_round_trip() {
        let h = std::f32::consts::FRAC_1_SQRT_2;
        let quats = [0.0f32, 0.0, 0.0, 1.0, h, 0.0, 0.0, h, 0.5, -0.5, 0.5, 0.5];
        let (stream, count) = filtered(&quats, 4, 8, |dst, n, src| unsafe {
            ffi::meshopt_encodeFilterQuat(dst, n, 8, 16, src)
        });
        let out = decode_view(
            &view(Mode::Attributes, Filter::Quaternion, 8, count),
            &stream,
        )
        .unwrap();
        for (i, q) in quats.chunks(4).enumerate() {
            let e = &out[i * 8..i * 8 + 8];
            let d: Vec<f32> = (0..4)
                .map(|k| i16::from_le_bytes([e[2 * k], e[2 * k + 1]]) as f32 / 32767.0)
                .collect();
            // q and -q are the same rotation.
            let sign = if d.iter().zip(q).map(|(a, b)| a * b).sum::<f32>() < 0.0 {
                -1.0
            } else {
                1.0
            };
            for k in 0..4 {
                assert!((sign * d[k] - q[k]).abs() < 1e-3, "{i}.{k}: {d:?} vs {q:?}");
            }
        }

        let positions = [1.5f32, -2.25, 1000.0, 1e-3, 0.0, -7.0];
        let (stream, count) = filtered(&positions, 3, 12, |dst, n, src| unsafe {
            ffi::meshopt_encodeFilterExp(
                dst,
                n,
                12,
                24,
                src,
                ffi::meshopt_EncodeExpMode_meshopt_EncodeExpSeparate,
            )
        });
        let out = decode_view(
            &view(Mode::Attributes, Filter::Exponential, 12, count),
            &stream,
        )
        .unwrap();
        for (d, p) in floats(&out).iter().zip(positions) {
            assert!((d - p).abs() <= p.abs() * 1e-6, "{d} vs {p}");
        }
    }

    #[test]
    fn index_sequences_and_triangles_decode() {
        // The TRIANGLES codec may rotate a triangle's corners (7, 5, 6 comes back as 5, 6, 7);
        // these come back as they are.
        let indices: Vec<u32> = vec![0, 1, 2, 2, 1, 3, 3, 1, 4, 5, 6, 7];
        for (mode, encode) in [
            (
                Mode::Triangles,
                ffi::meshopt_encodeIndexBuffer
                    as unsafe extern "C" fn(*mut u8, usize, *const u32, usize) -> usize,
            ),
            (Mode::Indices, ffi::meshopt_encodeIndexSequence),
        ] {
            let mut stream = vec![0u8; 1024];
            // SAFETY: 1024 bytes are far more than the bound for 12 indices.
            let n = unsafe {
                encode(
                    stream.as_mut_ptr(),
                    stream.len(),
                    indices.as_ptr(),
                    indices.len(),
                )
            };
            stream.truncate(n);
            for stride in [2usize, 4] {
                let out =
                    decode_view(&view(mode, Filter::None, stride, indices.len()), &stream).unwrap();
                let got: Vec<u32> = out
                    .chunks_exact(stride)
                    .map(|c| {
                        if stride == 2 {
                            u16::from_le_bytes([c[0], c[1]]) as u32
                        } else {
                            u32::from_le_bytes(c.try_into().unwrap())
                        }
                    })
                    .collect();
                assert_eq!(got, indices, "{mode:?} stride {stride}");
                // Every truncation is an error, never a panic or garbage of the wrong length.
                for cut in 0..stream.len() {
                    let r = decode_view(
                        &view(mode, Filter::None, stride, indices.len()),
                        &stream[..cut],
                    );
                    assert!(r.is_err(), "{mode:?} cut to {cut} bytes decoded");
                }
            }
        }
    }

    #[test]
    fn every_truncation_of_a_vertex_stream_is_an_error() {
        let bytes: Vec<u8> = (0..40u32)
            .flat_map(|i| (i as f32 * 0.37).to_le_bytes())
            .collect();
        let stream = encode_vertices(&bytes, 8);
        let v = view(Mode::Attributes, Filter::None, 8, 20);
        assert_eq!(decode_view(&v, &stream).unwrap(), bytes);
        for cut in 0..stream.len() {
            assert!(
                decode_view(&v, &stream[..cut]).is_err(),
                "cut to {cut} bytes decoded"
            );
        }
    }

    #[test]
    fn plan_checks_parameters_before_allocating() {
        let json = |ext: &str| -> Value {
            serde_json::from_str(&format!(
                r#"{{"buffers":[{{"byteLength":10}}],"bufferViews":[{{"buffer":0,"byteLength":4,
                "extensions":{{"EXT_meshopt_compression":{ext}}}}}]}}"#
            ))
            .unwrap()
        };
        for (ext, expected) in [
            (
                r#"{"buffer":0,"byteLength":10,"byteStride":4,"count":1}"#,
                "mode must be",
            ),
            (
                r#"{"buffer":0,"byteLength":10,"byteStride":260,"count":1,"mode":"ATTRIBUTES"}"#,
                "byteStride 260 is not allowed",
            ),
            (
                r#"{"buffer":0,"byteLength":10,"byteStride":3,"count":3,"mode":"TRIANGLES"}"#,
                "byteStride 3 is not allowed",
            ),
            (
                r#"{"buffer":0,"byteLength":10,"byteStride":4,"count":1,"mode":"INDICES","filter":"EXPONENTIAL"}"#,
                "filter Exponential is not allowed",
            ),
            (
                r#"{"buffer":0,"byteLength":10,"byteStride":12,"count":1,"mode":"ATTRIBUTES","filter":"OCTAHEDRAL"}"#,
                "filter Octahedral is not allowed",
            ),
            (
                r#"{"buffer":0,"byteLength":10,"byteStride":4,"count":1,"mode":"ATTRIBUTES","filter":"SMOOTH"}"#,
                "filter must be",
            ),
            (
                r#"{"buffer":0,"byteLength":-1,"byteStride":4,"count":1,"mode":"ATTRIBUTES"}"#,
                "byteLength must be a non-negative integer",
            ),
            (
                r#"{"buffer":0,"byteLength":1,"byteStride":256,"count":100000000,"mode":"ATTRIBUTES"}"#,
                "more than rayfarm accepts",
            ),
        ] {
            let e = plan(&mut json(ext)).unwrap_err();
            assert!(
                e.starts_with("buffer view 0: EXT_meshopt_compression"),
                "{e}"
            );
            assert!(e.contains(expected), "expected '{expected}' in: {e}");
        }
        // A valid view is pointed at a new buffer, and the fallback flag is honoured.
        let mut j =
            json(r#"{"buffer":0,"byteLength":10,"byteStride":4,"count":1,"mode":"ATTRIBUTES"}"#);
        j["buffers"][0]["extensions"] =
            serde_json::json!({"EXT_meshopt_compression":{"fallback":true}});
        let p = plan(&mut j).unwrap();
        assert_eq!(p.not_loaded, vec![true, true]);
        assert_eq!(j["bufferViews"][0]["buffer"], 1);
        assert_eq!(j["buffers"][1]["byteLength"], 4);
    }
}
