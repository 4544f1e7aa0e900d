//! The trust boundary of a job folder in a network folder, which anyone on the LAN may be able
//! to write: which folders the manager serves at all ([`Roots`]), opening files inside a job
//! folder through directory handles that follow no symlink ([`FolderHandle`]), and the keyed
//! MACs that tell a job.desc or a part written with the farm key from anything else
//! ([`desc_mac`], [`JobSeal`]).
//!
//! This module must never follow a symlink inside a job folder, and never put the contents of
//! an unauthenticated file into an error message: a job.desc symlinked to some other file must
//! not turn the manager into a way to read that file.

use rayfarm_proto::FarmKey;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The sidecar holding a job.desc's MAC: 64 hex digits and a newline.
pub const DESC_MAC_FILE_NAME: &str = "job.desc.mac";

/// The name a job.desc's MAC binds (with the job id).
const DESC_MAC_NAME: &str = "job.desc";

fn symlink_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "it is a symbolic link, and rayfarm follows no symbolic link inside a job folder",
    )
}

/// A folder inside a job folder (the job folder itself, or its `parts/`), opened once as a
/// directory handle (cap-std). Every file is then opened, created, renamed and removed relative
/// to the handle, by a single plain name, never following a symlink: swapping the folder (or a
/// parent of it) for a symlink after it was opened changes nothing, so no check-then-use race
/// is left between "it is a real folder" and the write. (cap-std resolves beneath the handle
/// with openat2's RESOLVE_BENEATH where Linux has it; the plain names used here never need
/// more than one component.)
pub struct FolderHandle {
    dir: cap_std::fs::Dir,
    path: PathBuf,
}

