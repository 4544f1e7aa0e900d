//! Part files: one finished part of a shared-folder job, as a node leaves it in
//! `NETDIR/<job-id>/parts/<name>.rfpart`.
//!
//! A part holds every sample of one rectangle of one layer ([`crate::jobdesc::PartDesc`]) as
//! the film's exact fixed-point sums, so merging parts gives the same bits as baking the layer
//! in one go. This module owns the file format; it never decides which parts a job has (that
//! is the job.desc's business) and never trusts a file: [`read_part`] checks the MAC, the
//! header against the job.desc, and decompresses no more than the job.desc's region can hold.
//! Neither `parts/` nor a part may be a symlink: a part is never read or written through one.
//!
//! # Format (version 2)
//!
//! Version 2 is version 1 with the trailing plain BLAKE3 checksum replaced by a keyed MAC
//! ([`crate::folder::JobSeal::part_mac`]): the farm key's folder MAC over (job id,
//! `parts/<name>.rfpart`, BLAKE3(BLAKE3 of the job.desc's bytes, then every preceding byte of
//! the part)). Without the farm key a part can neither be forged nor edited, nor carried over
//! from another job or from another job.desc of the same job id.
//!
//! All integers little endian.
//!
//! | offset   | size | field                                                       |
//! |----------|------|-------------------------------------------------------------|
//! | 0        | 8    | magic [`PART_MAGIC`] (`"RFPART\0\0"`)                       |
//! | 8        | 4    | format version, [`PART_VERSION`]                            |
//! | 12       | 4    | layer (index into the job.desc's `bake.layers`)             |
//! | 16       | 16   | region `x0, y0, x1, y1` (4 x u32, texels of the whole map)  |
//! | 32       | 4    | samples per texel the sums hold (the layer's spp; 1 for albedo and normal) |
//! | 36       | 8    | non-finite samples dropped while baking                     |
//! | 44       | n    | zstd frame: per texel, rows of the region top to bottom, three `i128` sums (R, G, B; 24 fractional bits, see `rayfarm_render::film`), 48 bytes a texel |
//! | 44 + n   | 32   | MAC of every preceding byte (see above)                     |
//!
//! A part is written under a hidden temporary name in `parts/`
//! (`.<name>.rfpart.tmp.<pid>.<random>`), synced, then renamed into place, so a reader sees a
//! whole part or none; two nodes finishing the same part write identical files, so the second
//! rename is harmless.

use crate::folder::JobSeal;
use crate::jobdesc::{check_part_name, JobDesc, PartDesc, PARTS_DIR};
use rayfarm_bake::{Film, WorkUnit};
use std::io::Read;
use std::path::{Path, PathBuf};

/// First eight bytes of every part file.
pub const PART_MAGIC: [u8; 8] = *b"RFPART\0\0";
/// The part format version this code writes and reads.
pub const PART_VERSION: u32 = 2;
/// Extension of part files.
pub const PART_EXT: &str = "rfpart";
/// Bytes before the compressed sums.
pub const HEADER_LEN: usize = 44;
/// Bytes of the trailing checksum.
pub const CHECKSUM_LEN: usize = 32;
/// Bytes of one texel's sums ([`rayfarm_proto::sums`]).
pub const TEXEL_BYTES: usize = rayfarm_proto::sums::TEXEL_BYTES;
/// zstd level of the sums: fast, and sums of mostly empty or smooth texels compress well.
const ZSTD_LEVEL: i32 = 3;

/// Why a part could not be written or read. Missing and corrupt are distinct, so a merge can
/// say which parts are still to come and which must be baked again.
#[derive(Debug, thiserror::Error)]
pub enum PartError {
    #[error("{}: part '{part}' has not been written yet", path.display())]
    Missing { part: String, path: PathBuf },
    #[error("{}: part '{part}' is corrupt: {reason}; it must be baked again", path.display())]
    Corrupt {
        part: String,
        path: PathBuf,
        reason: String,
    },
    #[error("{}: cannot read or write part '{part}': {source}", path.display())]
    Io {
        part: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("part name {name:?} is not allowed: {reason}")]
    BadName { name: String, reason: String },
    #[error("part '{part}': {reason}")]
    Mismatch { part: String, reason: String },
}

