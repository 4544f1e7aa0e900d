#!/usr/bin/env python3
"""The measurement steps of benches/scale.sh (issue 15), one subcommand each.

Every subcommand but `scene` and `assemble` prints one JSON object on stdout; scale.sh
collects them (one per line) and `assemble` turns them into the run's JSON file. This file
starts, watches and stops only its own processes (rayfarm masters and workers, two tiny
socket programs for the link check); scale.sh creates and removes the network namespaces.

  scene     writes the test scene: a quad with a large noise texture (glTF + PNG; cheap to load,
            so a worker's readiness is mostly shipping) or a random-height grid OBJ (the
            mesh of benches/scene_shipping.sh, which also measures decode and BVH)
  ship      one scene shipping measurement: N hand-started workers with empty (or warm)
            caches, a master with --no-local; when is each worker ready, what did the master send
  link      raw TCP goodput from the master's namespace to a worker's (checks the shaping)
  e2e       a real render with 2 workers on loopback: the bytes the master receives (ss),
            its CPU time (wait4) and, when the master prints it, its own results line
  bench     `rayfarm bench`: samples/s of the embedded Cornell box at 2 threads (one node)
  codec     the unit_codec example: bytes and master CPU per result
  assemble  the collected lines into one JSON file

Why the ship measurement stops the render itself: with --no-local, the first worker to be ready
would finish a small render before the others have the scene, and the master tells those it
is done (their lines never appear). So the master renders a large, cheap image under a live
view (--view on the master's own loopback) and is stopped through the view's stop route once
every worker is ready. Meanwhile the ready workers' render threads run SCHED_IDLE: on this
2-core machine their rendering would otherwise take the CPU that shipping needs, which on a
real farm (one machine per node) it would not. Tokio threads (network, loading, serving the
scene to peers, if the master asks them to) keep their normal priority.

Standard library only.
"""

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

KEY = "scale-bench-farm-key-0123456789"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# Lines of the master's stderr (crates/rayfarm-master/src/lib.rs, worker_session and the coming
# scene distribution); parsed loosely so a changed prefix (timestamp, level) does not matter.
RE_SENT = re.compile(
    r"(?P<name>\S+) \((?P<peer>[^)]*)\): scene (?:sent \((?P<bytes>\d+) bytes[^)]*\)|(?P<cached>cached)), "
    r"ready after (?P<secs>[0-9.]+) s")
RE_JOINED = re.compile(
    r"node joined: (?P<name>\S+) \((?P<peer>[^)]*)\), (?P<threads>\d+) threads, "
    r"rendering (?P<secs>[0-9.]+) s after the master started")
RE_DIST = re.compile(
    r"scene distribution: (?P<n>\d+) worker\(s\) fetched the scene(?: \((?P<relayed>\d+) through relays\))?; the master sent (?P<bytes>\d+) bytes "
    r"\((?P<copies>[0-9.]+) copies\); the last was ready (?P<secs>[0-9.]+) s after the master started")
RE_RESULTS = re.compile(
    r"results: (?P<n>\d+) unit results(?: from workers)?, (?P<bytes>\d+) bytes of sums(?:, (?P<ms>[0-9.]+) ms decoding and merging)?")


def note(msg):
    print(f"scale: {msg}", file=sys.stderr, flush=True)


def emit(obj):
    print(json.dumps(obj), flush=True)


# ---------------------------------------------------------------------------------------------
# Processes: every child is remembered and ended (TERM, then KILL) on any exit of this script.

CHILDREN = []


def spawn(cmd, **kw):
    p = subprocess.Popen(cmd, **kw)
    CHILDREN.append(p)
    return p


