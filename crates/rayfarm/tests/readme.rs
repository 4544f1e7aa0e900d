//! The README's two commands, checked as a newcomer on a fresh clone would run them.
//!
//! Regression test for "the README's first command fails on a fresh clone": `cargo run` at the
//! workspace root refused to choose between the `rayfarm` and `bvhbench` binaries. Building a
//! second (release) copy of the binary inside the test suite would cost minutes, so this test
//! checks the two halves separately: that cargo resolves the README's `cargo run` to the
//! `rayfarm` binary (the same rule cargo applies: an explicit `--bin`/`-p`, or exactly one
//! package with `default-run`), and that the arguments after `--` render, run from the
//! repository root exactly as written. `.ci/run` runs the second command as written.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// The shell commands inside the README's fenced `sh` blocks, in order.
fn readme_commands() -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("```") {
            in_sh = !in_sh && t.trim_start_matches('`').trim() == "sh";
            continue;
        }
        if in_sh && !t.is_empty() && !t.starts_with('#') {
            out.push(t.to_string());
        }
    }
    out
}

#[test]
fn the_first_command_is_a_local_render_and_the_second_runs_the_tests() {
    let cmds = readme_commands();
    assert!(cmds.len() >= 2, "README has fewer than two commands");
    assert!(
        cmds[0].starts_with("cargo run ") && cmds[0].contains(" -- render "),
        "the README's first command should render with cargo run: {}",
        cmds[0]
    );
    assert_eq!(cmds[1], "cargo test --workspace");
    let ci = std::fs::read_to_string(repo_root().join(".ci/run")).unwrap();
    assert!(
        ci.lines().any(|l| l.trim() == cmds[1]),
        ".ci/run must call the README's test command as written"
    );
}

#[test]
fn cargo_run_at_the_root_resolves_to_the_rayfarm_binary() {
    let cmds = readme_commands();
    let first = &cmds[0];
    let cargo_args = first.split(" -- ").next().unwrap();
    if cargo_args.contains("--bin rayfarm") || cargo_args.contains("-p rayfarm") {
        return;
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo metadata failed");
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let defaults: Vec<&str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["default_run"].as_str())
        .collect();
    let bins: Vec<&str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .filter(|t| t["kind"].as_array().unwrap().iter().any(|k| k == "bin"))
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        bins == ["rayfarm"] || defaults == ["rayfarm"],
        "`{first}` is ambiguous on a fresh clone: binaries {bins:?}, default-run {defaults:?}"
    );
}

#[test]
fn the_first_commands_arguments_render_from_the_repository_root() {
    let cmds = readme_commands();
    let args: Vec<&str> = cmds[0]
        .split(" -- ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    let dir = tempfile::tempdir().unwrap();
    // Same scene, same output type; only the output goes to a temporary folder and the
    // render is kept small so the test stays fast.
    let mut a: Vec<String> = Vec::new();
    let mut it = args.iter();
    while let Some(x) = it.next() {
        if *x == "-o" {
            let name = it.next().unwrap();
            a.push("-o".into());
            a.push(dir.path().join(name).to_string_lossy().into_owned());
        } else {
            a.push(x.to_string());
        }
    }
    a.extend(["--spp", "1", "--width", "32", "--height", "32", "--quiet"].map(String::from));
    let out = Command::new(env!("CARGO_BIN_EXE_rayfarm"))
        .args(&a)
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the README's first command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(written, 1, "the render wrote no image");
}
