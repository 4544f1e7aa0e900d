//! The job.desc of a render job: a still image or a range of frames, finished without its
//! client.
//!
//! A render job's folder holds the same kinds of files as a bake's ([`crate::jobdesc`]): its
//! `job.desc`, compiled scenes and `parts/`. An animated scene is compiled once per frame
//! (the importer poses it at the frame's time), and frames whose compiled scene is the same
//! share one file, named after its hash, so a still camera over a static scene costs one
//! scene file whatever the frame count.
//!
//! # Format (version 1, `kind: "render"`)
//!
//! ```text
//! format, version  as every job.desc ("rayfarm-job", 1)
//! kind             "render"
//! job_id, created_unix_ms, name, out_dir, manager   as in a bake's job.desc
//! render           { width, height, spp, max_bounces, seed, exposure_ev,
//!                    tonemap: "clamp" | "aces", half }
//! frames           [{ frame: frame number, time_s: scene time it was posed at,
//!                     scene: { file, blake3, bytes }, camera: { name, projection:
//!                     { type: "perspective", yfov, aspect } | { type: "orthographic",
//!                     xmag, ymag }, position, right, up, forward }, output: file name }]
//! parts            [{ name, frame: index into frames, region: [x0, y0, x1, y1] }]
//! ```
//!
//! The camera is resolved by the client from each frame's scene (so an animated camera
//! moves), and stored as rendered. A part holds every sample of one rectangle of one frame;
//! a frame's parts tile its whole image exactly. Its file is written as layer 0 of the part
//! format ([`crate::parts`]). Outputs are `.exr` (linear) or `.png` (after exposure and tone
//! mapping), written by [`crate::images::write_image`] as `rayfarm render` writes them.

use crate::images::{ImageFormat, ImageSettings, ToneMap};
use crate::jobdesc::{
    check_display_name, check_file_name, check_folder_name, check_job_id, check_manager,
    check_out_dir, check_part_name, check_size, check_tiling, in_file, invalid, job_dir_of,
    parse_tagged, read_desc_text, reason_of, tagged_json, validate_scene_ref, write_desc_file,
    DescError, JobDesc, JobKindTag, PartDesc, SceneRef, MAX_DISPLAY_NAME_CHARS, MAX_PARTS, MAX_SPP,
};
use rayfarm_render::{film::Region, RenderSettings};
use rayfarm_scene::{Camera, Projection};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Most frames one job may have.
pub const MAX_FRAMES: usize = 100_000;
/// Most indirect bounces.
pub const MAX_BOUNCES: u32 = 1024;

/// How the image is rendered and written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderDesc {
    pub width: u32,
    pub height: u32,
    pub spp: u32,
    pub max_bounces: u32,
    pub seed: u64,
    /// Stops of exposure applied to PNG output.
    pub exposure_ev: f32,
    pub tonemap: ToneMap,
    /// 16-bit half floats in EXR output.
    pub half: bool,
}

/// A camera's projection.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ProjectionDesc {
    Perspective { yfov: f32, aspect: Option<f32> },
    Orthographic { xmag: f32, ymag: f32 },
}

/// The camera a frame is rendered through, as [`rayfarm_scene::Camera`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraDesc {
    pub name: String,
    pub projection: ProjectionDesc,
    pub position: [f32; 3],
    pub right: [f32; 3],
    pub up: [f32; 3],
    pub forward: [f32; 3],
}

/// Why a frame's camera is refused (a reason for [`DescError::Invalid`]).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CameraError {
    #[error("name longer than {MAX_DISPLAY_NAME_CHARS} characters")]
    LongName,
    #[error("position is not finite")]
    Position,
    #[error("{what} {v:?} is not a unit vector")]
    NotUnit { what: &'static str, v: [f32; 3] },
    #[error("yfov {0} is not between 0 and pi radians")]
    Yfov(f32),
    #[error("aspect {0} is not a positive number")]
    Aspect(f32),
    #[error("xmag {xmag} and ymag {ymag} must be positive")]
    Mag { xmag: f32, ymag: f32 },
}

impl CameraDesc {
    pub fn from_camera(c: &Camera) -> CameraDesc {
        CameraDesc {
            name: c.name.clone(),
            projection: match c.projection {
                Projection::Perspective { yfov, aspect } => {
                    ProjectionDesc::Perspective { yfov, aspect }
                }
                Projection::Orthographic { xmag, ymag } => {
                    ProjectionDesc::Orthographic { xmag, ymag }
                }
            },
            position: c.position,
            right: c.right,
            up: c.up,
            forward: c.forward,
        }
    }

