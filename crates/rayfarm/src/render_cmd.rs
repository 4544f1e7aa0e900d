//! `rayfarm render` and `rayfarm info`.

use crate::output::{self, ToneMap};
use anyhow::{bail, Context, Result};
use clap::Args;
use rayfarm_render::{plan_units, plan_units_progressive, RenderScene, RenderSettings};
use rayfarm_scene::{camera::auto_camera, CompiledScene, Environment, Projection};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Render a scene: on this machine, over the network (--network), or as a job of a job
/// manager (--farm HOST --netdir FOLDER).
///
/// The output format follows OUT's extension: `.exr` is linear float (32-bit, or 16-bit with
/// --half), `.png` is 8-bit sRGB after --exposure and --tonemap. Without SCENE the shipped
/// Cornell box (embedded in the binary) is rendered.
///
/// Animation: --frames renders frames of an animated glTF, frame F posed at time F / --fps
/// seconds. Each frame goes to OUT with its number in place of `#`s (`shot_####.png` ->
/// `shot_0012.png`), or after the name when OUT has no `#`.
///
/// Examples:
///   rayfarm render scene.gltf -o scene.png --spp 256
///   rayfarm render model.glb -o model.exr --env studio.hdr --width 1920 --height 1080
///   rayfarm render anim.glb -o frames/shot_####.png --frames 1-48
///   rayfarm render anim.glb -o /mnt/out/shot.exr --frames 1-250 --farm manager --netdir /mnt/farm
#[derive(Args, Debug, Clone)]
#[command(verbatim_doc_comment)]
pub struct RenderArgs {
    /// Scene file: .gltf, .glb or .obj (default: the embedded Cornell box); a compiled scene
    /// written by `rayfarm info SCENE --compile-to FILE.rfscene` is read too
    pub scene: Option<PathBuf>,
    /// Output image (.exr or .png)
    #[arg(short, long, value_name = "OUT")]
    pub output: PathBuf,
    /// Samples per pixel
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub spp: u32,
    /// Image width in pixels (default: the scene's, else from the camera's aspect at 720 lines, else 1280)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=32768))]
    pub width: Option<u32>,
    /// Image height in pixels (default: the scene's, else 720)
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=32768))]
    pub height: Option<u32>,
    /// Camera name, or its index (default: the scene's first camera, else an automatic one)
    #[arg(long)]
    pub camera: Option<String>,
    /// Indirect bounces (0 = direct light only), as Blender Cycles counts them
    #[arg(long, default_value_t = 16)]
    pub max_bounces: u32,
    /// Render threads (default: all cores)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Job seed: the same seed gives the same image, bit for bit
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Equirectangular environment map (.hdr or .exr); +Y is up, the centre of the map faces -Z
    #[arg(long, value_name = "FILE", conflicts_with = "env_color")]
    pub env: Option<PathBuf>,
    /// Uniform environment radiance, e.g. 0.5,0.5,0.5
    #[arg(long, value_name = "R,G,B", value_parser = parse_rgb)]
    pub env_color: Option<[f32; 3]>,
    /// Exposure in stops applied to PNG output (EXR stays linear)
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    pub exposure: f32,
    /// How PNG output maps radiance above 1
    #[arg(long, value_enum, default_value_t = ToneMap::Clamp)]
    pub tonemap: ToneMap,
    /// Write 16-bit half floats to EXR instead of 32-bit
    #[arg(long)]
    pub half: bool,
    /// No progress bar or summary
    #[arg(short, long)]
    pub quiet: bool,
    /// Tile edge in pixels (does not change the image)
    #[arg(long, default_value_t = rayfarm_render::DEFAULT_TILE_PX, hide = true,
          value_parser = clap::value_parser!(u32).range(1..=rayfarm_render::MAX_TILE_PX as i64))]
    pub tile: u32,
    /// Samples per work unit (does not change the image)
    #[arg(long, default_value_t = rayfarm_render::DEFAULT_SAMPLES_PER_UNIT, hide = true)]
    pub samples_per_unit: u32,
    /// Frames to render: `N`, `A-B` or `A-B:STEP` (default: one image of the scene as loaded,
    /// without animation)
    #[arg(long, value_name = "A-B", value_parser = parse_frames)]
    pub frames: Option<FrameList>,
    /// Frames per second of --frames: frame F shows the scene at F / FPS seconds
    #[arg(long, default_value_t = 24.0)]
    pub fps: f64,
    /// Material variant (glTF KHR_materials_variants) to render; `rayfarm info SCENE` lists them
    #[arg(long, value_name = "NAME")]
    pub variant: Option<String>,
    #[command(flatten, next_help_heading = "Live view")]
    pub live: crate::live_cmd::ViewArgs,
    #[command(flatten, next_help_heading = "Network rendering")]
    pub net: crate::network_cmd::RenderNetworkArgs,
    #[command(flatten, next_help_heading = "Rendering on a farm (job manager)")]
    pub farm: RenderFarmArgs,
}

