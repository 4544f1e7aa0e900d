//! Helpers shared by the end-to-end CLI tests: they run the real `rayfarm` binary.
#![allow(dead_code)] // each test file uses a different subset

pub mod farm;
pub mod net;
pub mod proc;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The outcome of one `rayfarm` run.
pub struct Run {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn describe(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    /// Asserts a successful run that did not panic.
    pub fn assert_ok(&self) -> &Self {
        assert!(self.success, "rayfarm failed: {}", self.describe());
        assert!(
            !self.stderr.contains("panicked"),
            "rayfarm panicked: {}",
            self.describe()
        );
        self
    }

    /// Asserts a clean failure: non-zero exit, no panic, and exactly one line on stderr, starting
    /// with `error:` and containing every string in `needles` (file name, the problem).
    pub fn assert_error(&self, needles: &[&str]) -> &Self {
        assert!(
            !self.success,
            "rayfarm should have failed: {}",
            self.describe()
        );
        assert!(
            !self.stderr.contains("panicked"),
            "rayfarm panicked instead of reporting an error: {}",
            self.describe()
        );
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one line on stderr: {}",
            self.describe()
        );
        assert!(
            lines[0].starts_with("error: "),
            "stderr should start with 'error: ': {}",
            self.describe()
        );
        for n in needles {
            assert!(
                lines[0].contains(n),
                "the error should mention '{n}': {}",
                self.describe()
            );
        }
        self
    }
}

/// Runs the `rayfarm` binary with `args`.
pub fn rayfarm<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    rayfarm_env(args, &[])
}

/// [`rayfarm`] with `env` added to its environment.
pub fn rayfarm_env<I, S>(args: I, env: &[(&str, &str)]) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_rayfarm"))
        .args(args)
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "0")
        .envs(env.iter().copied())
        .output()
        .expect("cannot start the rayfarm binary");
    Run {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Shorthand for building argument lists mixing `&str` and paths.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        vec![$(std::ffi::OsString::from($a)),*]
    };
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn example(name: &str) -> PathBuf {
    repo_root().join("examples/cornell-box").join(name)
}

/// The shared scene collection (outside the repository), or None when it is not there and
/// RAYFARM_REQUIRE_SHARED is not set.
pub fn shared_scenes() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/scenes");
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("RAYFARM_REQUIRE_SHARED").as_deref() == Ok("1") {
        panic!(
            "RAYFARM_REQUIRE_SHARED=1 but {} does not exist",
            dir.display()
        );
    }
    println!("notice: skipping, shared scenes not found");
    None
}

/// Packs a glTF JSON document and its binary buffer into a GLB (glTF binary container) as the
/// specification lays it out: a 12-byte header ('glTF', version 2, total length), a JSON chunk
/// padded with spaces to 4 bytes and a BIN chunk padded with zeros.
pub fn pack_glb(json: &[u8], bin: &[u8]) -> Vec<u8> {
    let pad = |n: usize| (4 - n % 4) % 4;
    let json_len = json.len() + pad(json.len());
    let bin_len = bin.len() + pad(bin.len());
    let total = 12 + 8 + json_len + 8 + bin_len;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(b"glTF");
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&(json_len as u32).to_le_bytes());
    out.extend_from_slice(b"JSON");
    out.extend_from_slice(json);
    out.extend(std::iter::repeat_n(b' ', pad(json.len())));
    out.extend_from_slice(&(bin_len as u32).to_le_bytes());
    out.extend_from_slice(b"BIN\0");
    out.extend_from_slice(bin);
    out.extend(std::iter::repeat_n(0u8, pad(bin.len())));
    assert_eq!(out.len(), total);
    out
}

/// The shipped Cornell box as a GLB: its buffer loses the `uri` and becomes the BIN chunk.
pub fn cornell_glb() -> Vec<u8> {
    let json = std::fs::read(example("cornell_box.gltf")).expect("read cornell_box.gltf");
    let bin = std::fs::read(example("cornell_box.bin")).expect("read cornell_box.bin");
    let mut doc: serde_json::Value =
        serde_json::from_slice(&json).expect("cornell_box.gltf is JSON");
    let buffers = doc["buffers"].as_array_mut().expect("buffers");
    assert_eq!(buffers.len(), 1, "the Cornell box has one buffer");
    buffers[0].as_object_mut().unwrap().remove("uri");
    pack_glb(&serde_json::to_vec(&doc).unwrap(), &bin)
}

/// Reads an EXR written by rayfarm into (width, height, linear RGB pixels).
pub fn read_exr(path: &Path) -> (usize, usize, Vec<[f32; 3]>) {
    let img = exr::prelude::read_first_rgba_layer_from_file(
        path,
        |res, _| {
            let (w, h) = (res.width(), res.height());
            (w, vec![[0f32; 3]; w * h])
        },
        |(w, px), pos, (r, g, b, _a): (f32, f32, f32, f32)| {
            px[pos.y() * *w + pos.x()] = [r, g, b];
        },
    )
    .unwrap_or_else(|e| panic!("{}: cannot read EXR: {e}", path.display()));
    let size = img.layer_data.size;
    (
        size.width(),
        size.height(),
        img.layer_data.channel_data.pixels.1,
    )
}

/// Mean RGB over the pixel rectangle `[x0, x1) x [y0, y1)`.
pub fn region_rgb(
    w: usize,
    px: &[[f32; 3]],
    x0: usize,
    x1: usize,
    y0: usize,
    y1: usize,
) -> [f64; 3] {
    let mut sum = [0.0f64; 3];
    let mut n = 0usize;
    for y in y0..y1 {
        for x in x0..x1 {
            for (s, v) in sum.iter_mut().zip(px[y * w + x]) {
                *s += v as f64;
            }
            n += 1;
        }
    }
    sum.map(|s| s / n.max(1) as f64)
}

/// Mean luminance-ish value (mean of the three channels) over the pixel rectangle
/// `[x0, x1) x [y0, y1)`.
pub fn region_mean(w: usize, px: &[[f32; 3]], x0: usize, x1: usize, y0: usize, y1: usize) -> f64 {
    let mut sum = 0.0f64;
    let mut n = 0usize;
    for y in y0..y1 {
        for x in x0..x1 {
            let p = px[y * w + x];
            sum += (p[0] as f64 + p[1] as f64 + p[2] as f64) / 3.0;
            n += 1;
        }
    }
    sum / n.max(1) as f64
}
