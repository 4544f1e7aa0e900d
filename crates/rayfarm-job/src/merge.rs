//! Finishing a shared-folder job: from its parts to the final maps, then away with the folder.
//!
//! [`merge`] is what `rayfarm merge NETDIR/<job-id>/job.desc` and the client run once a job's
//! parts are all in. It assembles each output exactly as the local bake does (the same films,
//! [`rayfarm_bake::merge_objects`] for per-object layers, the same dilation and the same
//! writers, [`crate::maps`]), so the files are byte-identical to a local bake's.
//!
//! What it guarantees:
//! - Nothing is written unless the job is complete: every part is checked first, and an
//!   unfinished job is refused with every missing and corrupt part named
//!   ([`MergeError::Incomplete`]). A caller-supplied check (the CLI asks the manager) can
//!   refuse too.
//! - It never writes a corrupted map: each file is written atomically over its placeholder,
//!   from parts whose checksums and headers were verified.
//! - It writes only inside the output folder (the map files and glTF the job.desc names, all
//!   checked to be plain file names) and the job folder (the `merged` marker); it deletes only
//!   the files a job folder is made of, and the folder itself only once it is empty.
//! - Merging twice is harmless: the `merged` marker is written once every output is, just
//!   before the folder is removed; a merge that finds it only finishes the removal. The marker
//!   is sealed with the farm key for this job and job.desc ([`JobSeal::sealed_marker`]); one
//!   without a valid seal is ignored, so a writer without the key cannot make a merge delete a
//!   job's parts unmerged.
//!
//! Memory: one output's films at a time (48 bytes a texel, as in the local bake), plus the
//! texel tables of the atlases assembled per object.

use crate::folder::JobSeal;
use crate::jobdesc::{
    job_dir_of, safe_join, Assembly, DescError, JobDesc, OutputPlan, PartDesc, SceneRef, FILE_NAME,
    MERGED_MARKER, PARTS_DIR,
};
use crate::maps::{write_map_files_keep_png, BakedMap, MapError};
use crate::parts::{read_part, PartError};
use crate::renderjob::{AnyJobDesc, RenderJobDesc};
use rayfarm_bake::{Film, Region, TexelTable};
use rayfarm_scene::CompiledScene;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// How many part names an error message lists before "and N more".
const LISTED_PARTS: usize = 20;

/// What is wrong with one part.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartProblem {
    /// Not written yet.
    Missing { part: String },
    /// Present but unusable (bad checksum, wrong header, unreadable); it must be baked again.
    Corrupt { part: String, reason: String },
}

impl PartProblem {
    pub fn part(&self) -> &str {
        match self {
            PartProblem::Missing { part } | PartProblem::Corrupt { part, .. } => part,
        }
    }
}

/// Why a merge did not finish. Messages name the job, file, part or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error(transparent)]
    Desc(#[from] DescError),
    #[error("{}: {reason}", path.display())]
    Scene { path: PathBuf, reason: String },
    #[error("{}", incomplete_message(job_id, missing, corrupt))]
    Incomplete {
        job_id: String,
        missing: Vec<String>,
        /// `(part name, reason)`.
        corrupt: Vec<(String, String)>,
    },
    #[error("job {job_id} is not ready to merge: {reason}; nothing was written")]
    Refused { job_id: String, reason: String },
    #[error("{}: cannot write the outputs here: {reason}", path.display())]
    OutDir { path: PathBuf, reason: String },
    #[error("output {output}: {reason}")]
    Assemble { output: String, reason: String },
    #[error(transparent)]
    Map(#[from] MapError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn list_names<'a>(names: impl ExactSizeIterator<Item = &'a str>) -> String {
    let n = names.len();
    let mut s: Vec<&str> = names.take(LISTED_PARTS).collect();
    let more = n.saturating_sub(s.len());
    let more = (more > 0).then(|| format!("and {more} more"));
    if let Some(m) = &more {
        s.push(m);
    }
    s.join(", ")
}

fn incomplete_message(job_id: &str, missing: &[String], corrupt: &[(String, String)]) -> String {
    let mut what = Vec::new();
    if !missing.is_empty() {
        what.push(format!(
            "{} part(s) missing ({})",
            missing.len(),
            list_names(missing.iter().map(|s| s.as_str()))
        ));
    }
    if !corrupt.is_empty() {
        let shown: Vec<String> = corrupt
            .iter()
            .take(LISTED_PARTS)
            .map(|(p, r)| format!("{p}: {r}"))
            .collect();
        let more = corrupt.len().saturating_sub(shown.len());
        what.push(format!(
            "{} part(s) corrupt ({}{})",
            corrupt.len(),
            shown.join("; "),
            if more > 0 {
                format!("; and {more} more")
            } else {
                String::new()
            }
        ));
    }
    format!(
        "job {job_id} is not finished: {}; nothing was written; merge again once the nodes \
         have baked them",
        what.join(" and ")
    )
}

/// Why a [`ManagerCheck`] refuses a merge: any error, whose message the refusal quotes.
pub type Refusal = Box<dyn std::error::Error + Send + Sync>;

/// Asked before a merge writes anything; an `Err` refuses the merge with its message.
/// It is given the job's id.
pub type ManagerCheck<'a> = &'a dyn Fn(&str) -> Result<(), Refusal>;

/// Options of [`merge`].
#[derive(Default)]
pub struct MergeOptions<'a> {
    /// Write the outputs here instead of the job.desc's `out_dir` (the same folder as this
    /// machine sees it, when the client's path does not work here).
    pub out_dir: Option<PathBuf>,
    /// Asked after the parts are checked and before anything is written; an `Err` refuses the
    /// merge with its message (the CLI asks the job manager whether the job is complete).
    pub manager_check: Option<ManagerCheck<'a>>,
}

