//! `rayfarm bake`: bake lighting and surface passes into textures of a UV set.

use crate::render_cmd::{apply_environment, load_scene, thread_pool};
use anyhow::{bail, Context, Result};
use clap::Args;
use rayfarm_bake::{Pass, TexelTable};
use rayfarm_render::RenderScene;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Bake passes into textures laid out by a UV set, on this machine.
///
/// Each map is written as linear EXR and as 8-bit PNG into DIR, named object (or "atlas"),
/// pass and size, e.g. `atlas_lightmap_1024.exr`. Passes: complete (radiance leaving the
/// surface, seen along its normal), lightmap (incoming irradiance, no albedo), ao (ambient
/// occlusion within --ao-distance), albedo (base colour incl. texture), normal (world space;
/// PNG holds n*0.5+0.5). PNG is sRGB for complete, lightmap and albedo, linear for ao and normal.
///
/// Examples:
///   rayfarm bake scene.gltf --out baked --size 1024 --passes lightmap,ao
///   rayfarm bake level.glb --out maps --uv-set 1 --texels-per-unit 32 --per-object
#[derive(Args, Debug, Clone)]
#[command(verbatim_doc_comment)]
pub struct BakeArgs {
    /// Scene file: .gltf, .glb, .obj or a compiled .rfscene
    pub scene: PathBuf,
    /// Output folder (created if missing)
    #[arg(short, long, value_name = "DIR")]
    pub out: PathBuf,
    /// UV set that lays out the maps (0 = TEXCOORD_0, 1 = TEXCOORD_1)
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub uv_set: u8,
    /// Map edge in texels (1 to 16384) [default: 1024]
    #[arg(long, conflicts_with = "texels_per_unit")]
    pub size: Option<u64>,
    /// Choose the map size to give about N texels per world unit along the surface
    #[arg(long, value_name = "N")]
    pub texels_per_unit: Option<f32>,
    /// Passes to bake, comma-separated: complete, lightmap, ao, albedo, normal
    #[arg(long, value_delimiter = ',', default_value = "complete,lightmap,ao,albedo,normal", value_parser = parse_pass)]
    pub passes: Vec<Pass>,
    /// Objects (mesh names) to bake, comma-separated (default: every object with the UV set)
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub objects: Vec<String>,
    /// Samples per texel
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub spp: u32,
    /// Texels of padding filled around the charts
    #[arg(long, value_name = "PX", default_value_t = 8)]
    pub padding: u32,
    /// One map holding every chosen object (the default)
    #[arg(long, conflicts_with = "per_object")]
    pub atlas: bool,
    /// One map per object
    #[arg(long)]
    pub per_object: bool,
    /// Ambient occlusion ray length in world units (default: 10% of the scene's diagonal)
    #[arg(long, value_name = "D")]
    pub ao_distance: Option<f32>,
    /// Refuse to bake when UVs overlap
    #[arg(long)]
    pub strict: bool,
    /// Indirect bounces (0 = direct light only)
    #[arg(long, default_value_t = 16)]
    pub max_bounces: u32,
    /// Job seed: the same seed gives the same maps, bit for bit
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Bake threads (default: all cores)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Equirectangular environment map (.hdr or .exr)
    #[arg(long, value_name = "FILE", conflicts_with = "env_color")]
    pub env: Option<PathBuf>,
    /// Uniform environment radiance, e.g. 0.5,0.5,0.5
    #[arg(long, value_name = "R,G,B", value_parser = crate::render_cmd::parse_rgb)]
    pub env_color: Option<[f32; 3]>,
    /// No progress bar or summary
    #[arg(short, long)]
    pub quiet: bool,
    /// Tile edge in texels (does not change the maps)
    #[arg(long, default_value_t = rayfarm_render::DEFAULT_TILE_PX, hide = true)]
    pub tile: u32,
    /// Samples per work unit (does not change the maps)
    #[arg(long, default_value_t = rayfarm_render::DEFAULT_SAMPLES_PER_UNIT, hide = true)]
    pub samples_per_unit: u32,
}

fn parse_pass(s: &str) -> std::result::Result<Pass, String> {
    Pass::parse(s.trim())
        .ok_or_else(|| format!("unknown pass '{s}'; use complete, lightmap, ao, albedo or normal"))
}

