//! KHR_texture_basisu: KTX2 images decoded to RGBA8 at import.
//!
//! Basis Universal payloads (ETC1S with BasisLZ, UASTC raw or Zstandard-supercompressed) are
//! transcoded by the `basisu` crate (pure Rust, a port of the reference transcoder);
//! uncompressed 8-bit formats (R8, R8G8, R8G8B8, R8G8B8A8, UNORM or SRGB), raw or
//! Zstandard-supercompressed, are read here. Only the base level of a 2D texture is used.
//!
//! The header, the level index and every range in it are checked here, and the dimensions
//! bounded, before any payload is handed to a decoder or any output allocated: a KTX2 file is
//! untrusted input, and the transcoder trusts some header fields (it sizes its zstd output by
//! the level's `uncompressedByteLength`, for one).

/// Largest width or height accepted (16384, as GPUs' usual texture limit).
pub(super) const MAX_SIDE_PX: u32 = 16384;

/// Largest texel count accepted: 2^27 texels are 512 MiB of RGBA8, the `image` crate's default
/// allocation limit for the other formats.
pub(super) const MAX_TEXELS: u64 = 1 << 27;

const IDENTIFIER: [u8; 12] = [
    0xAB, 0x4B, 0x54, 0x58, 0x20, 0x32, 0x30, 0xBB, 0x0D, 0x0A, 0x1A, 0x0A,
];
const HEADER_BYTES: usize = 80;
const LEVEL_INDEX_ENTRY_BYTES: usize = 24;
const SUPERCOMPRESSION_NONE: u32 = 0;
const SUPERCOMPRESSION_BASISLZ: u32 = 1;
const SUPERCOMPRESSION_ZSTD: u32 = 2;

/// Whether `bytes` start with the KTX 2.0 file identifier.
pub(super) fn is_ktx2(bytes: &[u8]) -> bool {
    bytes.starts_with(&IDENTIFIER)
}

/// A decoded image: width, height and RGBA8 texels, rows top to bottom.
pub(super) struct Rgba8 {
    pub width: u32,
    pub height: u32,
    pub texels: Vec<u8>,
}