/// What a merge did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MergeReport {
    pub job_id: String,
    /// The files written, in order (maps EXR then PNG, output by output, then the glTF). On an
    /// already merged job, the files the first merge wrote (from its marker).
    pub written: Vec<PathBuf>,
    /// The job folder held the `merged` marker: this merge only finished removing it.
    pub already_merged: bool,
    /// Samples the nodes dropped because they were not finite (a renderer bug worth reporting).
    pub nonfinite_samples: u64,
    /// Whether the job folder is gone.
    pub job_dir_removed: bool,
    /// What stayed in the job folder: files a job folder is not made of (the merge leaves
    /// what it does not know alone) or that could not be removed.
    pub left_in_job_dir: Vec<PathBuf>,
}

/// Checks every part of the job in `job_dir`: present, checksum and header right, sums of the
/// right size. Returns the problems, by part, in the job.desc's order.
pub fn check(job_dir: &Path, desc: &JobDesc, seal: &JobSeal) -> Vec<PartProblem> {
    // A layer that does not exist gets 0: no part can match it, so it reads as corrupt.
    check_parts(
        job_dir,
        seal,
        desc.parts
            .iter()
            .map(|p| (p.clone(), desc.layer_spp(p.layer).unwrap_or(0))),
    )
}

/// [`check`] for a job of either kind.
pub fn check_any(job_dir: &Path, desc: &AnyJobDesc, seal: &JobSeal) -> Vec<PartProblem> {
    match desc {
        AnyJobDesc::Bake(d) => check(job_dir, d, seal),
        AnyJobDesc::Render(d) => check_render(job_dir, d, seal),
    }
}

fn check_render(job_dir: &Path, d: &RenderJobDesc, seal: &JobSeal) -> Vec<PartProblem> {
    check_parts(
        job_dir,
        seal,
        (0..d.parts.len()).filter_map(|i| Some((d.part_desc(i)?, d.render.spp))),
    )
}

fn check_parts(
    job_dir: &Path,
    seal: &JobSeal,
    parts: impl Iterator<Item = (PartDesc, u32)>,
) -> Vec<PartProblem> {
    let mut problems = Vec::new();
    for (p, spp) in parts {
        match read_part(job_dir, &p, spp, seal) {
            Ok(_) => {}
            Err(PartError::Missing { part, .. }) => problems.push(PartProblem::Missing { part }),
            Err(PartError::Corrupt { part, reason, .. }) => {
                problems.push(PartProblem::Corrupt { part, reason })
            }
            Err(e) => problems.push(PartProblem::Corrupt {
                part: p.name.clone(),
                reason: e.to_string(),
            }),
        }
    }
    problems
}

/// Writes a placeholder for every output map at its final path in the job's `out_dir` (which
/// must exist). Returns the files written.
pub fn write_placeholders(desc: &JobDesc) -> Result<Vec<PathBuf>, MergeError> {
    desc.validate()?;
    let out = OutFolder::open(out_dir_from_desc(desc)?)?;
    let mut written = Vec::new();
    for o in &desc.outputs {
        let files = crate::maps::write_placeholder(&out.io, &o.stem, o.width, o.height)
            .map_err(|e| out.shown_error(e.into()))?;
        written.extend(files.into_iter().map(|p| out.shown(p)));
    }
    Ok(written)
}

/// [`write_placeholders`] for a job of either kind: a render job gets a placeholder image
/// (the same grey checker) at each frame's output path.
pub fn write_placeholders_any(desc: &AnyJobDesc) -> Result<Vec<PathBuf>, MergeError> {
    let d = match desc {
        AnyJobDesc::Bake(d) => return write_placeholders(d),
        AnyJobDesc::Render(d) => d,
    };
    d.validate()?;
    let out = OutFolder::open(out_dir_from(&d.out_dir)?)?;
    let mut written = Vec::new();
    for f in &d.frames {
        let path = safe_join(&out.io, &f.output)?;
        crate::images::write_placeholder_image(&path, d.render.width, d.render.height)
            .map_err(|e| out.shown_error(e.into()))?;
        written.push(out.shown(path));
    }
    Ok(written)
}