    pub fn to_camera(&self) -> Camera {
        Camera {
            name: self.name.clone(),
            projection: match self.projection {
                ProjectionDesc::Perspective { yfov, aspect } => {
                    Projection::Perspective { yfov, aspect }
                }
                ProjectionDesc::Orthographic { xmag, ymag } => {
                    Projection::Orthographic { xmag, ymag }
                }
            },
            position: self.position,
            right: self.right,
            up: self.up,
            forward: self.forward,
        }
    }

    fn check(&self) -> Result<(), CameraError> {
        if self.name.chars().count() > MAX_DISPLAY_NAME_CHARS {
            return Err(CameraError::LongName);
        }
        let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
        if !finite(&self.position) {
            return Err(CameraError::Position);
        }
        for (what, v) in [
            ("right", self.right),
            ("up", self.up),
            ("forward", self.forward),
        ] {
            let len = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
            if !finite(&v) || (len - 1.0).abs() > 1e-3 {
                return Err(CameraError::NotUnit { what, v });
            }
        }
        match self.projection {
            ProjectionDesc::Perspective { yfov, aspect } => {
                if !(yfov.is_finite() && yfov > 0.0 && yfov < std::f32::consts::PI) {
                    return Err(CameraError::Yfov(yfov));
                }
                if let Some(a) = aspect.filter(|a| !(a.is_finite() && *a > 0.0)) {
                    return Err(CameraError::Aspect(a));
                }
            }
            ProjectionDesc::Orthographic { xmag, ymag } => {
                if !(xmag.is_finite() && xmag > 0.0 && ymag.is_finite() && ymag > 0.0) {
                    return Err(CameraError::Mag { xmag, ymag });
                }
            }
        }
        Ok(())
    }
}

/// One frame: its scene, camera and output file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameDesc {
    /// The frame number (shown to users and used in output names only).
    pub frame: i64,
    /// The scene time the frame was posed at, in seconds (for users; the scene is posed).
    pub time_s: f32,
    pub scene: SceneRef,
    pub camera: CameraDesc,
    /// File name of the image inside `out_dir` (`.exr` or `.png`).
    pub output: String,
}

/// One part: every sample of one rectangle of one frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderPartDesc {
    /// `[a-z0-9_-]{1,64}`; the file is `parts/<name>.rfpart`.
    pub name: String,
    /// Index into `frames`.
    pub frame: usize,
    /// `[x0, y0, x1, y1]` in pixels.
    pub region: [u32; 4],
}

/// A render job (see the module docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderJobDesc {
    pub job_id: String,
    pub created_unix_ms: u64,
    pub name: String,
    pub render: RenderDesc,
    pub frames: Vec<FrameDesc>,
    pub parts: Vec<RenderPartDesc>,
    pub out_dir: String,
    pub manager: Option<String>,
}

impl RenderJobDesc {
    /// The settings frame `frame` is rendered with.
    pub fn settings(&self, frame: usize) -> Option<RenderSettings> {
        let f = self.frames.get(frame)?;
        let r = &self.render;
        Some(RenderSettings {
            width: r.width,
            height: r.height,
            spp: r.spp,
            max_bounces: r.max_bounces,
            seed: r.seed,
            camera: f.camera.to_camera(),
        })
    }

    pub fn image_settings(&self) -> ImageSettings {
        ImageSettings {
            half: self.render.half,
            exposure_ev: self.render.exposure_ev,
            tonemap: self.render.tonemap,
        }
    }

    /// Part `i` as the part files know it: layer 0, its rectangle.
    pub fn part_desc(&self, i: usize) -> Option<PartDesc> {
        let p = self.parts.get(i)?;
        Some(PartDesc {
            name: p.name.clone(),
            layer: 0,
            region: p.region,
            mesh: None,
        })
    }

    /// The indices of the parts of frame `frame`, in the job.desc's order.
    pub fn parts_of_frame(&self, frame: usize) -> Vec<usize> {
        (0..self.parts.len())
            .filter(|&i| self.parts[i].frame == frame)
            .collect()
    }

    /// The scene files the job's folder holds (each once).
    pub fn scene_files(&self) -> Vec<&str> {
        let mut seen = HashSet::new();
        self.frames
            .iter()
            .map(|f| f.scene.file.as_str())
            .filter(|f| seen.insert(*f))
            .collect()
    }

    /// Serialises the description (pretty-printed JSON, `format`, `version`, `kind` first).
    pub fn to_json(&self) -> String {
        tagged_json("render", self)
    }