/// `rayfarm render --farm`: a render job of a job manager.
#[derive(Args, Debug, Clone, Default)]
pub struct RenderFarmArgs {
    /// Render on a farm: submit the job to this job manager (HOST[:PORT]); needs --netdir.
    /// The job goes on if this command is stopped; `rayfarm merge` finishes it
    #[arg(
        long,
        value_name = "HOST:PORT",
        requires = "netdir",
        conflicts_with = "network"
    )]
    pub farm: Option<String>,
    /// The network folder every node reaches at the same path (see `worker --path-map`);
    /// the job's folder is made inside it
    #[arg(long, value_name = "NETWORK_FOLDER", requires = "farm")]
    pub netdir: Option<PathBuf>,
    /// How the job is cut into tasks: one per frame, or tiles of each frame (default: tiles
    /// for one frame, frames for a range)
    #[arg(long, value_enum, requires = "farm")]
    pub tasks: Option<TaskSplit>,
    /// Tile edge in pixels of --tasks tile
    #[arg(long, default_value_t = 256, requires = "farm", value_parser = clap::value_parser!(u32).range(16..=32768))]
    pub task_tile: u32,
    /// Priority of the farm job (higher runs first)
    #[arg(
        long,
        default_value_t = 0,
        requires = "farm",
        allow_hyphen_values = true
    )]
    pub priority: i32,
    /// Submit the farm job and return at once (finish it later with `rayfarm merge`)
    #[arg(long, requires = "farm")]
    pub no_wait: bool,
}

/// How a farm render job is cut into tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TaskSplit {
    /// One task per frame
    Frame,
    /// One task per tile of a frame
    Tile,
}

/// Most frames one command renders.
const MAX_FRAMES: usize = rayfarm_job::renderjob::MAX_FRAMES;

/// The frame numbers of --frames, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameList(pub Vec<i64>);

/// Parses `N`, `A-B` or `A-B:STEP` (negative numbers allowed: `-5--1`).
pub(crate) fn parse_frames(s: &str) -> std::result::Result<FrameList, String> {
    let bad = || format!("'{s}' is not a frame range; use N, A-B or A-B:STEP (e.g. 1-250)");
    let (range, step) = match s.split_once(':') {
        Some((r, st)) => (r, st.trim().parse::<i64>().map_err(|_| bad())?),
        None => (s, 1),
    };
    if step < 1 {
        return Err(format!("'{s}': the step must be at least 1"));
    }
    let range = range.trim();
    // The separator is the first '-' that follows a digit.
    let sep = range
        .char_indices()
        .skip(1)
        .find(|&(i, c)| c == '-' && range[..i].ends_with(|d: char| d.is_ascii_digit()))
        .map(|(i, _)| i);
    let (a, b) = match sep {
        Some(i) => (&range[..i], &range[i + 1..]),
        None => (range, range),
    };
    let a: i64 = a.trim().parse().map_err(|_| bad())?;
    let b: i64 = b.trim().parse().map_err(|_| bad())?;
    if b < a {
        return Err(format!("'{s}': the range ends before it starts"));
    }
    let count = (b - a) / step + 1;
    if count as u128 > MAX_FRAMES as u128 {
        return Err(format!(
            "'{s}' is {count} frames; at most {MAX_FRAMES} at once"
        ));
    }
    Ok(FrameList((0..count).map(|i| a + i * step).collect()))
}

/// The output path of frame `frame`: its number, zero-padded to the count of `#`s, in place of
/// the last run of `#`s in the file name, or `_NNNN` before the extension when there is none.
pub(crate) fn frame_path(out: &Path, frame: i64) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let new = match name.rfind('#') {
        Some(end) => {
            let start = name[..end].rfind(|c| c != '#').map_or(0, |i| i + 1);
            let width = end + 1 - start;
            let num = if frame < 0 {
                format!("-{:0width$}", -frame, width = width)
            } else {
                format!("{frame:0width$}")
            };
            format!("{}{num}{}", &name[..start], &name[end + 1..])
        }
        None => {
            let (stem, ext) = match name.rfind('.') {
                Some(i) if i > 0 => (&name[..i], &name[i..]),
                _ => (name.as_str(), ""),
            };
            format!("{stem}_{frame:04}{ext}")
        }
    };
    out.with_file_name(new)
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// Scene file: .gltf, .glb or .obj
    pub scene: PathBuf,
    /// Also write the compiled scene blob here
    #[arg(long)]
    pub compile_to: Option<PathBuf>,
}

pub(crate) fn parse_rgb(s: &str) -> std::result::Result<[f32; 3], String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let vals: Vec<f32> = match parts.len() {
        1 => vec![
            parts[0]
                .parse()
                .map_err(|_| format!("'{s}' is not a number"))?;
            3
        ],
        3 => parts
            .iter()
            .map(|p| {
                p.parse::<f32>()
                    .map_err(|_| format!("'{p}' is not a number"))
            })
            .collect::<std::result::Result<_, _>>()?,
        _ => return Err(format!("expected R,G,B (three numbers), got '{s}'")),
    };
    if vals.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return Err(format!(
            "colour components must be finite and non-negative, got '{s}'"
        ));
    }
    Ok([vals[0], vals[1], vals[2]])
}

/// The Cornell box shipped inside the binary, used when no scene is named.
const EMBEDDED_GLTF: &[u8] = include_bytes!("../../../examples/cornell-box/cornell_box.gltf");
const EMBEDDED_BIN: &[u8] = include_bytes!("../../../examples/cornell-box/cornell_box.bin");

fn is_compiled_blob(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("rfscene"))
}

