//! `rayfarm bake`: bake lighting and surface passes into textures of a UV set.

use crate::render_cmd::{apply_environment, load_scene, thread_pool};
use anyhow::{bail, Context, Result};
use clap::Args;
use rayfarm_bake::{
    BakeSpec, BakeWork, Film, LayerSpec, MapSpec, Pass, Region, TexelTable, Workload,
};
use rayfarm_render::RenderScene;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Bake passes into textures laid out by a UV set: on this machine, over the network
/// (--network, like `render`), or as a job of a job manager (--farm HOST --netdir FOLDER).
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
///   rayfarm bake level.glb --out maps --uv-set 1 --mode multi --farm manager --netdir /mnt/farm
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
    /// single: each map is one distributed render. multi: each object of an atlas is its own
    /// task over its region of the atlas, merged by the atlas's coverage (same bytes where
    /// charts don't overlap)
    #[arg(long, value_enum, default_value_t = Mode::Single)]
    pub mode: Mode,
    /// Also write the scene as a binary glTF with each baked object's complete map as the
    /// base colour texture of an unlit material (needs the complete pass)
    #[arg(long, value_name = "FILE.glb")]
    pub gltf_out: Option<PathBuf>,
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
    #[arg(long, default_value_t = rayfarm_render::DEFAULT_TILE_PX, hide = true,
          value_parser = clap::value_parser!(u32).range(1..=rayfarm_render::MAX_TILE_PX as i64))]
    pub tile: u32,
    /// Samples per work unit (does not change the maps)
    #[arg(long, default_value_t = rayfarm_render::DEFAULT_SAMPLES_PER_UNIT, hide = true)]
    pub samples_per_unit: u32,
    #[command(flatten, next_help_heading = "Live view")]
    pub live: crate::live_cmd::ViewArgs,
    #[command(flatten)]
    pub net: crate::network_cmd::RenderNetworkArgs,
    /// Bake on a farm: submit the job to this job manager (HOST[:PORT]); needs --netdir
    #[arg(
        long,
        value_name = "HOST:PORT",
        requires = "netdir",
        conflicts_with = "network"
    )]
    pub farm: Option<String>,
    /// Network folder every node reaches at the same path (nodes that mount it elsewhere use
    /// `--path-map`); the job's folder, job.desc and parts go in NETWORK_FOLDER/<job-id>/
    #[arg(long, value_name = "NETWORK_FOLDER", requires = "farm")]
    pub netdir: Option<PathBuf>,
    /// Priority of the farm job (higher runs first)
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Submit the farm job and return at once (finish it later with `rayfarm merge`)
    #[arg(long, requires = "farm")]
    pub no_wait: bool,
}

/// Texel tile of one farm task in single mode (multi mode: one task per object and pass).
const FARM_TILE_PX: u32 = rayfarm_job::plan::DEFAULT_TILE_PX;

/// How a bake is cut into tasks.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Single,
    Multi,
}

fn parse_pass(s: &str) -> std::result::Result<Pass, String> {
    Pass::parse(s.trim())
        .ok_or_else(|| format!("unknown pass '{s}'; use complete, lightmap, ao, albedo or normal"))
}

/// One map to bake: its name (None for the atlas), meshes and texel table.
struct MapJob {
    object: Option<String>,
    meshes: Vec<usize>,
    table: TexelTable,
}

