#!/usr/bin/env bash
# Network rendering figures for BENCHMARKS.md (loopback only):
#  1. scaling: a local 1-thread render vs a master with --no-local and 1 or 2 hand-started
#     workers, each pinned to its own core with taskset;
#  2. cold vs cached scene: how long after the master starts a daemon-started worker renders.
# Usage: bash benches/network.sh   (builds release first)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p rayfarm
B=target/release/rayfarm
export RAYFARM_KEY=bench-farm-key-0123456789
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
ARGS=(--width 256 --height 256 --spp 128 --max-bounces 8)
secs() { sed -n 's/.* in \([0-9.]*\) s (.*/\1/p' "$1" | head -1; }

taskset -c 0 $B render "${ARGS[@]}" --threads 1 -o "$tmp/local.exr" > "$tmp/local.txt"
echo "local, 1 thread on core 0: $(secs "$tmp/local.txt") s"

# Plain units (32 px x 16 spp) and progressive ones (passes of 1, 1, 2, 4, 8, then 16 spp; what
# --view uses), alternating, so both see the same machine.
for n in 1 2; do
  for mode in plain progressive; do
    port=$((21500 + 2 * n))
    extra=()
    [ $mode = progressive ] && extra=(--progressive) && port=$((port + 1))
    # Workers first (they wait for their master), so the timing covers rendering, not start-up.
    for c in $(seq 0 $((n - 1))); do
      taskset -c $c $B worker --master 127.0.0.1:$port --threads 1 --cache-dir "$tmp/cache$c" 2>/dev/null &
    done
    taskset -c 0,1 $B render "${ARGS[@]}" "${extra[@]}" --network --no-local --master-bind 127.0.0.1 \
      --master-port $port -o "$tmp/net$n$mode.exr" > "$tmp/net$n$mode.txt" 2> "$tmp/net$n$mode.err"
    cmp -s "$tmp/local.exr" "$tmp/net$n$mode.exr" && same="identical bytes" || same="DIFFERENT BYTES"
    echo "$n worker(s), 1 thread each, pinned, $mode: $(secs "$tmp/net$n$mode.txt") s ($same)"
  done
done

# Cold vs cached: a daemon on 127.0.0.9 starts the worker; the first render ships the scene,
# the second finds it in the worker's cache. The water bottle (8.6 MB compiled) when the shared
# scenes are there, else the embedded Cornell box (1 KB).
SCENE=()
[ -f ../shared/scenes/water-bottle/glTF/WaterBottle.gltf ] && SCENE=(../shared/scenes/water-bottle/glTF/WaterBottle.gltf)
XDG_CACHE_HOME="$tmp/xdg" $B daemon --bind 127.0.0.9 --port 48000 --alias bench --threads 1 2> "$tmp/daemon.log" &
sleep 1.5
for run in cold cached; do
  RUST_LOG=info $B render "${SCENE[@]}" --width 128 --height 128 --spp 4 --network --no-local --daemon 127.0.0.9 \
    --master-bind 127.0.0.1 --master-port 21600 -o "$tmp/$run.exr" > /dev/null 2> "$tmp/$run.err"
  echo "$run: $(grep -o "ready after [0-9.]* s" "$tmp/$run.err" | head -1 || true); $(grep -o "rendering [0-9.]* s after the master started" "$tmp/$run.err" | head -1 || true)"
  sleep 1
done