/// Loads a scene (or the embedded default) and prints its warnings.
pub fn load_scene(path: Option<&Path>, quiet: bool) -> Result<CompiledScene> {
    load_scene_at(path, None, None, quiet)
}

/// `RAYFARM_TEXTURE_MEMORY`: the most GiB a scene's textures may take decoded (unset: three
/// quarters of this machine's memory, at least 16 GiB).
fn texture_memory_from_env() -> Result<Option<u64>> {
    let Some(v) = std::env::var_os("RAYFARM_TEXTURE_MEMORY") else {
        return Ok(None);
    };
    let gib = v
        .to_str()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|g| g.is_finite() && *g > 0.0 && *g <= 1e6);
    match gib {
        Some(g) => Ok(Some((g * (1u64 << 30) as f64) as u64)),
        None => bail!(
            "RAYFARM_TEXTURE_MEMORY={}: expected the most GiB a scene's textures may take \
             decoded, a positive number such as 24 (unset it for three quarters of this \
             machine's memory)",
            v.to_string_lossy()
        ),
    }
}

/// Loads a scene posed at `time_s` seconds of its animations (None: the rest pose), with the
/// materials of `variant` (None: the default materials).
pub fn load_scene_at(
    path: Option<&Path>,
    time_s: Option<f32>,
    variant: Option<&str>,
    quiet: bool,
) -> Result<CompiledScene> {
    if let Some(v) = variant {
        match path {
            Some(p) if is_compiled_blob(p) => bail!(
                "{}: cannot pick material variant '{v}' in a compiled scene (its materials were chosen when it was compiled)",
                p.display()
            ),
            None => bail!("<embedded cornell_box.gltf>: no material variant named '{v}'; the file has no material variants"),
            _ => {}
        }
    }
    let (scene, warnings) = match path {
        // A compiled blob (`rayfarm info SCENE --compile-to FILE.rfscene`), as the network ships it.
        Some(p) if is_compiled_blob(p) => {
            let blob = rayfarm_scene::read_regular_file(p)
                .with_context(|| format!("{}: cannot read", p.display()))?;
            // The body against its hash first, in constant memory: `decode` holds the whole
            // body before it can check it, and a 131 KB file can claim 4 GiB.
            let scene = rayfarm_scene::blob::verify(&blob)
                .and_then(|()| rayfarm_scene::blob::decode(&blob))
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            (scene, Vec::new())
        }
        Some(p) => {
            let opts = rayfarm_scene::LoadOptions {
                time_s,
                variant: variant.map(String::from),
                texture_memory: texture_memory_from_env()?,
            };
            rayfarm_scene::load_with(p, &opts).map_err(|e| anyhow::anyhow!("{e}"))?
        }
        None => rayfarm_scene::gltf_import::load_from_slice(
            EMBEDDED_GLTF,
            Path::new("<embedded cornell_box.gltf>"),
            &|p: &Path| {
                if p == Path::new("cornell_box.bin") {
                    Ok(EMBEDDED_BIN.to_vec())
                } else {
                    Err(std::io::ErrorKind::NotFound.into())
                }
            },
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    if !quiet {
        for w in warnings {
            eprintln!("warning: {w}");
        }
    }
    Ok(scene)
}

/// A soft default sky for scenes without any light: brighter overhead, dim below the horizon.
pub fn default_sky() -> Environment {
    let (w, h) = (64u32, 32u32);
    let mut texels = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        let elevation = 1.0 - 2.0 * (y as f32 + 0.5) / h as f32; // +1 at the zenith
        let c = if elevation >= 0.0 {
            let t = elevation.powf(0.5);
            [0.9 - 0.3 * t, 0.95 - 0.2 * t, 1.0]
        } else {
            [0.25, 0.23, 0.2]
        };
        for _ in 0..w {
            texels.push(c);
        }
    }
    Environment::Map {
        width: w,
        height: h,
        texels,
    }
}

/// Whether a material emits enough light to light a scene: its emissive colour, scaled by the
/// mean of its emissive texture if it has one. A texture that glows only in a few texels (the
/// water bottle's tiny lit label) does not count, else such a scene would render black.
fn emits_light(scene: &CompiledScene, m: &rayfarm_scene::Material) -> bool {
    if !m.is_emissive() {
        return false;
    }
    let Some(r) = m.emissive_texture else {
        return true;
    };
    let image = scene
        .textures
        .get(r.texture as usize)
        .and_then(|t| scene.images.get(t.image as usize));
    let Some(img) = image else { return true };
    // The mean linear value of the (sRGB) texture, from at most ~64K texels.
    let texels = img.rgba8.chunks_exact(4);
    let step = (texels.len() / 65536).max(1);
    let (mut sum, mut n) = (0.0f64, 0usize);
    for t in texels.step_by(step) {
        let lin = |c: u8| rayfarm_render::texture::srgb_to_linear(c as f32 / 255.0) as f64;
        sum += lin(t[0]).max(lin(t[1])).max(lin(t[2]));
        n += 1;
    }
    let mean = if n == 0 { 1.0 } else { sum / n as f64 };
    let peak = m.emissive.iter().copied().fold(0.0f32, f32::max) as f64;
    mean * peak > 0.01
}

/// The environment map in file `p` (HDR or EXR).
fn load_env_map(p: &Path) -> Result<Environment> {
    rayfarm_scene::env::load_env_map(p).map_err(|e| anyhow::anyhow!("{e}"))
}

/// Applies --env / --env-color, or the default sky when the scene has no light at all.
pub fn apply_environment(
    scene: &mut CompiledScene,
    env: Option<&Path>,
    env_color: Option<[f32; 3]>,
    quiet: bool,
) -> Result<()> {
    if let Some(p) = env {
        scene.environment = load_env_map(p)?;
    } else if let Some(c) = env_color {
        scene.environment = Environment::Color(c);
    } else if scene.lights.is_empty() && !scene.materials.iter().any(|m| emits_light(scene, m)) {
        if !quiet {
            eprintln!(
                "note: the scene has no lights (or only faintly glowing surfaces); lighting it with the default sky (choose with --env FILE.hdr or --env-color R,G,B)"
            );
        }
        scene.environment = default_sky();
    }
    Ok(())
}

/// Resolves camera and resolution from the arguments and the scene.
pub fn resolve_view(
    scene: &CompiledScene,
    camera: Option<&str>,
    width: Option<u32>,
    height: Option<u32>,
) -> Result<(rayfarm_scene::Camera, u32, u32)> {
    let cam = match camera {
        Some(name) => {
            let found = scene.cameras.iter().find(|c| c.name == name).or_else(|| {
                name.parse::<usize>()
                    .ok()
                    .and_then(|i| scene.cameras.get(i))
            });
            match found {
                Some(c) => Some(c.clone()),
                None => {
                    let names: Vec<&str> = scene.cameras.iter().map(|c| c.name.as_str()).collect();
                    bail!(
                        "no camera named '{name}' in the scene (cameras: {})",
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    );
                }
            }
        }
        None => scene.cameras.first().cloned(),
    };
    let aspect = cam.as_ref().and_then(|c| match c.projection {
        Projection::Perspective { aspect, .. } => aspect,
        Projection::Orthographic { xmag, ymag } => (ymag > 0.0).then(|| xmag / ymag),
    });
    // Where the size comes from, for an error about it.
    let source = match (width, height, scene.resolution, aspect) {
        (Some(_), Some(_), _, _) => "--width and --height".to_string(),
        (None, None, Some(_), _) => "the scene's resolution (extras.resolution)".to_string(),
        (_, _, Some(_), _) => "the scene's resolution's aspect".to_string(),
        (_, _, None, Some(a)) => format!(
            "the aspect ratio {a} of camera '{}'",
            cam.as_ref().map_or("", |c| c.name.as_str())
        ),
        _ => "the default".to_string(),
    };
    let (w, h) = match (width, height, scene.resolution, aspect) {
        (Some(w), Some(h), _, _) => (w, h),
        (None, None, Some([w, h]), _) => (w, h),
        (None, None, None, Some(a)) => (((720.0 * a).round() as u32).max(1), 720),
        (None, None, None, None) => (1280, 720),
        (Some(w), None, res, a) => {
            let a = res
                .map(|[rw, rh]| rw as f32 / rh as f32)
                .or(a)
                .unwrap_or(16.0 / 9.0);
            (w, ((w as f32 / a).round() as u32).max(1))
        }
        (None, Some(h), res, a) => {
            let a = res
                .map(|[rw, rh]| rw as f32 / rh as f32)
                .or(a)
                .unwrap_or(16.0 / 9.0);
            (((h as f32 * a).round() as u32).max(1), h)
        }
    };
    if let Some(problem) = rayfarm_render::film::image_size_problem(w, h) {
        bail!("the image size from {source} is {problem}; give --width and --height");
    }
    let cam = cam.unwrap_or_else(|| auto_camera(scene, w as f32 / h as f32));
    Ok((cam, w, h))
}

/// Most render threads `--threads` takes: each has its own stack, and 100,000 of them took the
/// machine's memory before the first sample (found by fuzzing the CLI).
pub const MAX_THREADS: usize = 4096;

/// Refuses a `--threads` above [`MAX_THREADS`] (before anything slow is done).
pub fn check_threads(threads: Option<usize>) -> Result<()> {
    match threads {
        Some(n) if n > MAX_THREADS => bail!(
            "--threads {n} is more than {MAX_THREADS}; leave it out to use every core (this \
             machine has {})",
            std::thread::available_parallelism().map_or(1, |n| n.get())
        ),
        _ => Ok(()),
    }
}

pub fn thread_pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    check_threads(threads)?;
    let n = threads.unwrap_or(0);
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .context("cannot start render threads")
}

