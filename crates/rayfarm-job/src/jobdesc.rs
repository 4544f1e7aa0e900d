//! `job.desc`: the description of a shared-folder bake job, enough to finish it without its
//! client.
//!
//! A shared-folder job lives in `NETDIR/<job-id>/`, a folder every node and the manager reach:
//!
//! ```text
//! NETDIR/<job-id>/job.desc             this file (JSON, written once by the client)
//! NETDIR/<job-id>/job.desc.mac         its keyed MAC (crate::folder), 64 hex digits
//! NETDIR/<job-id>/scene.rfscene        the compiled scene blob the job bakes
//! NETDIR/<job-id>/parts/<part>.rfpart  one file per finished part (crate::parts)
//! NETDIR/<job-id>/merged               written by the merge just before it removes the folder
//! ```
//!
//! This module owns the file's format and every rule about the names in it. It must never let
//! a name from a job.desc reach the file system unchecked: job ids, part names, output file
//! names and the glTF name are single plain file names ([`check_job_id`], [`check_part_name`],
//! [`check_file_name`]), and paths are only ever made with [`safe_join`], which appends exactly
//! one such name. So whatever a client wrote or someone edited, a job writes only inside
//! `NETDIR/<job-id>/` and its output folder.
//!
//! # Format (version 2)
//!
//! Version 2 is version 1 plus the sidecar `job.desc.mac`: the farm key's folder MAC over
//! (job id, "job.desc", BLAKE3 of the file's exact bytes). Readers check it before parsing and
//! refuse a job.desc without one.
//!
//! A pretty-printed JSON object; unknown fields are errors. `format` and `version` come first
//! and are checked before anything else, so a newer file is refused with both versions named.
//!
//! ```text
//! format           "rayfarm-job"
//! version          2
//! kind             "bake" (a render job's file says "render": crate::renderjob)
//! job_id           [a-z0-9-]{1,64}; the name of the folder holding the file
//! created_unix_ms  when the client created the job
//! name             shown to users only (at most 256 characters, no control characters)
//! scene            { file: "scene.rfscene", blake3: content hash (64 hex digits), bytes }
//! bake             { uv_set, spp, max_bounces, seed, ao_distance, padding, mode: "single" |
//!                    "multi", maps: [{ meshes: [mesh index], width, height,
//!                    region: [x0, y0, x1, y1] }], layers: [{ map, pass }] }
//! outputs          [{ stem, pass, width, height, atlas_meshes: [mesh index], parts: [name],
//!                     files: ["<stem>.exr", "<stem>.png"] }]
//! parts            [{ name: [a-z0-9_-]{1,64}, layer, region: [x0, y0, x1, y1],
//!                     mesh: mesh index | null }]
//! out_dir          absolute path of the output folder, as the client sees it
//! gltf_out         file name of the baked glTF inside out_dir, or null
//! manager          "HOST:PORT" of the job manager, or null
//! ```
//!
//! `bake` mirrors [`rayfarm_bake::BakeSpec`] (see [`BakeDesc::to_bake_spec`]): a layer is one
//! pass over one map, a map is the meshes rasterised into it and the region of the map it
//! covers. A *part* holds every sample (0 to the layer's spp) of one rectangle of one layer.
//! An *output* is one baked map (a `.exr` and a `.png`), assembled in one of two ways:
//! - whole: its parts tile one layer whose map is the whole `width x height` map of exactly
//!   `atlas_meshes` (parts have `mesh: null`);
//! - per object (multi mode): its layers each cover one mesh of `atlas_meshes` over that
//!   object's region of the map, each tiled by its own parts (`mesh` names the object); the
//!   atlas's texel table (all of `atlas_meshes`) decides which object owns each texel.
//!
//! Either way the atlas table's coverage is what padding dilates from. Regions are
//! `[x0, y0, x1, y1]`, half open, in texels of the whole map.

use rayfarm_bake::workload::MAX_LAYERS;
use rayfarm_bake::{BakeSettings, BakeSpec, LayerSpec, MapSpec, Pass, Region, MAX_SIZE};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

/// The `format` field of every job.desc.
pub const FORMAT: &str = "rayfarm-job";
/// The job.desc version this code writes and reads.
pub const VERSION: u32 = 2;
/// The file name of a job's description inside its folder.
pub const FILE_NAME: &str = "job.desc";
/// The folder inside a job's folder that holds its parts.
pub const PARTS_DIR: &str = "parts";
/// The marker the merge writes into the job folder once every output is written.
pub const MERGED_MARKER: &str = "merged";

/// Largest job.desc read (a job with the most parts stays far below it).
pub const MAX_DESC_BYTES: u64 = 64 << 20;
/// Longest job id.
pub const MAX_JOB_ID_LEN: usize = 64;
/// Longest part name.
pub const MAX_PART_NAME_LEN: usize = 64;
/// Longest file name (output files, glTF, scene). With the hidden temporary names the
/// writers use (`.<name>.tmp.<pid>.<16 hex>`) this stays under the common 255-byte limit.
pub const MAX_FILE_NAME_LEN: usize = 200;
/// Longest output folder path.
pub const MAX_OUT_DIR_LEN: usize = 4096;
/// Longest display name, in characters.
pub const MAX_DISPLAY_NAME_CHARS: usize = 256;
/// Longest manager address.
pub const MAX_MANAGER_LEN: usize = 255;
/// Most parts a job may have (each is a file in one folder).
pub const MAX_PARTS: usize = 262_144;
/// Most outputs a job may have (each is at least one layer).
pub const MAX_OUTPUTS: usize = MAX_LAYERS;
/// Most maps a job may have (each is at least one layer).
pub const MAX_MAPS: usize = MAX_LAYERS;
/// Most meshes listed for one map or output.
pub const MAX_MESHES_PER_MAP: usize = 1 << 20;
/// Most samples per texel (as `rayfarm bake --spp`).
pub const MAX_SPP: u32 = 1 << 20;
/// Largest scene blob.
pub const MAX_SCENE_BYTES: u64 = 4 << 30;

/// Problems reading, checking or writing a job.desc. Messages name the file or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum DescError {
    #[error("{}: cannot read or write: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {bytes} bytes, more than a job.desc may have ({MAX_DESC_BYTES}); it is not a job description", path.display())]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error("{}: not a valid job description: {reason}", path.display())]
    Json { path: PathBuf, reason: String },
    #[error("{}: not a rayfarm job description (format {found:?}, expected \"{FORMAT}\")", path.display())]
    Format { path: PathBuf, found: String },
    #[error("{}: job description version {found}, but this rayfarm reads version {VERSION} only; use a rayfarm of the version that created the job", path.display())]
    Version { path: PathBuf, found: u64 },
    #[error("job description field {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{}: field {field}: {reason}", path.display())]
    InvalidFile {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("{}: the job folder is named {folder:?} but the job id is {job_id:?}; a job.desc must stay in NETDIR/<job-id>/", path.display())]
    WrongFolder {
        path: PathBuf,
        folder: String,
        job_id: String,
    },
    #[error("{}: job.desc.mac is missing beside it; a job.desc is only trusted with the MAC rayfarm writes when it creates the job with the farm key, so create the job again", path.display())]
    NoMac { path: PathBuf },
    #[error("{}: the job.desc was not written with this farm's key, or was changed since (its MAC in job.desc.mac does not match); create the job again", path.display())]
    BadMac { path: PathBuf },
    #[error("{what} {name:?} is not allowed: {reason}")]
    BadName {
        what: &'static str,
        name: String,
        reason: String,
    },
}

