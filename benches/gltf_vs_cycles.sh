#!/usr/bin/env bash
# glTF material extensions beside an independent renderer: each scene of benches/gltf_ext/
# (one per extension) is rendered by rayfarm and by Blender's Cycles (the `bpy` wheel, which
# imports the file with Blender's own glTF importer), and per-object mean colours are compared.
# Differences are reported, not judged: the exit status is non-zero only when something is
# missing or a render fails. The table goes into BENCHMARKS.md ("glTF extensions beside Cycles").
#
# Usage: bash benches/gltf_vs_cycles.sh [options of benches/gltf_vs_cycles.py]
#   e.g. bash benches/gltf_vs_cycles.sh --spp 256 --threads 2 --only base sheen
#        bash benches/gltf_vs_cycles.sh --only anisotropy --anisotropy gltf   (Cycles given the glTF lobe)
# Iridescence, dispersion and diffuse transmission, which Blender's importer drops, are given to
# Cycles by nodes the Python script builds from the file's JSON (see its add_unimported_extensions).
# Environment:
#   RAYFARM          rayfarm binary to test (default: build the release binary of this tree)
#   CARGO_TARGET_DIR where cargo builds it (default: ./target)
#   OUT              folder for the EXR files and rayfarm|Cycles PNGs (default: a temporary one)
#   XDG_CACHE_HOME   the venv with bpy is kept in $XDG_CACHE_HOME/rayfarm-bench/venv
#                    (default ~/.cache); the first run downloads the bpy wheel (about 1 GB installed)
set -euo pipefail
cd "$(dirname "$0")/.."
BPY_VERSION=5.0.1
# Sets VENV and installs bpy there.
. benches/bpy_venv.sh

if [ -z "${RAYFARM:-}" ]; then
  nice -n 19 cargo build --release -q --bin rayfarm
  RAYFARM=${CARGO_TARGET_DIR:-target}/release/rayfarm
fi
if [ ! -x "$RAYFARM" ]; then
  echo "error: no rayfarm binary at $RAYFARM" >&2
  exit 2
fi

if [ -z "${OUT:-}" ]; then
  OUT=$(mktemp -d)
  trap 'rm -rf "$OUT"' EXIT
fi
# The Python side runs Cycles in-process; nice it like the rayfarm renders it starts.
nice -n 19 "$VENV/bin/python" benches/gltf_vs_cycles.py --rayfarm "$RAYFARM" --scenes benches/gltf_ext \
  --out "$OUT" "$@"
