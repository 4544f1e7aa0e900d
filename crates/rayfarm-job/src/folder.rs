//! The trust boundary of a job folder in a network folder, which anyone on the LAN may be able
//! to write: which folders the manager serves at all ([`Roots`]), opening files inside a job
//! folder without following symlinks ([`open_nofollow`], [`check_real_dir`]), and the keyed
//! MACs that tell a job.desc or a part written with the farm key from anything else
//! ([`desc_mac`], [`JobSeal`]).
//!
//! This module must never follow a symlink inside a job folder, and never put the contents of
//! an unauthenticated file into an error message: a job.desc symlinked to some other file must
//! not turn the manager into a way to read that file.

use rayfarm_proto::FarmKey;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The sidecar holding a job.desc's MAC: 64 hex digits and a newline.
pub const DESC_MAC_FILE_NAME: &str = "job.desc.mac";

/// The name a job.desc's MAC binds (with the job id).
const DESC_MAC_NAME: &str = "job.desc";

/// Opens `path` for reading, refusing a symlink as the last component (`O_NOFOLLOW`: the open
/// fails with `ELOOP`, reported as "is a symbolic link").
pub fn open_nofollow(path: &Path) -> std::io::Result<File> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    }
    o.open(path).map_err(|e| {
        #[cfg(unix)]
        if e.raw_os_error() == Some(libc::ELOOP) {
            return symlink_error();
        }
        e
    })
}

fn symlink_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "it is a symbolic link, and rayfarm follows no symbolic link inside a job folder",
    )
}

/// Checks that `dir` is a directory itself, not a symlink to one.
pub fn check_real_dir(dir: &Path) -> std::io::Result<()> {
    let m = std::fs::symlink_metadata(dir)?;
    if m.file_type().is_symlink() {
        return Err(symlink_error());
    }
    if !m.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "it is not a folder",
        ));
    }
    Ok(())
}

/// Reads at most `max` bytes of a regular file inside a job folder, without following a
/// symlink. Returns `Ok(None)` when the file is larger than `max`.
pub fn read_nofollow(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let f = open_nofollow(path)?;
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
    let mut bytes = Vec::with_capacity(m.len() as usize);
    f.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > max {
        return Ok(None);
    }
    Ok(Some(bytes))
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
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RootError {
    #[error("job folder '{requested}' is not a folder inside {whose} network folders ({roots}); create the job inside one of them, or give {whose} --netdir the folder it lies in")]
    Outside {
        requested: String,
        roots: String,
        whose: &'static str,
    },
    #[error("the manager serves no network folder, so it takes no job folders; start it with --netdir NETWORK_FOLDER (repeatable)")]
    NoRoots,
}

impl Roots {
    /// Canonicalizes every root; a root that does not exist or is not a folder is an error
    /// (naming it) when the manager starts, not a surprise at the first submit.
    pub fn new(dirs: &[PathBuf]) -> Result<Roots, String> {
        Roots::new_for(dirs, "the manager's")
    }

    /// [`Roots::new`] for a node's worker (messages say "this node's").
    pub fn for_node(dirs: &[PathBuf]) -> Result<Roots, String> {
        Roots::new_for(dirs, "this node's")
    }

    fn new_for(dirs: &[PathBuf], whose: &'static str) -> Result<Roots, String> {
        let mut roots = Vec::new();
        for d in dirs {
            let c = std::fs::canonicalize(d)
                .map_err(|e| format!("network folder {}: {e}", d.display()))?;
            if !c.is_dir() {
                return Err(format!("network folder {}: not a folder", d.display()));
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
        assert_eq!(
            Roots::default().resolve(&farm).unwrap_err(),
            RootError::NoRoots
        );
        assert!(Roots::new(&[t.path().join("missing")]).is_err());
    }

    #[test]
    fn no_symlinks_followed() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("secret"), "s3cret").unwrap();
        std::os::unix::fs::symlink(t.path().join("secret"), t.path().join("link")).unwrap();
        std::os::unix::fs::symlink(t.path(), t.path().join("dirlink")).unwrap();
        let e = read_nofollow(&t.path().join("link"), 100).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(check_real_dir(&t.path().join("dirlink")).is_err());
        assert!(check_real_dir(&t.path().join("secret")).is_err());
        check_real_dir(t.path()).unwrap();
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