/// The fields of the KTX2 header that decoding needs, all ranges checked against the file.
struct Header {
    vk_format: u32,
    width: u32,
    height: u32,
    supercompression: u32,
    /// Level 0: byte range in the file and uncompressed length.
    level0: (usize, usize, u64),
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// `offset .. offset + length` as a range inside a file of `file_len` bytes, or a message.
fn range_in(
    what: &str,
    offset: u64,
    length: u64,
    file_len: usize,
) -> Result<(usize, usize), String> {
    match offset.checked_add(length) {
        Some(end) if end <= file_len as u64 => Ok((offset as usize, end as usize)),
        _ => Err(format!(
            "{what} (offset {offset}, length {length}) lies outside the file ({file_len} bytes); is it truncated?"
        )),
    }
}

fn parse_header(b: &[u8]) -> Result<Header, String> {
    if !is_ktx2(b) {
        return Err("not a KTX2 file (no KTX 2.0 identifier)".into());
    }
    if b.len() < HEADER_BYTES {
        return Err(format!(
            "the file has {} bytes, fewer than the {HEADER_BYTES}-byte KTX2 header; is it truncated?",
            b.len()
        ));
    }
    let vk_format = u32_at(b, 12);
    let (width, height, depth) = (u32_at(b, 20), u32_at(b, 24), u32_at(b, 28));
    let (layers, faces, levels) = (u32_at(b, 32), u32_at(b, 36), u32_at(b, 40));
    let supercompression = u32_at(b, 44);
    if width == 0 || height == 0 || depth != 0 || layers > 1 || faces != 1 {
        return Err(format!(
            "only 2D textures are supported (this one is {width} x {height} x {depth} texels, {layers} layers, {faces} faces)"
        ));
    }
    if width > MAX_SIDE_PX || height > MAX_SIDE_PX || width as u64 * height as u64 > MAX_TEXELS {
        return Err(format!(
            "{width} x {height} texels is larger than rayfarm accepts (at most {MAX_SIDE_PX} per side and {MAX_TEXELS} texels)"
        ));
    }
    if levels > 32 {
        return Err(format!("levelCount {levels} is more than 32"));
    }
    // The level index has max(levelCount, 1) entries; every range in it and in the header must
    // lie inside the file (the transcoder adds offsets and lengths unchecked).
    let entries = levels.max(1) as usize;
    let index_end = HEADER_BYTES + entries * LEVEL_INDEX_ENTRY_BYTES;
    if index_end > b.len() {
        return Err(format!(
            "the level index ({entries} levels) ends at byte {index_end} but the file has {} bytes; is it truncated?",
            b.len()
        ));
    }
    let header_ranges = [
        (
            "the data format descriptor",
            u32_at(b, 48).into(),
            u32_at(b, 52).into(),
        ),
        (
            "the key/value data",
            u32_at(b, 56).into(),
            u32_at(b, 60).into(),
        ),
        (
            "the supercompression global data",
            u64_at(b, 64),
            u64_at(b, 72),
        ),
    ];
    for (what, offset, length) in header_ranges {
        range_in(what, offset, length, b.len())?;
    }
    let kvd_start = u32_at(b, 56) as usize;
    check_key_value_data(b, kvd_start, kvd_start + u32_at(b, 60) as usize)?;
    let mut level0 = (0, 0, 0);
    for i in 0..entries {
        let at = HEADER_BYTES + i * LEVEL_INDEX_ENTRY_BYTES;
        let (start, end) = range_in(
            &format!("level {i}"),
            u64_at(b, at),
            u64_at(b, at + 8),
            b.len(),
        )?;
        if i == 0 {
            level0 = (start, end, u64_at(b, at + 16));
        }
    }
    Ok(Header {
        vk_format,
        width,
        height,
        supercompression,
        level0,
    })
}

/// Walks the key/value entries in `b[start..end]` (each a u32 length, then that many bytes,
/// padded to 4 bytes from the start of the file) as the transcoder does, and refuses an entry
/// whose padding runs past the end of the data: the transcoder's scan subtracts past zero
/// there (found by fuzzing `ktx2_decode`; basisu 0.1.0, `has_kvd_key`).
fn check_key_value_data(b: &[u8], start: usize, end: usize) -> Result<(), String> {
    let mut p = start;
    while end.saturating_sub(p) > 4 {
        let length = u32_at(b, p) as usize;
        p += 4;
        if length < 2 || end - p < length {
            return Ok(()); // the transcoder stops here too
        }
        p += length;
        p += (4 - (p & 3)) & 3;
        if p > end {
            return Err(format!(
                "the key/value data (bytes {start} to {end}) ends inside the padding of an entry"
            ));
        }
    }
    Ok(())
}

/// Bytes per texel of the uncompressed 8-bit Vulkan formats we read, or None.
fn uncompressed_bytes_per_texel(vk_format: u32) -> Option<usize> {
    match vk_format {
        9 | 15 => Some(1),  // R8_UNORM, R8_SRGB
        16 | 22 => Some(2), // R8G8_UNORM, R8G8_SRGB
        23 | 29 => Some(3), // R8G8B8_UNORM, R8G8B8_SRGB
        37 | 43 => Some(4), // R8G8B8A8_UNORM, R8G8B8A8_SRGB
        _ => None,
    }
}

/// Decodes the base level of a KTX2 file to RGBA8.
pub(super) fn decode(bytes: &[u8]) -> Result<Rgba8, String> {
    let h = parse_header(bytes)?;
    let texels = h.width as usize * h.height as usize; // bounded by MAX_TEXELS
    let (start, end, uncompressed) = h.level0;
    let rgba = if h.vk_format == 0 {
        decode_basis(bytes, &h, texels)?
    } else if let Some(bpp) = uncompressed_bytes_per_texel(h.vk_format) {
        let want = texels * bpp;
        let level = &bytes[start..end];
        let raw = match h.supercompression {
            SUPERCOMPRESSION_NONE => level.to_vec(),
            SUPERCOMPRESSION_ZSTD => {
                if uncompressed != want as u64 {
                    return Err(format!(
                        "level 0 claims {uncompressed} uncompressed bytes, but {} x {} texels of {bpp} bytes are {want}",
                        h.width, h.height
                    ));
                }
                zstd::bulk::decompress(level, want)
                    .map_err(|e| format!("cannot decompress level 0 (Zstandard): {e}"))?
            }
            s => {
                return Err(format!(
                    "supercompression scheme {s} is not supported for vkFormat {} (only none and Zstandard)",
                    h.vk_format
                ))
            }
        };
        if raw.len() != want {
            return Err(format!(
                "level 0 holds {} bytes, but {} x {} texels of {bpp} bytes are {want}",
                raw.len(),
                h.width,
                h.height
            ));
        }
        let mut out = Vec::with_capacity(texels * 4);
        for t in raw.chunks_exact(bpp) {
            out.extend_from_slice(&match *t {
                [r] => [r, r, r, 255],
                [r, g] => [r, g, 0, 255],
                [r, g, b] => [r, g, b, 255],
                [r, g, b, a] => [r, g, b, a],
                _ => unreachable!("chunks of 1 to 4 bytes"),
            });
        }
        out
    } else {
        return Err(format!(
            "vkFormat {} is not supported (only Basis Universal and 8-bit R, RG, RGB and RGBA)",
            h.vk_format
        ));
    };
    Ok(Rgba8 {
        width: h.width,
        height: h.height,
        texels: rgba,
    })
}

/// Transcodes a Basis Universal payload (ETC1S or UASTC) to RGBA8.
fn decode_basis(bytes: &[u8], h: &Header, texels: usize) -> Result<Vec<u8>, String> {
    let (_, _, uncompressed) = h.level0;
    match h.supercompression {
        SUPERCOMPRESSION_BASISLZ | SUPERCOMPRESSION_NONE => {}
        SUPERCOMPRESSION_ZSTD => {
            // UASTC: 16 bytes per 4x4 block. The transcoder allocates what the level claims.
            let blocks = h.width.div_ceil(4) as u64 * h.height.div_ceil(4) as u64;
            if uncompressed != blocks * 16 {
                return Err(format!(
                    "level 0 claims {uncompressed} uncompressed bytes, but {} x {} texels of UASTC are {}",
                    h.width,
                    h.height,
                    blocks * 16
                ));
            }
        }
        s => {
            return Err(format!(
                "supercompression scheme {s} is not supported for Basis Universal data"
            ))
        }
    }
    // The transcoder is a large port of C++ code; a panic in it on some input we did not
    // foresee must still be one error line, not a crash of the importer.
    let result = std::panic::catch_unwind(|| -> Result<Vec<u8>, String> {
        let t = basisu::Transcoder::new(bytes)
            .map_err(|e| format!("not a valid Basis Universal KTX2 file ({e:?})"))?;
        if t.base_dimensions() != (h.width, h.height) {
            return Err("the transcoder reads other dimensions than the header's".into());
        }
        t.transcode(0, basisu::TargetFormat::Rgba32, basisu::DecodeFlags::NONE)
            .map_err(|e| {
                format!("cannot transcode level 0 ({e:?}); the data is corrupt or truncated")
            })
    });
    let rgba = result.unwrap_or_else(|_| Err("the Basis Universal transcoder failed".into()))?;
    if rgba.len() != texels * 4 {
        return Err(format!(
            "the transcoder returned {} bytes for {} x {} texels",
            rgba.len(),
            h.width,
            h.height
        ));
    }
    Ok(rgba)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> Vec<(&'static str, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/compressed");
        [
            "texture_etc1s.ktx2",
            "texture_uastc.ktx2",
            "texture_uastc_zstd.ktx2",
            "texture_rgba8_zstd.ktx2",
        ]
        .into_iter()
        .map(|n| (n, std::fs::read(dir.join(n)).unwrap()))
        .collect()
    }

    /// Regression (fuzz): a key/value entry whose padding runs past the end of the key/value
    /// data made basisu 0.1.0's scan for the `KTXanimData` key subtract past zero (a panic
    /// with debug assertions). Such files are refused before the transcoder sees them.
    #[test]
    fn key_value_entry_padded_past_its_data() {
        for (name, mut bytes) in files() {
            bytes.resize(bytes.len().next_multiple_of(4), 0);
            let kvd_offset = bytes.len() as u32;
            bytes.extend_from_slice(&5u32.to_le_bytes());
            bytes.extend_from_slice(b"ab\0cd");
            bytes[56..60].copy_from_slice(&kvd_offset.to_le_bytes());
            bytes[60..64].copy_from_slice(&9u32.to_le_bytes());
            let e = decode(&bytes).err().unwrap_or_default();
            assert!(
                e.contains("ends inside the padding of an entry"),
                "{name}: {e}"
            );
        }
    }

    /// Regression (fuzz): a corrupt ETC1S stream whose endpoint-predictor repeat count
    /// overflows u32 in basisu 0.1.0 (`decode_slice_indices`). The reference C++ wraps; with
    /// overflow checks the port panicked. The workspace builds basisu without them everywhere,
    /// so this decodes (to garbage) or fails, but never reaches the panic catcher.
    #[test]
    fn etc1s_repeat_count_overflow() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/compressed");
        let bytes = std::fs::read(dir.join("fuzz_etc1s_repeat_count_overflow.ktx2")).unwrap();
        if let Err(e) = decode(&bytes) {
            assert!(!e.contains("transcoder failed"), "{e}");
        }
    }

    /// Whatever the damage, the decoder gives a 32 x 32 image or an error, and the transcoder
    /// never panics (its panics are caught and reported as "the ... transcoder failed").
    #[test]
    fn every_truncation_and_flipped_byte_is_handled() {
        for (name, bytes) in files() {
            let k = decode(&bytes).unwrap();
            assert_eq!(
                (k.width, k.height, k.texels.len()),
                (32, 32, 4096),
                "{name}"
            );
            let check = |b: &[u8], what: &str| match decode(b) {
                Ok(k) => assert_eq!(k.texels.len(), k.width as usize * k.height as usize * 4),
                Err(e) => assert!(!e.contains("transcoder failed"), "{name} {what}: {e}"),
            };
            for cut in 0..bytes.len() {
                assert!(
                    decode(&bytes[..cut]).is_err(),
                    "{name} cut to {cut} bytes decoded"
                );
            }
            for at in 0..bytes.len() {
                let mut b = bytes.clone();
                b[at] ^= 0xff;
                check(&b, &format!("byte {at} flipped"));
            }
        }
    }
}