/// Why an output's parts do not assemble into it ([`JobDesc::output_plan`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// [`JobDesc::output_plans`] names the output at fault.
    #[error("outputs[{output}]: {reason}")]
    InOutput {
        output: usize,
        reason: Box<PlanError>,
    },
    #[error("output {0} does not exist")]
    NoOutput(usize),
    #[error("part {0:?} does not exist")]
    NoPart(String),
    #[error("layer {0} does not exist")]
    NoLayer(usize),
    #[error("layer {layer}'s map {map} does not exist")]
    NoMap { layer: usize, map: usize },
    #[error("layer {layer} bakes {baked}, but the output is {output}")]
    WrongPass {
        layer: usize,
        baked: &'static str,
        output: &'static str,
    },
    #[error("layer {layer}'s map is {map_width}x{map_height}, but the output is {width}x{height}")]
    WrongSize {
        layer: usize,
        map_width: u32,
        map_height: u32,
        width: u32,
        height: u32,
    },
    #[error("layer {layer} covers {meshes} meshes; an output is one layer over the whole map of its atlas_meshes, or one layer per object")]
    LayerMeshes { layer: usize, meshes: usize },
    #[error("layer {layer}'s mesh {mesh} is not in atlas_meshes")]
    MeshNotInAtlas { layer: usize, mesh: usize },
    #[error("mesh {0} has two layers")]
    MeshTwice(usize),
    #[error("part {part:?} has mesh {}, but its layer {layer} is {}",
        part_mesh.map_or("null".into(), |m| m.to_string()),
        match layer_mesh {
            Some(m) => format!("object {m}'s"),
            None => "a whole map's (mesh must be null)".into(),
        })]
    PartMesh {
        part: String,
        part_mesh: Option<usize>,
        layer: usize,
        layer_mesh: Option<usize>,
    },
    #[error("layer {layer}: {reason}")]
    Tiling { layer: usize, reason: TilingError },
}

/// Why parts do not tile a region exactly ([`check_tiling`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TilingError {
    #[error("part {part:?} is not a non-empty rectangle inside the region {region:?}")]
    Outside { part: [u32; 4], region: [u32; 4] },
    #[error("its parts cover {total} texels, but its region {region:?} has {want}")]
    Coverage {
        total: u64,
        region: [u32; 4],
        want: u64,
    },
    #[error("parts overlap at texel row {row} (part {part:?})")]
    Overlap { row: u32, part: [u32; 4] },
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> DescError {
    DescError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// How a bake was cut into layers (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BakeMode {
    /// Each output is one layer over the whole map.
    Single,
    /// Each object of an atlas is its own layer over its region of the atlas.
    Multi,
}

/// The scene blob of a job, inside its folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SceneRef {
    /// File name inside the job folder.
    pub file: String,
    /// [`rayfarm_scene::blob::content_hash`] of the blob, as [`rayfarm_scene::blob::hash_hex`].
    pub blake3: String,
    /// Size of the blob file.
    pub bytes: u64,
}

/// One map of the bake ([`rayfarm_bake::MapSpec`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapDesc {
    pub meshes: Vec<usize>,
    pub width: u32,
    pub height: u32,
    /// `[x0, y0, x1, y1]` of the map this covers.
    pub region: [u32; 4],
}

/// One pass over one map ([`rayfarm_bake::LayerSpec`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerDesc {
    pub map: usize,
    #[serde(with = "pass_name")]
    pub pass: Pass,
}

/// The bake: [`rayfarm_bake::BakeSpec`] plus what the merge needs (padding, mode).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BakeDesc {
    pub uv_set: u8,
    pub spp: u32,
    pub max_bounces: u32,
    pub seed: u64,
    pub ao_distance: f32,
    /// Texels of padding dilated around the charts after merging.
    pub padding: u32,
    pub mode: BakeMode,
    pub maps: Vec<MapDesc>,
    pub layers: Vec<LayerDesc>,
}

/// One output map: `<stem>.exr` and `<stem>.png` in the output folder.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputDesc {
    /// File stem, e.g. `atlas_lightmap_1024` ([`rayfarm_bake::map_name`]).
    pub stem: String,
    #[serde(with = "pass_name")]
    pub pass: Pass,
    pub width: u32,
    pub height: u32,
    /// The meshes of the whole map, in rasterisation order: their texel table's coverage is
    /// what padding grows from, and in per-object assembly it decides which object owns each
    /// texel.
    pub atlas_meshes: Vec<usize>,
    /// Names of the parts that make this output.
    pub parts: Vec<String>,
    /// Exactly `["<stem>.exr", "<stem>.png"]`.
    pub files: Vec<String>,
}

/// One part: all samples of one rectangle of one layer, baked by one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartDesc {
    /// `[a-z0-9_-]{1,64}`; the file is `parts/<name>.rfpart`.
    pub name: String,
    /// Index into `bake.layers`.
    pub layer: usize,
    /// `[x0, y0, x1, y1]` in texels of the whole map, inside the layer's map region.
    pub region: [u32; 4],
    /// In per-object assembly, the object (mesh index) whose layer this part belongs to.
    pub mesh: Option<usize>,
}

/// A shared-folder bake job (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobDesc {
    pub job_id: String,
    pub created_unix_ms: u64,
    /// Shown to users only.
    pub name: String,
    pub scene: SceneRef,
    pub bake: BakeDesc,
    pub outputs: Vec<OutputDesc>,
    pub parts: Vec<PartDesc>,
    /// Absolute path of the output folder, as the client sees it.
    pub out_dir: String,
    /// File name of the baked glTF inside `out_dir`.
    pub gltf_out: Option<String>,
    /// `HOST:PORT` of the job manager.
    pub manager: Option<String>,
}

/// Serialises a [`Pass`] as its name (`"complete"`, `"lightmap"`, ...).
mod pass_name {
    use rayfarm_bake::Pass;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(p: &Pass, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Pass, D::Error> {
        let s = String::deserialize(d)?;
        Pass::parse(&s).ok_or_else(|| {
            D::Error::custom(format!(
                "unknown pass {s:?}; use complete, lightmap, ao, albedo or normal"
            ))
        })
    }
}

/// `[x0, y0, x1, y1]` as a [`Region`].
pub fn region_of(r: [u32; 4]) -> Region {
    Region {
        x0: r[0],
        y0: r[1],
        x1: r[2],
        y1: r[3],
    }
}

/// A [`Region`] as `[x0, y0, x1, y1]`.
pub fn region_array(r: Region) -> [u32; 4] {
    [r.x0, r.y0, r.x1, r.y1]
}

impl MapDesc {
    pub fn region(&self) -> Region {
        region_of(self.region)
    }
}

impl PartDesc {
    pub fn region(&self) -> Region {
        region_of(self.region)
    }
}

impl BakeDesc {
    /// The bake as the spec nodes run ([`rayfarm_bake::BakeSpec`]).
    pub fn to_bake_spec(&self) -> BakeSpec {
        BakeSpec {
            uv_set: self.uv_set,
            spp: self.spp,
            max_bounces: self.max_bounces,
            seed: self.seed,
            ao_distance: self.ao_distance,
            maps: self
                .maps
                .iter()
                .map(|m| MapSpec {
                    meshes: m.meshes.clone(),
                    width: m.width,
                    height: m.height,
                    region: m.region(),
                })
                .collect(),
            layers: self
                .layers
                .iter()
                .map(|l| LayerSpec {
                    map: l.map,
                    pass: l.pass,
                })
                .collect(),
        }
    }

    /// The bake of a spec, with the merge's padding and the mode it was cut in.
    pub fn from_bake_spec(spec: &BakeSpec, padding: u32, mode: BakeMode) -> BakeDesc {
        BakeDesc {
            uv_set: spec.uv_set,
            spp: spec.spp,
            max_bounces: spec.max_bounces,
            seed: spec.seed,
            ao_distance: spec.ao_distance,
            padding,
            mode,
            maps: spec
                .maps
                .iter()
                .map(|m| MapDesc {
                    meshes: m.meshes.clone(),
                    width: m.width,
                    height: m.height,
                    region: region_array(m.region),
                })
                .collect(),
            layers: spec
                .layers
                .iter()
                .map(|l| LayerDesc {
                    map: l.map,
                    pass: l.pass,
                })
                .collect(),
        }
    }

    /// The settings of a pass ([`BakeSettings::spp`] gives the samples it takes).
    pub fn settings(&self, pass: Pass) -> BakeSettings {
        BakeSettings {
            pass,
            spp: self.spp,
            max_bounces: self.max_bounces,
            seed: self.seed,
            ao_distance: self.ao_distance,
        }
    }
}

/// How an output is assembled from its layers (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Assembly {
    /// One layer over the whole map.
    Whole,
    /// One layer per object; the atlas table decides which object owns each texel.
    PerObject,
}

/// An output's layers and the parts of each, as [`JobDesc::output_plan`] finds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputPlan {
    pub assembly: Assembly,
    /// `(layer index, object mesh (per object only), part indices)`, in order of first use.
    pub layers: Vec<(usize, Option<usize>, Vec<usize>)>,
}

impl JobDesc {
    /// The bake as the spec nodes run.
    pub fn to_bake_spec(&self) -> BakeSpec {
        self.bake.to_bake_spec()
    }