    /// Validates the description and writes it atomically as `job_dir/job.desc`.
    /// Writes its MAC with `key` beside it (`job.desc.mac`).
    pub fn write(
        &self,
        job_dir: &Path,
        key: &rayfarm_proto::FarmKey,
    ) -> Result<PathBuf, DescError> {
        self.validate()?;
        write_desc_file(job_dir, &self.job_id, &self.to_json(), key)
    }

    /// Checks every rule of the format: names safe, numbers within limits, references
    /// resolve, each frame's image tiled exactly by its parts.
    pub fn validate(&self) -> Result<(), DescError> {
        check_job_id(&self.job_id).map_err(|e| invalid("job_id", reason_of(e)))?;
        check_display_name(&self.name)?;
        check_out_dir(&self.out_dir).map_err(|r| invalid("out_dir", r))?;
        if let Some(m) = &self.manager {
            check_manager(m).map_err(|r| invalid("manager", r.to_string()))?;
        }
        let r = &self.render;
        check_size(r.width, r.height).map_err(|e| invalid("render", e))?;
        if r.spp == 0 || r.spp > MAX_SPP {
            return Err(invalid(
                "render.spp",
                format!("{} is out of range (1 to {MAX_SPP})", r.spp),
            ));
        }
        if r.max_bounces > MAX_BOUNCES {
            return Err(invalid(
                "render.max_bounces",
                format!("{} is more than {MAX_BOUNCES}", r.max_bounces),
            ));
        }
        if !r.exposure_ev.is_finite() || r.exposure_ev.abs() > 64.0 {
            return Err(invalid(
                "render.exposure_ev",
                format!("{} is not between -64 and 64", r.exposure_ev),
            ));
        }
        if self.frames.is_empty() || self.frames.len() > MAX_FRAMES {
            return Err(invalid(
                "frames",
                format!(
                    "{} frames; a render job has 1 to {MAX_FRAMES}",
                    self.frames.len()
                ),
            ));
        }
        let mut outputs = HashSet::new();
        for (i, f) in self.frames.iter().enumerate() {
            let field = format!("frames[{i}]");
            validate_scene_ref(&format!("{field}.scene"), &f.scene)?;
            if !f.time_s.is_finite() {
                return Err(invalid(format!("{field}.time_s"), "not a finite number"));
            }
            f.camera
                .check()
                .map_err(|r| invalid(format!("{field}.camera"), r.to_string()))?;
            check_file_name(&f.output).map_err(|r| invalid(format!("{field}.output"), r))?;
            ImageFormat::of(Path::new(&f.output))
                .map_err(|r| invalid(format!("{field}.output"), r.to_string()))?;
            if !outputs.insert(f.output.to_ascii_lowercase()) {
                return Err(invalid(
                    format!("{field}.output"),
                    format!("{:?} is written by another frame too", f.output),
                ));
            }
            if self.frames.iter().any(|g| g.scene.file == f.output) {
                return Err(invalid(
                    format!("{field}.output"),
                    format!("{:?} is also a scene file's name", f.output),
                ));
            }
        }
        if self.parts.is_empty() || self.parts.len() > MAX_PARTS {
            return Err(invalid(
                "parts",
                format!("{} parts; a job has 1 to {MAX_PARTS}", self.parts.len()),
            ));
        }
        let mut names = HashSet::new();
        let mut rects: Vec<Vec<Region>> = vec![Vec::new(); self.frames.len()];
        for (i, p) in self.parts.iter().enumerate() {
            let field = format!("parts[{i}]");
            check_part_name(&p.name).map_err(|e| invalid(format!("{field}.name"), reason_of(e)))?;
            if !names.insert(p.name.as_str()) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("part {:?} is listed twice", p.name),
                ));
            }
            let Some(list) = rects.get_mut(p.frame) else {
                return Err(invalid(
                    format!("{field}.frame"),
                    format!(
                        "frame {} does not exist ({} frames)",
                        p.frame,
                        self.frames.len()
                    ),
                ));
            };
            list.push(crate::jobdesc::region_of(p.region));
        }
        let full = Region::full(r.width, r.height);
        for (fi, list) in rects.iter().enumerate() {
            check_tiling(full, list)
                .map_err(|e| invalid(format!("frames[{fi}]"), e.to_string()))?;
        }
        Ok(())
    }
}

/// A job.desc of either kind.
#[derive(Clone, Debug, PartialEq)]
pub enum AnyJobDesc {
    Bake(JobDesc),
    Render(RenderJobDesc),
}

