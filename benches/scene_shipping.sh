#!/usr/bin/env bash
# Scene shipping end to end, two rayfarm builds side by side, alternating (loopback only):
# a master with --no-local ships a 24.6 MB compiled scene (a generated 700x700 grid, 978k
# triangles) to a hand-started worker with an empty cache; the master logs
# "scene sent (N bytes), ready after X s" (transfer, hash check, cache write, decode, BVH).
# Usage: bash benches/scene_shipping.sh OLD_RAYFARM NEW_RAYFARM
#   e.g. build the previous protocol's binary in a git worktree with its own --target-dir.
set -euo pipefail
OLD=$1; NEW=$2
tmp=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
python3 - "$tmp/grid.obj" <<'PY'
import random, sys
random.seed(1)
n = 700
with open(sys.argv[1], "w") as f:
    for j in range(n):
        for i in range(n):
            f.write("v %.6f %.6f %.6f\n" % (i / n * 4 - 2, random.random() * 0.05, j / n * 4 - 2))
    for j in range(n - 1):
        for i in range(n - 1):
            a = j * n + i + 1; b = a + 1; c = a + n; d = c + 1
            f.write("f %d %d %d\nf %d %d %d\n" % (a, c, b, b, c, d))
PY
export RAYFARM_KEY=ship-bench-farm-key-0123456789

for round in 1 2 3; do
  for v in old new; do
    B=$OLD; [ $v = new ] && B=$NEW
    off=0; [ $v = new ] && off=1; port=$((21700 + round * 10 + off))
    rm -rf "$tmp/cache"
    $B worker --master 127.0.0.1:$port --threads 1 --cache-dir "$tmp/cache" 2>/dev/null &
    w=$!
    RUST_LOG=info $B render "$tmp/grid.obj" --network --no-local --master-bind 127.0.0.1 --master-port $port \
      --width 32 --height 32 --spp 1 --max-bounces 0 -q -o "$tmp/out.exr" 2> "$tmp/m.err" > /dev/null
    echo "$v: $(grep -o 'scene sent ([0-9]* bytes), ready after [0-9.]* s' "$tmp/m.err" | head -1)"
    wait $w 2>/dev/null || true
  done
done