/// The output folder of a merge (or of the client's placeholders), opened once without
/// following a symlink anywhere on its path. Files are written under `io`: on Linux
/// `/proc/self/fd/N` of that handle, which stays the folder opened whatever happens to its
/// path meanwhile (a folder on the share swapped for a symlink in the middle of a merge sends
/// nothing elsewhere); `shown` is its path for messages and the `merged` marker.
struct OutFolder {
    io: PathBuf,
    shown: PathBuf,
    _handle: crate::folder::FolderHandle,
}

impl OutFolder {
    fn open(dir: PathBuf) -> Result<OutFolder, MergeError> {
        let handle = crate::folder::FolderHandle::open_without_symlinks(&dir).map_err(|e| {
            MergeError::OutDir {
                path: dir.clone(),
                reason: e.to_string(),
            }
        })?;
        let io = handle.fd_path().unwrap_or_else(|| dir.clone());
        Ok(OutFolder {
            io,
            shown: dir,
            _handle: handle,
        })
    }

    /// `p` (under `io`) as the user knows it (under `shown`).
    fn shown(&self, p: PathBuf) -> PathBuf {
        match p.strip_prefix(&self.io) {
            Ok(rest) => self.shown.join(rest),
            Err(_) => p,
        }
    }

    /// `e` with its paths under `io` named as the user knows them.
    fn shown_error(&self, e: MergeError) -> MergeError {
        let f = |p: PathBuf| self.shown(p);
        match e {
            MergeError::Io { path, source } => MergeError::Io {
                path: f(path),
                source,
            },
            MergeError::OutDir { path, reason } => MergeError::OutDir {
                path: f(path),
                reason,
            },
            MergeError::Map(m) => MergeError::Map(m.with_paths(f)),
            other => other,
        }
    }
}

fn out_dir_from_desc(desc: &JobDesc) -> Result<PathBuf, MergeError> {
    out_dir_from(&desc.out_dir)
}

fn out_dir_from(out_dir: &str) -> Result<PathBuf, MergeError> {
    let dir = PathBuf::from(out_dir);
    if !dir.is_absolute() {
        return Err(MergeError::OutDir {
            path: dir,
            reason: "the job's out_dir is not an absolute path on this machine; give the \
                     output folder as this machine sees it"
                .into(),
        });
    }
    let dir = check_out_dir_exists(dir)?;
    check_no_symlinks(dir)
}

/// The client resolved the output folder to its real path when it made the job: a symlink on
/// that path now means a folder was replaced since (on a shared drive, by anyone who may write
/// there), and the outputs would land wherever it points. Refused; the user may name the
/// folder with `--out-dir`.
fn check_no_symlinks(dir: PathBuf) -> Result<PathBuf, MergeError> {
    match crate::folder::FolderHandle::open_without_symlinks(&dir) {
        Ok(_) => Ok(dir),
        Err(e) => Err(MergeError::OutDir {
            path: dir,
            reason: format!(
                "its path is no longer the real path the job was made with ({e}): a folder on \
                 it may have been replaced by a symlink; check it, or give the output folder \
                 with --out-dir"
            ),
        }),
    }
}

fn check_out_dir_exists(dir: PathBuf) -> Result<PathBuf, MergeError> {
    if !dir.is_dir() {
        return Err(MergeError::OutDir {
            path: dir,
            reason: "no such folder; create it, or give the output folder as this machine \
                     sees it"
                .into(),
        });
    }
    Ok(dir)
}

/// Merges the job whose description is `desc_path` (`NETDIR/<job-id>/job.desc`): checks it
/// is complete, writes every output map (and the baked glTF if asked) over its placeholder,
/// then removes the job folder. See the module docs for what it guarantees.
///
/// A render job's frames are assembled from their tiles and written as `rayfarm render`
/// writes images ([`crate::images`]), so they are byte-identical to a local render's.
pub fn merge(
    desc_path: &Path,
    key: &rayfarm_proto::FarmKey,
    opts: &MergeOptions,
) -> Result<MergeReport, MergeError> {
    let (any, seal) = AnyJobDesc::read(desc_path, key)?;
    let job_dir = job_dir_of(desc_path)?;
    let marker = job_dir.join(MERGED_MARKER);
    // Only a marker sealed with the farm key counts: one without a valid MAC is ignored, and
    // the job is merged from its parts (which overwrites it).
    let sealed = std::fs::symlink_metadata(&marker)
        .is_ok_and(|m| m.is_file())
        .then(|| crate::folder::read_nofollow(&marker, crate::jobdesc::MAX_DESC_BYTES))
        .and_then(|r| r.ok().flatten())
        .and_then(|t| seal.open_marker(&t));
    if let Some(body) = sealed {
        let written = body.lines().skip(1).map(PathBuf::from).collect();
        let (job_dir_removed, left_in_job_dir) = remove_job_dir(&job_dir, &any);
        return Ok(MergeReport {
            job_id: any.job_id().to_string(),
            written,
            already_merged: true,
            nonfinite_samples: 0,
            job_dir_removed,
            left_in_job_dir,
        });
    }
    // The marker is written last, after the outputs: something other than a file or a
    // symlink at its name (a folder, a FIFO) would make that write fail with every output
    // already replaced. Refuse before anything is written instead.
    if let Ok(m) = std::fs::symlink_metadata(&marker) {
        if !m.is_file() && !m.file_type().is_symlink() {
            return Err(MergeError::Refused {
                job_id: any.job_id().to_string(),
                reason: format!(
                    "{} is not a file (nothing rayfarm writes): remove it and merge again",
                    marker.display()
                ),
            });
        }
    }
    let out_dir = match &opts.out_dir {
        // The folder the user names, symlinks on its path and all (resolved now).
        Some(d) => {
            let d =
                check_out_dir_exists(std::path::absolute(d).map_err(|source| MergeError::Io {
                    path: d.clone(),
                    source,
                })?)?;
            std::fs::canonicalize(&d).map_err(|source| MergeError::Io { path: d, source })?
        }
        None => out_dir_from(any.out_dir())?,
    };
    let out = OutFolder::open(out_dir)?;
    match any {
        AnyJobDesc::Bake(desc) => merge_bake(desc_path, &job_dir, desc, &out, opts, &seal),
        AnyJobDesc::Render(desc) => merge_render(&job_dir, desc, &out, opts, &seal),
    }
    .map_err(|e| out.shown_error(e))
}

