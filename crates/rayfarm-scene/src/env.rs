//! Environment maps: equirectangular Radiance `.hdr` and OpenEXR `.exr` files.

use crate::types::Environment;
use crate::SceneError;
use std::path::Path;

/// Largest environment map accepted, in texels per side.
pub const MAX_ENV_SIDE: u32 = 32768;

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
            let file = std::fs::File::open(path).map_err(|e| SceneError::io(path, e))?;
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
            let img = exr::prelude::read_first_rgba_layer_from_file(
                path,
                |res, _| {
                    let (w, h) = (res.width(), res.height());
                    (w, h, vec![[0f32; 3]; w.saturating_mul(h)])
                },
                |(w, _h, px), pos, (r, g, b, _a): (f32, f32, f32, f32)| {
                    px[pos.y() * *w + pos.x()] = [r, g, b];
                },
            )
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
    if width == 0 || height == 0 || width > MAX_ENV_SIDE || height > MAX_ENV_SIDE {
        return Err(SceneError::invalid(
            path,
            format!("environment map size {width}x{height} is not usable"),
        ));
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