    /// The samples per texel layer `layer` takes (albedo and normal take one), if it exists.
    pub fn layer_spp(&self, layer: usize) -> Option<u32> {
        let l = self.bake.layers.get(layer)?;
        Some(self.bake.settings(l.pass).spp())
    }

    /// The part named `name`.
    pub fn part(&self, name: &str) -> Option<&PartDesc> {
        self.parts.iter().find(|p| p.name == name)
    }

    /// Serialises the description (pretty-printed JSON, `format`, `version` and `kind` first).
    pub fn to_json(&self) -> String {
        tagged_json("bake", self)
    }

    /// Parses a description (not yet validated); `path` is only used in messages.
    pub fn from_json(text: &str, path: &Path) -> Result<JobDesc, DescError> {
        let (kind, v) = parse_tagged(text, path)?;
        if kind != JobKindTag::Bake {
            return Err(DescError::Json {
                path: path.to_path_buf(),
                reason: "this is a render job's description, not a bake's".into(),
            });
        }
        serde_json::from_value(v).map_err(|e| DescError::Json {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Reads `NETDIR/<job-id>/job.desc`: at most [`MAX_DESC_BYTES`], parsed, validated, and
    /// checked to lie in a folder named after its job id.
    /// Its MAC is checked with `key` first ([`crate::renderjob::AnyJobDesc::read`]).
    pub fn read(path: &Path, key: &rayfarm_proto::FarmKey) -> Result<JobDesc, DescError> {
        let desc = JobDesc::from_json(&read_desc_text(path, key)?.0, path)?;
        desc.validate().map_err(|e| in_file(e, path))?;
        check_folder_name(&job_dir_of(path)?, &desc.job_id, path)?;
        Ok(desc)
    }

    /// Validates the description and writes it atomically as `job_dir/job.desc`; `job_dir`
    /// must exist and be named after the job id. Returns the file's path.
    /// Writes its MAC with `key` beside it (`job.desc.mac`).
    pub fn write(
        &self,
        job_dir: &Path,
        key: &rayfarm_proto::FarmKey,
    ) -> Result<PathBuf, DescError> {
        self.validate()?;
        write_desc_file(job_dir, &self.job_id, &self.to_json(), key)
    }

    /// Checks every rule of the format: names are safe, numbers within limits, references
    /// resolve, and each output's layers are exactly tiled by its parts. What needs the scene
    /// (mesh indices, UV sets) is checked when the scene is at hand
    /// ([`rayfarm_bake::BakeSpec::check`] and the merge).
    pub fn validate(&self) -> Result<(), DescError> {
        check_job_id(&self.job_id).map_err(|e| invalid("job_id", reason_of(e)))?;
        check_display_name(&self.name)?;
        self.validate_scene()?;
        check_out_dir(&self.out_dir).map_err(|r| invalid("out_dir", r))?;
        if let Some(m) = &self.manager {
            check_manager(m).map_err(|r| invalid("manager", r.to_string()))?;
        }
        self.validate_bake()?;
        self.validate_parts()?;
        self.validate_outputs()?;
        if let Some(g) = &self.gltf_out {
            check_file_name(g).map_err(|r| invalid("gltf_out", r))?;
            let clash = self
                .outputs
                .iter()
                .flat_map(|o| &o.files)
                .any(|f| f.eq_ignore_ascii_case(g));
            if clash {
                return Err(invalid(
                    "gltf_out",
                    format!("{g:?} is also the name of an output map"),
                ));
            }
            if !self.outputs.iter().any(|o| o.pass == Pass::Complete) {
                return Err(invalid(
                    "gltf_out",
                    "the baked glTF shows the complete maps, but no output has the complete pass",
                ));
            }
        }
        Ok(())
    }

    fn validate_scene(&self) -> Result<(), DescError> {
        validate_scene_ref("scene", &self.scene)
    }

    fn validate_bake(&self) -> Result<(), DescError> {
        let b = &self.bake;
        if b.uv_set > 1 {
            return Err(invalid(
                "bake.uv_set",
                format!("uv set {} does not exist; use 0 or 1", b.uv_set),
            ));
        }
        if b.spp == 0 || b.spp > MAX_SPP {
            return Err(invalid(
                "bake.spp",
                format!("{} is out of range (1 to {MAX_SPP})", b.spp),
            ));
        }
        if !(b.ao_distance.is_finite() && b.ao_distance > 0.0) {
            return Err(invalid(
                "bake.ao_distance",
                format!("{} is not a positive number", b.ao_distance),
            ));
        }
        // Padding needs no limit: dilation stops as soon as a round fills nothing, at most
        // max(width, height) rounds in.
        if b.maps.is_empty() || b.maps.len() > MAX_MAPS {
            return Err(invalid(
                "bake.maps",
                format!("{} maps; a bake has 1 to {MAX_MAPS}", b.maps.len()),
            ));
        }
        for (i, m) in b.maps.iter().enumerate() {
            let field = format!("bake.maps[{i}]");
            check_size(m.width, m.height).map_err(|r| invalid(&field, r))?;
            let r = m.region();
            if !Region::full(m.width, m.height).contains_rect(r.x0, r.y0, r.x1, r.y1) {
                return Err(invalid(
                    format!("{field}.region"),
                    format!(
                        "{:?} is not a non-empty rectangle inside the {}x{} map",
                        m.region, m.width, m.height
                    ),
                ));
            }
            check_meshes(&m.meshes).map_err(|r| invalid(format!("{field}.meshes"), r))?;
        }
        if b.layers.is_empty() || b.layers.len() > MAX_LAYERS {
            return Err(invalid(
                "bake.layers",
                format!("{} layers; a bake has 1 to {MAX_LAYERS}", b.layers.len()),
            ));
        }
        for (i, l) in b.layers.iter().enumerate() {
            if l.map >= b.maps.len() {
                return Err(invalid(
                    format!("bake.layers[{i}].map"),
                    format!("map {} does not exist ({} maps)", l.map, b.maps.len()),
                ));
            }
        }
        Ok(())
    }

    fn validate_parts(&self) -> Result<(), DescError> {
        if self.parts.is_empty() || self.parts.len() > MAX_PARTS {
            return Err(invalid(
                "parts",
                format!("{} parts; a job has 1 to {MAX_PARTS}", self.parts.len()),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.parts.iter().enumerate() {
            let field = format!("parts[{i}]");
            check_part_name(&p.name).map_err(|e| invalid(format!("{field}.name"), reason_of(e)))?;
            if !names.insert(p.name.as_str()) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("part {:?} is listed twice", p.name),
                ));
            }
            let Some(layer) = self.bake.layers.get(p.layer) else {
                return Err(invalid(
                    format!("{field}.layer"),
                    format!(
                        "layer {} does not exist ({} layers)",
                        p.layer,
                        self.bake.layers.len()
                    ),
                ));
            };
            let map = &self.bake.maps[layer.map];
            let (lr, r) = (map.region(), p.region());
            if !lr.contains_rect(r.x0, r.y0, r.x1, r.y1) {
                return Err(invalid(
                    format!("{field}.region"),
                    format!(
                        "{:?} is not a non-empty rectangle inside its layer's region {:?}",
                        p.region, map.region
                    ),
                ));
            }
        }
        Ok(())
    }

    fn validate_outputs(&self) -> Result<(), DescError> {
        if self.outputs.is_empty() || self.outputs.len() > MAX_OUTPUTS {
            return Err(invalid(
                "outputs",
                format!(
                    "{} outputs; a job has 1 to {MAX_OUTPUTS}",
                    self.outputs.len()
                ),
            ));
        }
        // Lower-cased, because two names differing in case are one file on Windows and macOS.
        let mut files = std::collections::HashSet::new();
        let index = self.part_index();
        let mut part_owner: Vec<Option<usize>> = vec![None; self.parts.len()];
        let mut layer_owner: Vec<Option<usize>> = vec![None; self.bake.layers.len()];
        for (oi, o) in self.outputs.iter().enumerate() {
            let field = format!("outputs[{oi}]");
            check_file_name(&o.stem).map_err(|r| invalid(format!("{field}.stem"), r))?;
            let want = [format!("{}.exr", o.stem), format!("{}.png", o.stem)];
            if o.files != want {
                return Err(invalid(
                    format!("{field}.files"),
                    format!("must be exactly {want:?}"),
                ));
            }
            for f in &o.files {
                check_file_name(f).map_err(|r| invalid(format!("{field}.files"), r))?;
                if !files.insert(f.to_ascii_lowercase()) {
                    return Err(invalid(
                        format!("{field}.files"),
                        format!("{f:?} is written by another output too"),
                    ));
                }
            }
            check_size(o.width, o.height).map_err(|r| invalid(&field, r))?;
            check_meshes(&o.atlas_meshes)
                .map_err(|r| invalid(format!("{field}.atlas_meshes"), r))?;
            if o.parts.is_empty() {
                return Err(invalid(format!("{field}.parts"), "no parts"));
            }
            for name in &o.parts {
                let Some(&pi) = index.get(name.as_str()) else {
                    return Err(invalid(
                        format!("{field}.parts"),
                        format!("part {name:?} is not in the job's list of parts"),
                    ));
                };
                if let Some(other) = part_owner[pi] {
                    return Err(invalid(
                        format!("{field}.parts"),
                        format!("part {name:?} also belongs to output {other}"),
                    ));
                }
                part_owner[pi] = Some(oi);
            }
            let plan = self
                .output_plan_with(oi, &index)
                .map_err(|r| invalid(&field, r.to_string()))?;
            if self.bake.mode == BakeMode::Single && plan.assembly != Assembly::Whole {
                return Err(invalid(
                    &field,
                    "mode is single, but the output is assembled from per-object layers",
                ));
            }
            for (layer, _, _) in &plan.layers {
                if let Some(other) = layer_owner[*layer] {
                    return Err(invalid(
                        &field,
                        format!("layer {layer} also belongs to output {other}"),
                    ));
                }
                layer_owner[*layer] = Some(oi);
            }
        }
        if let Some(pi) = part_owner.iter().position(|o| o.is_none()) {
            return Err(invalid(
                format!("parts[{pi}]"),
                format!("part {:?} belongs to no output", self.parts[pi].name),
            ));
        }
        Ok(())
    }

    /// Part indices by name.
    fn part_index(&self) -> HashMap<&str, usize> {
        self.parts
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name.as_str(), i))
            .collect()
    }

    /// The layers of output `oi`, how they are assembled, and which parts tile each; checks
    /// that the parts tile every layer's region exactly (no gap, no overlap).
    pub fn output_plan(&self, oi: usize) -> Result<OutputPlan, PlanError> {
        self.output_plan_with(oi, &self.part_index())
    }

    /// [`JobDesc::output_plan`] of every output, in order.
    pub fn output_plans(&self) -> Result<Vec<OutputPlan>, PlanError> {
        let index = self.part_index();
        (0..self.outputs.len())
            .map(|oi| {
                self.output_plan_with(oi, &index)
                    .map_err(|r| PlanError::InOutput {
                        output: oi,
                        reason: Box::new(r),
                    })
            })
            .collect()
    }

    fn output_plan_with(
        &self,
        oi: usize,
        index: &HashMap<&str, usize>,
    ) -> Result<OutputPlan, PlanError> {
        let o = self.outputs.get(oi).ok_or(PlanError::NoOutput(oi))?;
        let mut layers: Vec<(usize, Option<usize>, Vec<usize>)> = Vec::new();
        for name in &o.parts {
            let pi = *index
                .get(name.as_str())
                .ok_or_else(|| PlanError::NoPart(name.clone()))?;
            let l = self.parts[pi].layer;
            match layers.iter_mut().find(|(x, _, _)| *x == l) {
                Some((_, _, ps)) => ps.push(pi),
                None => layers.push((l, None, vec![pi])),
            }
        }
        for (l, _, _) in &layers {
            let layer = self.bake.layers.get(*l).ok_or(PlanError::NoLayer(*l))?;
            let map = self.bake.maps.get(layer.map).ok_or(PlanError::NoMap {
                layer: *l,
                map: layer.map,
            })?;
            if layer.pass != o.pass {
                return Err(PlanError::WrongPass {
                    layer: *l,
                    baked: layer.pass.name(),
                    output: o.pass.name(),
                });
            }
            if (map.width, map.height) != (o.width, o.height) {
                return Err(PlanError::WrongSize {
                    layer: *l,
                    map_width: map.width,
                    map_height: map.height,
                    width: o.width,
                    height: o.height,
                });
            }
        }
        let whole = layers.len() == 1 && {
            let map = &self.bake.maps[self.bake.layers[layers[0].0].map];
            map.meshes == o.atlas_meshes && map.region() == Region::full(o.width, o.height)
        };
        let assembly = if whole {
            Assembly::Whole
        } else {
            let mut seen = Vec::new();
            for (l, mesh, _) in &mut layers {
                let map = &self.bake.maps[self.bake.layers[*l].map];
                let [m] = map.meshes[..] else {
                    return Err(PlanError::LayerMeshes {
                        layer: *l,
                        meshes: map.meshes.len(),
                    });
                };
                if !o.atlas_meshes.contains(&m) {
                    return Err(PlanError::MeshNotInAtlas { layer: *l, mesh: m });
                }
                if seen.contains(&m) {
                    return Err(PlanError::MeshTwice(m));
                }
                seen.push(m);
                *mesh = Some(m);
            }
            Assembly::PerObject
        };
        for (l, mesh, parts) in &layers {
            for &pi in parts {
                let p = &self.parts[pi];
                if p.mesh != *mesh {
                    return Err(PlanError::PartMesh {
                        part: p.name.clone(),
                        part_mesh: p.mesh,
                        layer: *l,
                        layer_mesh: *mesh,
                    });
                }
            }
            let region = self.bake.maps[self.bake.layers[*l].map].region();
            let rects: Vec<Region> = parts.iter().map(|&pi| self.parts[pi].region()).collect();
            check_tiling(region, &rects)
                .map_err(|reason| PlanError::Tiling { layer: *l, reason })?;
        }
        Ok(OutputPlan { assembly, layers })
    }
}

/// Checks that `rects` (each inside `region`) cover `region` exactly once.
pub(crate) fn check_tiling(region: Region, rects: &[Region]) -> Result<(), TilingError> {
    if let Some(r) = rects
        .iter()
        .find(|r| !region.contains_rect(r.x0, r.y0, r.x1, r.y1))
    {
        return Err(TilingError::Outside {
            part: region_array(*r),
            region: region_array(region),
        });
    }
    let total: u64 = rects.iter().map(|r| r.pixels() as u64).sum();
    let want = region.pixels() as u64;
    // A bitmap of the region finds overlaps; with the areas adding up, no overlap means no gap.
    // At most one bit per texel of a map (32 MiB for 16384²), alive for one check.
    if total != want {
        return Err(TilingError::Coverage {
            total,
            region: region_array(region),
            want,
        });
    }
    let words_per_row = (region.width() as usize).div_ceil(64);
    let mut bits = vec![0u64; words_per_row * region.height() as usize];
    for r in rects {
        for y in r.y0..r.y1 {
            let row = (y - region.y0) as usize * words_per_row;
            let (a, b) = ((r.x0 - region.x0) as usize, (r.x1 - region.x0) as usize);
            let mut x = a;
            while x < b {
                let (w, bit) = (x / 64, x % 64);
                let n = (64 - bit).min(b - x);
                let mask = if n == 64 {
                    u64::MAX
                } else {
                    ((1u64 << n) - 1) << bit
                };
                let word = &mut bits[row + w];
                if *word & mask != 0 {
                    return Err(TilingError::Overlap {
                        row: y,
                        part: region_array(*r),
                    });
                }
                *word |= mask;
                x += n;
            }
        }
    }
    Ok(())
}

pub(crate) fn check_size(width: u32, height: u32) -> Result<(), String> {
    if width == 0 || height == 0 || width > MAX_SIZE || height > MAX_SIZE {
        return Err(format!(
            "size {width}x{height} is out of range (1 to {MAX_SIZE} each way)"
        ));
    }
    Ok(())
}

fn check_meshes(meshes: &[usize]) -> Result<(), String> {
    if meshes.is_empty() || meshes.len() > MAX_MESHES_PER_MAP {
        return Err(format!(
            "{} meshes; a map has 1 to {MAX_MESHES_PER_MAP}",
            meshes.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(m) = meshes.iter().find(|m| !seen.insert(**m)) {
        return Err(format!("mesh {m} is listed twice"));
    }
    Ok(())
}

pub(crate) fn reason_of(e: DescError) -> String {
    match e {
        DescError::BadName { reason, .. } => reason,
        e => e.to_string(),
    }
}

/// Windows treats these names as devices whatever their extension (`nul.txt` is `nul`), so a
/// job folder on a Windows share must never use them.
const WINDOWS_DEVICES: [&str; 22] = [
    "con", "prn", "aux", "nul", "com1", "com2", "com3", "com4", "com5", "com6", "com7", "com8",
    "com9", "lpt1", "lpt2", "lpt3", "lpt4", "lpt5", "lpt6", "lpt7", "lpt8", "lpt9",
];

fn check_name_chars(
    s: &str,
    max_len: usize,
    allowed: impl Fn(char) -> bool,
    allowed_desc: &str,
) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.len() > max_len {
        return Err(format!("longer than {max_len} bytes"));
    }
    if let Some(c) = s.chars().find(|&c| !allowed(c)) {
        return Err(format!("it holds {c:?}; use only {allowed_desc}"));
    }
    let device = s.split('.').next().unwrap_or_default().to_ascii_lowercase();
    if WINDOWS_DEVICES.contains(&device.as_str()) {
        return Err(format!("{device:?} is a device name on Windows"));
    }
    Ok(())
}

/// Checks a job id: `[a-z0-9-]{1,64}` (and not a Windows device name).
pub fn check_job_id(id: &str) -> Result<(), DescError> {
    check_name_chars(
        id,
        MAX_JOB_ID_LEN,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
        "a-z, 0-9 and '-'",
    )
    .map_err(|reason| DescError::BadName {
        what: "job id",
        name: id.into(),
        reason,
    })
}

/// Checks a part name: `[a-z0-9_-]{1,64}` (and not a Windows device name).
pub fn check_part_name(name: &str) -> Result<(), DescError> {
    check_name_chars(
        name,
        MAX_PART_NAME_LEN,
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_',
        "a-z, 0-9, '_' and '-'",
    )
    .map_err(|reason| DescError::BadName {
        what: "part name",
        name: name.into(),
        reason,
    })
}

/// Checks a file name (output map, glTF, scene): one plain name of `[A-Za-z0-9._-]`, at most
/// [`MAX_FILE_NAME_LEN`] bytes, not starting with `.` (no hidden files, no `.` or `..`), not
/// ending with `.` (Windows drops it), without `..`, and not a Windows device name. The reason
/// is returned for the caller to name the field.
pub fn check_file_name(name: &str) -> Result<(), String> {
    check_name_chars(
        name,
        MAX_FILE_NAME_LEN,
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
        "letters A-Z a-z, digits, '.', '_' and '-'",
    )?;
    if name.starts_with('.') {
        return Err("it starts with '.'".into());
    }
    if name.ends_with('.') {
        return Err("it ends with '.'".into());
    }
    if name.contains("..") {
        return Err("it contains '..'".into());
    }
    Ok(())
}

/// `root/name` after checking `name` is one plain file name ([`check_file_name`]): the result
/// is always a direct child of `root`.
pub fn safe_join(root: &Path, name: &str) -> Result<PathBuf, DescError> {
    check_file_name(name).map_err(|reason| DescError::BadName {
        what: "file name",
        name: name.into(),
        reason,
    })?;
    // Belt and braces: the character rules already guarantee one normal component.
    let mut comps = Path::new(name).components();
    match (comps.next(), comps.next()) {
        (Some(Component::Normal(_)), None) => Ok(root.join(name)),
        _ => Err(DescError::BadName {
            what: "file name",
            name: name.into(),
            reason: "it is not a single file name".into(),
        }),
    }
}

/// Checks an output folder path as written by any client: absolute (`/...`, `C:\...`, `C:/...`
/// or `\\server\share\...`), without `.` or `..` components or control characters. Whether it
/// names a folder on *this* machine is the merge's question.
pub fn check_out_dir(dir: &str) -> Result<(), String> {
    if dir.is_empty() {
        return Err("it is empty".into());
    }
    if dir.len() > MAX_OUT_DIR_LEN {
        return Err(format!("longer than {MAX_OUT_DIR_LEN} bytes"));
    }
    if let Some(c) = dir.chars().find(|c| c.is_control()) {
        return Err(format!("it holds the control character {c:?}"));
    }
    let b = dir.as_bytes();
    let drive =
        b.len() >= 3 && b[0].is_ascii_alphabetic() && b[1] == b':' && matches!(b[2], b'/' | b'\\');
    if !(dir.starts_with('/') || dir.starts_with("\\\\") || drive) {
        return Err(format!("{dir:?} is not an absolute path"));
    }
    if dir.split(['/', '\\']).any(|c| c == "." || c == "..") {
        return Err(format!("{dir:?} has '.' or '..' components"));
    }
    Ok(())
}

/// Checks a manager address `HOST:PORT` (a name, IPv4 or `[IPv6]` and a port 1-65535).
pub fn check_manager(addr: &str) -> Result<(), rayfarm_proto::addr::AddrError> {
    rayfarm_proto::addr::check_host_port(addr, MAX_MANAGER_LEN)
}

/// The folder holding a job.desc, as an absolute path.
pub fn job_dir_of(desc_path: &Path) -> Result<PathBuf, DescError> {
    let parent = match desc_path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::path::absolute(parent).map_err(|source| DescError::Io {
        path: desc_path.to_path_buf(),
        source,
    })
}

/// Checks that `dir` is named `job_id`. `path` is the file named in messages.
/// The `kind` field of a job.desc: absent or `"bake"` for a bake, `"render"` for a render.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobKindTag {
    Bake,
    Render,
}

/// Reads a job.desc's text (at most [`MAX_DESC_BYTES`] of UTF-8) and checks its MAC (the
/// sidecar [`crate::folder::DESC_MAC_FILE_NAME`]) with `key` before anything parses it, so an
/// unauthenticated file's contents never reach an error message. Neither file may be a
/// symlink. The MAC binds the job id the folder is named after. Returns the text and the seal
/// that authenticates the job's parts.
pub(crate) fn read_desc_text(
    path: &Path,
    key: &rayfarm_proto::FarmKey,
) -> Result<(String, crate::folder::JobSeal), DescError> {
    let io = |source| DescError::Io {
        path: path.to_path_buf(),
        source,
    };
    let job_dir = job_dir_of(path)?;
    let folder = job_dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    check_job_id(&folder).map_err(|_| DescError::WrongFolder {
        path: path.to_path_buf(),
        folder: folder.clone(),
        job_id: "(not read: the folder name is not a job id)".into(),
    })?;
    let bytes = match crate::folder::read_nofollow(path, MAX_DESC_BYTES).map_err(io)? {
        Some(b) => b,
        None => {
            return Err(DescError::TooLarge {
                path: path.to_path_buf(),
                bytes: std::fs::symlink_metadata(path).map_or(MAX_DESC_BYTES + 1, |m| m.len()),
            })
        }
    };
    let mac_path = job_dir.join(crate::folder::DESC_MAC_FILE_NAME);
    let mac = match crate::folder::read_nofollow(&mac_path, 256) {
        Ok(Some(m)) => crate::folder::parse_mac_file(&m),
        Ok(None) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DescError::NoMac {
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(DescError::Io {
                path: mac_path,
                source,
            })
        }
    };
    match mac {
        Some(mac) if crate::folder::verify_desc_mac(key, &folder, &bytes, &mac) => {}
        _ => {
            return Err(DescError::BadMac {
                path: path.to_path_buf(),
            })
        }
    }
    let seal = crate::folder::JobSeal::new(key, &folder, &bytes);
    let text = String::from_utf8(bytes).map_err(|_| DescError::Json {
        path: path.to_path_buf(),
        reason: "the file is not UTF-8 text".into(),
    })?;
    Ok((text, seal))
}

/// An [`DescError::Invalid`] of a description read from `path`, with the path named.
pub(crate) fn in_file(e: DescError, path: &Path) -> DescError {
    match e {
        DescError::Invalid { field, reason } => DescError::InvalidFile {
            path: path.to_path_buf(),
            field,
            reason,
        },
        e => e,
    }
}

/// Checks that no JSON object in `text` has a key twice. `serde_json::Value` keeps the last
/// of two equal keys, so `{"out_dir": "a", ..., "out_dir": "b"}` would be read as `b` here
/// and, by another reader of the same signed bytes, perhaps as `a`: a job.desc must mean one
/// thing. (serde_json limits the nesting to 128 levels, so this recursion is bounded.)
pub(crate) fn check_unique_keys(text: &str) -> Result<(), String> {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
    struct Unique;
    impl<'de> DeserializeSeed<'de> for Unique {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Unique {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            while seq.next_element_seed(Unique)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                if !seen.insert(key.clone()) {
                    return Err(A::Error::custom(format_args!(
                        "the key {key:?} appears twice in one object"
                    )));
                }
                map.next_value_seed(Unique)?;
            }
            Ok(())
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    Unique.deserialize(&mut de).map_err(|e| e.to_string())
}

/// Parses a job.desc's JSON and checks `format` and `version` first (a newer file may have
/// fields this version does not know, and "version 2, this reads 1" is the useful message
/// then); returns its kind and the object without those three fields.
pub(crate) fn parse_tagged(
    text: &str,
    path: &Path,
) -> Result<(JobKindTag, serde_json::Value), DescError> {
    let json = |reason: String| DescError::Json {
        path: path.to_path_buf(),
        reason,
    };
    check_unique_keys(text).map_err(json)?;
    let mut v: serde_json::Value = serde_json::from_str(text).map_err(|e| json(e.to_string()))?;
    let obj = v
        .as_object_mut()
        .ok_or_else(|| json("the file is not a JSON object".into()))?;
    let format = obj.remove("format");
    if format.as_ref().and_then(|f| f.as_str()) != Some(FORMAT) {
        return Err(DescError::Format {
            path: path.to_path_buf(),
            found: match format {
                Some(serde_json::Value::String(s)) => s,
                Some(other) => other.to_string(),
                None => "(missing)".into(),
            },
        });
    }
    match obj.remove("version").map(|v| v.as_u64()) {
        Some(Some(v)) if v == VERSION as u64 => {}
        Some(Some(found)) => {
            return Err(DescError::Version {
                path: path.to_path_buf(),
                found,
            })
        }
        _ => {
            return Err(json(
                "field version is missing or not a whole number".into(),
            ))
        }
    }
    let kind = match obj.remove("kind") {
        None => JobKindTag::Bake,
        Some(serde_json::Value::String(k)) if k == "bake" => JobKindTag::Bake,
        Some(serde_json::Value::String(k)) if k == "render" => JobKindTag::Render,
        Some(other) => {
            return Err(json(format!(
                "field kind is {other}; use \"bake\" or \"render\""
            )))
        }
    };
    Ok((kind, v))
}

/// Checks a job's display name: at most [`MAX_DISPLAY_NAME_CHARS`], no control characters.
pub(crate) fn check_display_name(name: &str) -> Result<(), DescError> {
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err(invalid(
            "name",
            format!("longer than {MAX_DISPLAY_NAME_CHARS} characters"),
        ));
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(invalid(
            "name",
            format!("holds the control character {c:?}"),
        ));
    }
    Ok(())
}

/// A job.desc's text: pretty-printed JSON with `format`, `version` and `kind` first.
pub(crate) fn tagged_json<T: Serialize>(kind: &'static str, desc: &T) -> String {
    #[derive(Serialize)]
    struct Tagged<'a, T> {
        format: &'static str,
        version: u32,
        kind: &'static str,
        #[serde(flatten)]
        desc: &'a T,
    }
    let mut s = serde_json::to_string_pretty(&Tagged {
        format: FORMAT,
        version: VERSION,
        kind,
        desc,
    })
    .expect("a job description always serialises");
    s.push('\n');
    s
}

/// Writes a (validated) description's text atomically as `job_dir/job.desc`, then its MAC
/// as `job_dir/job.desc.mac`; `job_dir` must exist and be named after the job id. Returns the
/// job.desc's path.
pub(crate) fn write_desc_file(
    job_dir: &Path,
    job_id: &str,
    text: &str,
    key: &rayfarm_proto::FarmKey,
) -> Result<PathBuf, DescError> {
    let path = job_dir.join(FILE_NAME);
    check_folder_name(job_dir, job_id, &path)?;
    // Through a handle on the job folder, opened without following a symlink, so that a job
    // folder swapped for a symlink gets nothing, and neither does the folder it points to.
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DescError::Io { path, source }
    };
    let folder = crate::folder::FolderHandle::open(job_dir).map_err(io(job_dir))?;
    folder
        .write_atomic(FILE_NAME, text.as_bytes())
        .map_err(io(&path))?;
    let mac = crate::folder::desc_mac(key, job_id, text.as_bytes());
    let mac_name = crate::folder::DESC_MAC_FILE_NAME;
    folder
        .write_atomic(mac_name, crate::folder::mac_file_text(&mac).as_bytes())
        .map_err(io(&job_dir.join(mac_name)))?;
    Ok(path)
}