/// One output map (a map and a pass) and the layers whose films make it: one layer, or in
/// multi mode one per object, paired with the object's mesh.
struct Output {
    job: usize,
    pass: Pass,
    parts: Vec<(usize, usize)>,
    films: Vec<(usize, Film)>,
    /// Its map files are written.
    done: bool,
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
    if a.gltf_out.is_some() && !passes.contains(&Pass::Complete) {
        bail!("--gltf-out assigns the complete map to each object: add complete to --passes");
    }
    if let Some(g) = &a.gltf_out {
        crate::output::check_side_output(&a.scene, g, "--gltf-out", "glb", "a binary glTF")?;
    }
    let threads_wanted = match a.threads {
        Some(t) => t,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    // Farm baking: the farm key (the manager's API needs its token) and the network folder
    // must be there before anything else.
    if let Some(farm) = &a.farm {
        crate::farm_cmd::FarmClient::from_config(farm, None)?;
    }
    let netdir = match &a.netdir {
        Some(d) => Some(crate::farm_cmd::check_netdir(d, a.quiet)?),
        None => None,
    };
    if let (Some(_), Some(g)) = (&a.farm, &a.gltf_out) {
        let parent = match g.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&a.out)
            .with_context(|| format!("{}: cannot create the output folder", a.out.display()))?;
        if std::fs::canonicalize(&parent).ok() != std::fs::canonicalize(&a.out).ok() {
            bail!(
                "{}: with --farm, --gltf-out must be a file in --out ({}), the one folder the merge writes to",
                g.display(),
                a.out.display()
            );
        }
    }
    // Network baking: check the options before the (possibly long) scene preparation.
    let network = if a.net.network {
        Some(crate::network_cmd::network_options(&a.net, threads_wanted)?)
    } else {
        None
    };
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
    check_map_names(&groups, &sizes, &a.passes)
        .map_err(|e| anyhow::anyhow!("{scene_name}: {e}"))?;
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
        jobs.push(MapJob {
            object,
            meshes: ms,
            table,
        });
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
    let blob = (network.is_some() || a.farm.is_some()).then(|| rayfarm_scene::blob::encode(&scene));
    let rs = std::sync::Arc::new(pool.install(|| RenderScene::new(scene)));
    let ao_distance = match a.ao_distance {
        Some(d) => d,
        None => {
            let d = rayfarm_bake::default_ao_distance(&rs);
            if d.is_finite() && d > 0.0 {
                d
            } else if passes.contains(&Pass::Ao) {
                // A scene whose extent overflows single precision (or has none).
                bail!(
                    "{scene_name}: the scene's size gives no usable ambient-occlusion distance \
                     (10% of its diagonal is {d}); pass --ao-distance with a length in scene \
                     units, or leave ao out of --passes"
                );
            } else {
                // Not baked: any positive length passes the plan's check.
                1.0
            }
        }
    };

    // The job's maps and layers. Layers go map by map, pass by pass (and object by object in
    // multi mode) so outputs complete, and are written, one after another.
    let mut maps = Vec::new();
    let mut layers = Vec::new();
    let mut outputs: Vec<Output> = Vec::new();
    let mut prebuilt: Vec<(usize, TexelTable)> = Vec::new();
    for (ji, job) in jobs.iter().enumerate() {
        let (w, h) = (job.table.width, job.table.height);
        let mut job_maps = Vec::new();
        if a.mode == Mode::Multi && job.meshes.len() > 1 {
            for &m in &job.meshes {
                if let Some(region) = TexelTable::chart_region(&rs.scene, &[m], a.uv_set, w, h) {
                    job_maps.push((m, maps.len()));
                    maps.push(MapSpec {
                        meshes: vec![m],
                        width: w,
                        height: h,
                        region,
                    });
                }
            }
        } else {
            job_maps.push((usize::MAX, maps.len()));
            maps.push(MapSpec {
                meshes: job.meshes.clone(),
                width: w,
                height: h,
                region: Region::full(w, h),
            });
        }
        if job_maps.len() == 1 && job_maps[0].0 == usize::MAX {
            prebuilt.push((job_maps[0].1, job.table.clone()));
        }
        for &pass in &passes {
            let mut parts = Vec::new();
            for &(mesh, map) in &job_maps {
                parts.push((mesh, layers.len()));
                layers.push(LayerSpec { map, pass });
            }
            outputs.push(Output {
                job: ji,
                pass,
                parts,
                films: Vec::new(),
                done: false,
            });
        }
    }
    let spec = BakeSpec {
        uv_set: a.uv_set,
        spp: a.spp,
        max_bounces: a.max_bounces,
        seed: a.seed,
        ao_distance,
        maps,
        layers,
    };
    spec.check(&rs.scene)
        .map_err(|e| anyhow::anyhow!("internal error: the bake's plan is invalid: {e}"))?;
    if let (Some(farm), Some(netdir), Some(blob)) = (&a.farm, &netdir, &blob) {
        let plan = FarmPlan {
            spec: &spec,
            outputs: &outputs,
            jobs: &jobs,
            scene_name: &a.scene,
        };
        return run_farm(&a, farm, netdir, blob, plan);
    }
    let work = BakeWork::new(spec);
    for (i, t) in prebuilt {
        work.set_table(i, t);
    }
    let work = std::sync::Arc::new(Workload::Bake(work));
    let units = work.plan(a.tile, a.samples_per_unit);
    // Which output each layer feeds.
    let mut layer_output = vec![(0usize, 0usize); work.layer_count()];
    for (oi, o) in outputs.iter().enumerate() {
        for &(mesh, l) in &o.parts {
            layer_output[l] = (oi, mesh);
        }
    }

