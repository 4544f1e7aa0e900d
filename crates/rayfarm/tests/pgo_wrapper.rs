//! `pgo/rustc-wrapper`, which cargo runs instead of rustc for every crate
//! (`.cargo/config.toml`): it must add the profile to the two kernel crates only, only when the
//! profile fits the compiler's LLVM, and pass everything else through untouched. Run against a
//! stand-in "rustc" that records its arguments.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A copy of the wrapper beside a profile and an LLVM version of our choosing, and a fake
/// rustc that answers `-vV` with LLVM `llvm` and otherwise writes its arguments to `args.txt`.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(profile: bool, profile_llvm: &str, rustc_llvm: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let pgo = dir.path().join("pgo");
        std::fs::create_dir(&pgo).unwrap();
        std::fs::copy(repo().join("pgo/rustc-wrapper"), pgo.join("rustc-wrapper")).unwrap();
        if profile {
            std::fs::write(pgo.join("rayfarm.profdata"), b"profile").unwrap();
        }
        std::fs::write(pgo.join("LLVM_VERSION"), format!("{profile_llvm}\n")).unwrap();
        let rustc = dir.path().join("rustc");
        std::fs::write(
            &rustc,
            format!(
                "#!/bin/sh\nif [ \"$1\" = -vV ]; then\n  echo 'rustc 1.0.0'\n  \
                 echo 'LLVM version: {rustc_llvm}'\n  exit 0\nfi\n\
                 printf '%s\\n' \"$@\" > \"$(dirname \"$0\")/args.txt\"\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&rustc, std::fs::Permissions::from_mode(0o755)).unwrap();
        Setup { dir }
    }

    /// Runs the wrapper as cargo would, with `env`, and returns the arguments rustc got.
    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
        let _ = std::fs::remove_file(self.dir.path().join("args.txt"));
        let mut cmd = Command::new(self.dir.path().join("pgo/rustc-wrapper"));
        cmd.arg(self.dir.path().join("rustc")).args(args);
        cmd.env_remove("RAYFARM_PGO");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let status = cmd.status().unwrap();
        assert!(status.success(), "the wrapper failed: {status}");
        std::fs::read_to_string(self.dir.path().join("args.txt"))
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    }

    fn profile(&self) -> String {
        format!(
            "-Cprofile-use={}",
            self.dir
                .path()
                .canonicalize()
                .unwrap()
                .join("pgo/rayfarm.profdata")
                .display()
        )
    }
}

fn compile(krate: &str) -> Vec<String> {
    [
        "--crate-name",
        krate,
        "--edition=2021",
        "src/lib.rs",
        "-C",
        "opt-level=3",
    ]
    .map(String::from)
    .to_vec()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn the_kernels_get_the_profile_and_nothing_else_changes() {
    let s = Setup::new(true, "22", "22.1.2");
    for krate in ["rayfarm_render", "rayfarm_bake"] {
        let args = compile(krate);
        let got = s.run(&strs(&args), &[]);
        let mut want = args.clone();
        want.push(s.profile());
        assert_eq!(got, want, "{krate}");
    }
    // Other crates of the workspace, the program among them, and names that merely start alike.
    for krate in [
        "rayfarm",
        "rayfarm_scene",
        "rayfarm_render_extra",
        "build_script_build",
    ] {
        let args = compile(krate);
        assert_eq!(s.run(&strs(&args), &[]), args, "{krate}");
    }
    // Arguments with spaces and odd characters pass through as they are.
    let mut args = compile("rayfarm_render");
    args.push("--cfg=feature=\"a b\"".into());
    args.push("$HOME `x` *".into());
    let got = s.run(&strs(&args), &[]);
    assert_eq!(&got[..args.len()], &args[..]);
}

/// With the profile, the kernels compile without incremental compilation (its cached codegen
/// units, compiled with an earlier profile, would not link beside new ones); every other
/// argument stays, in order, and other crates keep theirs.
#[test]
fn the_kernels_compile_without_incremental_compilation_when_profiled() {
    let s = Setup::new(true, "22", "22.1.2");
    let mut args = compile("rayfarm_render");
    args.splice(
        2..2,
        [
            "-C",
            "incremental=/tmp/inc",
            "-Cincremental=/tmp/inc2",
            "-C",
            "debuginfo=2",
        ]
        .map(String::from),
    );
    args.push("-C".into());
    let got = s.run(&strs(&args), &[]);
    let mut want = compile("rayfarm_render");
    want.splice(2..2, ["-C", "debuginfo=2"].map(String::from));
    want.push("-C".into());
    want.push(s.profile());
    assert_eq!(got, want);
    // Other crates, and the kernels without the profile, keep incremental compilation.
    let mut other = compile("rayfarm_scene");
    other.splice(2..2, ["-C", "incremental=/tmp/inc"].map(String::from));
    assert_eq!(s.run(&strs(&other), &[]), other);
    let off = Setup::new(true, "21", "22.1.2");
    assert_eq!(off.run(&strs(&args), &[]), args);
}

#[test]
fn no_profile_when_llvm_differs_or_it_is_missing_or_turned_off() {
    let args = compile("rayfarm_render");
    // A profile written by another LLVM major version.
    let s = Setup::new(true, "21", "22.1.2");
    assert_eq!(s.run(&strs(&args), &[]), args);
    // No profile at all.
    let s = Setup::new(false, "22", "22.1.2");
    assert_eq!(s.run(&strs(&args), &[]), args);
    // Turned off.
    let s = Setup::new(true, "22", "22.1.2");
    assert_eq!(s.run(&strs(&args), &[("RAYFARM_PGO", "off")]), args);
}

#[test]
fn generate_instruments_the_kernels_and_the_program() {
    let s = Setup::new(true, "22", "22.1.2");
    let env = [("RAYFARM_PGO", "generate=/tmp/raw dir")];
    for krate in ["rayfarm_render", "rayfarm_bake", "rayfarm"] {
        let args = compile(krate);
        let mut want = args.clone();
        want.push("-Cprofile-generate=/tmp/raw dir".into());
        assert_eq!(s.run(&strs(&args), &env), want, "{krate}");
    }
    let args = compile("rayfarm_scene");
    assert_eq!(s.run(&strs(&args), &env), args);
}

#[test]
fn the_committed_profile_fits_its_recorded_llvm() {
    // The wrapper takes the profile only with the LLVM it names; a profile without a version,
    // or a version that is not a number, would silently never be used.
    let v = std::fs::read_to_string(repo().join("pgo/LLVM_VERSION")).unwrap();
    assert!(
        v.trim().parse::<u32>().is_ok(),
        "pgo/LLVM_VERSION holds {v:?}, not an LLVM major version"
    );
    let p = std::fs::read(repo().join("pgo/rayfarm.profdata")).unwrap();
    // An indexed LLVM profile starts with the magic bytes 0xff "lprofi" 0x81.
    assert_eq!(
        &p[..8],
        &[0xff, b'l', b'p', b'r', b'o', b'f', b'i', 0x81],
        "pgo/rayfarm.profdata is not an indexed LLVM profile"
    );
}
