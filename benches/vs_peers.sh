#!/usr/bin/env bash
# Render efficiency beside peers: the Cornell box of ../shared/scenes/cornell-box rendered by
# rayfarm, Mitsuba 3 (LLVM backend, `independent` and `multijitter` samplers) and Blender Cycles
# (the `bpy` wheel, CPU) in one run, the renderers alternating. For each it prints the median
# seconds, the relMSE against a 4096-spp reference and the efficiency 1 / (relMSE x seconds),
# then the efficiency ratios (goals: rayfarm >= 2x Mitsuba's best sampler, >= 5x Cycles).
#   relMSE = mean over pixels and RGB channels of (x - r)^2 / (r^2 + 0.01)
# rayfarm is timed as a whole process (wall clock: start, scene loading, BVH, render, EXR
# write), which favours the peers: Mitsuba is timed on mi.render (+ eval/sync) alone after an
# untimed warm-up that fills its kernel cache, Cycles on the render call alone. How each peer
# is given our scene's conventions (Lambert, back faces shaded, light emitting from its front
# face only, 1-pixel box filter, bounces, Russian roulette) is in benches/vs_peers.py's header.
# The reference (Mitsuba, independent sampler, 4096 spp, ~5-8 min on 2 cores at 512x512) is
# made once and cached in $XDG_CACHE_HOME/rayfarm-bench/refs, keyed by scene and settings.
#
# Usage: bash benches/vs_peers.sh [options of benches/vs_peers.py]
#   defaults: 512x512, 8 bounces, 64 spp, 2 threads, --repeat 2
#   e.g. bash benches/vs_peers.sh --repeat 3 --json /tmp/peers.json
#        bash benches/vs_peers.sh --only rayfarm,mitsuba-mj --width 128 --height 128 --spp 16
#        bash benches/vs_peers.sh --cycles-spp 32           (Cycles at 32 spp; efficiency accounts for it)
#        bash benches/vs_peers.sh --rayfarm-bin old=/tmp/rayfarm-old --rayfarm-bin new=target/release/rayfarm
#        bash benches/vs_peers.sh --rayfarm-bin a=X --rayfarm-bin b=X --rayfarm-env b:RAYFARM_ISA=scalar
#        bash benches/vs_peers.sh --reference own    (each renderer against its own 4096-spp image)
#   glTF scenes with an environment map (--env): rayfarm beside Cycles only (Mitsuba 3 has no glTF
#   importer), each against its own converged image (default 1024 spp, cached like the others),
#   default 320x320; the scene's camera or rayfarm's automatic one, given to Cycles too, and the
#   map turned to rayfarm's orientation; a match check of the two converged images is printed
#   (camera and environment on the background pixels; per-region means). See vs_peers.py's header.
#        bash benches/vs_peers.sh --scene ../shared/scenes/water-bottle/glTF/WaterBottle.gltf \
#             --env ../shared/scenes/environments/chinese_garden_1k.hdr --out /tmp/wb
#   --only takes rayfarm (every build), rayfarm-LABEL, mitsuba, mitsuba-indep, mitsuba-mj, cycles.
#   --out DIR keeps the EXR files and the workers' logs; the peers keep their own Russian-roulette
#   defaults unless --peer-rr matched (then they start where rayfarm does).
# Run it on a quiet machine: it prints the load average at the start and the end.
# Environment:
#   RAYFARM          rayfarm binary to test when no --rayfarm-bin is given (default: build the
#                    release binary of this tree, niced)
#   CARGO_TARGET_DIR where cargo builds it (default: ./target)
#   XDG_CACHE_HOME   $XDG_CACHE_HOME/rayfarm-bench (default ~/.cache) holds the venv with
#                    mitsuba==3.9.1 and bpy==5.0.1 (venv/, shared with gltf_vs_cycles.sh; about
#                    1.2 GB; bpy needs python3.11) and the cached references (refs/)
#   Mitsuba's LLVM backend needs libLLVM: Debian's libllvm19 is installed with apt-get when
#   missing (as root), and DRJIT_LIBLLVM_PATH points Dr.Jit at it unless already set (not with
#   --env, which renders no Mitsuba image; Mitsuba's scalar variant still reads the EXR files).
set -euo pipefail
cd "$(dirname "$0")/.."
BPY_VERSION=5.0.1
MITSUBA_VERSION=3.9.1
LLVM_PKG=libllvm19
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/rayfarm-bench
# Sets VENV (= $CACHE/venv) and installs bpy there; mitsuba's wheels share its numpy.
. benches/bpy_venv.sh
if ! "$VENV/bin/python" -c "import mitsuba, sys; sys.exit(mitsuba.__version__ != '$MITSUBA_VERSION')" 2>/dev/null; then
  echo "installing mitsuba==$MITSUBA_VERSION into $VENV" >&2
  nice -n 19 "$VENV/bin/pip" install -q "mitsuba==$MITSUBA_VERSION"
fi

# libLLVM for Dr.Jit's LLVM backend (not needed by the --env mode: no Mitsuba renders).
find_llvm() { ldconfig -p 2>/dev/null | awk '/libLLVM(-19\.so|\.so\.19)/ {print $NF; exit}'; }
gltf_env=0
for a in "$@"; do
  case "$a" in --env|--env=*) gltf_env=1 ;; esac
done
if [ -z "${DRJIT_LIBLLVM_PATH:-}" ] && [ "$gltf_env" = 0 ]; then
  LLVM=$(find_llvm)
  if [ -z "$LLVM" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      echo "installing $LLVM_PKG (apt-get)" >&2
      nice -n 19 apt-get install -y -q "$LLVM_PKG" >/dev/null 2>&1 ||
        { nice -n 19 apt-get update -q >/dev/null && nice -n 19 apt-get install -y -q "$LLVM_PKG" >/dev/null; }
      LLVM=$(find_llvm)
    fi
    if [ -z "$LLVM" ]; then
      echo "error: no libLLVM 19 for Mitsuba's LLVM backend: install $LLVM_PKG (or set DRJIT_LIBLLVM_PATH)" >&2
      exit 2
    fi
  fi
  export DRJIT_LIBLLVM_PATH=$LLVM
fi

# rayfarm: --rayfarm-bin, else RAYFARM, else this tree's release build (skipped with an --only
# that names no rayfarm).
want_rayfarm=1
prev=
for a in "$@"; do
  case "$a" in --rayfarm-bin|--rayfarm-bin=*|-h|--help) want_rayfarm=0 ;; esac
  only=
  case "$a" in --only=*) only=${a#--only=} ;; esac
  [ "$prev" = --only ] && only=$a
  if [ -n "$only" ] && [[ ",$only," != *,rayfarm* ]]; then want_rayfarm=0; fi
  prev=$a
done
if [ "$want_rayfarm" = 1 ] && [ -z "${RAYFARM:-}" ]; then
  nice -n 19 cargo build --release -q --bin rayfarm
  RAYFARM=${CARGO_TARGET_DIR:-target}/release/rayfarm
fi
if [ -n "${RAYFARM:-}" ]; then
  if [ ! -x "$RAYFARM" ]; then
    echo "error: no rayfarm binary at $RAYFARM" >&2
    exit 2
  fi
  export RAYFARM
fi

# Everything (Python, the renderer workers it starts, rayfarm) runs niced.
exec nice -n 19 "$VENV/bin/python" benches/vs_peers.py "$@"