/// Writes the `merged` marker listing `written`, then takes the job folder apart.
fn finish(
    job_dir: &Path,
    desc: &AnyJobDesc,
    written: Vec<PathBuf>,
    nonfinite: u64,
    seal: &JobSeal,
) -> Result<MergeReport, MergeError> {
    write_marker(job_dir, &written, seal)?;
    let (job_dir_removed, left_in_job_dir) = remove_job_dir(job_dir, desc);
    Ok(MergeReport {
        job_id: desc.job_id().to_string(),
        written,
        already_merged: false,
        nonfinite_samples: nonfinite,
        job_dir_removed,
        left_in_job_dir,
    })
}

/// Writes the `merged` marker, sealed with `seal`, listing `written`. Through a handle on the
/// job folder, opened without following a symlink: a job folder swapped for a symlink since
/// the parts were read gets no marker, and neither does the folder it points to.
fn write_marker(job_dir: &Path, written: &[PathBuf], seal: &JobSeal) -> Result<(), MergeError> {
    let mut text = String::from("rayfarm merge: every output of this job is written\n");
    for f in written {
        text.push_str(&f.to_string_lossy());
        text.push('\n');
    }
    let text = seal.sealed_marker(&text);
    crate::folder::FolderHandle::open(job_dir)
        .and_then(|folder| folder.write_atomic(MERGED_MARKER, text.as_bytes()))
        .map_err(|source| MergeError::Io {
            path: job_dir.join(MERGED_MARKER),
            source,
        })
}

fn merge_render(
    job_dir: &Path,
    desc: RenderJobDesc,
    out: &OutFolder,
    opts: &MergeOptions,
    seal: &JobSeal,
) -> Result<MergeReport, MergeError> {
    let problems = check_render(job_dir, &desc, seal);
    if !problems.is_empty() {
        return Err(incomplete(&desc.job_id, problems));
    }
    if let Some(ask) = opts.manager_check {
        ask(&desc.job_id).map_err(|reason| MergeError::Refused {
            job_id: desc.job_id.clone(),
            reason: reason.to_string(),
        })?;
    }
    let (w, h) = (desc.render.width, desc.render.height);
    let mut written = Vec::new();
    let mut nonfinite = 0u64;
    for (fi, f) in desc.frames.iter().enumerate() {
        let mut film = Film::new(w, h);
        for pi in desc.parts_of_frame(fi) {
            let p = desc.part_desc(pi).expect("index from parts_of_frame");
            let part = read_part(job_dir, &p, desc.render.spp, seal).map_err(|e| match e {
                PartError::Missing { part, .. } => {
                    incomplete(&desc.job_id, vec![PartProblem::Missing { part }])
                }
                e => incomplete(
                    &desc.job_id,
                    vec![PartProblem::Corrupt {
                        part: p.name.clone(),
                        reason: e.to_string(),
                    }],
                ),
            })?;
            film.add_film(&part)
                .map_err(|reason| MergeError::Assemble {
                    output: f.output.clone(),
                    reason: reason.to_string(),
                })?;
        }
        nonfinite = nonfinite.saturating_add(film.nonfinite_samples);
        let px = film.to_rgb(desc.render.spp);
        let path = safe_join(&out.io, &f.output)?;
        crate::images::write_image(&path, w, h, &px, &desc.image_settings())?;
        written.push(out.shown(path));
    }
    finish(job_dir, &AnyJobDesc::Render(desc), written, nonfinite, seal)
}

