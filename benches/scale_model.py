#!/usr/bin/env python3
"""Issue 15's table from measurements: % of linear speed-up for one 3840x2160 frame at 1024 spp
on 8, 64 and 256 nodes, on 1 and 10 Gbit/s, with the scene cached on the nodes or not.

Usage:
  python3 benches/scale_model.py RUN.json        the table from a run of benches/scale.sh
  python3 benches/scale_model.py --before        the issue's table, from the issue's own figures
  python3 benches/scale_model.py --before RUN.json   the same, with the run's node speed
Options: --fit-from loopback|RATE_MBIT (default: the slowest shaped rate measured), --scene-mb
(133), --master-cores (2), --samples-per-s (override the node speed).

The model
---------
Frame: 3840x2160 px at 1024 spp in units of 32x32 px x 16 spp: 120 x 68 tiles x 64 sample
ranges = 522,240 units, 8.49e9 samples. A node renders S samples/s: `rayfarm bench --threads 2`
(the embedded Cornell box, 8 bounces), since the issue's node is "about as fast as 2 threads
here". The work is W = samples / S node-seconds, so linear speed-up finishes at W / N.

1. Readiness. Node i starts rendering at t_i. Scene cached on the nodes: every t_i is the load
   time (one worker with a warm cache, measured, scaled to the scene size). Not cached: the
   first node, the mean and the last one are ready at
       first(N), mean(N), last(N) = load + k_first(N), k_mean(N), k_last(N) x size / goodput(rate)
   where k is a ready time counted in transfers of one scene over one link. k is measured on
   the shaped links (k = (t - load) / (measured scene bytes / measured TCP goodput); on
   loopback, which has no rate, per the one-worker time instead) for the measured N, and
   fitted by least squares both as a + b N and as a + b log2 N; the better fit is kept, and a
   fit with b <= 0 becomes flat (the mean). A master that ships every copy itself gives k ~ N
   (its one link carries N scenes); node-to-node distribution gives k ~ log2 N or flat.
   Between first and last the t_i follow first + (last - first) x (i / (N - 1))^g, with g
   chosen so that their mean is mean(N): g = 1 spreads them evenly, g < 1 puts most of them
   near the last (TCP's shares of the master's link are uneven: a few workers finish early,
   most together at the end).
2. Rendering. Node i renders from t_i on, so the frame's samples are in at the T_r that solves
   sum_i max(0, T_r - t_i) = W (a node ready after T_r never helps).
3. The master. The frame comes back as R results: the scheduler's joining is simulated (each
   unit handed out joins clamp(pending / (8 x threads), 1, 8) planned units, threads = 2 N, as
   `Scheduler::join_limit`). A result joining j units costs b(j) bytes on the master's link
   at goodput(rate) and m(j) us of master CPU on c cores (decode + merge, from the unit_codec
   example, interpolated linearly between a single 16-spp unit, j = 1, and a joined one,
   j = 8). Neither can start before the first node is ready:
       T = max(T_r, first + sum b / goodput, first + sum m / c)
4. % of linear = (W / N) / T. The term that sets T is printed beside each cell.

goodput(rate) is the rate times the fraction a raw TCP stream reached on the shaped veth at
1 Gbit/s (the link check of the run; 0.94 if there is none), the same at 10 Gbit/s.

What it leaves out: latency and per-connection round trips, the master's CPU for the scene's
encryption (a core moves about 0.4 GB/s here), the network stack's CPU, node speeds that differ,
and the time to start processes; the end-to-end render of the run checks the result bytes.

--before: the issue's own figures and assumptions: no joining (R = 522,240 results), 10.6 KB
and 80 us per result, the master shipping every copy itself and to every node at once, so that
all nodes are ready together after N x 1.24 s at 1 Gbit/s (133 MB; N x 0.124 s at 10 Gbit/s),
cached: ready at once. The issue does not state its node speed; without a run's JSON the model
takes 1.87 M samples/s per node, the speed at which its cached 256-node cells come out (the
2-thread Cornell box figure in BENCHMARKS.md, measured under other load, is 2.12 M). With a
run's JSON, that run's node speed, so that the two tables differ only in what changed.

Standard library only.
"""