impl FolderHandle {
    /// Opens `path`, which must be a folder and not a symlink (`O_DIRECTORY | O_NOFOLLOW`).
    pub fn open(path: &Path) -> std::io::Result<FolderHandle> {
        let mut o = std::fs::OpenOptions::new();
        o.read(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            o.custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC);
        }
        let f = o.open(path).map_err(|e| nofollow_error(e, true))?;
        Ok(FolderHandle {
            dir: cap_std::fs::Dir::from_std_file(f),
            path: path.to_path_buf(),
        })
    }

    /// The sub-folder `name` (one plain name), not a symlink; created first when `create`.
    pub fn sub(&self, name: &str, create: bool) -> std::io::Result<FolderHandle> {
        use cap_fs_ext::DirExt;
        check_plain(name)?;
        if create {
            match self.dir.create_dir(name) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(e),
                _ => {}
            }
        }
        let dir = self.dir.open_dir_nofollow(name).map_err(|e| {
            // Refusing a symlinked folder gives ELOOP or ENOTDIR depending on the platform
            // and the way cap-std resolves: say which it is.
            let linked = self
                .dir
                .symlink_metadata(name)
                .is_ok_and(|m| m.file_type().is_symlink());
            if linked {
                symlink_error()
            } else {
                nofollow_error(e, true)
            }
        })?;
        Ok(FolderHandle {
            dir,
            path: self.path.join(name),
        })
    }

    /// Opens the absolute folder `path` one component at a time from `/`, refusing a symlink
    /// anywhere on the way: a path a client resolved with `canonicalize` opens only if no
    /// folder on it was replaced by a symlink since. The error names the component.
    pub fn open_without_symlinks(path: &Path) -> std::io::Result<FolderHandle> {
        use std::path::Component;
        let mut components = path.components();
        if components.next() != Some(Component::RootDir) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not an absolute path",
            ));
        }
        let mut dir = FolderHandle::open(Path::new("/"))?;
        for c in components {
            let Component::Normal(name) = c else {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a path with '.' or '..' in it",
                ));
            };
            let name = name.to_str().ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "a name that is not UTF-8")
            })?;
            dir = dir.sub(name, false).map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: {e}", dir.path.join(name).display()))
            })?;
        }
        Ok(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path that names this very folder whatever happens to its own path later: on Linux
    /// `/proc/self/fd/N` of the handle (`None` elsewhere, or where `/proc` is not mounted).
    pub fn fd_path(&self) -> Option<PathBuf> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let p = PathBuf::from(format!("/proc/self/fd/{}", self.dir.as_raw_fd()));
            if p.is_dir() {
                return Some(p);
            }
        }
        None
    }

    /// Opens the regular file `name` for reading, never through a symlink, and never anything
    /// else: a FIFO planted at a part's or the job.desc's name blocked the open itself (waiting
    /// for a writer that never came) and with it `rayfarm merge` and the manager's dispatch. So
    /// the open does not block (`O_NONBLOCK`, which a regular file's reads ignore), and anything
    /// but a regular file is refused before it is read.
    pub fn open_file(&self, name: &str) -> std::io::Result<std::fs::File> {
        use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
        check_plain(name)?;
        let mut o = cap_std::fs::OpenOptions::new();
        o.read(true).follow(FollowSymlinks::No);
        #[cfg(unix)]
        {
            use cap_std::fs::OpenOptionsExt;
            o.custom_flags(libc::O_NONBLOCK);
        }
        let f = self
            .dir
            .open_with(name, &o)
            .map_err(|e| nofollow_error(e, false))?;
        if !f.metadata()?.is_file() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "it is not a regular file",
            ));
        }
        Ok(f.into_std())
    }

    /// Reads at most `max` bytes of the regular file `name`; `Ok(None)` when it is larger.
    pub fn read(&self, name: &str, max: u64) -> std::io::Result<Option<Vec<u8>>> {
        read_bounded(self.open_file(name)?, max)
    }

    /// Writes `name` atomically inside this folder: a new temporary file (created, never
    /// opened through anything planted at its name), synced, renamed over `name` within the
    /// same handle, then the folder synced.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        use cap_fs_ext::{FollowSymlinks, OpenOptionsFollowExt};
        use std::io::Write;
        check_plain(name)?;
        let tmp = crate::fsutil::temp_path(Path::new(name));
        let tmp = tmp.to_string_lossy().into_owned();
        let mut o = cap_std::fs::OpenOptions::new();
        o.write(true).create_new(true).follow(FollowSymlinks::No);
        let mut f = self.dir.open_with(&tmp, &o)?;
        let r = f
            .write_all(bytes)
            .and_then(|()| f.sync_all())
            .and_then(|()| self.dir.rename(&tmp, &self.dir, name));
        if let Err(e) = r {
            let _ = self.dir.remove_file(&tmp);
            return Err(e);
        }
        // Best effort, as fsutil::sync_parent.
        if let Ok(d) = self.dir.open(".") {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Removes the file `name` (a symlink there is removed, never followed).
    pub fn remove_file(&self, name: &str) -> std::io::Result<()> {
        check_plain(name)?;
        self.dir.remove_file(name)
    }

    /// Removes the empty sub-folder `name` (never a symlink, never following one).
    pub fn remove_dir(&self, name: &str) -> std::io::Result<()> {
        check_plain(name)?;
        self.dir.remove_dir(name)
    }

    /// The names of all entries, whatever their kind.
    pub fn entry_names(&self) -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in self.dir.entries()? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        Ok(out)
    }

    /// The names of the entries that are regular files.
    pub fn file_names(&self) -> std::io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in self.dir.entries()? {
            let e = e?;
            if e.file_type()?.is_file() {
                out.push(e.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(out)
    }
}

/// One plain name: no separator, not `.` or `..`, not empty.
fn check_plain(name: &str) -> std::io::Result<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    Ok(())
}

/// Maps the errors an open refusing a symlink gives (`ELOOP`, and `ENOTDIR` for a folder
/// that is a symlink to a file) to one message.
fn nofollow_error(e: std::io::Error, folder: bool) -> std::io::Error {
    #[cfg(unix)]
    if e.raw_os_error() == Some(libc::ELOOP) {
        return symlink_error();
    }
    if folder && e.raw_os_error() == Some(libc::ENOTDIR) {
        return std::io::Error::new(std::io::ErrorKind::InvalidInput, "it is not a folder");
    }
    e
}

fn read_bounded(f: std::fs::File, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is not a regular file",
        ));
    }
    if m.len() > max {
        return Ok(None);
    }
    // The length may change once it was looked at (the file is still being written, or
    // swapped): never reserve more than `max`, and read at most one byte past it.
    let mut bytes = Vec::with_capacity(m.len().min(max).min(1 << 30) as usize);
    f.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Ok(None);
    }
    Ok(Some(bytes))
}

