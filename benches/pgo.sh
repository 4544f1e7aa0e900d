#!/usr/bin/env bash
# Makes pgo/rayfarm.profdata, the profile that `cargo build` compiles the renderer's kernels
# (rayfarm-render and rayfarm-bake) with (pgo/rustc-wrapper, .cargo/config.toml). Run it after
# changing those crates: a profile that no longer matches a function is ignored for it, so a
# stale profile costs speed, never correctness. PGO never changes an image's bytes.
#
# It builds the two crates instrumented (RAYFARM_PGO=generate=DIR, in target/pgo-generate),
# renders and bakes a training set on every code path this CPU runs (RAYFARM_ISA: a path that
# never ran gets no profile and is compiled as without one), merges the counts with the
# toolchain's llvm-profdata (`rustup component add llvm-tools`) and records the LLVM major
# version, which the wrapper checks. About 8 minutes on 2 cores.
#
# Usage: bash benches/pgo.sh [SHARED_SCENES_DIR]   (default ../shared/scenes; without it only
#        the shipped Cornell box trains, which leaves textures and environment maps cold)
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${1:-../shared/scenes}
sysroot=$(rustc --print sysroot)
host=$(rustc -vV | sed -n 's/^host: //p')
profdata=$sysroot/lib/rustlib/$host/bin/llvm-profdata
if [ ! -x "$profdata" ]; then
  echo "pgo.sh: $profdata not found: run \`rustup component add llvm-tools\` first" >&2
  exit 1
fi
raw=$(mktemp -d)
trap 'rm -rf "$raw"' EXIT
echo "building instrumented (target/pgo-generate) ..."
# rayfarm-render's build script rebuilds the kernels when RAYFARM_PGO changes; the program's does not.
cargo clean --release -p rayfarm --target-dir target/pgo-generate
RAYFARM_PGO=generate=$raw cargo build --release -p rayfarm --target-dir target/pgo-generate
bin=target/pgo-generate/release/rayfarm
out=$(mktemp -d)
trap 'rm -rf "$raw" "$out"' EXIT
for isa in scalar avx2 avx512; do
  if ! RAYFARM_ISA=$isa "$bin" render examples/cornell-box/cornell_box.gltf --width 8 --height 8 \
    --spp 1 -o "$out/probe.exr" --quiet 2>/dev/null; then
    continue # not a path this CPU runs
  fi
  echo "training the $isa path ..."
  run() { RAYFARM_ISA=$isa "$bin" "$@" --quiet; }
  run render examples/cornell-box/cornell_box.gltf --width 128 --height 128 --spp 32 -o "$out/c.exr"
  if [ -d "$shared" ]; then
    env=$shared/environments/chinese_garden_1k.hdr
    run render "$shared/water-bottle/glTF/WaterBottle.gltf" --env "$env" --width 128 --height 128 \
      --spp 32 -o "$out/w.exr"
    run render "$shared/metal-rough-spheres-no-textures/glTF/MetalRoughSpheresNoTextures.gltf" \
      --env "$env" --width 96 --height 96 --spp 16 -o "$out/m.exr"
    run render "$shared/multi-uv-test/glTF/MultiUVTest.gltf" --width 96 --height 96 --spp 16 \
      -o "$out/u.exr"
    run render "$shared/lights-punctual-lamp/glTF/LightsPunctualLamp.gltf" --width 96 --height 96 \
      --spp 16 -o "$out/l.exr"
    run bake "$shared/water-bottle/glTF/WaterBottle.gltf" --env "$env" --size 128 --spp 16 \
      --passes complete -o "$out/bake"
  fi
done
"$profdata" merge --sparse -o pgo/rayfarm.profdata "$raw"/*.profraw
rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p' >pgo/LLVM_VERSION
echo "wrote pgo/rayfarm.profdata ($(wc -c <pgo/rayfarm.profdata) bytes, LLVM $(cat pgo/LLVM_VERSION));"
echo "rebuild the two crates to use it: cargo clean -p rayfarm-render -p rayfarm-bake"