impl AnyJobDesc {
    /// Parses a description of either kind (not yet validated).
    pub fn from_json(text: &str, path: &Path) -> Result<AnyJobDesc, DescError> {
        let (kind, v) = parse_tagged(text, path)?;
        let json = |e: serde_json::Error| DescError::Json {
            path: path.to_path_buf(),
            reason: e.to_string(),
        };
        Ok(match kind {
            JobKindTag::Bake => AnyJobDesc::Bake(serde_json::from_value(v).map_err(json)?),
            JobKindTag::Render => AnyJobDesc::Render(serde_json::from_value(v).map_err(json)?),
        })
    }

    /// Reads `NETDIR/<job-id>/job.desc` of either kind: at most
    /// [`crate::jobdesc::MAX_DESC_BYTES`], parsed, validated, and checked to lie in a folder
    /// named after its job id. Before it is parsed, its MAC (`job.desc.mac`) is checked with
    /// `key`, and neither file may be a symlink. Returns the seal that authenticates the job's
    /// parts ([`crate::parts`]).
    pub fn read(
        path: &Path,
        key: &rayfarm_proto::FarmKey,
    ) -> Result<(AnyJobDesc, crate::folder::JobSeal), DescError> {
        let (text, seal) = read_desc_text(path, key)?;
        let desc = AnyJobDesc::from_json(&text, path)?;
        desc.validate().map_err(|e| in_file(e, path))?;
        check_folder_name(&job_dir_of(path)?, desc.job_id(), path)?;
        Ok((desc, seal))
    }

    pub fn validate(&self) -> Result<(), DescError> {
        match self {
            AnyJobDesc::Bake(d) => d.validate(),
            AnyJobDesc::Render(d) => d.validate(),
        }
    }

    pub fn job_id(&self) -> &str {
        match self {
            AnyJobDesc::Bake(d) => &d.job_id,
            AnyJobDesc::Render(d) => &d.job_id,
        }
    }

    pub fn name(&self) -> &str {
        match self {
            AnyJobDesc::Bake(d) => &d.name,
            AnyJobDesc::Render(d) => &d.name,
        }
    }

    pub fn manager(&self) -> Option<&str> {
        match self {
            AnyJobDesc::Bake(d) => d.manager.as_deref(),
            AnyJobDesc::Render(d) => d.manager.as_deref(),
        }
    }

    pub fn out_dir(&self) -> &str {
        match self {
            AnyJobDesc::Bake(d) => &d.out_dir,
            AnyJobDesc::Render(d) => &d.out_dir,
        }
    }

    pub fn kind(&self) -> JobKindTag {
        match self {
            AnyJobDesc::Bake(_) => JobKindTag::Bake,
            AnyJobDesc::Render(_) => JobKindTag::Render,
        }
    }

    pub fn part_count(&self) -> usize {
        match self {
            AnyJobDesc::Bake(d) => d.parts.len(),
            AnyJobDesc::Render(d) => d.parts.len(),
        }
    }

    /// Part `i` as the part files know it, and the samples per pixel or texel it holds.
    pub fn part(&self, i: usize) -> Option<(PartDesc, u32)> {
        match self {
            AnyJobDesc::Bake(d) => {
                let p = d.parts.get(i)?;
                Some((p.clone(), d.layer_spp(p.layer)?))
            }
            AnyJobDesc::Render(d) => Some((d.part_desc(i)?, d.render.spp)),
        }
    }