/// Reads at most `max` bytes of a regular file inside a job folder: its folder is opened as a
/// handle without following a symlink, then the file inside it, likewise
/// ([`FolderHandle`]). Returns `Ok(None)` when the file is larger than `max`.
pub fn read_nofollow(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file path",
        ));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    FolderHandle::open(dir)?.read(&name.to_string_lossy(), max)
}

/// The MAC of a job.desc's exact bytes in the job `job_id`.
pub fn desc_mac(key: &FarmKey, job_id: &str, desc_bytes: &[u8]) -> [u8; 32] {
    key.folder_mac(job_id, DESC_MAC_NAME, blake3::hash(desc_bytes).as_bytes())
}

/// Checks a job.desc's MAC in constant time.
pub fn verify_desc_mac(key: &FarmKey, job_id: &str, desc_bytes: &[u8], mac: &[u8; 32]) -> bool {
    key.verify_folder_mac(
        job_id,
        DESC_MAC_NAME,
        blake3::hash(desc_bytes).as_bytes(),
        mac,
    )
}

/// The text of a `job.desc.mac` file.
pub fn mac_file_text(mac: &[u8; 32]) -> String {
    format!("{}\n", hex::encode(mac))
}

/// Parses a `job.desc.mac` file (64 hex digits, optional trailing newline).
pub fn parse_mac_file(bytes: &[u8]) -> Option<[u8; 32]> {
    let text = std::str::from_utf8(bytes).ok()?.trim_end_matches('\n');
    let mut mac = [0u8; 32];
    hex::decode_to_slice(text, &mut mac).ok()?;
    Some(mac)
}

/// What authenticates the parts of one job: the farm key, the job id and the hash of the exact
/// job.desc they belong to. A part's MAC binds all three and its name, so a part cannot be
/// edited, renamed, or carried over from another job or from an earlier job.desc of the same
/// job id.
#[derive(Clone, Debug)]
pub struct JobSeal {
    key: FarmKey,
    job_id: String,
    desc_hash: [u8; 32],
}

impl JobSeal {
    /// The seal of the job `job_id` whose job.desc has these bytes.
    pub fn new(key: &FarmKey, job_id: &str, desc_bytes: &[u8]) -> JobSeal {
        JobSeal {
            key: key.clone(),
            job_id: job_id.to_string(),
            desc_hash: *blake3::hash(desc_bytes).as_bytes(),
        }
    }

    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    fn part_hash(&self, body: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(&self.desc_hash);
        h.update(body);
        *h.finalize().as_bytes()
    }

    /// The MAC of part `part_name` whose bytes before the MAC are `body`.
    pub fn part_mac(&self, part_name: &str, body: &[u8]) -> [u8; 32] {
        self.key.folder_mac(
            &self.job_id,
            &format!("parts/{part_name}"),
            &self.part_hash(body),
        )
    }

    /// Checks a part's MAC in constant time.
    pub fn verify_part(&self, part_name: &str, body: &[u8], mac: &[u8; 32]) -> bool {
        self.key.verify_folder_mac(
            &self.job_id,
            &format!("parts/{part_name}"),
            &self.part_hash(body),
            mac,
        )
    }

    /// The `merged` marker's text `body` (the lines before its MAC) with its MAC line after:
    /// the marker makes a merge skip to removing the job folder, so only a farm-key holder
    /// may write one (a hand-written marker made `rayfarm merge` delete a finished job's parts
    /// and report success without writing a map).
    pub fn sealed_marker(&self, body: &str) -> String {
        let mac = self.key.folder_mac(
            &self.job_id,
            crate::jobdesc::MERGED_MARKER,
            &self.part_hash(body.as_bytes()),
        );
        format!("{body}mac {}\n", hex::encode(mac))
    }

    /// The body of a `merged` marker whose MAC line checks out, or `None`.
    pub fn open_marker(&self, text: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(text).ok()?;
        let (body, last) = text.strip_suffix('\n')?.rsplit_once('\n')?;
        let body = format!("{body}\n");
        let mut mac = [0u8; 32];
        hex::decode_to_slice(last.strip_prefix("mac ")?, &mut mac).ok()?;
        self.key
            .verify_folder_mac(
                &self.job_id,
                crate::jobdesc::MERGED_MARKER,
                &self.part_hash(body.as_bytes()),
                &mac,
            )
            .then_some(body)
    }
}

/// The network folders a manager serves job folders from, canonicalized.
#[derive(Clone, Debug, Default)]
pub struct Roots {
    roots: Vec<PathBuf>,
    /// Whose folders these are, for messages: "the manager's" or "this node's".
    whose: &'static str,
}

