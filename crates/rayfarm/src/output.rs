//! Writing images: `.exr` (linear, 32- or 16-bit float) and `.png` (8-bit sRGB).

use anyhow::Result;
use std::path::Path;

/// How `.png` output maps linear radiance (after exposure) to [0, 1].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ToneMap {
    /// Clamp to [0, 1]: faithful below 1, highlights burn out.
    Clamp,
    /// The ACES filmic curve fitted by Narkowicz (2015): compresses highlights smoothly.
    Aces,
}

impl From<ToneMap> for rayfarm_job::images::ToneMap {
    fn from(t: ToneMap) -> Self {
        match t {
            ToneMap::Clamp => rayfarm_job::images::ToneMap::Clamp,
            ToneMap::Aces => rayfarm_job::images::ToneMap::Aces,
        }
    }
}

/// The progress bar of long renders and bakes (hidden with `--quiet`): elapsed time, bar,
/// percentage, a message (samples/s, nodes) and the ETA.
pub fn progress_bar(total: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(total);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {percent:>3}%  {msg}  ETA {eta}",
        )
        .expect("valid template"),
    );
    b
}

/// Writes an image, choosing the format by extension. Exposure applies to PNG only; EXR keeps
/// the linear values as rendered. The bytes are those of a farm render job's merge
/// ([`rayfarm_job::images`]), and the file is written atomically.
pub fn write_image(
    path: &Path,
    width: u32,
    height: u32,
    pixels: &[[f32; 3]],
    half: bool,
    exposure_ev: f32,
    tonemap: ToneMap,
) -> Result<()> {
    let settings = rayfarm_job::images::ImageSettings {
        half,
        exposure_ev,
        tonemap: tonemap.into(),
    };
    rayfarm_job::images::write_image(path, width, height, pixels, &settings)
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Reads an RGB(A) EXR into linear RGB (used by tests and `rayfarm compare`).
#[cfg_attr(not(test), allow(dead_code))] // until `rayfarm compare` exists
pub fn read_exr(path: &Path) -> Result<(u32, u32, Vec<[f32; 3]>)> {
    let img = exr::prelude::read_first_rgba_layer_from_file(
        path,
        |res, _| {
            let (w, h) = (res.width(), res.height());
            (w, vec![[0f32; 3]; w * h])
        },
        |(w, px), pos, (r, g, b, _a): (f32, f32, f32, f32)| {
            px[pos.y() * *w + pos.x()] = [r, g, b];
        },
    )
    .map_err(|e| anyhow::anyhow!("{}: cannot read EXR: {e}", path.display()))?;
    let size = img.layer_data.size;
    Ok((
        size.width() as u32,
        size.height() as u32,
        img.layer_data.channel_data.pixels.1,
    ))
}

/// Checks a file `flag` writes beside the main output (`what`, named `FILE.ext`): it must end
/// in `.ext`, and it must not be the input scene itself, or a link to it, since writing it
/// would replace the scene the user asked to read.
pub fn check_side_output(
    scene: &Path,
    out: &Path,
    flag: &str,
    ext: &str,
    what: &str,
) -> anyhow::Result<()> {
    if out.extension().and_then(|e| e.to_str()) != Some(ext) {
        anyhow::bail!(
            "{}: {flag} writes {what}: name it FILE.{ext}",
            out.display()
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(i), Ok(o)) = (std::fs::metadata(scene), std::fs::metadata(out)) {
            if i.dev() == o.dev() && i.ino() == o.ino() {
                anyhow::bail!(
                    "{}: {flag} names the scene being read ({}); write to another file",
                    out.display(),
                    scene.display()
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exr_round_trip_full_and_half() {
        let dir = tempfile::tempdir().unwrap();
        let pixels: Vec<[f32; 3]> = (0..12)
            .map(|i| [i as f32 * 0.25, 1.0 / (i + 1) as f32, 100.0 - i as f32])
            .collect();
        for half in [false, true] {
            let p = dir.path().join(format!("t{half}.exr"));
            write_image(&p, 4, 3, &pixels, half, 0.0, ToneMap::Clamp).unwrap();
            let (w, h, back) = read_exr(&p).unwrap();
            assert_eq!((w, h), (4, 3));
            for (a, b) in pixels.iter().zip(&back) {
                for k in 0..3 {
                    let tol = if half {
                        1e-3 * a[k].abs().max(1e-2)
                    } else {
                        0.0
                    };
                    assert!((a[k] - b[k]).abs() <= tol, "{a:?} vs {b:?} (half: {half})");
                }
            }
        }
    }
}