    /// A short label of part `i` for people: the output or frame it belongs to.
    pub fn part_label(&self, i: usize) -> String {
        match self {
            AnyJobDesc::Bake(d) => {
                let Some(p) = d.parts.get(i) else {
                    return format!("part {i}");
                };
                let output = d
                    .outputs
                    .iter()
                    .find(|o| o.parts.contains(&p.name))
                    .map(|o| o.stem.as_str())
                    .unwrap_or("?");
                format!("{output} {}", p.name)
            }
            AnyJobDesc::Render(d) => {
                let Some(p) = d.parts.get(i) else {
                    return format!("part {i}");
                };
                let frame = d.frames.get(p.frame).map_or(0, |f| f.frame);
                let r = p.region;
                if d.parts_of_frame(p.frame).len() == 1 {
                    format!("frame {frame}")
                } else {
                    format!(
                        "frame {frame} tile {}x{}+{}+{}",
                        r[2] - r[0],
                        r[3] - r[1],
                        r[0],
                        r[1]
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn camera() -> CameraDesc {
        CameraDesc {
            name: "cam".into(),
            projection: ProjectionDesc::Perspective {
                yfov: 0.8,
                aspect: Some(1.5),
            },
            position: [0.0, 1.0, 5.0],
            right: [1.0, 0.0, 0.0],
            up: [0.0, 1.0, 0.0],
            forward: [0.0, 0.0, -1.0],
        }
    }

    pub(crate) fn desc(frames: usize, tiles_x: u32) -> RenderJobDesc {
        let (w, h) = (64, 32);
        let scene = SceneRef {
            file: format!("scene-{}.rfscene", "a".repeat(16)),
            blake3: "0".repeat(64),
            bytes: 100,
        };
        let mut parts = Vec::new();
        let step = w / tiles_x;
        for f in 0..frames {
            for t in 0..tiles_x {
                parts.push(RenderPartDesc {
                    name: format!("f{f:04}-t{t}"),
                    frame: f,
                    region: [t * step, 0, (t + 1) * step, h],
                });
            }
        }
        RenderJobDesc {
            job_id: "r123".into(),
            created_unix_ms: 1,
            name: "test".into(),
            render: RenderDesc {
                width: w,
                height: h,
                spp: 4,
                max_bounces: 3,
                seed: 7,
                exposure_ev: 0.0,
                tonemap: ToneMap::Aces,
                half: false,
            },
            frames: (0..frames)
                .map(|f| FrameDesc {
                    frame: f as i64 + 1,
                    time_s: f as f32 / 24.0,
                    scene: scene.clone(),
                    camera: camera(),
                    output: format!("shot_{:04}.png", f + 1),
                })
                .collect(),
            parts,
            out_dir: "/tmp/out".into(),
            manager: Some("127.0.0.1:3234".into()),
        }
    }

    #[test]
    fn a_render_desc_round_trips_through_json_and_validates() {
        let d = desc(3, 2);
        d.validate().unwrap();
        let text = d.to_json();
        assert!(text.contains("\"kind\": \"render\""), "{text}");
        let back = AnyJobDesc::from_json(&text, Path::new("job.desc")).unwrap();
        assert_eq!(back, AnyJobDesc::Render(d.clone()));
        // The bake reader refuses it plainly.
        let e = JobDesc::from_json(&text, Path::new("x/job.desc")).unwrap_err();
        assert!(e.to_string().contains("render job"), "{e}");
        assert_eq!(d.parts_of_frame(1), vec![2, 3]);
        assert_eq!(
            AnyJobDesc::Render(d.clone()).part_label(3),
            "frame 2 tile 32x32+32+0"
        );
        assert_eq!(d.scene_files().len(), 1);
        let cam = d.frames[0].camera.to_camera();
        assert_eq!(CameraDesc::from_camera(&cam), d.frames[0].camera);
    }

    #[test]
    fn bad_render_descs_are_refused_with_the_field_named() {
        let cases: Vec<(Box<dyn Fn(&mut RenderJobDesc)>, &str)> = vec![
            (
                Box::new(|d| d.parts.pop().map(|_| ()).unwrap()),
                "frames[2]",
            ),
            (Box::new(|d| d.parts[1].region = [0, 0, 32, 32]), "overlap"),
            (Box::new(|d| d.parts[0].frame = 9), "parts[0].frame"),
            (
                Box::new(|d| d.frames[1].output = "../x.png".into()),
                "frames[1].output",
            ),
            (
                Box::new(|d| d.frames[1].output = "x.jpg".into()),
                "unknown output format",
            ),
            (
                Box::new(|d| d.frames[2].output = d.frames[0].output.to_uppercase()),
                "another frame",
            ),
            (
                Box::new(|d| d.frames[0].scene.file = "job.desc".into()),
                "frames[0].scene.file",
            ),
            (
                Box::new(|d| d.frames[0].camera.forward = [0.0, 0.0, -2.0]),
                "forward",
            ),
            (
                Box::new(|d| {
                    d.frames[0].camera.projection = ProjectionDesc::Perspective {
                        yfov: f32::NAN,
                        aspect: None,
                    }
                }),
                "yfov",
            ),
            (Box::new(|d| d.render.spp = 0), "render.spp"),
            (Box::new(|d| d.render.width = 0), "render"),
            (Box::new(|d| d.job_id = "../x".into()), "job_id"),
            (
                Box::new(|d| d.parts[0].name = "A/B".into()),
                "parts[0].name",
            ),
            (Box::new(|d| d.frames.clear()), "frames"),
        ];
        for (f, want) in cases {
            let mut d = desc(3, 2);
            f(&mut d);
            let e = d.validate().unwrap_err().to_string();
            assert!(e.contains(want), "expected {want:?} in {e:?}");
        }
    }

    #[test]
    fn an_unknown_kind_is_refused() {
        let text = desc(1, 1)
            .to_json()
            .replace("\"kind\": \"render\"", "\"kind\": \"sculpt\"");
        let e = AnyJobDesc::from_json(&text, Path::new("job.desc")).unwrap_err();
        assert!(e.to_string().contains("field kind"), "{e}");
    }
}