/// Why a job folder was refused. One message whatever the reason, so that the API does not
/// tell a caller whether some path exists on the manager's machine.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("job folder '{requested}' is not a folder inside {whose} network folders ({roots}); create the job inside one of them, or give {whose} --netdir the folder it lies in")]
    Outside {
        requested: String,
        roots: String,
        whose: &'static str,
    },
    #[error("the manager serves no network folder, so it takes no job folders; start it with --netdir NETWORK_FOLDER (repeatable)")]
    NoRoots,
    /// A configured network folder cannot be opened (when the manager or worker starts).
    #[error("network folder {}: {reason}", path.display())]
    Unreadable {
        path: PathBuf,
        reason: std::io::Error,
    },
    /// A configured network folder is a file or something else, not a folder.
    #[error("network folder {}: not a folder", path.display())]
    NotAFolder { path: PathBuf },
}

impl Roots {
    /// Canonicalizes every root; a root that does not exist or is not a folder is an error
    /// (naming it) when the manager starts, not a surprise at the first submit.
    pub fn new(dirs: &[PathBuf]) -> Result<Roots, RootError> {
        Roots::new_for(dirs, "the manager's")
    }

    /// [`Roots::new`] for a node's worker (messages say "this node's").
    pub fn for_node(dirs: &[PathBuf]) -> Result<Roots, RootError> {
        Roots::new_for(dirs, "this node's")
    }