pub fn run(a: RenderArgs) -> Result<()> {
    // Check the output before spending minutes rendering.
    rayfarm_job::images::ImageFormat::of(&a.output).map_err(|e| anyhow::anyhow!(e))?;
    check_threads(a.threads)?;
    if !(a.fps.is_finite() && a.fps > 0.0 && a.fps <= 10_000.0) {
        bail!("--fps {} must be a positive number (at most 10000)", a.fps);
    }
    if a.frames.is_some() {
        warn_if_not_animated(
            a.scene.as_deref(),
            a.frames.as_ref().map_or(&[][..], |f| &f.0[..]),
            a.quiet,
        );
    }
    if let (Some(farm), Some(netdir)) = (&a.farm.farm, &a.farm.netdir) {
        if a.live.view.is_some() {
            bail!("--view shows a render this machine runs; a farm job is shown by the manager's monitor (http://MANAGER:PORT/)");
        }
        return render_farm(&a, farm, netdir);
    }
    let Some(FrameList(frames)) = a.frames.clone() else {
        return render_frame(&a, None, &a.output, None).map(|_| ());
    };
    let mut size = None;
    for (i, &f) in frames.iter().enumerate() {
        let out = frame_path(&a.output, f);
        if !a.quiet && frames.len() > 1 {
            eprintln!(
                "frame {f} ({} of {}) -> {}",
                i + 1,
                frames.len(),
                out.display()
            );
        }
        // Every frame has the first one's size, even if an animated camera's aspect changes.
        size = Some(render_frame(&a, Some(frame_time(f, a.fps)), &out, size)?);
    }
    Ok(())
}

