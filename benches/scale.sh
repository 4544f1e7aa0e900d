#!/usr/bin/env bash
# Scale measurements for issue 15, from scratch, into one JSON file for benches/scale_model.py:
#  1. node speed: `rayfarm bench` at 2 threads (the model's node is 2 threads of this machine);
#  2. per-result costs: the unit_codec example (bytes and master CPU per result, single and
#     joined);
#  3. scene shipping on loopback: a master with --no-local and N hand-started workers with
#     empty caches; when is the last one ready, how many bytes did the master send (and one
#     worker with a warm cache: the load time alone);
#  4. the same in network namespaces: one for the master, one per worker, veth pairs to a
#     bridge in a namespace of its own, every veth shaped with tbf (both directions) to each
#     rate in RATES, addresses 10.201.0.0/24 that exist only inside them; a raw TCP goodput
#     check per rate; skipped with a notice where `ip netns add` or tc fails;
#  5. end to end: a real render on loopback with 2 workers; the bytes the master received
#     (ss), its CPU time, and its results line when it prints one.
# Everything it creates (processes, namespaces, files) is removed on exit, failure included.
# The mechanics of one measurement are in benches/scale_measure.py (read its docstring).
#
# Usage: bash benches/scale.sh [RAYFARM_BINARY ...]
#   Without a binary it builds (`cargo build --release -p rayfarm` and the unit_codec example)
#   and measures target/release/rayfarm. Given binaries it builds nothing; several binaries
#   are measured alternately, step by step (e.g. before and after a change).
#   Needs root (or CAP_NET_ADMIN + CAP_SYS_ADMIN) for step 4 only.
# Environment, with defaults:
#   SCENE_KIND=texture   texture: a quad with a SCENE_MB noise texture (loads in milliseconds,
#                        so readiness is shipping); grid: the random-height mesh of
#                        scene_shipping.sh at SCENE_MB (decode and BVH count too)
#   SCENE_MB=32          compiled scene size in MB (the issue's scene: 133)
#   LOOPBACK_N="1 2 4 8 16"   worker counts on loopback ("" skips)
#   NETNS_N="1 2 4 8 16"      worker counts in namespaces, up to 64 ("" skips step 4);
#                             NETNS_N_<rate> for one rate only, e.g. NETNS_N_100="1 2 4 8 16 32 64"
#   RATES="1000 100"          link rates in Mbit/s for step 4
#   E2E_ARGS="--width 256 --height 256 --spp 256 --max-bounces 8"   ("" skips step 5)
#   UNIT_CODEC=<dir of the first binary>/examples/unit_codec   ("" or missing skips step 2)
#   OUT=/tmp/rayfarm-scale-<date>.json   PORT_BASE=22100
# Memory: each worker holds the scene about 4 times (SCENE_MB x N x 4); ship measurements that
# would not fit in 80% of MemAvailable are skipped with a notice.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
measure=(python3 "$here/scale_measure.py")

SCENE_KIND=${SCENE_KIND:-texture}
SCENE_MB=${SCENE_MB:-32}
LOOPBACK_N=${LOOPBACK_N-1 2 4 8 16}
NETNS_N=${NETNS_N-1 2 4 8 16}
RATES=${RATES-1000 100}
E2E_ARGS=${E2E_ARGS---width 256 --height 256 --spp 256 --max-bounces 8}
PORT_BASE=${PORT_BASE:-22100}
stamp=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-/tmp/rayfarm-scale-$stamp.json}

# Worker counts at one rate: NETNS_N_<rate> when set (e.g. NETNS_N_100="1 2 4 8 16 32 64"),
# else NETNS_N.
netns_n() { local v=NETNS_N_$1; echo "${!v-$NETNS_N}"; }
all_netns_n="$NETNS_N $(for rate in $RATES; do netns_n "$rate"; done)"
for n in $all_netns_n; do
  if [ "$n" -gt 64 ]; then echo "scale: namespace worker counts go up to 64 (addresses 10.201.0.11-74)" >&2; exit 2; fi
done