def end_children(grace_s=3.0):
    live = [p for p in CHILDREN if p.poll() is None]
    for p in live:
        try:
            p.terminate()
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    for p in live:
        try:
            p.wait(max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def on_signal(signum, _frame):
    raise SystemExit(f"signal {signum}")


def in_ns(ns):
    return ["ip", "netns", "exec", ns] if ns else []


def wait_rusage(p, timeout_s):
    """Waits for `p` like Popen.wait, but returns its rusage (CPU time, peak RSS) too."""
    deadline = time.monotonic() + timeout_s
    while True:
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid == p.pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            return ru
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(p.args, timeout_s)
        time.sleep(0.02)


def mem_available_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


class IdleRenderThreads(threading.Thread):
    """Puts the render threads of the given processes into SCHED_IDLE as they appear: the
    threads that carry the main thread's name (the worker's render pool is an unnamed rayon
    pool built by the main thread). Tokio's threads, the BVH build thread
    (`rayfarm-bvh-build`) and rayon's global pool (started from a tokio blocking thread, so
    named after it) keep their priority: they load the scene."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids = list(pids)
        self.done = threading.Event()
        self.idled = set()
        self.failed = 0

    def run(self):
        while not self.done.is_set():
            for pid in self.pids:
                try:
                    tids = os.listdir(f"/proc/{pid}/task")
                    with open(f"/proc/{pid}/comm") as f:
                        main_comm = f.read().strip()
                except OSError:
                    continue
                for t in tids:
                    tid = int(t)
                    if tid == pid or tid in self.idled:
                        continue
                    try:
                        with open(f"/proc/{pid}/task/{t}/comm") as f:
                            comm = f.read().strip()
                    except OSError:
                        continue
                    if comm != main_comm:
                        continue
                    try:
                        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                        self.idled.add(tid)
                    except OSError:
                        self.failed += 1
                        self.idled.add(tid)
            self.done.wait(0.05)


def link_stats(ns, dev="eth0"):
    """(tx bytes, rx bytes) of `dev` in namespace `ns`."""
    out = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show", dev], capture_output=True,
                         text=True, check=True).stdout
    s = json.loads(out)[0]["stats64"]
    return s["tx"]["bytes"], s["rx"]["bytes"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STOP_CODE = """
import sys, time, urllib.request
url = sys.argv[1]
for i in range(100):
    try:
        urllib.request.urlopen(urllib.request.Request(url, data=b"", method="POST"), timeout=5).read()
        sys.exit(0)
    except Exception as e:
        err = e
        time.sleep(0.1)
sys.exit(f"cannot stop the render at {url}: {err}")
"""


def stop_render(ns, view_port):
    url = f"http://127.0.0.1:{view_port}/api/v1/live/stop"
    r = subprocess.run(in_ns(ns) + [sys.executable, "-c", STOP_CODE, url], capture_output=True,
                       text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip() or f"stopping the render at {url} failed")


# ---------------------------------------------------------------------------------------------
# scene

def write_png_rgba(path, side, seed):
    rng = random.Random(seed)
    comp = zlib.compressobj(0)  # stored: random texels do not compress, and stored decodes fastest
    parts = []
    for _ in range(side):
        parts.append(comp.compress(b"\x00" + rng.randbytes(side * 4)))
    parts.append(comp.flush())
    data = b"".join(parts)

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)))
        f.write(chunk(b"IDAT", data))
        f.write(chunk(b"IEND", b""))


def write_texture_scene(d, mb):
    side = max(16, int(math.sqrt(mb * 1e6 / 4)))
    write_png_rgba(os.path.join(d, "noise.png"), side, 1)
    pos = [-1, 0, -1, 1, 0, -1, 1, 0, 1, -1, 0, 1]
    uv = [0, 0, 1, 0, 1, 1, 0, 1]
    idx = [0, 2, 1, 0, 3, 2]
    blob = struct.pack("<12f", *pos) + struct.pack("<8f", *uv) + struct.pack("<6H", *idx)
    with open(os.path.join(d, "quad.bin"), "wb") as f:
        f.write(blob)
    gltf = {
        "asset": {"version": "2.0", "generator": "benches/scale_measure.py"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "TEXCOORD_0": 1}, "indices": 2,
                                    "material": 0}]}],
        "materials": [{"pbrMetallicRoughness": {"baseColorTexture": {"index": 0}, "metallicFactor": 0}}],
        "textures": [{"source": 0}],
        "images": [{"uri": "noise.png"}],
        "buffers": [{"uri": "quad.bin", "byteLength": len(blob)}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": 48, "target": 34962},
            {"buffer": 0, "byteOffset": 48, "byteLength": 32, "target": 34962},
            {"buffer": 0, "byteOffset": 80, "byteLength": 12, "target": 34963},
        ],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 4, "type": "VEC3",
             "min": [-1, 0, -1], "max": [1, 0, 1]},
            {"bufferView": 1, "componentType": 5126, "count": 4, "type": "VEC2"},
            {"bufferView": 2, "componentType": 5123, "count": 6, "type": "SCALAR"},
        ],
    }
    path = os.path.join(d, "noise_quad.gltf")
    with open(path, "w") as f:
        json.dump(gltf, f)
    return path, {"scene_kind": "texture", "texture_px": side}


def write_grid_scene(d, mb):
    # benches/scene_shipping.sh's grid: 700x700 vertices compile to 24.6 MB.
    n = max(8, int(700 * math.sqrt(mb / 24.6)))
    rng = random.Random(1)
    path = os.path.join(d, "grid.obj")
    with open(path, "w") as f:
        for j in range(n):
            f.write("".join("v %.6f %.6f %.6f\n" % (i / n * 4 - 2, rng.random() * 0.05, j / n * 4 - 2)
                            for i in range(n)))
        for j in range(n - 1):
            rows = []
            for i in range(n - 1):
                a = j * n + i + 1
                b, c = a + 1, a + n
                rows.append("f %d %d %d\nf %d %d %d\n" % (a, c, b, b, c, c + 1))
            f.write("".join(rows))
    return path, {"scene_kind": "grid", "grid_vertices_per_side": n, "triangles": 2 * (n - 1) ** 2}


def cmd_scene(a):
    os.makedirs(a.dir, exist_ok=True)
    path, info = (write_texture_scene if a.kind == "texture" else write_grid_scene)(a.dir, a.mb)
    info.update(path=path, target_mb=a.mb, file_bytes=sum(
        os.path.getsize(os.path.join(a.dir, f)) for f in os.listdir(a.dir)))
    emit({"kind": "scene", **info})


# ---------------------------------------------------------------------------------------------
# ship

def cmd_ship(a):
    n = a.n
    worker_ns = a.worker_ns.split(",") if a.worker_ns else [None] * n
    if len(worker_ns) < n:
        sys.exit(f"ship: {n} workers but only {len(worker_ns)} worker namespaces")
    rec = {"kind": "ship", "label": a.label, "mode": "netns" if a.master_ns else "loopback",
           "rate_mbit": a.rate_mbit, "n": n, "cached": a.warm_cache, "binary": a.bin,
           "complete": False, "errors": []}
    # Each worker holds the scene a few times over (received buffer, cache write, decoded).
    need = (n * a.worker_mem_factor + 3) * a.scene_bytes_hint
    if a.scene_bytes_hint and need > 0.8 * mem_available_bytes():
        rec["skipped"] = (f"needs about {need / 2**30:.1f} GiB for {n} workers, "
                          f"{mem_available_bytes() / 2**30:.1f} GiB available")
        note(f"skipping {a.label} N={n}: {rec['skipped']}")
        emit(rec)
        return
    os.makedirs(a.work, exist_ok=True)
    env = dict(os.environ, RAYFARM_KEY=KEY, RUST_LOG="info", NO_COLOR="1")
    port = a.port
    addr = f"{a.master_ip}:{port}"
    view_port = 18080 if a.master_ns else free_port()
    workers = []
    for k in range(1, n + 1):
        cache = os.path.join(a.work, f"cache-w{k}")
        if not a.warm_cache:
            shutil.rmtree(cache, ignore_errors=True)
        os.makedirs(cache, exist_ok=True)
        with open(os.path.join(a.work, f"w{k}.err"), "w") as err:
            workers.append(spawn(in_ns(worker_ns[k - 1]) + [
                a.bin, "worker", "--master", addr, "--threads", "1", "--cache-dir", cache,
                "--alias", f"w{k}"], stdout=subprocess.DEVNULL, stderr=err, env=env))
    idle = IdleRenderThreads(p.pid for p in workers)
    idle.start()
    before = link_stats(a.master_ns) if a.master_ns else None
    # A large, cheap image (no bounces; 64-spp units on 32x32 tiles) that lasts until it is
    # stopped through the live view once every worker is ready.
    master_cmd = in_ns(a.master_ns) + [
        a.bin, "render", a.scene, "--network", "--no-local", "--master-bind", a.master_ip,
        "--master-port", str(port), "--width", "128", "--height", "128", "--spp", "1048576",
        "--samples-per-unit", "64", "--max-bounces", "0", "--no-progressive",
        "--view", f"127.0.0.1:{view_port}", "-q", "-o", os.path.join(a.work, "ship.exr")]
    t_start = time.monotonic()
    master = spawn(master_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                   text=True, errors="replace")
    lines = []
    joined = {}
    sent = {}
    summary = {}
    port_taken = []
    all_ready = threading.Event()

    def read_stderr():
        for raw in master.stderr:
            line = ANSI.sub("", raw.rstrip("\n"))
            lines.append(line)
            if "is taken; using port" in line:
                # The workers look for the master at the port they were given.
                port_taken.append(line)
                all_ready.set()
            m = RE_JOINED.search(line)
            if m:
                joined[m["name"]] = float(m["secs"])
                if len(joined) >= n:
                    all_ready.set()
            m = RE_SENT.search(line)
            if m:
                sent[m["name"]] = {"bytes": int(m["bytes"]) if m["bytes"] else None,
                                   "cached": bool(m["cached"]), "ready_after_s": float(m["secs"])}
            m = RE_DIST.search(line)
            if m:
                summary.update(workers=int(m["n"]), master_bytes=int(m["bytes"]),
                               relayed=int(m["relayed"] or 0),
                               copies=float(m["copies"]), last_ready_s=float(m["secs"]))
        all_ready.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    deadline = t_start + a.timeout
    while not all_ready.is_set() and time.monotonic() < deadline:
        if all(p.poll() is not None for p in workers):
            rec["errors"].append("every worker exited before all were ready")
            break
        all_ready.wait(0.1)
    rec["complete"] = len(joined) >= n
    if port_taken:
        rec["errors"].append(f"port {port} was taken (choose another PORT_BASE): {port_taken[0]}")
    if not rec["complete"] and time.monotonic() >= deadline:
        rec["errors"].append(f"only {len(joined)} of {n} workers ready after {a.timeout:.0f} s")
    after = link_stats(a.master_ns) if a.master_ns else None
    if master.poll() is None:
        try:
            stop_render(a.master_ns, view_port)
        except Exception as e:  # noqa: BLE001 - reported in the record, then the master is ended
            rec["errors"].append(str(e))
    try:
        master.wait(60)
    except subprocess.TimeoutExpired:
        rec["errors"].append("the master did not end within 60 s of the stop; terminated")
        master.terminate()
        master.wait(5)
    reader.join(5)
    rss = []
    for k, p in enumerate(workers, 1):
        try:
            ru = wait_rusage(p, 20)
            rss.append(ru.ru_maxrss / 1024)
        except subprocess.TimeoutExpired:
            rec["errors"].append(f"worker w{k} still running 20 s after the master ended; terminated")
            p.terminate()
            p.wait(5)
        if p.returncode not in (0, None):
            with open(os.path.join(a.work, f"w{k}.err")) as f:
                tail = ANSI.sub("", f.read()).strip().splitlines()[-1:] or ["(no output)"]
            rec["errors"].append(f"worker w{k} exited with {p.returncode}: {tail[0]}")
    idle.done.set()
    if len(idle.idled) - idle.failed < n:
        rec["errors"].append(f"only {len(idle.idled) - idle.failed} render threads of {n} workers found "
                             "(threads named like the main one): the others rendered at normal priority")
    with open(os.path.join(a.work, f"master-{a.label}-{n}.err"), "w") as f:
        f.write("\n".join(lines) + "\n")
    if master.returncode not in (0, None):
        rec["errors"].append(f"master exited with {master.returncode}: "
                             f"{(lines or ['(no output)'])[-1]}")

    ws = []
    for k in range(1, n + 1):
        name = f"w{k}"
        s = sent.get(name, {})
        ws.append({"alias": name, "ready_s": joined.get(name), "sent_bytes": s.get("bytes"),
                   "cached": s.get("cached"), "ready_after_hello_s": s.get("ready_after_s")})
    ready = sorted(v for v in joined.values())
    derived_bytes = sum(w["sent_bytes"] or 0 for w in ws)
    rec.update(
        workers=ws,
        first_ready_s=ready[0] if ready else None,
        last_ready_s=ready[-1] if ready else None,
        mean_ready_s=sum(ready) / len(ready) if ready else None,
        scene_bytes=max((w["sent_bytes"] or 0 for w in ws), default=0) or None,
        summary_line=summary or None,
        master_bytes=summary.get("master_bytes", derived_bytes),
        master_bytes_source="summary line" if summary else "sum of per-worker 'scene sent' lines",
        render_threads_idled=len(idle.idled) - idle.failed,
        worker_max_rss_mb=round(max(rss), 1) if rss else None,
        wall_s=round(time.monotonic() - t_start, 2),
    )
    if not rec["scene_bytes"] and summary.get("copies"):
        rec["scene_bytes"] = round(summary["master_bytes"] / summary["copies"])
    if summary.get("last_ready_s") is not None:
        rec["last_ready_s_summary"] = summary["last_ready_s"]
    if before and after:
        rec["master_link_tx_bytes"] = after[0] - before[0]
        rec["master_link_rx_bytes"] = after[1] - before[1]
    emit(rec)


# ---------------------------------------------------------------------------------------------
# link

RECV_CODE = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("listening", flush=True)
c, _ = s.accept(); n = 0; t0 = None
while True:
    b = c.recv(1 << 20)
    if not b: break
    if t0 is None: t0 = time.monotonic()
    n += len(b)
print(n, time.monotonic() - t0, flush=True)
"""
SEND_CODE = """
import socket, sys, time
for i in range(50):  # a fresh bridge may take a moment to forward
    try:
        c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("cannot connect to the receiver")
buf = b"x" * (1 << 20); left = int(sys.argv[3])
while left > 0:
    c.sendall(buf[:min(left, len(buf))]); left -= len(buf)
c.close()
"""


def cmd_link(a):
    port = 5201
    recv = spawn(in_ns(a.master_ns) + [sys.executable, "-c", RECV_CODE, a.master_ip, str(port)],
                 stdout=subprocess.PIPE, text=True)
    if recv.stdout.readline().strip() != "listening":
        sys.exit("link: the receiver did not start")
    # Sent from a worker's namespace to the master's: the results' direction.
    subprocess.run(in_ns(a.worker_ns) + [sys.executable, "-c", SEND_CODE, a.master_ip, str(port),
                                          str(a.bytes)], check=True, timeout=120)
    got, secs = recv.stdout.readline().split()
    recv.wait(10)
    mbit = int(got) * 8 / float(secs) / 1e6
    emit({"kind": "link", "rate_mbit": a.rate_mbit, "bytes": int(got), "secs": float(secs),
          "goodput_mbit": round(mbit, 1), "goodput_fraction": round(mbit / a.rate_mbit, 4)})


# ---------------------------------------------------------------------------------------------
# e2e

def ss_bytes_received(port):
    """bytes_received of every established socket whose local port is `port`."""
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    got = {}
    key = None
    for line in out.splitlines():
        if line and not line[0].isspace():
            key = " ".join(line.split()[-2:])
        m = re.search(r"bytes_received:(\d+)", line)
        if m and key:
            got[key] = int(m.group(1))
    return got


def run_e2e(a, port, args):
    """One render with 2 fresh workers on loopback: (wall s, master rusage, bytes the master
    received, connections seen, stderr)."""
    env = dict(os.environ, RAYFARM_KEY=KEY, RUST_LOG="info", NO_COLOR="1")
    workers = []
    for k in range(1, 3):
        cache = os.path.join(a.work, f"e2e-cache-w{k}")
        os.makedirs(cache, exist_ok=True)
        workers.append(spawn([a.bin, "worker", "--master", f"127.0.0.1:{port}", "--threads", "1",
                              "--cache-dir", cache, "--alias", f"e{k}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
    t0 = time.monotonic()
    master = spawn([a.bin, "render", "--network", "--no-local", "--master-bind", "127.0.0.1",
                    "--master-port", str(port), *args, "-q", "-o", os.path.join(a.work, "e2e.exr")],
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, text=True, errors="replace")
    peak = {}
    done = threading.Event()

    def poll():
        # The sockets close with the master, so the last poll misses what arrived after it:
        # at 20 polls a second, a few results at most.
        while not done.is_set():
            for k, v in ss_bytes_received(port).items():
                peak[k] = max(v, peak.get(k, 0))
            done.wait(0.05)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    err = []
    drain = threading.Thread(target=lambda: err.append(master.stderr.read()), daemon=True)
    drain.start()
    ru = wait_rusage(master, a.timeout)
    wall = time.monotonic() - t0
    done.set()
    poller.join()
    drain.join(5)
    for p in workers:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.terminate()
    err = ANSI.sub("", "".join(err))
    if master.returncode != 0:
        sys.exit(f"e2e: the master failed ({master.returncode}): {err.strip()[-400:]}")
    return wall, ru, sum(peak.values()), len(peak), err


def cmd_e2e(a):
    os.makedirs(a.work, exist_ok=True)
    # The master's CPU for everything but results (start-up, scene, handshakes, image output):
    # the same render cut to one unit.
    base_args = a.args.split()
    for flag, value in (("--width", "32"), ("--height", "32"), ("--spp", "16")):
        if flag in base_args:
            base_args[base_args.index(flag) + 1] = value
        else:
            base_args += [flag, value]
    _, ru0, bytes0, _, _ = run_e2e(a, a.port, base_args)
    wall, ru, got, conns, err = run_e2e(a, a.port + 1000, a.args.split())
    rec = {"kind": "e2e", "binary": a.bin, "args": a.args, "wall_s": round(wall, 2),
           "master_cpu_s": round(ru.ru_utime + ru.ru_stime, 3),
           "master_cpu_s_one_unit": round(ru0.ru_utime + ru0.ru_stime, 3),
           "master_bytes_received_ss": got, "master_bytes_received_ss_one_unit": bytes0,
           "connections_seen": conns}
    m = RE_RESULTS.search(err)
    if m:
        rec["results_line"] = {"results": int(m["n"]), "bytes": int(m["bytes"]),
                               "ms": float(m["ms"]) if m["ms"] else None}
    emit(rec)


# ---------------------------------------------------------------------------------------------
# bench, codec

def cmd_bench(a):
    out = subprocess.run([a.bin, "bench", "--threads", str(a.threads), "--spp", "16", "--repeat",
                          str(a.repeat)], capture_output=True, text=True, check=True).stdout
    m = re.search(r"([0-9.]+) s per frame, ([0-9.]+) M samples/s", out)
    if not m:
        sys.exit(f"bench: cannot read samples/s from: {out!r}")
    emit({"kind": "bench", "binary": a.bin, "threads": a.threads, "samples_per_s": float(m.group(2)) * 1e6,
          "secs_per_frame": float(m.group(1)), "output": out.strip().splitlines()})


def cmd_codec(a):
    out = subprocess.run([a.unit_codec], capture_output=True, text=True, check=True).stdout
    rec = {"kind": "codec", "output": out.strip().splitlines()}
    for line in out.splitlines():
        m = re.match(r"(plain|compact) \(protocol (\d)\)\s+([0-9.]+) bytes/unit\s+encode\s+([0-9.]+) us/unit"
                     r"\s+decode\+merge\s+([0-9.]+) us/unit", line.strip())
        if m:
            rec[m.group(1)] = {"protocol": int(m.group(2)), "bytes_per_result": float(m.group(3)),
                               "encode_us": float(m.group(4)), "merge_us": float(m.group(5))}
        m = re.search(r"8 results of 16 spp\s+([0-9.]+) bytes, master\s+([0-9.]+) us; 1 joined result\s+"
                      r"([0-9.]+) bytes, master\s+([0-9.]+) us", line)
        if m:
            rec["joined8"] = {"bytes_per_result": float(m.group(3)), "merge_us": float(m.group(4)),
                              "split_bytes_per_tile": float(m.group(1)), "split_us_per_tile": float(m.group(2))}
    if "compact" not in rec or "joined8" not in rec:
        sys.exit(f"codec: unexpected unit_codec output: {out!r}")
    emit(rec)


# ---------------------------------------------------------------------------------------------
# show, assemble

def cmd_show(a):
    """One line on stderr about a step's JSON line, for whoever watches the run."""
    r = json.loads(a.line)
    kind = r.get("kind")
    if kind == "ship":
        what = f"  {r['label']:>9} N={r['n']:<3}"
        if r.get("skipped"):
            msg = f"skipped ({r['skipped']})"
        else:
            last = r["last_ready_s"]
            msg = (f"last ready {'-' if last is None else f'{last:.2f}'} s, "
                   f"master sent {r['master_bytes'] / 1e6:.1f} MB"
                   + ("" if r["complete"] else ", INCOMPLETE") + "".join(f"; {e}" for e in r["errors"]))
        print(f"{what} {msg}", file=sys.stderr)
    elif kind == "link":
        print(f"  link {r['rate_mbit']:.0f} Mbit/s: goodput {r['goodput_mbit']} Mbit/s", file=sys.stderr)
    elif kind == "e2e":
        print(f"  e2e: {r['wall_s']} s, the master received {r['master_bytes_received_ss'] / 1e6:.2f} MB "
              f"and used {r['master_cpu_s']} s of CPU", file=sys.stderr)
    elif kind == "bench":
        print(f"  bench: {r['samples_per_s'] / 1e6:.2f} M samples/s at {r['threads']} threads",
              file=sys.stderr)


def cmd_assemble(a):
    parts = []
    with open(a.parts) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                parts.append(json.loads(line))
    meta = json.loads(a.meta)
    by = {}
    for p in parts:
        by.setdefault(p.pop("kind"), []).append(p)
    doc = {**meta,
           "scene": (by.get("scene") or [None])[0],
           "ship": by.get("ship", []),
           "link": by.get("link", []),
           "bench": by.get("bench", []),
           "codec": (by.get("codec") or [None])[0],
           "e2e": by.get("e2e", []),
           "notices": [p["text"] for p in by.get("notice", [])]}
    with open(a.out, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def main():
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("scene")
    s.add_argument("--kind", choices=["texture", "grid"], default="texture")
    s.add_argument("--mb", type=float, default=32)
    s.add_argument("--dir", required=True)
    s = sub.add_parser("ship")
    s.add_argument("--bin", required=True)
    s.add_argument("--scene", required=True)
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--master-ip", default="127.0.0.1")
    s.add_argument("--master-ns")
    s.add_argument("--worker-ns", help="comma-separated, one per worker")
    s.add_argument("--rate-mbit", type=float)
    s.add_argument("--warm-cache", action="store_true", help="keep the workers' caches (cached run)")
    s.add_argument("--work", required=True)
    s.add_argument("--label", default="")
    s.add_argument("--timeout", type=float, default=300)
    s.add_argument("--scene-bytes-hint", type=float, default=0)
    s.add_argument("--worker-mem-factor", type=float, default=4)
    s = sub.add_parser("link")
    s.add_argument("--master-ns", required=True)
    s.add_argument("--worker-ns", required=True)
    s.add_argument("--master-ip", required=True)
    s.add_argument("--rate-mbit", type=float, required=True)
    s.add_argument("--bytes", type=int, required=True)
    s = sub.add_parser("e2e")
    s.add_argument("--bin", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--args", default="--width 256 --height 256 --spp 256 --max-bounces 8")
    s.add_argument("--work", required=True)
    s.add_argument("--timeout", type=float, default=600)
    s = sub.add_parser("bench")
    s.add_argument("--bin", required=True)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--repeat", type=int, default=3)
    s = sub.add_parser("codec")
    s.add_argument("--unit-codec", required=True)
    s = sub.add_parser("show")
    s.add_argument("line")
    s = sub.add_parser("assemble")
    s.add_argument("--parts", required=True)
    s.add_argument("--meta", required=True, help="JSON object of run-wide fields")
    s.add_argument("--out", required=True)
    a = ap.parse_args()
    try:
        {"scene": cmd_scene, "ship": cmd_ship, "link": cmd_link, "e2e": cmd_e2e, "bench": cmd_bench,
         "codec": cmd_codec, "show": cmd_show, "assemble": cmd_assemble}[a.cmd](a)
    finally:
        end_children()


if __name__ == "__main__":
    main()
