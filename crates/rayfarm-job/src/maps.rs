//! Writing baked maps: the one place that turns a map's pixels into `.exr` and `.png` bytes.
//!
//! The local bake (`rayfarm bake`) and the merge of a shared-folder job ([`crate::merge`]) both
//! write through these functions, so the same pixels give the same files byte for byte
//! whichever path produced them. This module owns the encodings (32-bit float linear EXR with
//! exr's lossless RLE blocks in increasing order; 8-bit RGB PNG whose transfer depends on the
//! pass), the placeholder images a client leaves at the final paths while a job runs, and
//! writing files atomically. It never decides *where* a map goes: callers pass a folder and a
//! file stem, and the stem must be one plain file name ([`crate::jobdesc::check_file_name`]).
//!
//! Every file is written atomically: to a hidden temporary name in the same folder
//! (`.<name>.tmp.<pid>.<random>`, created exclusively so a planted symlink is never
//! followed), synced, then renamed over the final name. A reader sees the old file or the
//! new one, never half of one, and a crash leaves at most a stray temporary file.

use rayfarm_bake::Pass;
use rayfarm_scene::gltf_export::{baked_glb, BakedMaterial, BakedObject};
use rayfarm_scene::CompiledScene;
use std::path::{Path, PathBuf};

/// Why a map, placeholder or baked glTF could not be written. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    #[error("{}: cannot write: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: cannot write EXR: {reason}", path.display())]
    Exr { path: PathBuf, reason: String },
    #[error("cannot encode a {width}x{height} PNG: {reason}")]
    Png {
        width: u32,
        height: u32,
        reason: String,
    },
    #[error("map file name {name:?} is not allowed: {reason}")]
    BadName { name: String, reason: String },
    #[error("a {width}x{height} map needs {expected} pixels but {got} were given")]
    WrongPixelCount {
        width: u32,
        height: u32,
        expected: u64,
        got: usize,
    },
    #[error("{}: the output folder does not exist; create it first", path.display())]
    NoFolder { path: PathBuf },
    #[error("{}: cannot build the baked glTF: {reason}", path.display())]
    Gltf { path: PathBuf, reason: String },
}

impl MapError {
    /// The error with each path it names passed through `f`.
    pub fn with_paths(self, f: impl Fn(PathBuf) -> PathBuf) -> MapError {
        match self {
            MapError::Io { path, source } => MapError::Io {
                path: f(path),
                source,
            },
            MapError::Exr { path, reason } => MapError::Exr {
                path: f(path),
                reason,
            },
            MapError::NoFolder { path } => MapError::NoFolder { path: f(path) },
            MapError::Gltf { path, reason } => MapError::Gltf {
                path: f(path),
                reason,
            },
            other => other,
        }
    }
}

/// Writes `<stem>.exr` (32-bit float linear RGB) and `<stem>.png` (8-bit, see
/// [`encode_map_png`]) into `out_dir`, each atomically. Returns the two paths, EXR first.
/// The bytes are exactly those `rayfarm bake` has always written for a map.
pub fn write_map_files(
    out_dir: &Path,
    stem: &str,
    width: u32,
    height: u32,
    px: &[[f32; 3]],
    pass: Pass,
) -> Result<Vec<PathBuf>, MapError> {
    write_map_files_keep_png(out_dir, stem, width, height, px, pass).map(|(paths, _)| paths)
}

/// [`write_map_files`], also returning the PNG bytes (the merge embeds complete maps in the
/// baked glTF without reading them back).
pub(crate) fn write_map_files_keep_png(
    out_dir: &Path,
    stem: &str,
    width: u32,
    height: u32,
    px: &[[f32; 3]],
    pass: Pass,
) -> Result<(Vec<PathBuf>, Vec<u8>), MapError> {
    check_pixels(width, height, px.len())?;
    let (exr, png) = map_paths(out_dir, stem)?;
    let w = width as usize;
    write_exr_with(&exr, width, height, |x, y| px[y * w + x])?;
    let bytes = encode_map_png(width, height, px, pass)?;
    write_atomic(&png, &bytes)?;
    Ok((vec![exr, png], bytes))
}