/// `job_dir/parts/<name>.rfpart`, after checking the part name.
pub fn part_path(job_dir: &Path, part: &PartDesc) -> Result<PathBuf, PartError> {
    check_part_name(&part.name).map_err(|e| PartError::BadName {
        name: part.name.clone(),
        reason: match e {
            crate::jobdesc::DescError::BadName { reason, .. } => reason,
            e => e.to_string(),
        },
    })?;
    Ok(job_dir
        .join(PARTS_DIR)
        .join(format!("{}.{PART_EXT}", part.name)))
}

/// The work units that bake `part` (layer `part.layer`, its region, every sample of its layer),
/// cut into tiles of `tile_px` and sample ranges of `samples_per_unit`. A node adds their
/// results into a film and hands it to [`write_part`].
pub fn part_units(
    desc: &JobDesc,
    part: &PartDesc,
    tile_px: u32,
    samples_per_unit: u32,
) -> Option<Vec<WorkUnit>> {
    let spp = desc.layer_spp(part.layer)?;
    Some(rayfarm_render::film::plan_region(
        part.layer as u32,
        part.region(),
        spp,
        tile_px,
        samples_per_unit,
    ))
}

/// Writes a part atomically: the sums of `part`'s region, taken from `film` (the part's own
/// film, or any film containing its region, e.g. the layer film `run_local` hands over), which
/// holds `spp` samples per texel. Creates `job_dir/parts/` if needed (`job_dir` must exist).
/// `parts/` must not be a symlink. Returns the file's MAC (`seal`'s, see the module docs).
pub fn write_part(
    job_dir: &Path,
    part: &PartDesc,
    film: &Film,
    spp: u32,
    seal: &JobSeal,
) -> Result<[u8; 32], PartError> {
    let path = part_path(job_dir, part)?;
    let region = part.region();
    let fr = film.region;
    if region.is_empty() || !fr.contains_rect(region.x0, region.y0, region.x1, region.y1) {
        return Err(PartError::Mismatch {
            part: part.name.clone(),
            reason: format!(
                "the film holds {:?}, which does not contain the part's region {:?}",
                crate::jobdesc::region_array(fr),
                part.region
            ),
        });
    }
    if spp == 0 {
        return Err(PartError::Mismatch {
            part: part.name.clone(),
            reason: "0 samples per texel".into(),
        });
    }
    let io = |source| PartError::Io {
        part: part.name.clone(),
        path: path.clone(),
        source,
    };
    // The job folder and its `parts/` are opened as handles, neither through a symlink, and
    // the part is written relative to the `parts/` handle: a `parts` planted or swapped in as a
    // symlink, even between the check and the write, cannot send the part elsewhere.
    let parts_dir = job_dir.join(PARTS_DIR);
    let parts = crate::folder::FolderHandle::open(job_dir)
        .and_then(|j| j.sub(PARTS_DIR, true))
        .map_err(|source| PartError::Io {
            part: part.name.clone(),
            path: parts_dir.clone(),
            source,
        })?;
    let mut bytes = Vec::with_capacity(HEADER_LEN + 1024);
    bytes.extend_from_slice(&PART_MAGIC);
    bytes.extend_from_slice(&PART_VERSION.to_le_bytes());
    bytes.extend_from_slice(&(part.layer as u32).to_le_bytes());
    for v in part.region {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    bytes.extend_from_slice(&spp.to_le_bytes());
    bytes.extend_from_slice(&film.nonfinite_samples.to_le_bytes());
    debug_assert_eq!(bytes.len(), HEADER_LEN);
    // Stream the sums through the compressor row by row: only the compressed part is held.
    let mut enc = rayfarm_proto::sums::SumsEncoder::new(bytes, ZSTD_LEVEL).map_err(io)?;
    let sums = film.sums();
    let fw = fr.width() as usize;
    for y in region.y0..region.y1 {
        let start = (y - fr.y0) as usize * fw + (region.x0 - fr.x0) as usize;
        enc.push(&sums[start..start + region.width() as usize])
            .map_err(io)?;
    }
    let mut bytes = enc.finish().map_err(io)?;
    let hash = seal.part_mac(&format!("{}.{PART_EXT}", part.name), &bytes);
    bytes.extend_from_slice(&hash);
    parts
        .write_atomic(&format!("{}.{PART_EXT}", part.name), &bytes)
        .map_err(io)?;
    Ok(hash)
}

/// Reads and checks a part against its description: the checksum, magic, version, layer,
/// region and `expected_spp` (the layer's samples per texel, [`JobDesc::layer_spp`]) must all
/// agree, and the sums must decompress to exactly the region's size. The MAC is checked with
/// `seal` before anything else is looked at; neither `parts/` nor the part may be a symlink.
/// Returns the part's film (its region only).
pub fn read_part(
    job_dir: &Path,
    part: &PartDesc,
    expected_spp: u32,
    seal: &JobSeal,
) -> Result<Film, PartError> {
    read_part_checked(job_dir, part, expected_spp, seal).map(|c| c.film)
}

/// A part read and checked by [`read_part_checked`].
pub struct CheckedPart {
    pub film: Film,
    /// Its trailer: the MAC that was checked.
    pub mac: [u8; 32],
    /// Its length in bytes.
    pub bytes: u64,
}

/// [`read_part`], also returning the MAC and length of the very bytes checked: a caller that
/// compares them with what a worker reported must not read the file again (it may have been
/// swapped in between).
pub fn read_part_checked(
    job_dir: &Path,
    part: &PartDesc,
    expected_spp: u32,
    seal: &JobSeal,
) -> Result<CheckedPart, PartError> {
    let path = part_path(job_dir, part)?;
    let corrupt = |reason: String| PartError::Corrupt {
        part: part.name.clone(),
        path: path.clone(),
        reason,
    };
    let io = |source: std::io::Error| PartError::Io {
        part: part.name.clone(),
        path: path.clone(),
        source,
    };
    let region = part.region();
    let texels = region.pixels() as u64;
    let raw_len = texels * TEXEL_BYTES as u64;
    // zstd never grows data by more than about 1/256 plus a few hundred bytes, so anything
    // larger than this is not a part of this region.
    let max_file = HEADER_LEN as u64 + CHECKSUM_LEN as u64 + raw_len + raw_len / 128 + 4096;
    let parts_dir = job_dir.join(PARTS_DIR);
    let parts = crate::folder::FolderHandle::open(job_dir).and_then(|j| j.sub(PARTS_DIR, false));
    let parts = match parts {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PartError::Missing {
                part: part.name.clone(),
                path: path.clone(),
            })
        }
        Err(source) => {
            return Err(PartError::Io {
                part: part.name.clone(),
                path: parts_dir,
                source,
            })
        }
        Ok(p) => p,
    };
    let f = match parts.open_file(&format!("{}.{PART_EXT}", part.name)) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PartError::Missing {
                part: part.name.clone(),
                path: path.clone(),
            })
        }
        Err(e) => return Err(io(e)),
    };
    let meta = f.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(corrupt("it is not a regular file".into()));
    }
    if meta.len() > max_file {
        return Err(corrupt(format!(
            "{} bytes, more than a part of region {:?} can be ({max_file})",
            meta.len(),
            part.region
        )));
    }
    let mut data = Vec::with_capacity(meta.len().min(max_file) as usize);
    f.take(max_file + 1).read_to_end(&mut data).map_err(io)?;
    if data.len() < HEADER_LEN + CHECKSUM_LEN {
        return Err(corrupt(format!(
            "truncated: {} bytes, fewer than a part's header and checksum",
            data.len()
        )));
    }
    let (body, sum) = data.split_at(data.len() - CHECKSUM_LEN);
    let mac: [u8; 32] = sum.try_into().expect("32 bytes");
    if !seal.verify_part(&format!("{}.{PART_EXT}", part.name), body, &mac) {
        return Err(corrupt(
            "its MAC does not match: it was damaged, not written by a node of this farm for this job.desc, or changed since; it must be baked again".into(),
        ));
    }
    let u32_at = |o: usize| u32::from_le_bytes(body[o..o + 4].try_into().expect("4 bytes"));
    if body[..8] != PART_MAGIC {
        return Err(corrupt("not a rayfarm part file (bad magic)".into()));
    }
    let version = u32_at(8);
    if version != PART_VERSION {
        return Err(corrupt(format!(
            "part format version {version}, but this rayfarm reads version {PART_VERSION}"
        )));
    }
    let layer = u32_at(12);
    if layer as usize != part.layer {
        return Err(corrupt(format!(
            "it holds layer {layer}, but job.desc says layer {}",
            part.layer
        )));
    }
    let got_region = [u32_at(16), u32_at(20), u32_at(24), u32_at(28)];
    if got_region != part.region {
        return Err(corrupt(format!(
            "it holds region {got_region:?}, but job.desc says {:?}",
            part.region
        )));
    }
    let spp = u32_at(32);
    if spp != expected_spp {
        return Err(corrupt(format!(
            "it holds {spp} samples per texel, but the layer takes {expected_spp}"
        )));
    }
    let nonfinite = u64::from_le_bytes(body[36..44].try_into().expect("8 bytes"));
    let sums = rayfarm_proto::sums::decode(&body[HEADER_LEN..], region.pixels())
        .map_err(|e| corrupt(e.to_string()))?;
    Ok(CheckedPart {
        film: Film::from_sums(region, sums, nonfinite),
        mac,
        bytes: data.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobdesc::tests::sample;
    use rayfarm_bake::Region;
    use std::io::Write;

    pub(crate) fn seal() -> JobSeal {
        let key = rayfarm_proto::FarmKey::from_secret("a test farm secret, long enough").unwrap();
        JobSeal::new(&key, "job-1", b"the job.desc")
    }

    fn film(region: Region, seed: i128) -> Film {
        let sums = (0..region.pixels() as i128)
            .map(|i| [i * seed, -i, (i * 7919) << 40])
            .collect();
        Film::from_sums(region, sums, 3)
    }

    #[test]
    fn round_trip_and_layer_films() {
        let dir = tempfile::tempdir().unwrap();
        let desc = sample();
        let part = &desc.parts[3];
        let f = film(part.region(), 5);
        let hash = write_part(dir.path(), part, &f, 16, &seal()).unwrap();
        let path = part_path(dir.path(), part).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[bytes.len() - 32..], &hash);
        assert_eq!(&bytes[..8], b"RFPART\0\0");
        let checked = read_part_checked(dir.path(), part, 16, &seal()).unwrap();
        assert_eq!(checked.mac, hash, "the MAC of the bytes checked");
        assert_eq!(checked.bytes, bytes.len() as u64);
        let back = read_part(dir.path(), part, 16, &seal()).unwrap();
        assert_eq!(back.region, f.region);
        assert_eq!(back.sums(), f.sums());
        assert_eq!(back.nonfinite_samples, 3);
        // Writing from a larger film stores just the part's rectangle, with the same bytes.
        let whole = Region::full(8, 8);
        let mut sums = vec![[0i128; 3]; 64];
        let r = part.region();
        for y in r.y0..r.y1 {
            for x in r.x0..r.x1 {
                let i = ((y - r.y0) * r.width() + (x - r.x0)) as usize;
                sums[(y * 8 + x) as usize] = f.sums()[i];
            }
        }
        let big = Film::from_sums(whole, sums, 3);
        assert_eq!(
            write_part(dir.path(), part, &big, 16, &seal()).unwrap(),
            hash
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        // Only the part itself is in parts/: no temporaries.
        assert_eq!(
            std::fs::read_dir(dir.path().join(PARTS_DIR))
                .unwrap()
                .count(),
            1
        );
        let units = part_units(&desc, part, 3, 5).unwrap();
        assert!(units.iter().all(|u| u.layer == 0 && u.sample_end <= 16));
        let samples: u64 = units.iter().map(|u| u.samples()).sum();
        assert_eq!(samples, 16 * 16);
    }

    #[test]
    fn missing_and_corrupt_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let desc = sample();
        let part = &desc.parts[0];
        assert!(matches!(
            read_part(dir.path(), part, 16, &seal()),
            Err(PartError::Missing { .. })
        ));
        write_part(dir.path(), part, &film(part.region(), 3), 16, &seal()).unwrap();
        let path = part_path(dir.path(), part).unwrap();
        let good = std::fs::read(&path).unwrap();
        let corrupt_reason = |bytes: &[u8], spp: u32, p: &PartDesc| -> String {
            std::fs::write(&path, bytes).unwrap();
            match read_part(dir.path(), p, spp, &seal()) {
                Err(PartError::Corrupt { reason, .. }) => reason,
                other => panic!("{other:?}"),
            }
        };
        for i in [0, 9, 20, HEADER_LEN + 3, good.len() - 40, good.len() - 1] {
            let mut b = good.clone();
            b[i] ^= 0x10;
            let r = corrupt_reason(&b, 16, part);
            assert!(r.contains("MAC"), "byte {i}: {r}");
        }
        assert!(corrupt_reason(&good[..good.len() - 1], 16, part).contains("MAC"));
        assert!(corrupt_reason(&good[..10], 16, part).contains("truncated"));
        assert!(corrupt_reason(&good, 4, part).contains("16 samples"));
        let mut other = part.clone();
        other.region = [0, 0, 4, 3];
        assert!(corrupt_reason(&good, 16, &other).contains("region"));
        let mut other = part.clone();
        other.layer = 1;
        assert!(corrupt_reason(&good, 16, &other).contains("layer 0"));
        // A well-formed file whose sums are one texel short: a valid MAC does not save it.
        let mut b = good[..HEADER_LEN].to_vec();
        b.extend(zstd::encode_all(&vec![0u8; 15 * TEXEL_BYTES][..], 3).unwrap());
        let h = seal().part_mac(&format!("{}.rfpart", part.name), &b);
        b.extend_from_slice(&h);
        assert!(corrupt_reason(&b, 16, part).contains("end before"));
        // ... or one texel long.
        let mut b = good[..HEADER_LEN].to_vec();
        b.extend(zstd::encode_all(&vec![0u8; 17 * TEXEL_BYTES][..], 3).unwrap());
        let h = seal().part_mac(&format!("{}.rfpart", part.name), &b);
        b.extend_from_slice(&h);
        assert!(corrupt_reason(&b, 16, part).contains("more than"));
        // A zip bomb: a few KiB that would expand to 1 GiB stop at the region's size.
        let mut b = good[..HEADER_LEN].to_vec();
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            enc.write_all(&zeros).unwrap();
        }
        b.extend(enc.finish().unwrap());
        assert!(b.len() < 1 << 20, "{}", b.len());
        let h = seal().part_mac(&format!("{}.rfpart", part.name), &b);
        b.extend_from_slice(&h);
        assert!(corrupt_reason(&b, 16, part).contains("more than"));
    }

    #[test]
    fn refuses_bad_names_and_films() {
        let dir = tempfile::tempdir().unwrap();
        let desc = sample();
        let mut p = desc.parts[0].clone();
        for n in ["../x", "a/b", ".h", "", "A"] {
            p.name = n.into();
            assert!(matches!(
                write_part(dir.path(), &p, &film(p.region(), 1), 1, &seal()),
                Err(PartError::BadName { .. })
            ));
            assert!(matches!(
                read_part(dir.path(), &p, 1, &seal()),
                Err(PartError::BadName { .. })
            ));
        }
        let p = &desc.parts[0];
        let e =
            write_part(dir.path(), p, &film(desc.parts[1].region(), 1), 1, &seal()).unwrap_err();
        assert!(matches!(e, PartError::Mismatch { .. }), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn parts_never_go_through_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("job-1");
        let elsewhere = t.path().join("elsewhere");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join(PARTS_DIR)).unwrap();
        let desc = sample();
        let part = &desc.parts[0];
        let e = write_part(&dir, part, &film(part.region(), 1), 16, &seal()).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        // A part written in a real parts/ and then reached through a symlinked one is refused.
        let real = t.path().join("real/job-1");
        std::fs::create_dir_all(&real).unwrap();
        write_part(&real, part, &film(part.region(), 1), 16, &seal()).unwrap();
        std::fs::remove_file(dir.join(PARTS_DIR)).unwrap();
        std::os::unix::fs::symlink(real.join(PARTS_DIR), dir.join(PARTS_DIR)).unwrap();
        let e = read_part(&dir, part, 16, &seal()).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        // ... and so is a part file that is itself a symlink.
        std::fs::remove_file(dir.join(PARTS_DIR)).unwrap();
        std::fs::create_dir(dir.join(PARTS_DIR)).unwrap();
        std::os::unix::fs::symlink(
            part_path(&real, part).unwrap(),
            part_path(&dir, part).unwrap(),
        )
        .unwrap();
        let e = read_part(&dir, part, 16, &seal()).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
    }
}