    let total: u64 = units.iter().map(|u| u.samples()).sum();
    let (view_w, view_h) = jobs
        .first()
        .map_or((1, 1), |j| (j.table.width, j.table.height));
    let key =
        crate::live_cmd::view_key(&a.live, network.as_ref(), a.net.discovery.config.as_deref());
    let title = a
        .scene
        .file_name()
        .map_or("bake".to_string(), |n| n.to_string_lossy().into_owned());
    let served = crate::live_cmd::serve(
        &a.live,
        || {
            rayfarm_master::live::LiveView::new(
                &title,
                "bake",
                view_w,
                view_h,
                a.spp,
                work.layer_count() as u32,
            )
        },
        key,
    )?;
    let bar = crate::output::progress_bar(total, a.quiet);
    let start = Instant::now();
    let mut written = Vec::new();
    let mut nonfinite = 0u64;
    let mut complete_pngs: Vec<(usize, PathBuf)> = Vec::new();
    let mut on_layer = |l: usize, film: Film| -> Result<()> {
        let (oi, mesh) = layer_output[l];
        let o = &mut outputs[oi];
        o.films.push((mesh, film));
        if o.films.len() < o.parts.len() {
            return Ok(());
        }
        let job = &jobs[o.job];
        let film = if o.parts.len() == 1 && o.parts[0].0 == usize::MAX {
            o.films
                .pop()
                .map(|(_, f)| f)
                .context("a layer's film went missing")?
        } else {
            let refs: Vec<(usize, &Film)> = o.films.iter().map(|(m, f)| (*m, f)).collect();
            rayfarm_bake::merge_objects(&rs.scene, &job.table, &refs)
                .map_err(|e| anyhow::anyhow!("cannot merge the objects' maps: {e}"))?
        };
        o.films.clear();
        o.done = true;
        nonfinite = nonfinite.saturating_add(film.nonfinite_samples);
        let settings = rayfarm_bake::BakeSettings {
            pass: o.pass,
            spp: a.spp,
            max_bounces: a.max_bounces,
            seed: a.seed,
            ao_distance,
        };
        let raw = film.to_rgb(settings.spp());
        let (px, _) = rayfarm_bake::dilate(
            &raw,
            job.table.width,
            job.table.height,
            &job.table.covered(),
            a.padding,
        );
        let stem = rayfarm_bake::map_name(
            job.object.as_deref(),
            o.pass,
            job.table.width,
            job.table.height,
        );
        // The same writers as the farm's merge, so farm and local maps are the same bytes.
        let files = rayfarm_job::maps::write_map_files(
            &a.out,
            &stem,
            job.table.width,
            job.table.height,
            &px,
            o.pass,
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        let png = files[1].clone();
        if o.pass == Pass::Complete {
            complete_pngs.push((o.job, png));
        }
        written.push(stem);
        Ok(())
    };
    // A network bake, or a local one a live view watches, runs through the master's scheduler.
    let master_run = crate::live_cmd::master_run(network, blob, served.as_ref(), threads);
    let mut stopped = false;
    let shares = if let Some((nr, blob)) = master_run {
        let end = crate::network_cmd::run_network_job(
            nr,
            rs.clone(),
            blob,
            work.clone(),
            units,
            bar.clone(),
            "texel samples",
            served.as_ref().map(|s| s.view.clone()),
            &mut on_layer,
        )?;
        stopped = end.stopped;
        end.shares
    } else {
        let done = AtomicU64::new(0);
        let mut failed = None;
        pool.install(|| {
            rayfarm_bake::workload::run_local(
                &rs,
                &work,
                &units,
                &|n| {
                    let d = done.fetch_add(n, Ordering::Relaxed) + n;
                    bar.set_position(d);
                    let secs = start.elapsed().as_secs_f64().max(1e-6);
                    bar.set_message(format!("{:.2} M texel samples/s", d as f64 / secs / 1e6));
                },
                &mut |l, f| {
                    if failed.is_none() {
                        failed = on_layer(l, f).err();
                    }
                },
            )
        });
        if let Some(e) = failed {
            return Err(e);
        }
        Vec::new()
    };
    bar.finish_and_clear();
    let bake_secs = start.elapsed().as_secs_f64();
    if let Some(s) = &served {
        s.linger();
    }
    if stopped {
        let missing: Vec<String> = outputs
            .iter()
            .filter(|o| !o.parts.is_empty() && !o.done)
            .map(|o| {
                rayfarm_bake::map_name(
                    jobs[o.job].object.as_deref(),
                    o.pass,
                    jobs[o.job].table.width,
                    jobs[o.job].table.height,
                )
            })
            .collect();
        bail!(
            "stopped from the live view after {bake_secs:.2} s: wrote {} map(s) ({}) into {}; not baked: {}",
            written.len(),
            written.join(", "),
            a.out.display(),
            missing.join(", ")
        );
    }
    // Layers of a network bake finish in any order; the glTF lists maps in output order.
    complete_pngs.sort();
    if let Some(path) = &a.gltf_out {
        write_baked_gltf(path, &rs.scene, &jobs, &complete_pngs, a.uv_set)?;
    }
    crate::render_cmd::warn_nonfinite(nonfinite);
    if !a.quiet {
        crate::render_cmd::print_shares(&shares);
        let texels: u64 = jobs.iter().map(|j| j.table.covered_count()).sum();
        // Texel samples of the passes that trace rays (albedo and normal take one lookup).
        let traced_passes = passes.iter().filter(|p| !p.is_deterministic()).count() as u64;
        println!(
            "baked {} map(s) x {} pass(es), {} covered texels, {} spp on {} threads in {:.2} s ({:.2} M texel-samples/s traced, {:.2} s total) -> {}",
            jobs.len(),
            passes.len(),
            texels,
            a.spp,
            threads,
            bake_secs,
            (texels * a.spp as u64 * traced_passes) as f64 / bake_secs.max(1e-9) / 1e6,
            t0.elapsed().as_secs_f64(),
            a.out.display()
        );
        if let Some(p) = &a.gltf_out {
            println!("baked glTF -> {}", p.display());
        }
    }
    Ok(())
}

struct FarmPlan<'a> {
    spec: &'a BakeSpec,
    outputs: &'a [Output],
    jobs: &'a [MapJob],
    scene_name: &'a Path,
}

