//! The one atomic file writer: every file rayfarm writes whole (maps, images, parts, job.desc,
//! the compiled scene, the worker's scene cache, the daemon's config) goes through
//! [`write_atomic_with`], so a crash or a full disk never leaves a half-written file under
//! the real name.
//!
//! The bytes go to a fresh temporary file beside the target (created with `create_new`, so
//! nothing planted at that name, a symlink included, is ever followed), are synced, and the file
//! is renamed over the target; then the folder is synced (best effort) so the rename survives a
//! crash. On any error the temporary file is removed.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A file could not be written; names it.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot write: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Writes `bytes` to `path` atomically, readable by everyone the umask allows.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_mode(path, bytes, 0o666)
}

/// [`write_atomic`] with the file's permission bits (before the umask): `0o600` for a secret.
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), WriteError> {
    write_atomic_with(path, mode, |f| {
        f.write_all(bytes).map_err(|source| WriteError {
            path: path.to_path_buf(),
            source,
        })
    })
}

/// Creates a temporary file beside `path` with permission bits `mode`, lets `write` fill it,
/// syncs it and renames it over `path`. On any error the temporary file is removed.
pub fn write_atomic_with<E: From<WriteError>>(
    path: &Path,
    mode: u32,
    write: impl FnOnce(&mut File) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = temp_path(path);
    let io = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, mode);
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp).map_err(io)?;
    // A file replaced keeps its permission bits where they are stricter: a private (0600)
    // image rendered again stays private.
    #[cfg(unix)]
    if let Ok(old) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if old.is_file() {
            if let Ok(new) = f.metadata() {
                let bits = new.permissions().mode() & old.permissions().mode() & 0o7777;
                if bits != new.permissions().mode() & 0o7777 {
                    let _ = f.set_permissions(std::fs::Permissions::from_mode(bits));
                }
            }
        }
    }
    let r = write(&mut f).and_then(|()| {
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    });
    if let Err(e) = r {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_parent(path);
    Ok(())
}

/// A temporary name beside `path`: `.<name>.tmp.<pid>.<16 hex digits>`. Job-folder names are
/// kept short enough ([`crate::jobdesc::MAX_FILE_NAME_LEN`]) that this stays under the usual
/// 255-byte limit.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut r = [0u8; 8];
    // The random part only avoids clashes between writers; the time stands in if the OS has
    // no randomness to give.
    let rand = match getrandom::fill(&mut r) {
        Ok(()) => u64::from_le_bytes(r),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    path.with_file_name(format!(".{name}.tmp.{}.{rand:016x}", std::process::id()))
}

/// Syncs the folder holding `path` so a rename survives a crash. Best effort: not every
/// platform or network file system can sync a folder, and the file itself is already synced.
pub fn sync_parent(path: &Path) {
    #[cfg(unix)]
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rendering over a private file keeps it private (atomic writes made it 0644).
    #[test]
    fn a_file_replaced_keeps_stricter_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("private.png");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"old").unwrap();
        let r: Result<(), WriteError> = write_atomic_with(&p, 0o666, |_| {
            Err(WriteError {
                path: p.clone(),
                source: std::io::Error::other("disk full"),
            })
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "a temporary file is left: {names:?}");
    }

    #[cfg(unix)]
    #[test]
    fn a_secret_is_written_owner_only_and_a_planted_symlink_is_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("key");
        write_atomic_mode(&p, b"secret", 0o600).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A symlink at the target is replaced, never written through.
        let outside = dir.path().join("outside");
        std::fs::write(&outside, b"untouched").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&outside, &link).unwrap();
        write_atomic(&link, b"new").unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"untouched");
        assert!(!std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
    }
}