/// One map to bake: its name (None for the atlas) and texel table.
struct MapJob {
    object: Option<String>,
    table: TexelTable,
}

pub fn run(a: BakeArgs) -> Result<()> {
    let t0 = Instant::now();
    let mut passes = a.passes.clone();
    passes.sort();
    passes.dedup();
    if let Some(d) = a.ao_distance {
        if !(d.is_finite() && d > 0.0) {
            bail!("--ao-distance {d} must be a positive number");
        }
    }
    if let Some(s) = a.size {
        rayfarm_bake::check_size(s).map_err(|e| anyhow::anyhow!("--size: {e}"))?;
    }
    let mut scene = load_scene(Some(&a.scene), a.quiet)?;
    let scene_name = a.scene.display();
    let (meshes, skipped) = rayfarm_bake::select_objects(&scene, &a.objects, a.uv_set)
        .map_err(|e| anyhow::anyhow!("{scene_name}: {e}"))?;
    if !a.quiet && !skipped.is_empty() {
        eprintln!(
            "note: skipping {} object(s) without UV set {}: {}",
            skipped.len(),
            a.uv_set,
            skipped.join(", ")
        );
    }
    let groups: Vec<(Option<String>, Vec<usize>)> = if a.per_object {
        meshes
            .iter()
            .map(|&m| (Some(scene.meshes[m].name.clone()), vec![m]))
            .collect()
    } else {
        vec![(None, meshes.clone())]
    };
    let mut sizes = Vec::new();
    for (name, ms) in &groups {
        let size = match (a.size, a.texels_per_unit) {
            (Some(s), _) => s as u32,
            (None, Some(n)) => {
                rayfarm_bake::size_for_density(&scene, ms, a.uv_set, n).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: --texels-per-unit: {e}",
                        name.as_deref().unwrap_or("atlas")
                    )
                })?
            }
            (None, None) => 1024,
        };
        sizes.push(size);
    }
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("{}: cannot create the output folder", a.out.display()))?;
    apply_environment(&mut scene, a.env.as_deref(), a.env_color, a.quiet)?;

    // Rasterise the UV layouts and report overlaps before the expensive part.
    let mut jobs = Vec::new();
    let mut overlap_msgs = Vec::new();
    for ((object, ms), size) in groups.into_iter().zip(sizes) {
        let table = TexelTable::build(&scene, &ms, a.uv_set, size, size);
        if !table.overlaps.is_empty() {
            let pairs: Vec<String> = table
                .overlaps
                .iter()
                .map(|o| {
                    let (x, y) = (
                        &scene.meshes[o.meshes.0].name,
                        &scene.meshes[o.meshes.1].name,
                    );
                    let who = if x == y {
                        format!("'{x}' with itself")
                    } else {
                        format!("'{x}' with '{y}'")
                    };
                    format!("{who}: {} texels", o.texels)
                })
                .collect();
            overlap_msgs.push(format!(
                "{}: overlapping UVs in {:.2}% of {} covered texels ({})",
                object.as_deref().unwrap_or("atlas"),
                100.0 * table.overlap_share(),
                table.covered_count(),
                pairs.join("; ")
            ));
        }
        jobs.push(MapJob { object, table });
    }
    if !overlap_msgs.is_empty() {
        if a.strict {
            bail!(
                "UV set {} overlaps (--strict):\n  {}",
                a.uv_set,
                overlap_msgs.join("\n  ")
            );
        }
        if !a.quiet {
            for m in &overlap_msgs {
                eprintln!("warning: {m} (the first triangle in scene order wins each texel)");
            }
        }
    }

    let pool = thread_pool(a.threads)?;
    let threads = pool.current_num_threads();
    let rs = pool.install(|| RenderScene::new(scene));
    let ao_distance = a
        .ao_distance
        .unwrap_or_else(|| rayfarm_bake::default_ao_distance(&rs));
    let settings_of = |pass| rayfarm_bake::BakeSettings {
        pass,
        spp: a.spp,
        max_bounces: a.max_bounces,
        seed: a.seed,
        ao_distance,
    };
    let plans: Vec<Vec<Vec<rayfarm_bake::WorkUnit>>> = jobs
        .iter()
        .map(|j| {
            passes
                .iter()
                .map(|&p| rayfarm_bake::plan(&j.table, &settings_of(p), a.tile, a.samples_per_unit))
                .collect()
        })
        .collect();
    let total: u64 = plans.iter().flatten().flatten().map(|u| u.samples()).sum();
    let bar = crate::output::progress_bar(total, a.quiet);
    let done = AtomicU64::new(0);
    let start = Instant::now();
    let mut written = Vec::new();
    let mut nonfinite = 0;
    // (texel samples, seconds) of the passes that trace rays, for the speed summary.
    let mut traced = (0u64, 0.0f64);
    for (job, plans) in jobs.iter().zip(&plans) {
        let covered = job.table.covered();
        for (&pass, units) in passes.iter().zip(plans) {
            let settings = settings_of(pass);
            let pass_start = Instant::now();
            let film = pool.install(|| {
                rayfarm_bake::bake_local(&rs, &job.table, &settings, units, &|n| {
                    let d = done.fetch_add(n, Ordering::Relaxed) + n;
                    bar.set_position(d);
                    bar.set_message(format!(
                        "{} {}",
                        job.object.as_deref().unwrap_or("atlas"),
                        pass.name()
                    ));
                })
            });
            if !pass.is_deterministic() {
                traced.0 += job.table.covered_count() * settings.spp() as u64;
                traced.1 += pass_start.elapsed().as_secs_f64();
            }
            nonfinite += film.nonfinite_samples;
            let raw = film.to_rgb(settings.spp());
            let (px, _) =
                rayfarm_bake::dilate(&raw, job.table.width, job.table.height, &covered, a.padding);
            let stem = rayfarm_bake::map_name(
                job.object.as_deref(),
                pass,
                job.table.width,
                job.table.height,
            );
            let exr = a.out.join(format!("{stem}.exr"));
            crate::output::write_image(
                &exr,
                job.table.width,
                job.table.height,
                &px,
                false,
                0.0,
                crate::output::ToneMap::Clamp,
            )?;
            let png = a.out.join(format!("{stem}.png"));
            write_png(&png, job.table.width, job.table.height, &px, pass)?;
            written.push(stem);
        }
    }
    bar.finish_and_clear();
    if nonfinite > 0 {
        eprintln!(
            "warning: {nonfinite} samples were not finite and were dropped (a renderer bug: please report it with the scene)"
        );
    }
    if !a.quiet {
        let texels: u64 = jobs.iter().map(|j| j.table.covered_count()).sum();
        println!(
            "baked {} map(s) x {} pass(es), {} covered texels, {} spp on {} threads in {:.2} s ({:.2} M texel-samples/s traced, {:.2} s total) -> {}",
            jobs.len(),
            passes.len(),
            texels,
            a.spp,
            threads,
            start.elapsed().as_secs_f64(),
            traced.0 as f64 / traced.1.max(1e-9) / 1e6,
            t0.elapsed().as_secs_f64(),
            a.out.display()
        );
    }
    Ok(())
}