/// The farm half of `rayfarm bake`: writes the job folder (compiled scene, job.desc), the
/// placeholders, submits the job, follows it and merges the result.
fn run_farm(a: &BakeArgs, farm: &str, netdir: &Path, blob: &[u8], plan: FarmPlan) -> Result<()> {
    use rayfarm_job::jobdesc::{self, BakeDesc, BakeMode, JobDesc, OutputDesc, PartDesc, SceneRef};
    let spec = plan.spec;
    let mut parts: Vec<PartDesc> = Vec::new();
    let mut outputs = Vec::new();
    for o in plan.outputs {
        let job = &plan.jobs[o.job];
        let mut names = Vec::new();
        for &(mesh, l) in &o.parts {
            let region = spec.maps[spec.layers[l].map].region;
            // Multi mode: each object's pass is one task. Single: tiles of the map.
            let tiles = rayfarm_job::plan::bake_regions(region, mesh != usize::MAX, FARM_TILE_PX);
            for r in tiles {
                let name = rayfarm_job::plan::bake_part_name(parts.len());
                parts.push(PartDesc {
                    name: name.clone(),
                    layer: l,
                    region: jobdesc::region_array(r),
                    mesh: (mesh != usize::MAX).then_some(mesh),
                });
                names.push(name);
            }
        }
        let stem = rayfarm_bake::map_name(
            job.object.as_deref(),
            o.pass,
            job.table.width,
            job.table.height,
        );
        outputs.push(OutputDesc {
            files: vec![format!("{stem}.exr"), format!("{stem}.png")],
            stem,
            pass: o.pass,
            width: job.table.width,
            height: job.table.height,
            atlas_meshes: job.meshes.clone(),
            parts: names,
        });
    }
    let out_dir = std::fs::canonicalize(&a.out)
        .with_context(|| format!("{}: cannot resolve the output folder", a.out.display()))?;
    let job_id = crate::farm_cmd::new_job_id()?;
    let scene_hash = rayfarm_scene::blob::content_hash(blob).map_err(|e| anyhow::anyhow!("{e}"))?;
    let desc = JobDesc {
        job_id: job_id.clone(),
        created_unix_ms: rayfarm_job::plan::unix_ms_now(),
        name: plan
            .scene_name
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        scene: SceneRef {
            file: "scene.rfscene".into(),
            blake3: rayfarm_scene::blob::hash_hex(&scene_hash),
            bytes: blob.len() as u64,
        },
        bake: BakeDesc::from_bake_spec(
            spec,
            a.padding,
            if a.mode == Mode::Multi {
                BakeMode::Multi
            } else {
                BakeMode::Single
            },
        ),
        outputs,
        parts,
        out_dir: out_dir.display().to_string(),
        gltf_out: a
            .gltf_out
            .as_ref()
            .and_then(|g| g.file_name())
            .map(|n| n.to_string_lossy().into_owned()),
        manager: Some(crate::farm_cmd::manager_addr(farm)),
    };
    desc.validate()
        .map_err(|e| anyhow::anyhow!("the job's description is invalid: {e}"))?;
    // The key first: without it no job folder is created (its job.desc needs the MAC).
    let farm_key = crate::farm_cmd::farm_key()?;
    let job_dir = netdir.join(&job_id);
    std::fs::create_dir(&job_dir)
        .with_context(|| format!("{}: cannot create the job folder", job_dir.display()))?;
    // Through a handle on the new folder, opened without following a symlink.
    rayfarm_job::folder::FolderHandle::open(&job_dir)
        .and_then(|folder| folder.write_atomic("scene.rfscene", blob))
        .with_context(|| format!("{}: cannot write", job_dir.join("scene.rfscene").display()))?;
    let desc_path = desc
        .write(&job_dir, &farm_key)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let placeholders =
        rayfarm_job::merge::write_placeholders(&desc).map_err(|e| anyhow::anyhow!("{e}"))?;
    crate::farm_cmd::submit_follow_merge(
        farm,
        &job_dir,
        &desc_path,
        desc.parts.len(),
        placeholders.len(),
        a.priority,
        a.no_wait,
        a.quiet,
        "baked",
    )
}

