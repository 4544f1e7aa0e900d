//! `rayfarm render` and `rayfarm info`.

use crate::output::{self, ToneMap};
use anyhow::{bail, Context, Result};
use clap::Args;
use rayfarm_render::{plan_units, RenderScene, RenderSettings};
use rayfarm_scene::{camera::auto_camera, CompiledScene, Environment, Projection};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Render a scene on this machine.
///
/// The output format follows OUT's extension: `.exr` is linear float (32-bit, or 16-bit with
/// --half), `.png` is 8-bit sRGB after --exposure and --tonemap. Without SCENE the shipped
/// Cornell box (embedded in the binary) is rendered.
///
/// Examples:
///   rayfarm render scene.gltf -o scene.png --spp 256
///   rayfarm render model.glb -o model.exr --env studio.hdr --width 1920 --height 1080
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
    #[arg(long, default_value_t = rayfarm_render::DEFAULT_TILE_PX, hide = true)]
    pub tile: u32,
    /// Samples per work unit (does not change the image)
    #[arg(long, default_value_t = rayfarm_render::DEFAULT_SAMPLES_PER_UNIT, hide = true)]
    pub samples_per_unit: u32,
    #[command(flatten, next_help_heading = "Network rendering")]
    pub net: crate::network_cmd::RenderNetworkArgs,
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
    let (scene, warnings) = match path {
        // A compiled blob (`rayfarm info SCENE --compile-to FILE.rfscene`), as the network ships it.
        Some(p) if is_compiled_blob(p) => {
            let blob = std::fs::read(p).with_context(|| format!("{}: cannot read", p.display()))?;
            let scene = rayfarm_scene::blob::decode(&blob)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
            (scene, Vec::new())
        }
        Some(p) => rayfarm_scene::load(p).map_err(|e| anyhow::anyhow!("{e}"))?,
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

/// Applies --env / --env-color, or the default sky when the scene has no light at all.
pub fn apply_environment(
    scene: &mut CompiledScene,
    env: Option<&Path>,
    env_color: Option<[f32; 3]>,
    quiet: bool,
) -> Result<()> {
    if let Some(p) = env {
        scene.environment =
            rayfarm_scene::env::load_env_map(p).map_err(|e| anyhow::anyhow!("{e}"))?;
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
    let cam = cam.unwrap_or_else(|| auto_camera(scene, w as f32 / h as f32));
    Ok((cam, w, h))
}

pub fn thread_pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    let n = threads.unwrap_or(0);
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .context("cannot start render threads")
}

pub fn run(a: RenderArgs) -> Result<()> {
    let t0 = Instant::now();
    // Check the output before spending minutes rendering.
    let ext = a
        .output
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    if ext != "exr" && ext != "png" {
        bail!(
            "{}: unknown output format; use .exr (linear float) or .png (8-bit sRGB)",
            a.output.display()
        );
    }
    let mut scene = load_scene(a.scene.as_deref(), a.quiet)?;
    // The view first: a wrong --camera is reported before any note about the lighting.
    let (camera, width, height) = resolve_view(&scene, a.camera.as_deref(), a.width, a.height)?;
    apply_environment(&mut scene, a.env.as_deref(), a.env_color, a.quiet)?;
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
    let blob = network
        .as_ref()
        .map(|_| rayfarm_scene::blob::encode(&scene));
    let rs = pool.install(|| RenderScene::new(scene));
    let units = plan_units(width, height, a.spp, a.tile, a.samples_per_unit);
    let total: u64 = units.iter().map(|u| u.samples()).sum();
    let bar = crate::output::progress_bar(total, a.quiet);
    let done = AtomicU64::new(0);
    let render_start = Instant::now();
    let mut shares = Vec::new();
    let film = if let (Some(nr), Some(blob)) = (network, blob) {
        let (film, s) = crate::network_cmd::run_network(
            nr,
            std::sync::Arc::new(rs),
            blob,
            settings.clone(),
            units,
            bar.clone(),
        )?;
        shares = s;
        film
    } else {
        pool.install(|| {
            rayfarm_render::render_local(&rs, &settings, &units, &|n| {
                let d = done.fetch_add(n, Ordering::Relaxed) + n;
                bar.set_position(d);
                let secs = render_start.elapsed().as_secs_f64().max(1e-6);
                bar.set_message(format!("{:.2} M samples/s", d as f64 / secs / 1e6));
            })
        })
    };
    bar.finish_and_clear();
    if !a.quiet {
        print_shares(&shares);
    }
    let render_secs = render_start.elapsed().as_secs_f64();
    if film.nonfinite_samples > 0 {
        eprintln!(
            "warning: {} samples were not finite and were dropped (a renderer bug: please report it with the scene)",
            film.nonfinite_samples
        );
    }
    let pixels = film.to_rgb(a.spp);
    output::write_image(
        &a.output, width, height, &pixels, a.half, a.exposure, a.tonemap,
    )?;
    if !a.quiet {
        println!(
            "rendered {}x{} at {} spp on {} threads in {:.2} s ({:.2} M samples/s, {:.2} s total) -> {}",
            width,
            height,
            a.spp,
            threads,
            render_secs,
            total as f64 / render_secs.max(1e-9) / 1e6,
            t0.elapsed().as_secs_f64(),
            a.output.display()
        );
    }
    Ok(())
}

pub fn info(a: InfoArgs) -> Result<()> {
    let scene = load_scene(Some(&a.scene), false)?;
    println!("{}", a.scene.display());
    println!(
        "  {} meshes, {} triangles, {} vertices, {} materials, {} images, {} lights, {} cameras",
        scene.meshes.len(),
        scene.triangles.len(),
        scene.positions.len(),
        scene.materials.len(),
        scene.images.len(),
        scene.lights.len(),
        scene.cameras.len()
    );
    if let Some((lo, hi)) = scene.bounds() {
        println!("  bounds {lo:?} .. {hi:?}");
    }
    for m in scene.meshes.iter().take(20) {
        println!(
            "  mesh '{}': {} triangles, uv sets {:?}",
            m.name, m.triangle_count, m.has_uv
        );
    }
    if scene.meshes.len() > 20 {
        println!("  ... and {} more meshes", scene.meshes.len() - 20);
    }
    for c in &scene.cameras {
        println!(
            "  camera '{}': {:?} at {:?}",
            c.name, c.projection, c.position
        );
    }
    for l in &scene.lights {
        println!(
            "  light '{}': {:?}, intensity {} colour {:?}",
            l.name, l.kind, l.intensity, l.color
        );
    }
    if let Some(out) = &a.compile_to {
        let blob = rayfarm_scene::blob::encode(&scene);
        std::fs::write(out, &blob).with_context(|| format!("{}: cannot write", out.display()))?;
        let hash = rayfarm_scene::blob::content_hash(&blob).map_err(|e| anyhow::anyhow!("{e}"))?;
        println!(
            "  compiled: {} bytes, content hash {} -> {}",
            blob.len(),
            rayfarm_scene::blob::hash_hex(&hash),
            out.display()
        );
    }
    Ok(())
}

/// Prints each node's share of a network job (nothing for a local one).
pub fn print_shares(shares: &[rayfarm_master::NodeShare]) {
    if shares.is_empty() {
        return;
    }
    let total: u64 = shares.iter().map(|s| s.samples).sum::<u64>().max(1);
    println!("share of the work:");
    for s in shares {
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
