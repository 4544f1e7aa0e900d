//! `rayfarm bench`: fixed scenes at fixed settings, printing samples/s and rays/s.

use crate::render_cmd::{apply_environment, load_scene, resolve_view, thread_pool};
use anyhow::Result;
use clap::Args;
use rayfarm_render::{plan_units, RenderScene, RenderSettings};
use std::path::PathBuf;
use std::time::Instant;

/// Measure render speed on fixed scenes and settings.
///
/// Without --scene it renders the embedded Cornell box at 512x512 with 8 bounces, the setting
/// BENCHMARKS.md compares with Blender Cycles and Mitsuba 3. Each scene is rendered once to warm
/// up, then timed `--repeat` times; the best run is reported.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Scene files to measure (default: the embedded Cornell box)
    #[arg(long)]
    pub scene: Vec<PathBuf>,
    #[arg(long, default_value_t = 512)]
    pub width: u32,
    #[arg(long, default_value_t = 512)]
    pub height: u32,
    #[arg(long, default_value_t = 32)]
    pub spp: u32,
    #[arg(long, default_value_t = 8)]
    pub max_bounces: u32,
    /// Render threads (default: all cores)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Timed runs per scene
    #[arg(long, default_value_t = 3)]
    pub repeat: u32,
}

pub fn run(a: BenchArgs) -> Result<()> {
    let scenes: Vec<Option<PathBuf>> = if a.scene.is_empty() {
        vec![None]
    } else {
        a.scene.iter().cloned().map(Some).collect()
    };
    let pool = thread_pool(a.threads)?;
    println!(
        "rayfarm bench: {}x{}, {} spp, {} bounces, {} threads",
        a.width,
        a.height,
        a.spp,
        a.max_bounces,
        pool.current_num_threads()
    );
    for path in scenes {
        let name = path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "cornell-box (embedded)".into());
        let mut scene = load_scene(path.as_deref(), true)?;
        apply_environment(&mut scene, None, None, true)?;
        let (camera, w, h) = resolve_view(&scene, None, Some(a.width), Some(a.height))?;
        let tris = scene.triangles.len();
        let t = Instant::now();
        let rs = pool.install(|| RenderScene::for_images(scene));
        let build = t.elapsed().as_secs_f64();
        let settings = RenderSettings {
            width: w,
            height: h,
            spp: a.spp,
            max_bounces: a.max_bounces,
            seed: 0,
            camera,
        };
        let units = plan_units(w, h, a.spp, 32, 16);
        let samples: u64 = units.iter().map(|u| u.samples()).sum();
        let mut best: Option<(f64, u64)> = None;
        for run in 0..=a.repeat {
            pool.broadcast(|_| rayfarm_render::integrator::take_ray_count());
            let t = Instant::now();
            pool.install(|| rayfarm_render::render_local(&rs, &settings, &units, &|_| {}));
            let secs = t.elapsed().as_secs_f64();
            let rays: u64 = pool
                .broadcast(|_| rayfarm_render::integrator::take_ray_count())
                .into_iter()
                .sum();
            if run > 0 && best.is_none_or(|b| secs < b.0) {
                best = Some((secs, rays));
            }
        }
        let (secs, rays) = best.unwrap_or((f64::NAN, 0));
        println!(
            "{name}: {tris} triangles, set-up (BVH, MIP pyramids) {build:.3} s; {:.3} s per frame, {:.3} M samples/s, {:.2} M rays/s ({} path, {} kernel)",
            secs,
            samples as f64 / secs / 1e6,
            rays as f64 / secs / 1e6,
            rs.bvh.isa().name(),
            if rs.takes_wavefront() {
                "wavefront"
            } else {
                "scalar"
            }
        );
    }
    Ok(())
}