/// Writes the baked objects as a binary glTF whose materials are unlit, with the complete
/// map as base colour: the most portable way to show baked lighting (every viewer shows
/// base colour; those without KHR_materials_unlit shade it a little, but still show it).
fn write_baked_gltf(
    path: &Path,
    scene: &rayfarm_scene::CompiledScene,
    jobs: &[MapJob],
    complete_pngs: &[(usize, PathBuf)],
    uv_set: u8,
) -> Result<()> {
    let maps = complete_pngs
        .iter()
        .map(|(ji, png)| -> Result<rayfarm_job::maps::BakedMap> {
            Ok(rayfarm_job::maps::BakedMap {
                meshes: jobs[*ji].meshes.clone(),
                name: png
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                png: std::fs::read(png).with_context(|| {
                    format!("{}: cannot read the baked map back", png.display())
                })?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    rayfarm_job::maps::write_baked_glb(path, scene, maps, uv_set)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(())
}

/// Every map gets a file name of its own: names keep only letters, digits, `_` and `-`, so
/// objects named `Floor.001` and `Floor_001` (or two objects both named `Floor`, common in
/// OBJ files) would write the same files, and the first object's maps would be lost without
/// a word. Compared without case, as the farm's job.desc does (case-insensitive disks).
fn check_map_names(
    groups: &[(Option<String>, Vec<usize>)],
    sizes: &[u32],
    passes: &[Pass],
) -> std::result::Result<(), String> {
    let mut seen: std::collections::HashMap<String, &str> = std::collections::HashMap::new();
    for ((object, _), &size) in groups.iter().zip(sizes) {
        let name = object.as_deref().unwrap_or("atlas");
        for &pass in passes {
            let stem = rayfarm_bake::map_name(object.as_deref(), pass, size, size);
            if let Some(other) = seen.insert(stem.to_ascii_lowercase(), name) {
                return Err(format!(
                    "objects '{other}' and '{name}' would both be written as {stem}.png and \
                     .exr (map names keep only letters, digits, '_' and '-'); rename one of \
                     them in the scene, or bake them together without --per-object"
                ));
            }
        }
    }
    Ok(())
}
