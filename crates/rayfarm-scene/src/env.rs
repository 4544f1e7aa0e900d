//! Environment maps: equirectangular Radiance `.hdr` and OpenEXR `.exr` files.

use crate::types::Environment;
use crate::SceneError;
use std::path::Path;

/// Largest environment map accepted, in texels per side.
pub const MAX_ENV_SIDE: u32 = 32768;
/// Most texels an environment map may have: 2^28 (a 32768 x 8192 or 16384 x 16384 map), 3 GiB
/// as decoded RGB and 4 GiB more prepared for rendering. A 16k HDRI (16384 x 8192) is half.
pub const MAX_ENV_TEXELS: u64 = 1 << 28;

/// Why a map of `width` x `height` is refused, or `None`.
fn size_problem(width: u64, height: u64) -> Option<String> {
    if width == 0 || height == 0 || width > MAX_ENV_SIDE as u64 || height > MAX_ENV_SIDE as u64 {
        return Some(format!(
            "environment map size {width}x{height} is not usable (each side 1 to {MAX_ENV_SIDE})"
        ));
    }
    (width * height > MAX_ENV_TEXELS).then(|| {
        format!(
            "environment map size {width}x{height} has more than {} M texels",
            MAX_ENV_TEXELS >> 20
        )
    })
}

/// Loads an equirectangular environment map (linear radiance). The top row is +Y (up); the
/// mapping from direction to texel is documented in rayfarm-render's `env` module.
pub fn load_env_map(path: &Path) -> Result<Environment, SceneError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    let (width, height, texels) = match ext.as_str() {
        "hdr" => {
            let file = crate::open_regular_file(path).map_err(|e| SceneError::io(path, e))?;
            let reader = image::ImageReader::with_format(
                std::io::BufReader::new(file),
                image::ImageFormat::Hdr,
            );
            let img = reader
                .decode()
                .map_err(|e| SceneError::invalid(path, format!("cannot decode HDR image: {e}")))?
                .to_rgb32f();
            let (w, h) = img.dimensions();
            let texels = img.pixels().map(|p| p.0).collect::<Vec<_>>();
            (w, h, texels)
        }
        "exr" => {
            use exr::prelude::traits::*;
            use std::io::{Seek, SeekFrom};
            // A regular file (a named pipe would block the reads below forever), opened once:
            // the header checked below and the pixels read after it come from the same file,
            // even if the path is replaced in between.
            let mut file = crate::open_regular_file(path).map_err(|e| SceneError::io(path, e))?;
            // The header's size before anything is allocated: the pixels' buffer is made from
            // it, and a 313-byte file declaring 65536 x 65536 asked for 48 GiB.
            let meta =
                exr::meta::MetaData::read_from_buffered(std::io::BufReader::new(&file), false)
                    .map_err(|e| {
                        SceneError::invalid(path, format!("cannot read EXR image: {e}"))
                    })?;
            for header in meta.headers.iter() {
                let size = header.layer_size;
                if let Some(problem) = size_problem(size.width() as u64, size.height() as u64) {
                    return Err(SceneError::invalid(path, problem));
                }
            }
            file.seek(SeekFrom::Start(0))
                .map_err(|e| SceneError::io(path, e))?;
            let img = exr::prelude::read()
                .no_deep_data()
                .largest_resolution_level()
                .rgba_channels(
                    |res, _| {
                        let (w, h) = (res.width(), res.height());
                        (w, h, vec![[0f32; 3]; w.saturating_mul(h)])
                    },
                    |(w, _h, px): &mut (usize, usize, Vec<[f32; 3]>),
                     pos,
                     (r, g, b, _a): (f32, f32, f32, f32)| {
                        px[pos.y() * *w + pos.x()] = [r, g, b];
                    },
                )
                .first_valid_layer()
                .all_attributes()
                .from_buffered(std::io::BufReader::new(file))
                .map_err(|e| SceneError::invalid(path, format!("cannot read EXR image: {e}")))?;
            let (w, h, px) = img.layer_data.channel_data.pixels;
            (w as u32, h as u32, px)
        }
        _ => {
            return Err(SceneError::invalid(
                path,
                "environment maps must be equirectangular .hdr or .exr files",
            ))
        }
    };
    if let Some(problem) = size_problem(width as u64, height as u64) {
        return Err(SceneError::invalid(path, problem));
    }
    let texels = texels
        .into_iter()
        .map(|t| t.map(|c| if c.is_finite() { c.max(0.0) } else { 0.0 }))
        .collect();
    Ok(Environment::Map {
        width,
        height,
        texels,
    })
}