fn merge_bake(
    desc_path: &Path,
    job_dir: &Path,
    desc: JobDesc,
    out: &OutFolder,
    opts: &MergeOptions,
    seal: &JobSeal,
) -> Result<MergeReport, MergeError> {
    let job_dir = job_dir.to_path_buf();
    let scene = load_scene(&job_dir, &desc.scene)?;
    check_against_scene(&job_dir, &desc, &scene)?;
    let plans = desc
        .output_plans()
        .map_err(|reason| DescError::InvalidFile {
            path: desc_path.to_path_buf(),
            field: "outputs".into(),
            reason: reason.to_string(),
        })?;

    let problems = check(&job_dir, &desc, seal);
    if !problems.is_empty() {
        return Err(incomplete(&desc.job_id, problems));
    }
    if let Some(ask) = opts.manager_check {
        ask(&desc.job_id).map_err(|reason| MergeError::Refused {
            job_id: desc.job_id.clone(),
            reason: reason.to_string(),
        })?;
    }

    // Per-object outputs depend on which object owns each atlas texel; check that every owner
    // has a layer covering its texels before writing anything, keeping the tables for below.
    let mut tables: HashMap<(Vec<usize>, u32, u32), TexelTable> = HashMap::new();
    for (oi, plan) in plans.iter().enumerate() {
        if plan.assembly != Assembly::PerObject {
            continue;
        }
        let o = &desc.outputs[oi];
        let key = (o.atlas_meshes.clone(), o.width, o.height);
        let table = tables.entry(key).or_insert_with(|| {
            TexelTable::build(&scene, &o.atlas_meshes, desc.bake.uv_set, o.width, o.height)
        });
        check_owners(&desc, &scene, table, plan).map_err(|reason| MergeError::Assemble {
            output: o.stem.clone(),
            reason,
        })?;
    }

    let mut written = Vec::new();
    let mut nonfinite = 0u64;
    let mut complete_maps = Vec::new();
    // Whole-map outputs of one map come pass after pass: keep the last table.
    #[allow(clippy::type_complexity)]
    let mut last: Option<((Vec<usize>, u32, u32), TexelTable)> = None;
    for (oi, plan) in plans.iter().enumerate() {
        let o = &desc.outputs[oi];
        let key = (o.atlas_meshes.clone(), o.width, o.height);
        let table = match tables.get(&key) {
            Some(t) => t,
            None => {
                if last.as_ref().map(|(k, _)| k) != Some(&key) {
                    let t = TexelTable::build(
                        &scene,
                        &o.atlas_meshes,
                        desc.bake.uv_set,
                        o.width,
                        o.height,
                    );
                    last = Some((key, t));
                }
                &last.as_ref().expect("just set").1
            }
        };
        let film = assemble(&job_dir, &desc, &scene, table, plan, seal).map_err(|e| match e {
            Assembled::Part(p) => incomplete(&desc.job_id, vec![p]),
            Assembled::Other(reason) => MergeError::Assemble {
                output: o.stem.clone(),
                reason,
            },
        })?;
        nonfinite = nonfinite.saturating_add(film.nonfinite_samples);
        let raw = film.to_rgb(desc.bake.settings(o.pass).spp());
        drop(film);
        let (px, _) =
            rayfarm_bake::dilate(&raw, o.width, o.height, &table.covered(), desc.bake.padding);
        drop(raw);
        let (files, png) =
            write_map_files_keep_png(&out.io, &o.stem, o.width, o.height, &px, o.pass)?;
        written.extend(files.into_iter().map(|p| out.shown(p)));
        if o.pass == rayfarm_bake::Pass::Complete && desc.gltf_out.is_some() {
            complete_maps.push(BakedMap {
                meshes: o.atlas_meshes.clone(),
                name: o.stem.clone(),
                png,
            });
        }
    }
    drop(last);
    drop(tables);
    if let Some(name) = &desc.gltf_out {
        let path = safe_join(&out.io, name)?;
        crate::maps::write_baked_glb(&path, &scene, complete_maps, desc.bake.uv_set)?;
        written.push(out.shown(path));
    }

    // Every output is in place: record it, then take the job folder apart.
    finish(&job_dir, &AnyJobDesc::Bake(desc), written, nonfinite, seal)
}

fn incomplete(job_id: &str, problems: Vec<PartProblem>) -> MergeError {
    let (mut missing, mut corrupt) = (Vec::new(), Vec::new());
    for p in problems {
        match p {
            PartProblem::Missing { part } => missing.push(part),
            PartProblem::Corrupt { part, reason } => corrupt.push((part, reason)),
        }
    }
    MergeError::Incomplete {
        job_id: job_id.to_string(),
        missing,
        corrupt,
    }
}