/// The scene time of frame `frame` at `fps` frames per second.
pub fn frame_time(frame: i64, fps: f64) -> f32 {
    (frame as f64 / fps) as f32
}

/// Says so when --frames asks for several frames of a scene that does not move.
fn warn_if_not_animated(scene: Option<&Path>, frames: &[i64], quiet: bool) {
    if quiet || frames.len() < 2 {
        return;
    }
    let span = scene.map(rayfarm_scene::animation_span);
    if !matches!(span, Some(Ok(Some(_)))) {
        eprintln!(
            "note: the scene has no animation; all {} frames will be the same image",
            frames.len()
        );
    }
}

/// Renders one image (the scene posed at `time_s`) to `output`; `size` overrides the size
/// the arguments and scene give. Returns the size rendered.
fn render_frame(
    a: &RenderArgs,
    time_s: Option<f32>,
    output: &Path,
    size: Option<(u32, u32)>,
) -> Result<(u32, u32)> {
    let t0 = Instant::now();
    // An environment map file is read and decoded beside the scene (a 1k HDR took a tenth of a
    // textured scene's start-up); its errors still come after the scene's and the view's.
    let (scene, env_map) = std::thread::scope(|s| {
        // Without a thread to spare (the OS refused one), the map is read after the scene.
        let env_map = a.env.as_deref().map(|p| {
            std::thread::Builder::new()
                .name("env-map".into())
                .spawn_scoped(s, move || load_env_map(p))
                .map_err(|_| p)
        });
        let scene = load_scene_at(a.scene.as_deref(), time_s, a.variant.as_deref(), a.quiet);
        let env_map = env_map.map(|h| match h {
            Ok(h) => h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
            Err(p) => load_env_map(p),
        });
        (scene, env_map)
    });
    let mut scene = scene?;
    // The view first: a wrong --camera is reported before any note about the lighting.
    let (w, h) = match size {
        Some((w, h)) => (Some(w), Some(h)),
        None => (a.width, a.height),
    };
    let (camera, width, height) = resolve_view(&scene, a.camera.as_deref(), w, h)?;
    match env_map {
        Some(env) => scene.environment = env?,
        None => apply_environment(&mut scene, None, a.env_color, a.quiet)?,
    }
    let pool = thread_pool(a.threads)?;
    let threads = pool.current_num_threads();
    let settings = RenderSettings {
        width,
        height,
        spp: a.spp,
        max_bounces: a.max_bounces,
        seed: a.seed,
        camera,
    };
    // Network rendering: check the options before the (possibly long) scene preparation.
    let network = if a.net.network {
        Some(crate::network_cmd::network_options(&a.net, threads)?)
    } else {
        None
    };
    let title = a
        .scene
        .as_deref()
        .and_then(|p| p.file_name())
        .map_or("cornell box".to_string(), |n| {
            n.to_string_lossy().into_owned()
        });
    let key =
        crate::live_cmd::view_key(&a.live, network.as_ref(), a.net.discovery.config.as_deref());
    let served = crate::live_cmd::serve(
        &a.live,
        || rayfarm_master::live::LiveView::new(&title, "render", width, height, a.spp, 1),
        key,
    )?;
    let blob = network
        .as_ref()
        .map(|_| rayfarm_scene::blob::encode(&scene));
    let units = if a.live.progressive() {
        plan_units_progressive(width, height, a.spp, a.tile, a.samples_per_unit)
    } else {
        plan_units(width, height, a.spp, a.tile, a.samples_per_unit)
    };
    let total: u64 = units.iter().map(|u| u.samples()).sum();
    let bar = crate::output::progress_bar(total, a.quiet);
    let done = AtomicU64::new(0);
    let render_start = Instant::now();
    let mut shares = Vec::new();
    // A network render, or a local one a live view watches, runs through the master's
    // scheduler; a plain local render on the thread pool.
    let master_run = crate::live_cmd::master_run(network, blob, served.as_ref(), threads);
    let mut stopped_samples = None;
    // Seconds of a local render's scene preparation (BVH, MIP pyramids): not counted in its
    // samples/s. (A network render's master builds while workers load: that overlaps.)
    let mut setup_secs: Option<f64> = None;
    let pixels = if let Some((nr, blob)) = master_run {
        // The master builds its own BVH after its port listens: workers start loading the
        // scene at once.
        let build = move || pool.install(|| RenderScene::for_images(scene));
        let r = crate::network_cmd::run_network(
            nr,
            rayfarm_master::LocalScene::Build(Box::new(build)),
            blob,
            settings.clone(),
            units,
            bar.clone(),
            served.as_ref().map(|s| s.view.clone()),
        )?;
        warn_nonfinite(r.film.nonfinite_samples);
        stopped_samples = r.samples();
        shares = r.shares.clone();
        r.to_rgb(a.spp)
    } else {
        // A large scene's BVH takes seconds: say so, not a bar standing at 0%.
        bar.set_message(format!(
            "preparing the scene ({} triangles: BVH, lights, textures)",
            scene.triangles.len()
        ));
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        let rs = pool.install(|| RenderScene::for_images(scene));
        setup_secs = Some(render_start.elapsed().as_secs_f64());
        bar.set_message("");
        let film = pool.install(|| {
            rayfarm_render::render_local(&rs, &settings, &units, &|n| {
                let d = done.fetch_add(n, Ordering::Relaxed) + n;
                bar.set_position(d);
                let secs =
                    (render_start.elapsed().as_secs_f64() - setup_secs.unwrap_or(0.0)).max(1e-6);
                bar.set_message(format!("{:.2} M samples/s", d as f64 / secs / 1e6));
            })
        });
        warn_nonfinite(film.nonfinite_samples);
        film.to_rgb(a.spp)
    };
    bar.finish_and_clear();
    if !a.quiet {
        print_shares(&shares);
    }
    let render_secs = render_start.elapsed().as_secs_f64();
    output::write_image(
        output, width, height, &pixels, a.half, a.exposure, a.tonemap,
    )?;
    // A network render counts every node that worked (regression: it said "on 2 threads"
    // with 16 remote workers).
    let working: Vec<_> = shares.iter().filter(|s| s.samples > 0).collect();
    let on = if working.is_empty() {
        format!("{threads} threads")
    } else {
        let t: u64 = working.iter().map(|s| u64::from(s.threads)).sum();
        format!("{t} threads of {} node(s)", working.len())
    };
    if let Some(done) = stopped_samples {
        let pct = done as f64 * 100.0 / total.max(1) as f64;
        println!(
            "stopped from the live view after {:.2} s: {done} of {total} samples ({pct:.1}%, {:.1} spp on average) -> {}",
            render_secs,
            done as f64 / (width as f64 * height as f64).max(1.0),
            output.display()
        );
        if let Some(s) = &served {
            s.linger();
        }
        return Ok((width, height));
    }
    if let Some(s) = &served {
        s.linger();
    }
    if !a.quiet {
        let setup = setup_secs.unwrap_or(0.0);
        let setup_note = match setup_secs {
            Some(s) => format!("scene set-up {s:.2} s, "),
            None => String::new(),
        };
        println!(
            "rendered {}x{} at {} spp on {} in {:.2} s ({:.2} M samples/s, {}{:.2} s total) -> {}",
            width,
            height,
            a.spp,
            on,
            render_secs - setup,
            total as f64 / (render_secs - setup).max(1e-9) / 1e6,
            setup_note,
            t0.elapsed().as_secs_f64(),
            output.display()
        );
    }
    Ok((width, height))
}

