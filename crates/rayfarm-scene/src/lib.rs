//! Scene import and the compiled scene.
//!
//! This crate owns everything between a file on disk and the render-ready [`CompiledScene`]:
//! the glTF 2.0 importer ([`gltf_import`], which decodes meshopt- and Draco-compressed
//! geometry and KTX2 textures, and can pose a file's animations at a time given in
//! [`LoadOptions`]), the OBJ + MTL importer ([`obj`]), environment maps
//! ([`env`]), the automatic camera ([`camera`]), the versioned, compressed, hashed binary form
//! that the network ships ([`blob`]) and the `.glb` writer for baked texture maps
//! ([`gltf_export`]). Decoding a blob must never panic or allocate what a header
//! merely claims: it is input from the network.

pub mod blob;
pub mod camera;
pub mod env;
pub mod gltf_export;
pub mod gltf_import;
pub mod obj;
pub mod shapes;
pub mod types;

pub use types::*;

use std::path::{Path, PathBuf};

/// Everything that can go wrong turning a file into a scene. Messages name the file and field.
#[derive(Debug, thiserror::Error)]
pub enum SceneError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file exists but its content is wrong; `what` says where and how.
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("{path}: unsupported file type (expected .gltf, .glb or .obj)")]
    UnknownFormat { path: PathBuf },
    #[error("compiled scene: {0}")]
    Blob(String),
}

impl SceneError {
    pub fn invalid(path: &Path, what: impl Into<String>) -> Self {
        SceneError::Invalid {
            path: path.to_path_buf(),
            what: what.into(),
        }
    }
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        SceneError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Non-fatal findings of an import (unsupported optional extensions, skipped primitives, ...),
/// each a full sentence a user can act on.
pub type Warnings = Vec<String>;

/// How to load a scene.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadOptions {
    /// Pose animated glTF nodes at this time, in seconds (None: the rest pose, animations ignored).
    ///
    /// All animations of the file apply at once, at this time on the file's own clock (not
    /// shifted to the start of [`animation_span`]); see [`gltf_import::load_with`]. OBJ files have
    /// no animations and ignore it.
    pub time_s: Option<f32>,
    /// Use the materials of this KHR_materials_variants variant (None: the default materials).
    /// An unknown name is an error listing the file's variants. OBJ files have no variants: any
    /// name is an error for them.
    pub variant: Option<String>,
    /// The most bytes the scene's textures may take decoded (as RGBA8), together. `None`:
    /// [`default_texture_memory`].
    pub texture_memory: Option<u64>,
}

/// The most bytes a scene's textures may take decoded by default: three quarters of this
/// machine's memory, and never less than [`gltf_import::MAX_SCENE_TEXTURE_BYTES`] (16 GiB).
/// A workstation with 128 GB takes 96 GB of textures; past the budget an import stops with
/// an error naming the texture that crossed it, instead of the process being killed for
/// memory.
pub fn default_texture_memory() -> u64 {
    let three_quarters = physical_memory().map_or(0, |m| m / 4 * 3);
    gltf_import::MAX_SCENE_TEXTURE_BYTES.max(three_quarters)
}

/// This machine's memory in bytes, where the platform says.
fn physical_memory() -> Option<u64> {
    #[cfg(unix)]
    {
        // SAFETY: sysconf reads a system value and has no preconditions.
        let (pages, page) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if pages > 0 && page > 0 {
            return (pages as u64).checked_mul(page as u64);
        }
    }
    None
}

/// Why the scene's textures, now `total` bytes decoded, are over `budget`, naming `what`.
pub(crate) fn texture_budget_problem(total: u64, budget: u64, what: &str) -> Option<String> {
    (total > budget).then(|| {
        format!(
            "{what}: the scene's textures take {} decoded, more than its texture budget of \
             {}; scale some down, or raise the budget (the rayfarm command reads \
             RAYFARM_TEXTURE_MEMORY, in GiB)",
            size_text(total),
            size_text(budget)
        )
    })
}

/// `bytes` for a person: "1.5 GiB", "24.0 MiB", "512 bytes".
fn size_text(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    UNITS
        .iter()
        .find(|(u, _)| bytes >= *u)
        .map(|(u, name)| format!("{:.1} {name}", bytes as f64 / *u as f64))
        .unwrap_or_else(|| format!("{bytes} bytes"))
}

/// Opens a scene file, or a file a scene names (buffers, images, MTL libraries, environment
/// maps), refusing anything but a regular file: a buffer URI of `/dev/zero` read until memory
/// ran out, and opening a named pipe waited for a writer forever. The open does not block (on
/// Unix), so a pipe is refused like a device.
pub fn open_regular_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NONBLOCK);
    }
    let file = o.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a device, a pipe or a directory): scenes and the files they \
             name must be regular files",
        ));
    }
    Ok(file)
}

/// Reads a regular file ([`open_regular_file`]), at most the length it has when opened.
pub fn read_regular_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let file = open_regular_file(path)?;
    let len = file.metadata()?.len();
    let mut bytes = Vec::with_capacity(len.min(1 << 30) as usize);
    file.take(len).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Loads a `.gltf`, `.glb` or `.obj` file into a compiled scene (without environment), in its
/// rest pose. The same as [`load_with`] with the default [`LoadOptions`].
pub fn load(path: &Path) -> Result<(CompiledScene, Warnings), SceneError> {
    load_with(path, &LoadOptions::default())
}

/// Loads a `.gltf`, `.glb` or `.obj` file into a compiled scene (without environment), posing
/// glTF animations as `opts` says. OBJ files ignore the time.
pub fn load_with(path: &Path, opts: &LoadOptions) -> Result<(CompiledScene, Warnings), SceneError> {
    let (scene, warnings) = match format(path)? {
        Format::Gltf => gltf_import::load_with(path, opts)?,
        Format::Obj => match &opts.variant {
            Some(v) => {
                return Err(SceneError::invalid(
                    path,
                    format!("no material variant named '{v}'; OBJ files have no variants"),
                ))
            }
            None => obj::load_with(path, opts)?,
        },
    };
    scene.validate().map_err(|e| SceneError::invalid(path, e))?;
    Ok((scene, warnings))
}

/// The time span `[start, end]` in seconds covered by the keyframes of all animations of a glTF
/// file (every channel's first and last input time, including morph-target channels that
/// rayfarm does not apply), or None when it has none. OBJ files have none.
pub fn animation_span(path: &Path) -> Result<Option<(f32, f32)>, SceneError> {
    match format(path)? {
        Format::Gltf => gltf_import::animation_span(path),
        Format::Obj => {
            // Nothing to read, but a missing file is still an error, as for glTF.
            std::fs::metadata(path).map_err(|e| SceneError::io(path, e))?;
            Ok(None)
        }
    }
}

/// The KHR_materials_variants variant names of a glTF file (empty for OBJ and for glTF files
/// without variants).
pub fn variants(path: &Path) -> Result<Vec<String>, SceneError> {
    match format(path)? {
        Format::Gltf => gltf_import::variants(path),
        Format::Obj => Ok(Vec::new()),
    }
}

enum Format {
    Gltf,
    Obj,
}

fn format(path: &Path) -> Result<Format, SceneError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "gltf" | "glb" => Ok(Format::Gltf),
        "obj" => Ok(Format::Obj),
        _ => Err(SceneError::UnknownFormat { path: path.into() }),
    }
}