/// Reads the job's scene blob and checks it is the one the job.desc names.
fn load_scene(job_dir: &Path, scene: &SceneRef) -> Result<CompiledScene, MergeError> {
    let path = safe_join(job_dir, &scene.file)?;
    let scene_err = |reason: String| MergeError::Scene {
        path: path.clone(),
        reason,
    };
    let io = |source| MergeError::Io {
        path: path.clone(),
        source,
    };
    let len = std::fs::symlink_metadata(&path).map_err(io)?.len();
    if len != scene.bytes {
        return Err(scene_err(format!(
            "{len} bytes, but job.desc says {}; the job folder is damaged",
            scene.bytes
        )));
    }
    let blob = crate::folder::read_nofollow(&path, scene.bytes)
        .map_err(io)?
        .ok_or_else(|| scene_err("larger than job.desc says".into()))?;
    let hash = rayfarm_scene::blob::content_hash(&blob).map_err(|e| scene_err(e.to_string()))?;
    let hex = rayfarm_scene::blob::hash_hex(&hash);
    if hex != scene.blake3 {
        return Err(scene_err(format!(
            "scene hash {hex}, but job.desc says {}; the job folder is damaged",
            scene.blake3
        )));
    }
    // The header's hash is the file's word only: check the body against it in constant memory
    // before `decode` holds the whole body (a forged file can claim gigabytes).
    rayfarm_scene::blob::verify(&blob).map_err(|e| scene_err(e.to_string()))?;
    rayfarm_scene::blob::decode(&blob).map_err(|e| scene_err(e.to_string()))
}

/// What needs the scene: mesh indices and UV sets of the maps and outputs.
fn check_against_scene(
    job_dir: &Path,
    desc: &JobDesc,
    scene: &CompiledScene,
) -> Result<(), MergeError> {
    let path = job_dir.join(FILE_NAME);
    let bad = |field: String, reason: String| {
        MergeError::Desc(DescError::InvalidFile {
            path: path.clone(),
            field,
            reason,
        })
    };
    desc.to_bake_spec()
        .check(scene)
        .map_err(|r| bad("bake".into(), r.to_string()))?;
    let uv = desc.bake.uv_set as usize;
    for (oi, o) in desc.outputs.iter().enumerate() {
        for &m in &o.atlas_meshes {
            match scene.meshes.get(m) {
                None => {
                    return Err(bad(
                        format!("outputs[{oi}].atlas_meshes"),
                        format!(
                            "mesh {m} does not exist (the scene has {})",
                            scene.meshes.len()
                        ),
                    ))
                }
                Some(mesh) if !mesh.has_uv[uv] => {
                    return Err(bad(
                        format!("outputs[{oi}].atlas_meshes"),
                        format!("mesh '{}' has no uv set {uv}", mesh.name),
                    ))
                }
                Some(_) => {}
            }
        }
    }
    Ok(())
}