/// Says so when samples were dropped for not being finite.
pub(crate) fn warn_nonfinite(n: u64) {
    if n > 0 {
        eprintln!(
            "warning: {n} samples were not finite and were dropped; if a warning above named a light, material or environment brighter than rayfarm renders, lower it; otherwise this is a renderer bug: please report it with the scene"
        );
    }
}

pub fn info(a: InfoArgs) -> Result<()> {
    use std::fmt::Write as _;
    let scene = load_scene(Some(&a.scene), false)?;
    // Written at once at the end: `rayfarm info X | head` must not fail on the closed pipe.
    let mut out = String::new();
    writeln!(out, "{}", a.scene.display())?;
    writeln!(
        out,
        "  {} meshes, {} triangles, {} vertices, {} materials, {} images, {} lights, {} cameras",
        scene.meshes.len(),
        scene.triangles.len(),
        scene.positions.len(),
        scene.materials.len(),
        scene.images.len(),
        scene.lights.len(),
        scene.cameras.len()
    )?;
    if let Some((lo, hi)) = scene.bounds() {
        writeln!(out, "  bounds {lo:?} .. {hi:?}")?;
    }
    let emissive = scene
        .triangle_materials
        .iter()
        .filter(|&&m| scene.materials[m as usize].is_emissive())
        .count();
    if emissive > 0 {
        let placed = scene
            .lights
            .iter()
            .filter(|l| l.kind != rayfarm_scene::LightKind::Directional)
            .count();
        writeln!(
            out,
            "  {emissive} emissive triangle{}; light samples pick {}",
            if emissive == 1 { "" } else { "s" },
            if emissive + placed >= rayfarm_render::scene::LIGHT_TREE_MIN {
                "through a light tree (by importance at each point)"
            } else {
                "by power (a light tree from 4 lights with a place)"
            }
        )?;
    }
    for m in scene.meshes.iter().take(20) {
        writeln!(
            out,
            "  mesh '{}': {} triangles, uv sets {:?}",
            m.name, m.triangle_count, m.has_uv
        )?;
    }
    if scene.meshes.len() > 20 {
        writeln!(out, "  ... and {} more meshes", scene.meshes.len() - 20)?;
    }
    for c in &scene.cameras {
        writeln!(
            out,
            "  camera '{}': {:?} at {:?}",
            c.name, c.projection, c.position
        )?;
    }
    for l in &scene.lights {
        writeln!(
            out,
            "  light '{}': {:?}, intensity {} colour {:?}",
            l.name, l.kind, l.intensity, l.color
        )?;
    }
    if !is_compiled_blob(&a.scene) {
        let variants = rayfarm_scene::variants(&a.scene).map_err(|e| anyhow::anyhow!("{e}"))?;
        if !variants.is_empty() {
            writeln!(
                out,
                "  material variants (render --variant NAME): {}",
                variants.join(", ")
            )?;
        }
    }
    if let Some(path) = &a.compile_to {
        crate::output::check_side_output(
            &a.scene,
            path,
            "--compile-to",
            "rfscene",
            "a compiled scene",
        )?;
        let blob = rayfarm_scene::blob::encode(&scene);
        // A new file renamed into place: never through a symlink planted at the name, never
        // into a named pipe, and never half written.
        rayfarm_job::fsutil::write_atomic(path, &blob).map_err(|e| anyhow::anyhow!("{e}"))?;
        let hash = rayfarm_scene::blob::content_hash(&blob).map_err(|e| anyhow::anyhow!("{e}"))?;
        writeln!(
            out,
            "  compiled: {} bytes, content hash {} -> {}",
            blob.len(),
            rayfarm_scene::blob::hash_hex(&hash),
            path.display()
        )?;
    }
    print_stdout(&out)
}