    fn new_for(dirs: &[PathBuf], whose: &'static str) -> Result<Roots, RootError> {
        let mut roots = Vec::new();
        for d in dirs {
            let c = std::fs::canonicalize(d).map_err(|reason| RootError::Unreadable {
                path: d.clone(),
                reason,
            })?;
            if !c.is_dir() {
                return Err(RootError::NotAFolder { path: d.clone() });
            }
            if !roots.contains(&c) {
                roots.push(c);
            }
        }
        Ok(Roots { roots, whose })
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    pub fn list(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The canonical path of `job_dir` if it is a folder strictly inside one of the roots.
    /// Compares whole path components (`Path::starts_with`), so `/farm2` is not inside `/farm`.
    pub fn resolve(&self, job_dir: &Path) -> Result<PathBuf, RootError> {
        if self.roots.is_empty() {
            return Err(RootError::NoRoots);
        }
        let outside = || RootError::Outside {
            whose: self.whose,
            requested: job_dir.display().to_string(),
            roots: self
                .roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        let c = std::fs::canonicalize(job_dir).map_err(|_| outside())?;
        if !c.is_dir() {
            return Err(outside());
        }
        if self.roots.iter().any(|r| c.starts_with(r) && &c != r) {
            Ok(c)
        } else {
            Err(outside())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The race a path check leaves open: `parts/` is swapped for a symlink after it was
    /// checked. Through the handle the write still lands in the real folder.
    #[test]
    fn a_folder_swapped_for_a_symlink_after_opening_is_not_followed() {
        let t = tempfile::tempdir().unwrap();
        let job = t.path().join("job-1");
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir_all(&job).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        let parts = FolderHandle::open(&job)
            .unwrap()
            .sub("parts", true)
            .unwrap();
        std::fs::rename(job.join("parts"), job.join("parts.real")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, job.join("parts")).unwrap();
        parts.write_atomic("p0.rfpart", b"part").unwrap();
        assert_eq!(
            std::fs::read(job.join("parts.real/p0.rfpart")).unwrap(),
            b"part"
        );
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        // Opening anew refuses the symlink, names it, and reads nothing through it.
        let e = FolderHandle::open(&job)
            .unwrap()
            .sub("parts", false)
            .err()
            .unwrap();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(FolderHandle::open(&job.join("parts")).is_err());
        // Names are single plain components.
        for bad in ["../x", "a/b", "..", ""] {
            assert!(parts.write_atomic(bad, b"x").is_err(), "{bad}");
            assert!(parts.open_file(bad).is_err(), "{bad}");
        }
        // A file that is a symlink is neither read nor written through.
        std::os::unix::fs::symlink(elsewhere.join("target"), job.join("parts.real/link")).unwrap();
        assert!(parts.read("link", 100).is_err());
        parts.write_atomic("link", b"new").unwrap();
        assert!(!elsewhere.join("target").exists());
    }

    fn key(s: &str) -> FarmKey {
        FarmKey::from_secret(s).unwrap()
    }

    #[test]
    fn roots_compare_components_and_say_the_same_for_every_refusal() {
        let t = tempfile::tempdir().unwrap();
        let farm = t.path().join("farm");
        let farm2 = t.path().join("farm2");
        std::fs::create_dir_all(farm.join("job-a")).unwrap();
        std::fs::create_dir_all(farm2.join("job-b")).unwrap();
        std::fs::write(farm.join("file"), "x").unwrap();
        std::os::unix::fs::symlink(farm2.join("job-b"), farm.join("link")).unwrap();
        let roots = Roots::new(std::slice::from_ref(&farm)).unwrap();
        let cf = std::fs::canonicalize(&farm).unwrap();
        assert_eq!(
            roots.resolve(&farm.join("job-a")).unwrap(),
            cf.join("job-a")
        );
        let msg = |p: &Path| match roots.resolve(p).unwrap_err() {
            RootError::Outside { roots, .. } => roots,
            e => panic!("{e}"),
        };
        // Outside, a sibling with the root's name as a string prefix, a symlink out, the root
        // itself, a missing folder, a file: one message.
        for p in [
            farm2.join("job-b"),
            farm.join("link"),
            farm.clone(),
            farm.join("nope"),
            farm.join("file"),
            farm.join("job-a/../../farm2/job-b"),
        ] {
            assert_eq!(msg(&p), cf.display().to_string(), "{}", p.display());
        }
        assert!(matches!(
            Roots::default().resolve(&farm).unwrap_err(),
            RootError::NoRoots
        ));
        assert!(matches!(
            Roots::new(&[t.path().join("missing")]),
            Err(RootError::Unreadable { .. })
        ));
        assert!(matches!(
            Roots::new(&[farm.join("file")]),
            Err(RootError::NotAFolder { .. })
        ));
    }

    #[test]
    fn no_symlinks_followed() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("secret"), "s3cret").unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), t.path().join("link")).unwrap();
        std::os::unix::fs::symlink(t.path(), t.path().join("dirlink")).unwrap();
        let e = read_nofollow(&t.path().join("link"), 100).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(FolderHandle::open(&t.path().join("dirlink")).is_err());
        assert!(FolderHandle::open(&t.path().join("secret")).is_err());
        FolderHandle::open(t.path()).unwrap();
        // Through a symlinked folder nothing is read.
        assert!(read_nofollow(&t.path().join("dirlink/secret"), 100).is_err());
        assert_eq!(
            read_nofollow(&t.path().join("secret"), 100).unwrap(),
            Some(b"s3cret".to_vec())
        );
        assert_eq!(read_nofollow(&t.path().join("secret"), 3).unwrap(), None);
        // No limit at all must not overflow (the manager reads a whole part this way).
        assert_eq!(
            read_nofollow(&t.path().join("secret"), u64::MAX).unwrap(),
            Some(b"s3cret".to_vec())
        );
    }

    #[test]
    fn macs_bind_key_job_name_and_desc() {
        let k = key("a farm secret of enough length");
        let other = key("another farm secret of length");
        let m = desc_mac(&k, "job-1", b"{}");
        assert!(verify_desc_mac(&k, "job-1", b"{}", &m));
        assert!(!verify_desc_mac(&k, "job-2", b"{}", &m));
        assert!(!verify_desc_mac(&k, "job-1", b"{ }", &m));
        assert!(!verify_desc_mac(&other, "job-1", b"{}", &m));
        assert_eq!(parse_mac_file(mac_file_text(&m).as_bytes()), Some(m));
        assert_eq!(parse_mac_file(b"zz"), None);
        let s = JobSeal::new(&k, "job-1", b"desc");
        let pm = s.part_mac("p0.rfpart", b"body");
        assert!(s.verify_part("p0.rfpart", b"body", &pm));
        assert!(!s.verify_part("p1.rfpart", b"body", &pm));
        assert!(!s.verify_part("p0.rfpart", b"bodY", &pm));
        assert!(!JobSeal::new(&k, "job-2", b"desc").verify_part("p0.rfpart", b"body", &pm));
        assert!(!JobSeal::new(&k, "job-1", b"desc2").verify_part("p0.rfpart", b"body", &pm));
    }
}