/// The paths of a map's two files, after checking the stem is a plain file name.
fn map_paths(out_dir: &Path, stem: &str) -> Result<(PathBuf, PathBuf), MapError> {
    let mut paths = Vec::with_capacity(2);
    for ext in ["exr", "png"] {
        let name = format!("{stem}.{ext}");
        crate::jobdesc::check_file_name(&name).map_err(|reason| MapError::BadName {
            name: name.clone(),
            reason,
        })?;
        paths.push(out_dir.join(name));
    }
    if !out_dir.is_dir() {
        return Err(MapError::NoFolder {
            path: out_dir.to_path_buf(),
        });
    }
    let png = paths.pop().expect("two paths");
    let exr = paths.pop().expect("two paths");
    Ok((exr, png))
}

fn check_pixels(width: u32, height: u32, got: usize) -> Result<(), MapError> {
    let expected = width as u64 * height as u64;
    if expected != got as u64 {
        return Err(MapError::WrongPixelCount {
            width,
            height,
            expected,
            got,
        });
    }
    Ok(())
}

/// Writes a 32-bit float RGB EXR atomically, the pixel at `(x, y)` given by `get`: the same
/// encoder as `rayfarm render`'s `.exr` ([`crate::images::encode_exr_rgb`]).
fn write_exr_with(
    path: &Path,
    width: u32,
    height: u32,
    get: impl Fn(usize, usize) -> [f32; 3] + Sync,
) -> Result<(), MapError> {
    let bytes =
        crate::images::encode_exr_rgb(width, height, false, get).map_err(|e| MapError::Exr {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

/// The 8-bit RGB samples of a map's PNG: sRGB-encoded colour (clamped) for complete, lightmap
/// and albedo; linear for ao; `n * 0.5 + 0.5` for normals.
pub fn map_png_samples(px: &[[f32; 3]], pass: Pass) -> Vec<u8> {
    match pass {
        Pass::Complete | Pass::Lightmap | Pass::Albedo => {
            let mut out = Vec::with_capacity(px.len() * 3);
            for p in px {
                for &c in p {
                    // As `rayfarm`'s `to_srgb8` with exposure 0 and the clamp tone map.
                    let v = c.clamp(0.0, 1.0);
                    let s = rayfarm_render::texture::linear_to_srgb(v);
                    out.push((s * 255.0 + 0.5) as u8);
                }
            }
            out
        }
        Pass::Ao => px
            .iter()
            .flat_map(|p| p.map(|c| (c.clamp(0.0, 1.0) * 255.0 + 0.5) as u8))
            .collect(),
        Pass::Normal => px
            .iter()
            .flat_map(|p| p.map(|c| ((c * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0 + 0.5) as u8))
            .collect(),
    }
}

/// A map's PNG file, in memory: 8-bit RGB ([`map_png_samples`]) with the `image` crate's
/// default PNG encoder settings (what `image::save_buffer_with_format` writes).
pub fn encode_map_png(
    width: u32,
    height: u32,
    px: &[[f32; 3]],
    pass: Pass,
) -> Result<Vec<u8>, MapError> {
    check_pixels(width, height, px.len())?;
    encode_png_rgb8(width, height, &map_png_samples(px, pass))
}

fn encode_png_rgb8(width: u32, height: u32, samples: &[u8]) -> Result<Vec<u8>, MapError> {
    crate::images::encode_png_rgb8(width, height, samples).map_err(|e| MapError::Png {
        width,
        height,
        reason: e.to_string(),
    })
}

/// Linear grey levels of the placeholder's checker squares: mid-grey and a darker grey, so a
/// placeholder is plainly not a bake result in any viewer.
pub const PLACEHOLDER_GREYS: [f32; 2] = [0.5, 0.25];

/// The placeholder's pixel at `(x, y)`: a checker of about 16 squares across the longer edge.
pub fn placeholder_pixel(width: u32, height: u32, x: u32, y: u32) -> [f32; 3] {
    let square = (width.max(height) / 16).max(1);
    let g = PLACEHOLDER_GREYS[((x / square + y / square) % 2) as usize];
    [g; 3]
}

/// Writes `<stem>.exr` and `<stem>.png` placeholders of the map's size into `out_dir`
/// atomically (a grey checker, [`placeholder_pixel`]; the PNG holds the grey levels linearly).
/// Returns the two paths, EXR first.
pub fn write_placeholder(
    out_dir: &Path,
    stem: &str,
    width: u32,
    height: u32,
) -> Result<Vec<PathBuf>, MapError> {
    let (exr, png) = map_paths(out_dir, stem)?;
    // Pixels come from a function so a placeholder for a 16k map needs no float buffer.
    write_exr_with(&exr, width, height, |x, y| {
        placeholder_pixel(width, height, x as u32, y as u32)
    })?;
    let mut samples = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            let g = placeholder_pixel(width, height, x, y)[0];
            samples.extend([(g * 255.0 + 0.5) as u8; 3]);
        }
    }
    write_atomic(&png, &encode_png_rgb8(width, height, &samples)?)?;
    Ok(vec![exr, png])
}

/// One baked complete map for [`write_baked_glb`]: the meshes textured with it, its name
/// (the map's file stem) and its PNG file's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BakedMap {
    pub meshes: Vec<usize>,
    pub name: String,
    pub png: Vec<u8>,
}

/// Writes the baked objects as a binary glTF atomically: one unlit material per map, with the
/// map as base colour, laid out by `uv_set`. Maps and meshes keep the given order, which
/// decides the file's bytes.
pub fn write_baked_glb(
    path: &Path,
    scene: &CompiledScene,
    maps: Vec<BakedMap>,
    uv_set: u8,
) -> Result<(), MapError> {
    let mut objects = Vec::new();
    let mut materials = Vec::with_capacity(maps.len());
    for m in maps {
        for &mesh in &m.meshes {
            objects.push(BakedObject {
                mesh,
                material: materials.len(),
            });
        }
        materials.push(BakedMaterial {
            name: m.name,
            png: m.png,
        });
    }
    let glb = baked_glb(scene, &objects, &materials, uv_set).map_err(|e| MapError::Gltf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    write_atomic(path, &glb)
}

/// Writes `bytes` to `path` atomically ([`crate::fsutil`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), MapError> {
    Ok(crate::fsutil::write_atomic(path, bytes)?)
}

impl From<crate::fsutil::WriteError> for MapError {
    fn from(e: crate::fsutil::WriteError) -> Self {
        MapError::Io {
            path: e.path,
            source: e.source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixels(w: u32, h: u32) -> Vec<[f32; 3]> {
        (0..w * h)
            .map(|i| {
                let f = i as f32;
                [f * 0.013 - 0.2, (f * 0.37).sin(), 1.0 / (f + 1.0) + f * 0.1]
            })
            .collect()
    }

    /// The EXR bytes equal what `rayfarm`'s `output::write_image(.., half = false, ..)` writes
    /// (its code for `.exr`, copied here as the reference).
    #[test]
    fn exr_bytes_match_the_cli_writer() {
        use exr::prelude::*;
        let dir = tempfile::tempdir().unwrap();
        let (w, h) = (37u32, 23u32);
        let px = pixels(w, h);
        let files = write_map_files(dir.path(), "m", w, h, &px, Pass::Complete).unwrap();
        assert_eq!(
            files,
            vec![dir.path().join("m.exr"), dir.path().join("m.png")]
        );
        let reference = dir.path().join("ref.exr");
        let get = |x: usize, y: usize| px[y * w as usize + x];
        let encoding = Encoding {
            line_order: LineOrder::Increasing,
            ..Encoding::FAST_LOSSLESS
        };
        let channels = SpecificChannels::rgb(|Vec2(x, y)| {
            let p = get(x, y);
            (p[0], p[1], p[2])
        });
        Image::from_encoded_channels((w as usize, h as usize), encoding, channels)
            .write()
            .to_file(&reference)
            .unwrap();
        assert_eq!(
            std::fs::read(&files[0]).unwrap(),
            std::fs::read(&reference).unwrap()
        );
        // And the values survive.
        let img = exr::prelude::read_first_rgba_layer_from_file(
            &files[0],
            |res, _| (res.width(), vec![[0f32; 3]; res.width() * res.height()]),
            |(w, px), pos, (r, g, b, _a): (f32, f32, f32, f32)| {
                px[pos.y() * *w + pos.x()] = [r, g, b];
            },
        )
        .unwrap();
        assert_eq!(img.layer_data.channel_data.pixels.1, px);
    }

    /// The PNG bytes equal what `image::save_buffer_with_format` (the CLI's writer) writes.
    #[test]
    fn png_bytes_match_the_cli_writer() {
        let dir = tempfile::tempdir().unwrap();
        let (w, h) = (19u32, 11u32);
        let px = pixels(w, h);
        for pass in Pass::ALL {
            let ours = encode_map_png(w, h, &px, pass).unwrap();
            let reference = dir.path().join(format!("{}.png", pass.name()));
            image::save_buffer_with_format(
                &reference,
                &map_png_samples(&px, pass),
                w,
                h,
                image::ExtendedColorType::Rgb8,
                image::ImageFormat::Png,
            )
            .unwrap();
            assert_eq!(ours, std::fs::read(&reference).unwrap(), "{pass:?}");
            let files = write_map_files(dir.path(), "x", w, h, &px, pass).unwrap();
            assert_eq!(std::fs::read(&files[1]).unwrap(), ours);
        }
    }

    #[test]
    fn png_transfer_per_pass() {
        let px = [[0.0, 0.5, 1.0], [-1.0, 2.0, 0.25]];
        assert_eq!(
            map_png_samples(&px, Pass::Ao),
            vec![0, 128, 255, 0, 255, 64]
        );
        assert_eq!(
            map_png_samples(&px, Pass::Normal),
            vec![128, 191, 255, 0, 255, 159]
        );
        let srgb = map_png_samples(&px, Pass::Lightmap);
        assert_eq!(&srgb[..3], &[0, 188, 255]);
    }

    #[test]
    fn placeholders_have_the_size_and_are_grey() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_placeholder(dir.path(), "atlas_ao_40x8", 40, 8).unwrap();
        let img = image::open(&files[1]).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (40, 8));
        let levels: std::collections::BTreeSet<u8> = img.pixels().map(|p| p.0[0]).collect();
        assert_eq!(levels.into_iter().collect::<Vec<_>>(), vec![64, 128]);
        assert!(img.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
        let exr = exr::prelude::read_first_rgba_layer_from_file(
            &files[0],
            |res, _| (res.width(), res.height()),
            |_, _, (_r, _g, _b, _a): (f32, f32, f32, f32)| {},
        )
        .unwrap();
        assert_eq!(exr.layer_data.channel_data.pixels, (40, 8));
    }

    #[test]
    fn refuses_bad_stems_and_sizes_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let px = pixels(2, 2);
        for stem in ["../x", "a/b", ".hidden", "", "a\0b", "/abs", "é"] {
            let e = write_map_files(&sub, stem, 2, 2, &px, Pass::Ao).unwrap_err();
            assert!(matches!(e, MapError::BadName { .. }), "{stem:?}: {e}");
        }
        let e = write_map_files(&sub, "ok", 3, 2, &px, Pass::Ao).unwrap_err();
        assert!(matches!(e, MapError::WrongPixelCount { .. }), "{e}");
        let e = write_map_files(&sub.join("missing"), "ok", 2, 2, &px, Pass::Ao).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        write_map_files(&sub, "ok", 2, 2, &px, Pass::Ao).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["ok.exr", "ok.png"]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