import argparse
import json
import math
import sys

WIDTH, HEIGHT, SPP, TILE, UNIT_SPP = 3840, 2160, 1024, 32, 16
TILES = math.ceil(WIDTH / TILE) * math.ceil(HEIGHT / TILE)
UNITS = TILES * (SPP // UNIT_SPP)
SAMPLES = WIDTH * HEIGHT * SPP
NODES = (8, 64, 256)
RATES_GBIT = (1, 10)
MAX_JOINED_UNITS = 8
DEFAULT_GOODPUT_FRACTION = 0.94
ISSUE = {"scene_bytes": 133e6, "ship_s_1gbit": 1.24, "bytes_per_result": 10.6e3,
         "us_per_result": 80.0, "samples_per_s": 1.87e6}


def results_of(units, threads, join=True):
    """How many results a plan of `units` comes back in, and how many units each joins:
    the scheduler's `join_limit` (crates/rayfarm-master/src/scheduler.rs), simulated."""
    if not join:
        return {1: units}
    pending, counts = units, {}
    while pending > 0:
        j = min(max(pending // (8 * threads), 1), MAX_JOINED_UNITS, pending)
        if j == MAX_JOINED_UNITS:
            # Many takes of 8 at once: as long as pending stays at or above 64 x threads.
            takes = max(1, (pending - 64 * threads) // MAX_JOINED_UNITS + 1)
            takes = min(takes, pending // MAX_JOINED_UNITS)
            counts[j] = counts.get(j, 0) + takes
            pending -= takes * j
        else:
            counts[j] = counts.get(j, 0) + 1
            pending -= j
    return counts


def interp(j, at1, at8):
    return at1 + (at8 - at1) * (j - 1) / (MAX_JOINED_UNITS - 1)


def ready_times(n, first, mean, last):
    """n ready times from first to last, first + (last - first) x (i / (n - 1))^g, with the
    mean of x^g over [0, 1] (1 / (g + 1)) equal to where `mean` lies between them."""
    if n == 1 or last - first < 1e-9:
        return [last] * n
    frac = min(max((mean - first) / (last - first), 1e-3), 1 - 1e-3)
    g = 1 / frac - 1
    return [first + (last - first) * (i / (n - 1)) ** g for i in range(n)]


def render_end(ready, work):
    """T with sum max(0, T - t_i) = work (nodes ready at `ready` render from then on)."""
    ts = sorted(ready)
    acc = 0.0
    for k, t in enumerate(ts, 1):
        acc += t
        end = (work + acc) / k
        if k == len(ts) or end <= ts[k]:
            return end
    raise AssertionError("unreachable")


def fit(points):
    """Least squares of k against N and against log2 N; the better one (flat if it falls)."""
    out = {}
    for name, g in (("N", lambda n: n), ("log2 N", lambda n: math.log2(n))):
        xs = [g(n) for n, _ in points]
        ys = [k for _, k in points]
        m = len(xs)
        mx, my = sum(xs) / m, sum(ys) / m
        sxx = sum((x - mx) ** 2 for x in xs)
        b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0
        a = my - b * mx
        sse = sum((a + b * x - y) ** 2 for x, y in zip(xs, ys))
        out[name] = {"a": a, "b": b, "sse": sse, "g": g}
    best_name = min(out, key=lambda nm: out[nm]["sse"])
    best = dict(out[best_name], name=best_name)
    if best["b"] <= 0:
        my = sum(k for _, k in points) / len(points)
        best = {"a": my, "b": 0.0, "g": lambda n: 0.0, "name": "flat",
                "sse": sum((k - my) ** 2 for _, k in points)}
    best["other"] = {nm: {"a": v["a"], "b": v["b"], "sse": v["sse"]} for nm, v in out.items()}
    return best


def fmt_fit(f):
    if f["name"] == "flat":
        return f"k = {f['a']:.2f} (flat)"
    return f"k = {f['a']:.2f} + {f['b']:.3f} {f['name']}"


class Params:
    """Everything the model needs, from a run or from the issue."""

    def __init__(self):
        self.samples_per_s = None
        self.scene_bytes = 133e6
        self.goodput_fraction = DEFAULT_GOODPUT_FRACTION
        self.load_s = 0.0
        self.cached_load_s = 0.0
        self.k_first = None  # functions of N
        self.k_mean = None
        self.k_last = None
        self.join = True
        self.bytes1 = self.bytes8 = None
        self.us1 = self.us8 = None
        self.master_cores = 2
        self.ship_is_per_node_time = None  # --before: seconds per node at 1 Gbit/s


def model(p):
    table = {}
    work = SAMPLES / p.samples_per_s
    for n in NODES:
        counts = results_of(UNITS, 2 * n, p.join)
        n_results = sum(counts.values())
        res_bytes = sum(c * interp(j, p.bytes1, p.bytes8) for j, c in counts.items())
        res_us = sum(c * interp(j, p.us1, p.us8) for j, c in counts.items())
        for gbit in RATES_GBIT:
            goodput = gbit * 1e9 / 8 * p.goodput_fraction
            for cached in (False, True):
                if cached:
                    first = mean = last = p.cached_load_s
                elif p.ship_is_per_node_time is not None:
                    first = mean = last = n * p.ship_is_per_node_time / gbit
                else:
                    one = p.scene_bytes / goodput
                    first = p.load_s + max(0.0, p.k_first(n)) * one
                    mean = p.load_s + max(0.0, p.k_mean(n)) * one
                    last = p.load_s + max(0.0, p.k_last(n)) * one
                    first = min(first, last)
                    mean = min(max(mean, first), last)
                ready = ready_times(n, first, mean, last)
                t_render = render_end(ready, work)
                t_traffic = first + res_bytes / goodput
                t_merge = first + res_us * 1e-6 / p.master_cores
                t = max(t_render, t_traffic, t_merge)
                limit = {t_render: "rendering", t_traffic: "result traffic", t_merge: "master CPU"}[t]
                table[(n, gbit, cached)] = {
                    "pct": 100 * (work / n) / t, "T": t, "linear": work / n, "first": first,
                    "last": last, "limit": limit, "results": n_results,
                    "result_gb": res_bytes / 1e9, "merge_cpu_s": res_us * 1e-6}
    return table


def print_table(table, title):
    def pct(c):
        v = c["pct"]
        return f"~{v:.0f}%" if v >= 99.5 else f"{v:.0f}%"

    print(f"\n{title}\n")
    print("| nodes | 1 Gbit/s, scene not cached | 10 Gbit/s, not cached | scene cached, 1 / 10 Gbit/s |")
    print("|---:|---:|---:|---:|")
    for n in NODES:
        print(f"| {n} | {pct(table[(n, 1, False)])} | {pct(table[(n, 10, False)])} | "
              f"{pct(table[(n, 1, True)])} / {pct(table[(n, 10, True)])} |")
    print("\nPer cell: linear time, model time, what sets it, last node ready, results (GB):\n")
    print("| nodes | link | cached | linear | T | set by | last ready | results | result GB | master CPU |")
    print("|---:|---|---|---:|---:|---|---:|---:|---:|---:|")
    for n in NODES:
        for gbit in RATES_GBIT:
            for cached in (False, True):
                c = table[(n, gbit, cached)]
                print(f"| {n} | {gbit} Gbit/s | {'yes' if cached else 'no'} | {c['linear']:.1f} s | "
                      f"{c['T']:.1f} s | {c['limit']} | {c['last']:.1f} s | {c['results']} | "
                      f"{c['result_gb']:.2f} | {c['merge_cpu_s']:.1f} s |")
    g1 = table[(64, 1, False)]["pct"]
    g2 = table[(256, 10, False)]["pct"]
    print(f"\nGoal: >= 90% at 64 nodes on 1 Gbit/s, not cached: {g1:.0f}% "
          f"({'met' if g1 >= 90 else 'not met'}); >= 80% at 256 nodes on 10 Gbit/s: {g2:.0f}% "
          f"({'met' if g2 >= 80 else 'not met'})")


def before_params(run, args):
    p = Params()
    p.samples_per_s = ISSUE["samples_per_s"]
    if run and run.get("bench"):
        # The first binary's: --before stands beside the run's first table.
        first = run["binaries"][0]["path"]
        p.samples_per_s = max(b["samples_per_s"] for b in run["bench"]
                              if b.get("threads") == 2 and b.get("binary", first) == first)
    if args.samples_per_s:
        p.samples_per_s = args.samples_per_s
    p.scene_bytes = ISSUE["scene_bytes"]
    p.ship_is_per_node_time = ISSUE["ship_s_1gbit"] * args.scene_mb * 1e6 / ISSUE["scene_bytes"]
    p.join = False
    p.bytes1 = p.bytes8 = ISSUE["bytes_per_result"]
    p.us1 = p.us8 = ISSUE["us_per_result"]
    p.master_cores = args.master_cores
    return p


def ship_records(run, binary):
    return [r for r in run["ship"] if r.get("binary") == binary and r.get("complete")
            and not r.get("skipped") and r.get("last_ready_s") is not None]


def measured_params(run, binary, args, out):
    p = Params()
    p.master_cores = args.master_cores
    p.scene_bytes = args.scene_mb * 1e6
    benches = [b for b in run.get("bench", []) if b.get("threads") == 2
               and b.get("binary", binary) == binary]
    if not benches:
        sys.exit("scale_model: the run has no `rayfarm bench` figure (node speed); give --samples-per-s")
    p.samples_per_s = args.samples_per_s or max(b["samples_per_s"] for b in benches)
    links = {round(l["rate_mbit"]): l for l in run.get("link", [])}
    if 1000 in links:
        p.goodput_fraction = links[1000]["goodput_fraction"]
    codec = run.get("codec")
    if codec:
        p.bytes1, p.us1 = codec["compact"]["bytes_per_result"], codec["compact"]["merge_us"]
        p.bytes8, p.us8 = codec["joined8"]["bytes_per_result"], codec["joined8"]["merge_us"]
    else:
        out.append("no unit_codec figures in the run: per-result costs from BENCHMARKS.md "
                   "(10400 B and 39.8 us single, 11160 B and 34.4 us joined)")
        p.bytes1, p.us1, p.bytes8, p.us8 = 10400, 39.8, 11160, 34.4

    recs = ship_records(run, binary)
    scene0 = max((r["scene_bytes"] or 0 for r in recs), default=0)
    cached = [r for r in recs if r["label"] == "cached"]
    load0 = min((r["last_ready_s"] for r in cached), default=0.0)
    if not cached:
        out.append("no cached run: load time taken as 0")
    groups = {}
    for r in recs:
        if r["label"] != "cached":
            groups.setdefault(r["label"], []).append(r)
    # A warm cache cannot take longer than shipping to one worker; on a busy machine it
    # sometimes did. Then the load time is capped below the quickest one-worker run.
    ones = [r["last_ready_s"] for rs in groups.values() for r in rs if r["n"] == 1]
    if ones and load0 > 0.9 * min(ones):
        out.append(f"the warm-cache load ({load0:.2f} s) took longer than shipping to one worker "
                   f"({min(ones):.2f} s): capped at {0.9 * min(ones):.2f} s")
        load0 = 0.9 * min(ones)
    scale = p.scene_bytes / scene0 if scene0 else 1.0
    p.load_s = p.cached_load_s = load0 * scale
    if not groups:
        sys.exit(f"scale_model: no complete scene shipping measurement for {binary}")
    if args.fit_from:
        label = "loopback" if args.fit_from == "loopback" else f"{int(args.fit_from)}mbit"
    else:
        shaped = sorted((r["rate_mbit"], lab) for lab, rs in groups.items() for r in rs[:1]
                        if r.get("rate_mbit"))
        label = shaped[0][1] if shaped else "loopback"
    if label not in groups:
        sys.exit(f"scale_model: no measurements labelled {label} (have {sorted(groups)})")
    fits = {}
    for lab, rs in sorted(groups.items()):
        rate = rs[0].get("rate_mbit")
        if rate:
            link = links.get(round(rate))
            frac = link["goodput_fraction"] if link else DEFAULT_GOODPUT_FRACTION
            one = scene0 / (rate * 1e6 / 8 * frac)
        else:
            ones = [r["last_ready_s"] - load0 for r in rs if r["n"] == 1]
            if not ones:
                continue
            one = ones[0]
        pts_last = [(r["n"], (r["last_ready_s"] - load0) / one) for r in rs]
        pts_first = [(r["n"], (r["first_ready_s"] - load0) / one) for r in rs]
        pts_mean = [(r["n"], (r["mean_ready_s"] - load0) / one) for r in rs]
        if len(pts_last) < 2:
            continue
        fits[lab] = {"one_transfer_s": one, "last": fit(pts_last), "first": fit(pts_first),
                     "mean": fit(pts_mean), "points": sorted(rs, key=lambda r: r["n"])}
    if label not in fits:
        sys.exit(f"scale_model: too few points to fit readiness from {label}")
    p.k_last = lambda n, f=fits[label]["last"]: f["a"] + f["b"] * f["g"](n)
    p.k_first = lambda n, f=fits[label]["first"]: f["a"] + f["b"] * f["g"](n)
    p.k_mean = lambda n, f=fits[label]["mean"]: f["a"] + f["b"] * f["g"](n)
    return p, fits, label, scene0, load0


def print_measurements(run, binary, fits, label, scene0, load0, p):
    print(f"\nMeasured scene shipping ({scene0 / 1e6:.1f} MB compiled; load with a warm cache "
          f"{load0:.2f} s), seconds after the master started:\n")
    print("| link | N | first ready | mean | last ready | master sent | copies | k last |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for lab, f in fits.items():
        for r in f["points"]:
            copies = r["master_bytes"] / scene0 if scene0 else float("nan")
            k = (r["last_ready_s"] - load0) / f["one_transfer_s"]
            print(f"| {lab} | {r['n']} | {r['first_ready_s']:.2f} | {r['mean_ready_s']:.2f} | {r['last_ready_s']:.2f} | "
                  f"{r['master_bytes'] / 1e6:.1f} MB | {copies:.2f} | {k:.2f} |")
    print("\nReadiness fits (k: ready time in transfers of one scene over one link):\n")
    for lab, f in fits.items():
        mark = " (used)" if lab == label else ""
        alt = ", ".join(f"{nm}: sse {v['sse']:.3g}" for nm, v in f["last"]["other"].items())
        print(f"- {lab}{mark}: one transfer {f['one_transfer_s']:.2f} s; last {fmt_fit(f['last'])} "
              f"({alt}); mean {fmt_fit(f['mean'])}; first {fmt_fit(f['first'])}")
    print(f"\nNode speed {p.samples_per_s / 1e6:.2f} M samples/s; goodput {p.goodput_fraction:.3f} of the "
          f"link rate; per result {p.bytes1:.0f} B / {p.us1:.1f} us single, {p.bytes8:.0f} B / "
          f"{p.us8:.1f} us joined by 8; master cores {p.master_cores}; scene {p.scene_bytes / 1e6:.0f} MB")
    for e in run.get("e2e", []):
        if e.get("binary") != binary:
            continue
        a = e["args"].split()
        val = {a[i]: a[i + 1] for i in range(len(a) - 1) if a[i].startswith("--")}
        w, h, spp = int(val.get("--width", 0)), int(val.get("--height", 0)), int(val.get("--spp", 0))
        units = math.ceil(w / TILE) * math.ceil(h / TILE) * math.ceil(spp / UNIT_SPP)
        counts = results_of(units, 2)
        pred = sum(c * interp(j, p.bytes1, p.bytes8) for j, c in counts.items())
        n_res = sum(counts.values())
        got = e["master_bytes_received_ss"]
        line = e.get("results_line")
        cpu = e["master_cpu_s"] - e.get("master_cpu_s_one_unit", 0.0)
        print(f"\nEnd to end ({e['args']}, 2 workers on loopback, {e['wall_s']} s): the master received "
              f"{got / 1e6:.2f} MB (ss: sums plus framing, encryption, heartbeats), the model says "
              f"{pred / 1e6:.2f} MB of sums in {n_res} results for {units} units ({got / pred:.2f}x); "
              f"the master's CPU {e['master_cpu_s']:.3f} s, {cpu:.3f} s more than for a one-unit render "
              f"({100 * cpu / e['wall_s']:.1f}% of a core; at most {cpu / n_res * 1e6:.0f} us per result, "
              "timers and progress included, so the model keeps unit_codec's figure)")
        if line and line.get('ms') is not None:
            print(f"  the master's own count: {line['results']} results, {line['bytes'] / 1e6:.2f} MB "
                  f"of sums, {line['ms']:.0f} ms decoding and merging "
                  f"({line['ms'] * 1e3 / max(1, line['results']):.1f} us per result)")
        elif line:
            print(f"  the master's own count: {line['results']} results, {line['bytes'] / 1e6:.2f} MB "
                  f"of sums ({line['bytes'] / max(1, line['results']):.0f} bytes per result)")


def main():
    ap = argparse.ArgumentParser(description="issue 15's scale table from benches/scale.sh measurements")
    ap.add_argument("run", nargs="?", help="JSON written by benches/scale.sh")
    ap.add_argument("--before", action="store_true", help="the issue's table from the issue's figures")
    ap.add_argument("--fit-from", help="loopback or a measured rate in Mbit/s")
    ap.add_argument("--scene-mb", type=float, default=133)
    ap.add_argument("--master-cores", type=float, default=2)
    ap.add_argument("--samples-per-s", type=float)
    args = ap.parse_args()
    run = None
    if args.run:
        with open(args.run) as f:
            run = json.load(f)
    if args.before:
        p = before_params(run, args)
        print(f"Before (the issue's figures): {args.scene_mb:.0f} MB scene, every copy from the master "
              f"({p.ship_is_per_node_time:.2f} s per node at 1 Gbit/s), {UNITS} results of "
              f"{ISSUE['bytes_per_result'] / 1e3:.1f} KB and {ISSUE['us_per_result']:.0f} us, node speed "
              f"{p.samples_per_s / 1e6:.2f} M samples/s, master cores {p.master_cores:g}")
        print_table(model(p), f"% of linear, {WIDTH}x{HEIGHT} at {SPP} spp ({UNITS} units), before")
        return
    if not run:
        ap.error("give a run's JSON, or --before")
    bins = [b["path"] for b in run["binaries"]]
    print(f"Run {run['date_utc']} ({run['settings']['command']}); host {run['host']['cores']} cores, "
          f"load {run['host']['loadavg_start']} -> {run['host']['loadavg_end']}")
    for note in run.get("notices", []):
        print(f"notice: {note}")
    load = float(run["host"]["loadavg_start"].split()[0])
    if load > run["host"]["cores"] / 2:
        print(f"note: load average {load} at the start on {run['host']['cores']} cores: the node speed and "
              "the per-result CPU were measured on a busy machine (low); shipping over shaped links "
              "is bound by the link, not the CPU. --samples-per-s sets a node speed to compare tables")
    for b in bins:
        version = next(x["version"] for x in run["binaries"] if x["path"] == b)
        out = []
        p, fits, label, scene0, load0 = measured_params(run, b, args, out)
        print(f"\n## {b} ({version})")
        for o in out:
            print(f"note: {o}")
        print_measurements(run, b, fits, label, scene0, load0, p)
        print_table(model(p), f"% of linear, {WIDTH}x{HEIGHT} at {SPP} spp ({UNITS} units), "
                    f"readiness fitted on {label}")


if __name__ == "__main__":
    main()
