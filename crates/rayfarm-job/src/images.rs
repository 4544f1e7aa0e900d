//! Writing rendered images: the one place that turns a render's linear pixels into `.exr` or
//! `.png` bytes.
//!
//! `rayfarm render` (local or network) and the merge of a farm render job both write through
//! [`write_image`], so the same pixels give the same file byte for byte whichever path
//! produced them. `.exr` is linear float (32-bit, or 16-bit with `half`), with exr's lossless
//! blocks in increasing order (its default order depends on thread timing); `.png` is 8-bit
//! sRGB after exposure and tone mapping. Files are written atomically
//! ([`crate::maps::write_atomic`]).

use crate::maps::{write_atomic, MapError};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How `.png` output maps linear radiance (after exposure) to [0, 1].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToneMap {
    /// Clamp to [0, 1]: faithful below 1, highlights burn out.
    #[default]
    Clamp,
    /// The ACES filmic curve fitted by Narkowicz (2015): compresses highlights smoothly.
    Aces,
}

/// The image formats a render can be written as, by file extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    Exr,
    Png,
}

/// A file name whose extension names no image format rayfarm writes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}: unknown output format; use .exr (linear float) or .png (8-bit sRGB)", path.display())]
pub struct UnknownFormat {
    pub path: std::path::PathBuf,
}

/// Why an image could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    #[error("a {width}x{height} image needs {expected} pixels but {given} were given")]
    PixelCount {
        width: u32,
        height: u32,
        expected: u64,
        given: usize,
    },
    #[error("cannot encode EXR: {0}")]
    Exr(exr::error::Error),
    #[error("cannot encode PNG: {0}")]
    Png(image::ImageError),
}

impl ImageFormat {
    /// The format `path`'s extension names (case-insensitive), or an error saying which
    /// extensions exist.
    pub fn of(path: &Path) -> Result<ImageFormat, UnknownFormat> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase())
            .unwrap_or_default();
        match ext.as_str() {
            "exr" => Ok(ImageFormat::Exr),
            "png" => Ok(ImageFormat::Png),
            _ => Err(UnknownFormat {
                path: path.to_path_buf(),
            }),
        }
    }
}

/// How an image is encoded besides its pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ImageSettings {
    /// 16-bit half floats in EXR instead of 32-bit.
    pub half: bool,
    /// Stops of exposure applied to PNG output (EXR stays linear).
    pub exposure_ev: f32,
    pub tonemap: ToneMap,
}

fn aces(x: f32) -> f32 {
    let (a, b, c, d, e) = (2.51, 0.03, 2.43, 0.59, 0.14);
    ((x * (a * x + b)) / (x * (c * x + d) + e)).clamp(0.0, 1.0)
}

/// Linear RGB to 8-bit sRGB bytes: multiply by 2^exposure, tone map, encode.
pub fn to_srgb8(pixels: &[[f32; 3]], exposure_ev: f32, tonemap: ToneMap) -> Vec<u8> {
    let scale = 2f32.powf(exposure_ev);
    let mut out = Vec::with_capacity(pixels.len() * 3);
    for p in pixels {
        for &c in p {
            let v = c * scale;
            let v = match tonemap {
                ToneMap::Clamp => v.clamp(0.0, 1.0),
                ToneMap::Aces => aces(v.max(0.0)),
            };
            let s = rayfarm_render::texture::linear_to_srgb(v);
            out.push((s * 255.0 + 0.5) as u8);
        }
    }
    out
}

/// Encodes a `width x height` image (rows top to bottom) in `format`.
pub fn encode_image(
    format: ImageFormat,
    width: u32,
    height: u32,
    pixels: &[[f32; 3]],
    s: &ImageSettings,
) -> Result<Vec<u8>, EncodeError> {
    let expected = width as u64 * height as u64;
    if expected != pixels.len() as u64 {
        return Err(EncodeError::PixelCount {
            width,
            height,
            expected,
            given: pixels.len(),
        });
    }
    let w = width as usize;
    match format {
        ImageFormat::Exr => encode_exr_rgb(width, height, s.half, |x, y| pixels[y * w + x]),
        ImageFormat::Png => {
            encode_png_rgb8(width, height, &to_srgb8(pixels, s.exposure_ev, s.tonemap))
        }
    }
}