/// Writes `text` to standard output; a reader that went away (`| head`) is not an error.
fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e).context("standard output"),
        _ => Ok(()),
    }
}

/// Prints each node's share of a network job (nothing for a local one).
pub fn print_shares(shares: &[rayfarm_master::NodeShare]) {
    if shares.is_empty() {
        return;
    }
    let total: u64 = shares.iter().map(|s| s.samples).sum::<u64>().max(1);
    println!("share of the work:");
    for s in shares {
        if let Some(why) = &s.problem {
            println!("  {:<40} not used: {why}", s.name);
            continue;
        }
        println!(
            "  {:<40} {:>4} threads {:>6.1}%  ({} samples{})",
            s.name,
            s.threads,
            100.0 * s.samples as f64 / total as f64,
            s.samples,
            if s.connected { "" } else { ", left" }
        );
    }
}

/// `rayfarm render --farm HOST --netdir FOLDER`: prepares a render job's folder (job.desc and
/// the compiled scene of every frame), leaves placeholder images at the outputs, submits the
/// job and follows it to the merge.
fn render_farm(a: &RenderArgs, farm: &str, netdir: &Path) -> Result<()> {
    use rayfarm_job::jobdesc::{check_file_name, SceneRef};
    use rayfarm_job::renderjob::{CameraDesc, FrameDesc, RenderDesc, RenderJobDesc};
    let farm_addr = crate::farm_cmd::manager_addr(farm);
    rayfarm_job::jobdesc::check_manager(&farm_addr).map_err(|e| anyhow::anyhow!("--farm: {e}"))?;
    // Without the farm key the manager would refuse the job: say so before preparing it.
    crate::farm_cmd::FarmClient::from_config(farm, None)?;
    let netdir = crate::farm_cmd::check_netdir(netdir, a.quiet)?;
    // The outputs: plain file names in one folder that exists.
    let out_parent = match a.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let out_dir = std::fs::canonicalize(&out_parent).with_context(|| {
        format!(
            "{}: the output folder does not exist; create it first",
            out_parent.display()
        )
    })?;
    let frames: Vec<Option<i64>> = match &a.frames {
        Some(f) => f.0.iter().map(|&f| Some(f)).collect(),
        None => vec![None],
    };
    let output_name = |f: Option<i64>| -> Result<String> {
        let p = match f {
            Some(f) => frame_path(&a.output, f),
            None => a.output.clone(),
        };
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        check_file_name(&name).map_err(|e| {
            anyhow::anyhow!(
                "{}: with --farm the output file name must be plain ({e})",
                a.output.display()
            )
        })?;
        Ok(name)
    };
    for &f in &frames {
        output_name(f)?;
    }
    let job_id = crate::farm_cmd::new_job_id()?;
    // The key first: without it no job folder is created (its job.desc needs the MAC).
    let farm_key = crate::farm_cmd::farm_key()?;
    let job_dir = netdir.join(&job_id);
    std::fs::create_dir(&job_dir)
        .with_context(|| format!("{}: cannot create the job folder", job_dir.display()))?;
    // A failure from here on leaves no half-made job folder behind.
    let r = (|| -> Result<RenderJobDesc> {
        // Scenes are written through a handle on the new folder (opened without following a
        // symlink), so that a folder swapped for a symlink while frames compile gets nothing.
        let folder = rayfarm_job::folder::FolderHandle::open(&job_dir)
            .with_context(|| format!("{}: cannot open the job folder", job_dir.display()))?;
        let mut written = std::collections::HashSet::new();
        // An environment map is read once, not once a frame.
        let env = match &a.env {
            Some(p) => {
                Some(rayfarm_scene::env::load_env_map(p).map_err(|e| anyhow::anyhow!("{e}"))?)
            }
            None => None,
        };
        let bar = crate::output::progress_bar(frames.len() as u64, a.quiet || frames.len() < 2);
        bar.set_message("compiling frames");
        let mut descs = Vec::with_capacity(frames.len());
        let mut size: Option<(u32, u32)> = None;
        for (i, &f) in frames.iter().enumerate() {
            let time_s = f.map(|f| frame_time(f, a.fps));
            // Notes about the scene once, not once a frame.
            let quiet = a.quiet || i > 0;
            let mut scene = load_scene_at(a.scene.as_deref(), time_s, a.variant.as_deref(), quiet)?;
            let (w, h) = match size {
                Some((w, h)) => (Some(w), Some(h)),
                None => (a.width, a.height),
            };
            let (camera, width, height) = resolve_view(&scene, a.camera.as_deref(), w, h)?;
            size = Some((width, height));
            match &env {
                Some(e) => scene.environment = e.clone(),
                None => apply_environment(&mut scene, None, a.env_color, quiet)?,
            }
            let blob = rayfarm_scene::blob::encode(&scene);
            drop(scene);
            let hash =
                rayfarm_scene::blob::content_hash(&blob).map_err(|e| anyhow::anyhow!("{e}"))?;
            let hex = rayfarm_scene::blob::hash_hex(&hash);
            // Frames that compile to the same scene share its file.
            let file = rayfarm_job::plan::scene_file_name(&hex);
            if written.insert(file.clone()) {
                folder
                    .write_atomic(&file, &blob)
                    .with_context(|| format!("{}: cannot write", job_dir.join(&file).display()))?;
            }
            descs.push(FrameDesc {
                frame: f.unwrap_or(0),
                time_s: time_s.unwrap_or(0.0),
                scene: SceneRef {
                    file,
                    blake3: hex,
                    bytes: blob.len() as u64,
                },
                camera: CameraDesc::from_camera(&camera),
                output: output_name(f)?,
            });
            bar.inc(1);
        }
        bar.finish_and_clear();
        let (width, height) = size.expect("at least one frame");
        let split = a.farm.tasks.unwrap_or(if descs.len() > 1 {
            TaskSplit::Frame
        } else {
            TaskSplit::Tile
        });
        let parts = rayfarm_job::plan::render_parts(
            descs.len(),
            width,
            height,
            match split {
                TaskSplit::Frame => rayfarm_job::plan::RenderSplit::Frame,
                TaskSplit::Tile => rayfarm_job::plan::RenderSplit::Tile(a.farm.task_tile),
            },
        );
        let desc = RenderJobDesc {
            job_id: job_id.clone(),
            created_unix_ms: rayfarm_job::plan::unix_ms_now(),
            name: a
                .scene
                .as_ref()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "cornell_box.gltf".into()),
            render: RenderDesc {
                width,
                height,
                spp: a.spp,
                max_bounces: a.max_bounces,
                seed: a.seed,
                exposure_ev: a.exposure,
                tonemap: a.tonemap.into(),
                half: a.half,
            },
            frames: descs,
            parts,
            out_dir: out_dir.display().to_string(),
            manager: Some(farm_addr.clone()),
        };
        desc.validate()
            .map_err(|e| anyhow::anyhow!("the job's description is invalid: {e}"))?;
        Ok(desc)
    })();
    let desc = match r {
        Ok(d) => d,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&job_dir);
            return Err(e);
        }
    };
    let desc_path = desc
        .write(&job_dir, &farm_key)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let any = rayfarm_job::renderjob::AnyJobDesc::Render(desc);
    let placeholders =
        rayfarm_job::merge::write_placeholders_any(&any).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::farm_cmd::submit_follow_merge(
        farm,
        &job_dir,
        &desc_path,
        any.part_count(),
        placeholders.len(),
        a.farm.priority,
        a.farm.no_wait,
        a.quiet,
        "rendered",
    )
}

