#!/usr/bin/env bash
# Same bytes on x86-64 and aarch64: builds `image_hash` (an example of rayfarm-render) for this
# machine and for aarch64, runs the aarch64 build under qemu-user, and compares the hashes of
# small renders of the shared scenes (BENCHMARKS.md, "Same bytes on every code path and
# architecture"). Exits non-zero when a pair differs.
#
# Usage: bash benches/cross_arch.sh
# Needs (installed here when missing, as root): the rustup target aarch64-unknown-linux-gnu,
# Debian's gcc-aarch64-linux-gnu, g++-aarch64-linux-gnu (the C/C++ of zstd, meshopt, basisu)
# and qemu-user. The aarch64 build goes to $ARM_TARGET_DIR (default target/aarch64-cross);
# the first one takes several minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
SCENES=${SCENES:-../shared/scenes}
ARM_TARGET_DIR=${ARM_TARGET_DIR:-target/aarch64-cross}
rustup target list --installed | grep -q aarch64-unknown-linux-gnu ||
  rustup target add aarch64-unknown-linux-gnu
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-g++ >/dev/null; then
  apt-get install -y gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user
fi
nice -n 19 cargo build --release -q --example image_hash -p rayfarm-render
CARGO_TARGET_DIR=$ARM_TARGET_DIR \
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
  CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc \
  CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++ \
  AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
  nice -n 19 cargo build --release -q --target aarch64-unknown-linux-gnu --example image_hash -p rayfarm-render
X86=${CARGO_TARGET_DIR:-target}/release/examples/image_hash
ARM=$ARM_TARGET_DIR/aarch64-unknown-linux-gnu/release/examples/image_hash
ENV_MAP=$SCENES/environments/chinese_garden_1k.hdr
status=0
while read -r scene env; do
  [ -f "$SCENES/$scene" ] || { echo "skipped (absent): $scene"; continue; }
  [ "$env" = sky ] || env=$ENV_MAP
  a=$("$X86" "$SCENES/$scene" 48 48 8 "$env")
  b=$(qemu-aarch64 -L /usr/aarch64-linux-gnu "$ARM" "$SCENES/$scene" 48 48 8 "$env")
  if [ "${a%% *}" = "${b%% *}" ]; then verdict=same; else verdict=DIFFERENT; status=1; fi
  echo "$scene: $a | ${b%% *} aarch64: $verdict"
done <<'LIST'
cornell-box/converted/cornell_box.gltf sky
water-bottle/glTF/WaterBottle.gltf env
metal-rough-spheres-no-textures/glTF/MetalRoughSpheresNoTextures.gltf env
multi-uv-test/glTF/MultiUVTest.gltf env
lights-punctual-lamp/glTF/LightsPunctualLamp.gltf sky
sponza-dabrovic-geometry/sponza.obj sky
LIST
exit $status