/// Checks that every texel of the atlas is owned by an object whose layer covers it (what
/// [`rayfarm_bake::merge_objects`] needs), so a bad job fails before anything is written.
fn check_owners(
    desc: &JobDesc,
    scene: &CompiledScene,
    atlas: &TexelTable,
    plan: &OutputPlan,
) -> Result<(), String> {
    let regions: HashMap<usize, Region> = plan
        .layers
        .iter()
        .filter_map(|(l, m, _)| m.map(|m| (m, map_region(desc, *l))))
        .collect();
    for (i, p) in atlas.texels.iter().enumerate() {
        if !p.is_covered() {
            continue;
        }
        let (x, y) = (
            atlas.region.x0 + i as u32 % atlas.region.width(),
            atlas.region.y0 + i as u32 / atlas.region.width(),
        );
        let owner = rayfarm_bake::mesh_of_prim(scene, p.prim)
            .ok_or_else(|| format!("triangle {} belongs to no mesh", p.prim))?;
        match regions.get(&owner) {
            None => {
                return Err(format!(
                    "texel ({x}, {y}) belongs to object '{}', which has no layer",
                    scene.meshes[owner].name
                ))
            }
            Some(r) if !r.contains_rect(x, y, x + 1, y + 1) => {
                return Err(format!(
                    "texel ({x}, {y}) of object '{}' lies outside its layer's region {:?}",
                    scene.meshes[owner].name,
                    crate::jobdesc::region_array(*r)
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn map_region(desc: &JobDesc, layer: usize) -> Region {
    desc.bake.maps[desc.bake.layers[layer].map].region()
}

enum Assembled {
    /// A part went missing or bad since the check.
    Part(PartProblem),
    Other(String),
}

/// One output's film over the whole map: its layers' films from their parts, merged by the
/// atlas's ownership for per-object outputs.
fn assemble(
    job_dir: &Path,
    desc: &JobDesc,
    scene: &CompiledScene,
    atlas: &TexelTable,
    plan: &OutputPlan,
    seal: &JobSeal,
) -> Result<Film, Assembled> {
    let mut films: Vec<(usize, Film)> = Vec::with_capacity(plan.layers.len());
    for (layer, mesh, parts) in &plan.layers {
        let region = map_region(desc, *layer);
        let spp = desc.layer_spp(*layer).unwrap_or(0);
        let mut sums = vec![[0i128; 3]; region.pixels()];
        let mut nonfinite = 0u64;
        // The parts tile the region exactly (checked by validate), so copying each part's
        // rectangle gives the film that adding them would.
        for &pi in parts {
            let part = &desc.parts[pi];
            let f = read_part(job_dir, part, spp, seal).map_err(|e| {
                Assembled::Part(match e {
                    PartError::Missing { part, .. } => PartProblem::Missing { part },
                    PartError::Corrupt { part, reason, .. } => {
                        PartProblem::Corrupt { part, reason }
                    }
                    e => PartProblem::Corrupt {
                        part: part.name.clone(),
                        reason: e.to_string(),
                    },
                })
            })?;
            let r = f.region;
            let (rw, w) = (region.width() as usize, r.width() as usize);
            for y in r.y0..r.y1 {
                let src = &f.sums()[(y - r.y0) as usize * w..][..w];
                let start = (y - region.y0) as usize * rw + (r.x0 - region.x0) as usize;
                sums[start..start + w].copy_from_slice(src);
            }
            nonfinite = nonfinite.saturating_add(f.nonfinite_samples);
        }
        films.push((
            mesh.unwrap_or(usize::MAX),
            Film::from_sums(region, sums, nonfinite),
        ));
    }
    match plan.assembly {
        Assembly::Whole => Ok(films
            .pop()
            .map(|(_, f)| f)
            .ok_or_else(|| Assembled::Other("no layer".into()))?),
        Assembly::PerObject => {
            let refs: Vec<(usize, &Film)> = films.iter().map(|(m, f)| (*m, f)).collect();
            rayfarm_bake::merge_objects(scene, atlas, &refs)
                .map_err(|e| Assembled::Other(format!("cannot merge the objects' maps: {e}")))
        }
    }
}

/// Removes the files a job folder is made of (its parts and their temporaries, the scene,
/// job.desc, the marker), then the folder if that left it empty. Files it does not know are
/// left alone: a job.desc in the wrong place must never make the merge delete someone's
/// folder. Returns whether the folder is gone and what stayed.
///
/// Everything is removed through one handle on the job folder, opened without following a
/// symlink ([`crate::folder::FolderHandle`]), and one on its `parts/`: anyone who can write
/// the network folder may swap the job folder for a symlink to another folder after the merge
/// checked it, and removing by path would then delete that folder's `job.desc`, scene and
/// marker. A job folder that is a symlink (or not a folder) is not the job's: nothing is
/// removed through it.
pub fn remove_job_dir(job_dir: &Path, desc: &AnyJobDesc) -> (bool, Vec<PathBuf>) {
    let mut failed = Vec::new();
    let job = match crate::folder::FolderHandle::open(job_dir) {
        Ok(job) => job,
        Err(e) => {
            if e.kind() == std::io::ErrorKind::NotFound {
                return (true, failed);
            }
            tracing::warn!("{}: not removed: {e}", job_dir.display());
            return (false, vec![job_dir.to_path_buf()]);
        }
    };
    let remove_in = |dir: &crate::folder::FolderHandle, name: &str, failed: &mut Vec<PathBuf>| {
        if let Err(e) = dir.remove_file(name) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("{}: cannot remove: {e}", dir.path().join(name).display());
                failed.push(dir.path().join(name));
            }
        }
    };
    // `parts/` through its own handle, likewise opened without following a symlink: a `parts`
    // that is (or becomes) a symlink is not the job's, and nothing is removed through it.
    if let Ok(parts) = job.sub(PARTS_DIR, false) {
        for i in 0..desc.part_count() {
            if let Some((p, _)) = desc.part(i) {
                let name = format!("{}.{}", p.name, crate::parts::PART_EXT);
                remove_in(&parts, &name, &mut failed);
            }
        }
        // Temporaries of interrupted part writes (`.<name>.rfpart.tmp.<pid>.<random>`).
        for name in parts.file_names().unwrap_or_default() {
            if name.starts_with('.') && name.contains(".rfpart.tmp.") {
                remove_in(&parts, &name, &mut failed);
            }
        }
    }
    let _ = job.remove_dir(PARTS_DIR);
    let scenes = match desc {
        AnyJobDesc::Bake(d) => vec![d.scene.file.as_str()],
        AnyJobDesc::Render(d) => d.scene_files(),
    };
    for file in scenes {
        // The names are single plain components (`safe_join`'s rules); anything else was never
        // written by a client and is left alone.
        if safe_join(job_dir, file).is_ok() {
            remove_in(&job, file, &mut failed);
        }
    }
    // job.desc before the marker: until job.desc is gone a merge can still be run, and it must
    // then see the marker.
    remove_in(&job, FILE_NAME, &mut failed);
    remove_in(&job, crate::folder::DESC_MAC_FILE_NAME, &mut failed);
    remove_in(&job, MERGED_MARKER, &mut failed);
    // The folder itself by path: `rmdir` removes no symlink and no folder that is not empty.
    if std::fs::remove_dir(job_dir).is_ok() || !job_dir.exists() {
        return (true, failed);
    }
    let mut left: Vec<PathBuf> = job
        .entry_names()
        .map(|names| names.into_iter().map(|n| job_dir.join(n)).collect())
        .unwrap_or_default();
    left.sort();
    (false, left)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attack: the job folder swapped for a symlink to another folder between the merge's
    /// reading of the parts and its marker (a writer without the key can do this). The marker
    /// was written by path, so the merging user created `merged` and a temporary file in that
    /// other folder; now nothing is written there and the merge says why.
    #[test]
    fn a_job_folder_swapped_for_a_symlink_gets_no_marker_elsewhere() {
        let tmp = tempfile::tempdir().unwrap();
        let (job_dir, victim) = (tmp.path().join("job-x"), tmp.path().join("victim"));
        std::fs::create_dir(&victim).unwrap();
        std::os::unix::fs::symlink(&victim, &job_dir).unwrap();
        let key = rayfarm_proto::FarmKey::from_secret("a farm secret for the marker test").unwrap();
        let seal = JobSeal::new(&key, "job-x", b"{}");
        let e = write_marker(&job_dir, &[PathBuf::from("/out/a.png")], &seal).unwrap_err();
        assert!(e.to_string().contains(MERGED_MARKER), "{e}");
        assert_eq!(
            std::fs::read_dir(&victim).unwrap().count(),
            0,
            "written elsewhere"
        );
        // Into the real folder, the marker opens with the seal.
        std::fs::remove_file(&job_dir).unwrap();
        std::fs::create_dir(&job_dir).unwrap();
        write_marker(&job_dir, &[PathBuf::from("/out/a.png")], &seal).unwrap();
        let text = std::fs::read(job_dir.join(MERGED_MARKER)).unwrap();
        assert!(seal.open_marker(&text).unwrap().contains("/out/a.png"));
    }

    /// The attack (anyone who may write to the share, no key): before the merge, replace the
    /// job's output folder, or a folder above it, with a symlink to another folder. The
    /// outputs used to land there, over that folder's files of the same names; the merge
    /// (and the client's placeholders) now refuse, naming the folder and `--out-dir`.
    #[test]
    fn an_output_folder_replaced_by_a_symlink_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let (share, victim) = (base.join("share"), base.join("victim"));
        let out = share.join("out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::create_dir_all(victim.join("out")).unwrap();
        let text = out.display().to_string();
        assert_eq!(out_dir_from(&text).unwrap(), out);
        std::fs::rename(&out, share.join("out.orig")).unwrap();
        std::os::unix::fs::symlink(victim.join("out"), &out).unwrap();
        let refused = |what: &str| {
            let e = out_dir_from(&text).unwrap_err().to_string();
            assert!(
                e.contains("symlink") && e.contains("--out-dir"),
                "{what} swapped: {e}"
            );
        };
        refused("the output folder");
        // The share folder itself a symlink, to a folder holding an `out`.
        std::fs::remove_file(&out).unwrap();
        std::fs::rename(share.join("out.orig"), &out).unwrap();
        std::fs::rename(&share, base.join("share.orig")).unwrap();
        std::os::unix::fs::symlink(&victim, &share).unwrap();
        refused("a folder above it");
    }

    /// The race the check above leaves open: swap the output folder for a symlink after the
    /// merge opened it. Files written afterwards still land in the folder opened (its handle),
    /// never where the symlink points, and are named by the folder's own path.
    #[test]
    fn an_output_folder_swapped_during_a_merge_still_gets_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().canonicalize().unwrap();
        let (out, victim) = (base.join("out"), base.join("victim"));
        std::fs::create_dir(&out).unwrap();
        std::fs::create_dir(&victim).unwrap();
        let folder = OutFolder::open(out.clone()).unwrap();
        std::fs::rename(&out, base.join("out.orig")).unwrap();
        std::os::unix::fs::symlink(&victim, &out).unwrap();
        let path = folder.io.join("frame.png");
        crate::maps::write_atomic(&path, b"image").unwrap();
        assert_eq!(folder.shown(path), out.join("frame.png"));
        assert_eq!(
            std::fs::read_dir(&victim).unwrap().count(),
            0,
            "written elsewhere"
        );
        assert_eq!(
            std::fs::read(base.join("out.orig/frame.png")).unwrap(),
            b"image"
        );
    }

    #[test]
    fn incomplete_message_names_parts_and_caps_the_list() {
        let missing: Vec<String> = (0..25).map(|i| format!("p{i:03}")).collect();
        let corrupt = vec![("q1".to_string(), "checksum mismatch".to_string())];
        let m = incomplete_message("job-7", &missing, &corrupt);
        assert!(m.starts_with("job job-7 is not finished: 25 part(s) missing (p000, "));
        assert!(m.contains("p019, and 5 more)"), "{m}");
        assert!(!m.contains("p020"), "{m}");
        assert!(
            m.contains("1 part(s) corrupt (q1: checksum mismatch)"),
            "{m}"
        );
        assert!(m.contains("nothing was written"), "{m}");
    }
}