/// The one EXR encoder (images and baked maps): RGB, 32-bit float (16-bit with `half`), the
/// pixel at `(x, y)` given by `get`, exr's default lossless encoding with the blocks in
/// increasing order. (By default exr writes blocks as its threads finish compressing them, so
/// the same image could give different bytes from run to run.)
pub fn encode_exr_rgb(
    width: u32,
    height: u32,
    half: bool,
    get: impl Fn(usize, usize) -> [f32; 3] + Sync,
) -> Result<Vec<u8>, EncodeError> {
    use exr::prelude::*;
    let encoding = Encoding {
        line_order: LineOrder::Increasing,
        ..Encoding::FAST_LOSSLESS
    };
    let size = (width as usize, height as usize);
    let mut bytes = Vec::new();
    let cursor = std::io::Cursor::new(&mut bytes);
    if half {
        let channels = SpecificChannels::rgb(|Vec2(x, y)| {
            let p = get(x, y);
            (
                f16::from_f32(p[0]),
                f16::from_f32(p[1]),
                f16::from_f32(p[2]),
            )
        });
        Image::from_encoded_channels(size, encoding, channels)
            .write()
            .to_buffered(cursor)
    } else {
        let channels = SpecificChannels::rgb(|Vec2(x, y)| {
            let p = get(x, y);
            (p[0], p[1], p[2])
        });
        Image::from_encoded_channels(size, encoding, channels)
            .write()
            .to_buffered(cursor)
    }
    .map_err(EncodeError::Exr)?;
    Ok(bytes)
}

/// The one PNG encoder (images and baked maps): 8-bit RGB samples with the `image` crate's
/// default PNG encoder settings.
pub fn encode_png_rgb8(width: u32, height: u32, samples: &[u8]) -> Result<Vec<u8>, EncodeError> {
    let mut bytes = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut bytes),
        samples,
        width,
        height,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(EncodeError::Png)?;
    Ok(bytes)
}

/// Writes an image atomically, choosing the format by the extension of `path`. The folder
/// must exist.
pub fn write_image(
    path: &Path,
    width: u32,
    height: u32,
    pixels: &[[f32; 3]],
    s: &ImageSettings,
) -> Result<(), MapError> {
    let bad = |reason: String| MapError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(reason),
    };
    let format = ImageFormat::of(path).map_err(|e| bad(e.to_string()))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.is_dir() {
            return Err(MapError::NoFolder {
                path: dir.to_path_buf(),
            });
        }
    }
    let bytes = encode_image(format, width, height, pixels, s).map_err(|e| bad(e.to_string()))?;
    write_atomic(path, &bytes)
}

/// Writes a placeholder image (the grey checker of [`crate::maps::placeholder_pixel`]) at
/// `path`, in the format its extension names, for a render still in progress.
pub fn write_placeholder_image(path: &Path, width: u32, height: u32) -> Result<(), MapError> {
    let mut px = Vec::with_capacity(width as usize * height as usize);
    for y in 0..height {
        for x in 0..width {
            px.push(crate::maps::placeholder_pixel(width, height, x, y));
        }
    }
    write_image(path, width, height, &px, &ImageSettings::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_and_exr_encode_deterministically_and_check_the_pixel_count() {
        let px: Vec<[f32; 3]> = (0..12).map(|i| [i as f32 * 0.1, 0.5, 2.0]).collect();
        for f in [ImageFormat::Exr, ImageFormat::Png] {
            let a = encode_image(f, 4, 3, &px, &ImageSettings::default()).unwrap();
            let b = encode_image(f, 4, 3, &px, &ImageSettings::default()).unwrap();
            assert_eq!(a, b);
            let e = encode_image(f, 5, 3, &px, &ImageSettings::default()).unwrap_err();
            assert!(e.to_string().contains("needs 15 pixels but 12"), "{e}");
        }
        let png = encode_image(ImageFormat::Png, 4, 3, &px, &ImageSettings::default()).unwrap();
        let img = image::load_from_memory(&png).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (4, 3));
        // 2.0 clamps to white; 0.5 linear is 188 in sRGB.
        assert_eq!(img.get_pixel(0, 0).0, [0, 188, 255]);
    }

    #[test]
    fn format_follows_the_extension() {
        assert_eq!(ImageFormat::of(Path::new("a/b.EXR")), Ok(ImageFormat::Exr));
        assert_eq!(ImageFormat::of(Path::new("b.png")), Ok(ImageFormat::Png));
        let e = ImageFormat::of(Path::new("b.jpg")).unwrap_err();
        assert!(e.to_string().contains("use .exr"), "{e}");
    }
}