BINS=()
source_commit=
if [ $# -eq 0 ]; then
  (cd "$root" && cargo build --release -q -p rayfarm --bin rayfarm \
    && cargo build --release -q -p rayfarm-master --example unit_codec)
  BINS=("${CARGO_TARGET_DIR:-$root/target}/release/rayfarm")
  source_commit=$(git -C "$root" rev-parse HEAD 2>/dev/null || true)
else
  for b in "$@"; do
    [ -x "$b" ] || { echo "scale: $b is not an executable rayfarm binary" >&2; exit 2; }
    BINS+=("$(cd "$(dirname "$b")" && pwd)/$(basename "$b")")
  done
fi
UNIT_CODEC=${UNIT_CODEC-$(dirname "${BINS[0]}")/examples/unit_codec}

tmp=$(mktemp -d /tmp/rayfarm-scale.XXXXXX)
parts=$tmp/parts.jsonl
: > "$parts"
P=rfs$$           # prefix of every namespace this run creates
NSB=$P-br NSM=$P-m
MASTER_IP=10.201.0.1
child=

netns_down() {
  local ns pid
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$P-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null || true); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}
cleanup() {
  local rc=$?
  if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; wait "$child" 2>/dev/null || true; fi
  netns_down
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

notice() {
  echo "scale: $*" >&2
  python3 -c 'import json, sys; print(json.dumps({"kind": "notice", "text": sys.argv[1]}))' "$*" >> "$parts"
}
# One measurement step in the background, so a signal reaches the trap at once.
step() {
  local rc=0
  "${measure[@]}" "$@" >> "$parts" &
  child=$!
  wait "$child" || rc=$?
  child=
  return "$rc"
}
port=$PORT_BASE
next_port() { port=$((port + 1)); }
last() { tail -n 1 "$parts"; }
show() { "${measure[@]}" show "$(last)" || true; }

bin_meta() {
  local b
  for b in "${BINS[@]}"; do
    printf '%s\t%s\n' "$b" "$("$b" --version 2>/dev/null | head -1)"
  done
}

echo "scale: binaries: ${BINS[*]}; work dir $tmp" >&2
"${measure[@]}" scene --kind "$SCENE_KIND" --mb "$SCENE_MB" --dir "$tmp/scene" >> "$parts"
scene=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["path"])' "$(last)")
scene_bytes=$(python3 -c "print(int($SCENE_MB * 1e6))")
load_start=$(cut -d' ' -f1-3 /proc/loadavg)

# 1, 2: node speed, per-result costs.
for b in "${BINS[@]}"; do
  step bench --bin "$b" --threads 2 && show || notice "rayfarm bench failed for $b"
done
if [ -n "$UNIT_CODEC" ] && [ -x "$UNIT_CODEC" ]; then
  step codec --unit-codec "$UNIT_CODEC" || notice "unit_codec failed"
else
  notice "no unit_codec binary at '${UNIT_CODEC}' (build it: cargo build --release -p rayfarm-master --example unit_codec, or set UNIT_CODEC); per-result costs not measured"
fi

# 3: loopback.
ship() {  # label rate timeout_s n [extra args]
  local label=$1 rate=$2 timeout=$3 n=$4 b i
  shift 4
  i=0
  for b in "${BINS[@]}"; do
    i=$((i + 1))
    next_port
    step ship --bin "$b" --scene "$scene" --n "$n" --port "$port" --label "$label" \
      --work "$tmp/run$i" --timeout "$timeout" --scene-bytes-hint "$scene_bytes" \
      ${rate:+--rate-mbit "$rate"} "$@" && show || notice "ship $label N=$n failed for $b"
  done
}
for n in $LOOPBACK_N; do
  ship loopback "" $((60 + 5 * n)) "$n"
done
if [ -n "$LOOPBACK_N" ]; then
  # The load time alone: one worker whose cache already holds the scene (from the N=1 run).
  i=0
  for b in "${BINS[@]}"; do
    i=$((i + 1))
    next_port
    step ship --bin "$b" --scene "$scene" --n 1 --port "$port" --label cached --warm-cache \
      --work "$tmp/run$i" --timeout 60 --scene-bytes-hint "$scene_bytes" \
      && show || notice "cached ship failed for $b"
  done
fi