/// Checks a job's reference to a compiled scene in its folder; `field` names it in errors.
pub fn validate_scene_ref(field: &str, s: &SceneRef) -> Result<(), DescError> {
    check_file_name(&s.file).map_err(|r| invalid(format!("{field}.file"), r))?;
    if [FILE_NAME, PARTS_DIR, MERGED_MARKER]
        .iter()
        .any(|n| s.file.eq_ignore_ascii_case(n))
    {
        return Err(invalid(
            format!("{field}.file"),
            format!("{:?} is reserved for the job folder's own files", s.file),
        ));
    }
    let hex_ok = s.blake3.len() == 64
        && s.blake3
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex_ok {
        return Err(invalid(
            format!("{field}.blake3"),
            "not a BLAKE3 hash (64 lower-case hexadecimal digits)",
        ));
    }
    if s.bytes == 0 || s.bytes > MAX_SCENE_BYTES {
        return Err(invalid(
            format!("{field}.bytes"),
            format!("{} is out of range (1 to {MAX_SCENE_BYTES})", s.bytes),
        ));
    }
    Ok(())
}

pub(crate) fn check_folder_name(dir: &Path, job_id: &str, path: &Path) -> Result<(), DescError> {
    let abs = std::path::absolute(dir).map_err(|source| DescError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // The lexical name when there is one; a path ending in `..` needs the real one.
    let name = match abs.file_name() {
        Some(n) => n.to_os_string(),
        None => std::fs::canonicalize(&abs)
            .ok()
            .and_then(|c| c.file_name().map(|n| n.to_os_string()))
            .unwrap_or_default(),
    };
    if name.to_str() != Some(job_id) {
        return Err(DescError::WrongFolder {
            path: path.to_path_buf(),
            folder: name.to_string_lossy().into_owned(),
            job_id: job_id.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid single-mode job: one 8x8 atlas of meshes 0 and 1, passes ao and complete, each
    /// cut into four 4x4 parts.
    pub(crate) fn sample() -> JobDesc {
        let mut parts = Vec::new();
        let mut outputs = Vec::new();
        for (layer, pass) in [Pass::Ao, Pass::Complete].into_iter().enumerate() {
            let mut names = Vec::new();
            for (k, (x, y)) in [(0, 0), (4, 0), (0, 4), (4, 4)].into_iter().enumerate() {
                let name = format!("p{layer}{k}");
                parts.push(PartDesc {
                    name: name.clone(),
                    layer,
                    region: [x, y, x + 4, y + 4],
                    mesh: None,
                });
                names.push(name);
            }
            let stem = rayfarm_bake::map_name(None, pass, 8, 8);
            outputs.push(OutputDesc {
                files: vec![format!("{stem}.exr"), format!("{stem}.png")],
                stem,
                pass,
                width: 8,
                height: 8,
                atlas_meshes: vec![0, 1],
                parts: names,
            });
        }
        JobDesc {
            job_id: "job-1".into(),
            created_unix_ms: 1_700_000_000_000,
            name: "level 3 lightmaps".into(),
            scene: SceneRef {
                file: "scene.rfscene".into(),
                blake3: "ab".repeat(32),
                bytes: 1234,
            },
            bake: BakeDesc {
                uv_set: 0,
                spp: 16,
                max_bounces: 4,
                seed: u64::MAX,
                ao_distance: 0.1,
                padding: 2,
                mode: BakeMode::Single,
                maps: vec![MapDesc {
                    meshes: vec![0, 1],
                    width: 8,
                    height: 8,
                    region: [0, 0, 8, 8],
                }],
                layers: vec![
                    LayerDesc {
                        map: 0,
                        pass: Pass::Ao,
                    },
                    LayerDesc {
                        map: 0,
                        pass: Pass::Complete,
                    },
                ],
            },
            outputs,
            parts,
            out_dir: "/srv/out".into(),
            gltf_out: Some("baked.glb".into()),
            manager: Some("farm-1:7420".into()),
        }
    }

    fn refused(d: &JobDesc, what: &str) -> String {
        match d.validate() {
            Ok(()) => panic!("{what}: accepted"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn round_trips_and_starts_with_format_and_version() {
        let d = sample();
        d.validate().unwrap();
        let text = d.to_json();
        assert!(
            text.starts_with(
                "{\n  \"format\": \"rayfarm-job\",\n  \"version\": 2,\n  \"kind\": \"bake\",\n  \"job_id\""
            ),
            "{text}"
        );
        let back = JobDesc::from_json(&text, Path::new("x")).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.bake.ao_distance.to_bits(), 0.1f32.to_bits());
        assert_eq!(back.bake.seed, u64::MAX);
        assert_eq!(d.to_bake_spec().layers.len(), 2);
        let spec = d.to_bake_spec();
        assert_eq!(
            BakeDesc::from_bake_spec(&spec, d.bake.padding, d.bake.mode),
            d.bake
        );
        assert_eq!(d.layer_spp(0), Some(16));
    }

    /// A key twice in one object (at the top, or nested) is refused by name, whichever of
    /// the two values a reader would keep; equal keys in different objects are fine.
    #[test]
    fn refuses_a_key_twice_in_one_object() {
        let text = sample().to_json();
        let twice = text.replacen(
            "\"job_id\"",
            "\"out_dir\": \"/elsewhere\",\n  \"job_id\"",
            1,
        );
        let e = JobDesc::from_json(&twice, Path::new("x/job.desc")).unwrap_err();
        assert!(
            e.to_string().contains("the key \"out_dir\" appears twice"),
            "{e}"
        );
        let nested = text.replacen("\"layer\": 0,", "\"layer\": 0, \"layer\": 1,", 1);
        assert_ne!(nested, text);
        let e = crate::renderjob::AnyJobDesc::from_json(&nested, Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("\"layer\" appears twice"), "{e}");
        assert!(check_unique_keys(r#"{"a": {"k": 1}, "b": [{"k": 2}, {"k": 3}]}"#).is_ok());
        assert!(check_unique_keys(r#"[{"k": 1, "k": 1}]"#).is_err());
    }

    #[test]
    fn refuses_other_formats_versions_and_unknown_fields() {
        let text = sample().to_json();
        let p = Path::new("NETDIR/job-1/job.desc");
        let e = JobDesc::from_json(&text.replace("\"version\": 2", "\"version\": 3"), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("version 3") && e.contains("version 2"), "{e}");
        let e = JobDesc::from_json(&text.replace("rayfarm-job", "other"), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"other\"") && e.contains("rayfarm-job"), "{e}");
        let e = JobDesc::from_json(
            &text.replace("\"job_id\"", "\"colour\": 1,\n  \"job_id\""),
            p,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown field `colour`"), "{e}");
        let e = JobDesc::from_json(&text.replace("\"pad", "\"xpad"), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("xpadding"), "{e}");
        let e = JobDesc::from_json(&text.replace("\"ao\"", "\"shiny\""), p)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown pass \"shiny\""), "{e}");
        assert!(JobDesc::from_json("[1]", p).is_err());
        assert!(JobDesc::from_json("{", p).is_err());
    }

    const BAD_NAMES: [&str; 15] = [
        "..",
        ".",
        "../x",
        "/abs",
        "a/b",
        "a\\b",
        ".hidden",
        "a\0b",
        "",
        "ok\n",
        "caf\u{e9}",
        "\u{202e}gpj",
        "a\u{2215}b",
        "nul",
        "CON.png",
    ];

    #[test]
    fn names_with_paths_or_odd_characters_are_refused() {
        for n in BAD_NAMES {
            assert!(check_file_name(n).is_err(), "{n:?}");
            assert!(check_job_id(n).is_err(), "{n:?}");
            assert!(check_part_name(n).is_err(), "{n:?}");
            assert!(safe_join(Path::new("/r"), n).is_err(), "{n:?}");
        }
        for n in ["a..b", "x.", &"a".repeat(MAX_FILE_NAME_LEN + 1)] {
            assert!(check_file_name(n).is_err(), "{n:?}");
        }
        assert!(check_job_id("Job").is_err());
        assert!(check_job_id(&"a".repeat(65)).is_err());
        assert!(check_part_name("p_0").is_ok() && check_job_id("p_0").is_err());
        assert_eq!(
            safe_join(Path::new("/r"), "atlas_ao_8.png").unwrap(),
            Path::new("/r/atlas_ao_8.png")
        );
        let e = check_job_id("../etc").unwrap_err().to_string();
        assert!(e.contains("job id \"../etc\""), "{e}");
    }

    #[test]
    fn validate_refuses_bad_names_in_every_field() {
        for n in BAD_NAMES {
            let mut d = sample();
            d.job_id = n.into();
            refused(&d, "job_id");
            let mut d = sample();
            let old = d.parts[0].name.clone();
            d.parts[0].name = n.into();
            d.outputs[0].parts[0] = n.into();
            refused(&d, &format!("part {old} renamed {n:?}"));
            let mut d = sample();
            d.outputs[0].stem = n.into();
            d.outputs[0].files = vec![format!("{n}.exr"), format!("{n}.png")];
            refused(&d, "stem");
            let mut d = sample();
            d.gltf_out = Some(n.into());
            refused(&d, "gltf_out");
            let mut d = sample();
            d.scene.file = n.into();
            refused(&d, "scene.file");
        }
        let mut d = sample();
        d.outputs[0].files[1] = "../../etc/passwd".into();
        let e = refused(&d, "files");
        assert!(e.contains("outputs[0].files"), "{e}");
        for dir in ["relative/dir", "", "/a/../b", "/a/./b", "C:x", "/a\nb"] {
            let mut d = sample();
            d.out_dir = dir.into();
            let e = refused(&d, dir);
            assert!(e.contains("out_dir"), "{e}");
        }
        for dir in [
            "/",
            "/srv/out",
            "C:\\bakes\\x",
            "D:/x",
            "\\\\server\\share\\x",
        ] {
            let mut d = sample();
            d.out_dir = dir.into();
            d.validate().unwrap();
        }
        for m in ["nohost", ":7420", "h:0", "h:99999", "a b:1"] {
            let mut d = sample();
            d.manager = Some(m.into());
            refused(&d, m);
        }
        let mut d = sample();
        d.manager = Some("[::1]:7420".into());
        d.validate().unwrap();
        let mut d = sample();
        d.name = "a\u{1b}[31m".into();
        refused(&d, "name");
    }

    #[test]
    fn validate_refuses_inconsistent_jobs() {
        let cases: Vec<(&str, &str, Box<dyn Fn(&mut JobDesc)>)> = vec![
            (
                "missing part",
                "outputs[0].parts",
                Box::new(|d| d.outputs[0].parts[0] = "nope".into()),
            ),
            (
                "part twice",
                "also belongs to output 0",
                Box::new(|d| d.outputs[1].parts[0] = "p00".into()),
            ),
            (
                "gap",
                "cover 48 texels",
                Box::new(|d| {
                    d.outputs[0].parts.pop();
                    d.parts.remove(3);
                }),
            ),
            (
                "overlap",
                "overlap",
                Box::new(|d| d.parts[1].region = [3, 0, 7, 4]),
            ),
            (
                "overlap, same area",
                "overlap",
                Box::new(|d| {
                    d.parts[1].region = [0, 0, 4, 4];
                }),
            ),
            (
                "outside",
                "parts[1].region",
                Box::new(|d| d.parts[1].region = [4, 0, 9, 4]),
            ),
            (
                "empty",
                "parts[1].region",
                Box::new(|d| d.parts[1].region = [4, 0, 4, 4]),
            ),
            (
                "layer",
                "parts[1].layer",
                Box::new(|d| d.parts[1].layer = 7),
            ),
            (
                "wrong pass",
                "bakes ao, but the output is normal",
                Box::new(|d| d.outputs[0].pass = Pass::Normal),
            ),
            (
                "files",
                "outputs[0].files",
                Box::new(|d| d.outputs[0].files.reverse()),
            ),
            (
                "case clash",
                "written by another output",
                Box::new(|d| {
                    let s = d.outputs[0].stem.to_uppercase();
                    d.outputs[1].files = vec![format!("{s}.exr"), format!("{s}.png")];
                    d.outputs[1].stem = s;
                }),
            ),
            (
                "size",
                "but the output is 9x8",
                Box::new(|d| d.outputs[0].width = 9),
            ),
            (
                "big",
                "bake.maps[0]",
                Box::new(|d| d.bake.maps[0].width = MAX_SIZE + 1),
            ),
            (
                "atlas",
                "covers 2 meshes",
                Box::new(|d| d.outputs[0].atlas_meshes = vec![1, 0]),
            ),
            (
                "mesh",
                "mesh must be null",
                Box::new(|d| d.parts[0].mesh = Some(0)),
            ),
            ("spp", "bake.spp", Box::new(|d| d.bake.spp = 0)),
            ("uv", "bake.uv_set", Box::new(|d| d.bake.uv_set = 2)),
            (
                "ao",
                "bake.ao_distance",
                Box::new(|d| d.bake.ao_distance = f32::NAN),
            ),
            (
                "map ref",
                "bake.layers[0].map",
                Box::new(|d| d.bake.layers[0].map = 3),
            ),
            (
                "hash",
                "scene.blake3",
                Box::new(|d| d.scene.blake3 = "AB".repeat(32)),
            ),
            ("no outputs", "0 outputs", Box::new(|d| d.outputs.clear())),
            (
                "orphan part",
                "belongs to no output",
                Box::new(|d| {
                    d.parts.push(PartDesc {
                        name: "extra".into(),
                        layer: 0,
                        region: [0, 0, 1, 1],
                        mesh: None,
                    })
                }),
            ),
            (
                "gltf clash",
                "also the name of an output map",
                Box::new(|d| d.gltf_out = Some(d.outputs[0].files[0].clone())),
            ),
            (
                "gltf without complete",
                "no output has the complete pass",
                Box::new(|d| {
                    d.outputs.truncate(1);
                    d.parts.truncate(4);
                }),
            ),
            (
                "duplicate mesh",
                "listed twice",
                Box::new(|d| d.bake.maps[0].meshes = vec![0, 0]),
            ),
        ];
        for (what, expected, f) in cases {
            let mut d = sample();
            f(&mut d);
            let e = refused(&d, what);
            assert!(e.contains(expected), "{what}: {e}");
        }
    }

    #[test]
    fn per_object_outputs() {
        // Two objects, each its own layer over its half of the map, two parts each.
        let mut d = sample();
        d.bake.mode = BakeMode::Multi;
        d.bake.maps = vec![
            MapDesc {
                meshes: vec![0],
                width: 8,
                height: 8,
                region: [0, 0, 4, 8],
            },
            MapDesc {
                meshes: vec![1],
                width: 8,
                height: 8,
                region: [4, 0, 8, 8],
            },
        ];
        d.bake.layers = vec![
            LayerDesc {
                map: 0,
                pass: Pass::Ao,
            },
            LayerDesc {
                map: 1,
                pass: Pass::Ao,
            },
        ];
        d.parts = (0..4)
            .map(|k| PartDesc {
                name: format!("q{k}"),
                layer: k / 2,
                region: [
                    4 * (k / 2) as u32,
                    4 * (k % 2) as u32,
                    4 * (k / 2) as u32 + 4,
                    4 * (k % 2) as u32 + 4,
                ],
                mesh: Some(k / 2),
            })
            .collect();
        d.outputs.truncate(1);
        d.outputs[0].parts = (0..4).map(|k| format!("q{k}")).collect();
        d.gltf_out = None;
        d.validate().unwrap();
        let plan = d.output_plan(0).unwrap();
        assert_eq!(plan.assembly, Assembly::PerObject);
        assert_eq!(
            plan.layers,
            vec![(0, Some(0), vec![0, 1]), (1, Some(1), vec![2, 3])]
        );
        let mut bad = d.clone();
        bad.parts[2].mesh = Some(0);
        refused(&bad, "wrong mesh");
        let mut bad = d.clone();
        bad.outputs[0].atlas_meshes = vec![0];
        refused(&bad, "mesh outside atlas");
        let mut bad = d.clone();
        bad.bake.mode = BakeMode::Single;
        refused(&bad, "single mode");
    }

    #[test]
    fn read_and_write_check_the_folder_name() {
        let key = test_key();
        let root = tempfile::tempdir().unwrap();
        let d = sample();
        let dir = root.path().join("job-1");
        std::fs::create_dir(&dir).unwrap();
        let path = d.write(&dir, &key).unwrap();
        assert_eq!(path, dir.join(FILE_NAME));
        assert_eq!(JobDesc::read(&path, &key).unwrap(), d);
        let other = root.path().join("job-2");
        std::fs::create_dir(&other).unwrap();
        let e = d.write(&other, &key).unwrap_err().to_string();
        assert!(e.contains("\"job-2\"") && e.contains("\"job-1\""), "{e}");
        // Copied to another job's folder with its MAC: the MAC binds the job id.
        std::fs::copy(&path, other.join(FILE_NAME)).unwrap();
        let mac_file = crate::folder::DESC_MAC_FILE_NAME;
        std::fs::copy(dir.join(mac_file), other.join(mac_file)).unwrap();
        let e = JobDesc::read(&other.join(FILE_NAME), &key).unwrap_err();
        assert!(matches!(e, DescError::BadMac { .. }), "{e}");
        // With a MAC for the other folder, the folder name is still checked.
        let bytes = std::fs::read(&path).unwrap();
        let mac = crate::folder::desc_mac(&key, "job-2", &bytes);
        std::fs::write(other.join(mac_file), crate::folder::mac_file_text(&mac)).unwrap();
        let e = JobDesc::read(&other.join(FILE_NAME), &key).unwrap_err();
        assert!(matches!(e, DescError::WrongFolder { .. }), "{e}");
        // A job.desc refused by validate names the file and the field.
        let mut bad = sample();
        bad.parts[0].name = "../x".into();
        let text = bad.to_json();
        std::fs::write(dir.join(FILE_NAME), &text).unwrap();
        let e = JobDesc::read(&dir.join(FILE_NAME), &key).unwrap_err();
        assert!(matches!(e, DescError::BadMac { .. }), "{e}");
        let mac = crate::folder::desc_mac(&key, "job-1", text.as_bytes());
        std::fs::write(dir.join(mac_file), crate::folder::mac_file_text(&mac)).unwrap();
        let e = JobDesc::read(&dir.join(FILE_NAME), &key)
            .unwrap_err()
            .to_string();
        assert!(e.contains("job.desc") && e.contains("parts[0].name"), "{e}");
        // Only job.desc, its MAC and the folder exist: no temporaries left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 2);
    }

    pub(crate) fn test_key() -> rayfarm_proto::FarmKey {
        rayfarm_proto::FarmKey::from_secret("a test farm secret, long enough").unwrap()
    }

    #[test]
    fn unauthenticated_descs_are_refused_before_parsing() {
        let key = test_key();
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("job-1");
        std::fs::create_dir(&dir).unwrap();
        let path = sample().write(&dir, &key).unwrap();
        // Edited (out_dir moved): refused, and the message names the file.
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("\"out_dir\": \"", "\"out_dir\": \"/tmp"),
        )
        .unwrap();
        let e = JobDesc::read(&path, &key).unwrap_err();
        assert!(matches!(e, DescError::BadMac { .. }), "{e}");
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        // Another farm's key: refused.
        std::fs::write(&path, &text).unwrap();
        let other = rayfarm_proto::FarmKey::from_secret("another farm's secret, long").unwrap();
        assert!(matches!(
            JobDesc::read(&path, &other),
            Err(DescError::BadMac { .. })
        ));
        JobDesc::read(&path, &key).unwrap();
        // No MAC file: refused.
        std::fs::remove_file(dir.join(crate::folder::DESC_MAC_FILE_NAME)).unwrap();
        assert!(matches!(
            JobDesc::read(&path, &key),
            Err(DescError::NoMac { .. })
        ));
        // A symlinked job.desc, even to a file with a valid MAC elsewhere: refused, and the
        // target's contents are not in the message.
        sample().write(&dir, &key).unwrap();
        let secret = root.path().join("secret.json");
        std::fs::write(&secret, "{\"format\": \"TOP-SECRET-VALUE\"}").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        let e = JobDesc::read(&path, &key).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        assert!(!e.contains("TOP-SECRET"), "{e}");
    }
}