#[cfg(test)]
mod frame_tests {
    use super::*;

    #[test]
    fn frame_ranges_parse() {
        assert_eq!(parse_frames("7").unwrap().0, vec![7]);
        assert_eq!(parse_frames("1-4").unwrap().0, vec![1, 2, 3, 4]);
        assert_eq!(parse_frames("0-10:5").unwrap().0, vec![0, 5, 10]);
        assert_eq!(parse_frames("-3--1").unwrap().0, vec![-3, -2, -1]);
        assert_eq!(parse_frames("-2").unwrap().0, vec![-2]);
        assert!(parse_frames("5-1").unwrap_err().contains("ends before"));
        assert!(parse_frames("1-4:0").unwrap_err().contains("step"));
        assert!(parse_frames("a-b")
            .unwrap_err()
            .contains("not a frame range"));
        assert!(parse_frames("0-100000000").unwrap_err().contains("at most"));
    }

    #[test]
    fn frame_numbers_go_into_the_name() {
        let p = |o: &str, f| frame_path(Path::new(o), f).display().to_string();
        assert_eq!(p("out/shot_####.png", 12), "out/shot_0012.png");
        assert_eq!(p("shot_#.exr", 12), "shot_12.exr");
        assert_eq!(p("a#b_###.png", 3), "a#b_003.png");
        assert_eq!(p("out/shot.png", 3), "out/shot_0003.png");
        assert_eq!(p("shot_##.png", -3), "shot_-03.png");
    }
}