# 4: namespaces.
maxn=0
for n in $all_netns_n; do [ "$n" -gt "$maxn" ] && maxn=$n; done
# Every command is checked (`|| return 1`): these run inside `if`, where set -e does not act.
add_leaf() {  # namespace, bridge-side veth name, address
  ip netns add "$1" || return 1
  ip -n "$1" link set lo up || return 1
  ip -n "$NSB" link add name "$2" type veth peer name eth0 netns "$1" || return 1
  ip -n "$NSB" link set "$2" master br0 up || return 1
  ip -n "$1" addr add "$3/24" dev eth0 || return 1
  ip -n "$1" link set eth0 up || return 1
}
netns_up() {
  local k
  ip netns add "$NSB" || return 1
  ip -n "$NSB" link set lo up || return 1
  ip -n "$NSB" link add name br0 type bridge || return 1
  ip -n "$NSB" link set br0 up || return 1
  add_leaf "$NSM" vm "$MASTER_IP" || return 1
  for k in $(seq 1 "$maxn"); do add_leaf "$P-w$k" "vw$k" "10.201.0.$((10 + k))" || return 1; done
}
tbf() {  # namespace, device, rate in Mbit/s, burst in bytes
  tc -n "$1" qdisc replace dev "$2" root tbf rate "${3}mbit" burst "$4" latency 25ms
}
shape() {  # rate in Mbit/s, on both ends of every veth (each direction of each link)
  local rate=$1 burst k
  burst=$(python3 -c "print(max(262144, int($rate * 1e6 / 8 * 0.002)))")
  tbf "$NSM" eth0 "$rate" "$burst" || return 1
  tbf "$NSB" vm "$rate" "$burst" || return 1
  for k in $(seq 1 "$maxn"); do
    tbf "$P-w$k" eth0 "$rate" "$burst" || return 1
    tbf "$NSB" "vw$k" "$rate" "$burst" || return 1
  done
}
if [ "$maxn" -gt 0 ]; then
  if ! ip netns add "$P-probe" 2>/dev/null; then
    notice "skipping the namespace measurements: 'ip netns add' failed (needs root, or CAP_SYS_ADMIN and CAP_NET_ADMIN)"
  elif ! { ip netns del "$P-probe" && netns_up; } 2>"$tmp/netns.err"; then
    notice "skipping the namespace measurements: setting up namespaces and veths failed: $(tail -1 "$tmp/netns.err")"
    netns_down
  else
    worker_ns=$(seq -s, -f "$P-w%g" 1 "$maxn")
    for rate in $RATES; do
      if ! shape "$rate" 2>"$tmp/tc.err"; then
        notice "skipping $rate Mbit/s: tc failed: $(tail -1 "$tmp/tc.err")"
        continue
      fi
      step link --master-ns "$NSM" --worker-ns "$P-w1" --master-ip "$MASTER_IP" --rate-mbit "$rate" \
        --bytes "$(python3 -c "print(int($rate * 1e6 / 8 * 1.5))")" && show \
        || notice "link check at $rate Mbit/s failed"
      for n in $(netns_n "$rate"); do
        # Generous: three times what master-only shipping needs at this rate, plus a minute.
        ship "${rate}mbit" "$rate" "$(python3 -c "print(int(60 + 3 * $n * $scene_bytes * 8 / ($rate * 1e6)))")" "$n" \
          --master-ns "$NSM" --master-ip "$MASTER_IP" --worker-ns "$worker_ns"
      done
    done
    netns_down
  fi
fi

# 5: end to end.
if [ -n "$E2E_ARGS" ]; then
  for b in "${BINS[@]}"; do
    next_port
    step e2e --bin "$b" --port "$port" --args "$E2E_ARGS" --work "$tmp/e2e" && show \
      || notice "e2e render failed for $b"
  done
fi

by_rate=$(for rate in $RATES; do printf '%s=%s;' "$rate" "$(netns_n "$rate")"; done)
meta=$(SCALE_STAMP=$stamp SCALE_LOAD0=$load_start SCALE_LOAD1=$(cut -d' ' -f1-3 /proc/loadavg) \
  SCALE_COMMIT=$source_commit SCALE_BINS=$(bin_meta) SCALE_BY_RATE=$by_rate SCENE_KIND=$SCENE_KIND \
  SCENE_MB=$SCENE_MB LOOPBACK_N=$LOOPBACK_N E2E_ARGS=$E2E_ARGS python3 - <<'PY'
import json, os
e = os.environ
bins = [l.split("\t", 1) for l in e["SCALE_BINS"].splitlines()]
mem = next(int(l.split()[1]) * 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal:"))
print(json.dumps({
    "date_utc": e["SCALE_STAMP"],
    "binaries": [{"path": p, "version": v} for p, v in bins],
    "source_commit": e["SCALE_COMMIT"] or None,
    "host": {"cores": os.cpu_count(), "mem_bytes": mem, "kernel": os.uname().release,
             "loadavg_start": e["SCALE_LOAD0"], "loadavg_end": e["SCALE_LOAD1"]},
    "settings": {
        "command": "bash benches/scale.sh" + "".join(" " + p for p, _ in bins),
        "scene_kind": e["SCENE_KIND"], "scene_mb": float(e["SCENE_MB"]),
        "loopback_n": e["LOOPBACK_N"],
        "netns_n_by_rate": dict(kv.split("=", 1) for kv in e["SCALE_BY_RATE"].split(";") if kv),
        "e2e_args": e["E2E_ARGS"]},
}))
PY
)
"${measure[@]}" assemble --parts "$parts" --meta "$meta" --out "$OUT"
echo "scale: wrote $OUT" >&2
echo "$OUT"