/// 8-bit PNG of a map: sRGB-encoded colour for complete, lightmap and albedo; linear for ao;
/// `n * 0.5 + 0.5` for normals.
fn write_png(path: &Path, width: u32, height: u32, px: &[[f32; 3]], pass: Pass) -> Result<()> {
    let bytes: Vec<u8> = match pass {
        Pass::Complete | Pass::Lightmap | Pass::Albedo => {
            crate::output::to_srgb8(px, 0.0, crate::output::ToneMap::Clamp)
        }
        Pass::Ao => px
            .iter()
            .flat_map(|p| p.map(|c| (c.clamp(0.0, 1.0) * 255.0 + 0.5) as u8))
            .collect(),
        Pass::Normal => px
            .iter()
            .flat_map(|p| p.map(|c| ((c * 0.5 + 0.5).clamp(0.0, 1.0) * 255.0 + 0.5) as u8))
            .collect(),
    };
    let tmp = path.with_extension("png.partial");
    image::save_buffer_with_format(
        &tmp,
        &bytes,
        width,
        height,
        image::ExtendedColorType::Rgb8,
        image::ImageFormat::Png,
    )
    .with_context(|| format!("{}: cannot write PNG", path.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        format!(
            "{}: cannot move the finished image into place",
            path.display()
        )
    })?;
    Ok(())
}
