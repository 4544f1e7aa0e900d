//! Scene import and the compiled scene.
//!
//! This crate owns everything between a file on disk and the render-ready [`CompiledScene`]:
//! the glTF 2.0 importer ([`gltf_import`]), the OBJ + MTL importer ([`obj`]), environment maps
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

/// Loads a `.gltf`, `.glb` or `.obj` file into a compiled scene (without environment).
pub fn load(path: &Path) -> Result<(CompiledScene, Warnings), SceneError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    let (scene, warnings) = match ext.as_str() {
        "gltf" | "glb" => gltf_import::load(path)?,
        "obj" => obj::load(path)?,
        _ => return Err(SceneError::UnknownFormat { path: path.into() }),
    };
    scene.validate().map_err(|e| SceneError::invalid(path, e))?;
    Ok((scene, warnings))
}
