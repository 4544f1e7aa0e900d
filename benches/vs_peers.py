"""Render efficiency on the Cornell box: rayfarm beside Mitsuba 3 (LLVM) and Blender Cycles.

Run by benches/vs_peers.sh with the Python of a venv that holds `mitsuba` and `bpy` (see that
script for the set-up). Every renderer renders the same scene (the glTF of
../shared/scenes/cornell-box, translated for each peer below) at the same size, bounces and
threads; each timed run is compared with a reference image and the script prints, per renderer:

  seconds     median wall time of the timed runs (see "What is timed");
  relMSE      mean over the timed runs of  mean over pixels and RGB channels of
                  (x - r)^2 / (r^2 + 0.01)        x: the run's pixel, r: the reference's;
  efficiency  1 / (relMSE x seconds): higher is better; ratios of it compare renderers;
  mean / ref  the image's mean RGB over the reference's, per channel: a systematic difference
              (a convention mismatch) shows here, while noise moves it by about its standard
              error (printed); beyond 1% and 4 standard errors the script warns.

Reference (`--reference shared`, the default): Mitsuba, independent sampler, 4096 spp, rendered
once in seeded passes and averaged, cached under $XDG_CACHE_HOME/rayfarm-bench/refs (default
~/.cache) with a key of the scene files' contents and every setting that changes the image.
`--reference own` compares each renderer with a 4096-spp image of its own (each cached too and
made only when asked for; rayfarm's is keyed by the binary's contents).
The reference is itself noisy: its error adds about 1/64 of a 64-spp render's relMSE.

Renderers (the names --only takes):
  rayfarm[-LABEL]  `RAYFARM render SCENE -o X.exr --width W --height H --spp S --max-bounces B
                   --threads T --seed K --quiet`, one process per run; several binaries with
                   --rayfarm-bin LABEL=PATH (first one: the one the goals are judged for).
  mitsuba-indep    Mitsuba 3 `llvm_ad_rgb`, `independent` sampler;
  mitsuba-mj       the same with the `multijitter` sampler;
  cycles           Blender Cycles (the `bpy` wheel), CPU.
Runs alternate: rayfarm, mitsuba-indep, mitsuba-mj, cycles, rayfarm, ...; repeat k uses seed k.

What is timed:
  rayfarm   the whole process, wall clock: start, scene loading, BVH build, render, EXR write.
            This includes loading, which the peers' times do not: it favours the peers.
  Mitsuba   `mi.render(scene, spp, seed)` and `dr.eval` + `dr.sync_thread` of the result, in a
            long-lived process whose kernel cache was warmed by one untimed render of the same
            settings (the scene is loaded once, untimed).
  Cycles    `bpy.ops.render.render()` (scene sync, BVH build and render) in a long-lived process
            that imported the glTF once and made one untimed 1-spp render first.

Conventions of our scene, and how each peer is given them:
  * materials are Lambert (`KHR_materials_specular` 0) and shaded on both faces:
      Mitsuba `twosided(diffuse)`; Cycles a Diffuse BSDF of roughness 0 (Lambert) replacing the
      importer's Principled BSDF, backface culling off;
  * the light emits from its front face only (along the triangles' CCW normal):
      Mitsuba `area` emitter, one-sided by definition, geometry from the glTF with face normals;
      Cycles Emission whose strength is multiplied by (1 - Geometry.Backfacing), and the
      material's emission sampling set to 'FRONT';
  * film: one sample lands uniformly in its pixel and counts for that pixel alone (rayfarm's
    film, crates/rayfarm-render/src/film.rs / integrator.rs): Mitsuba `box` filter (radius 0.5);
    Cycles `BOX` pixel filter of width 1 px;
  * bounces: rayfarm --max-bounces B = Mitsuba `max_depth` B + 2 = Cycles `max_bounces` B
    (Cycles diffuse/glossy/transmission/volume/transparent bounces B too);
  * light selection by power: rayfarm picks the Cornell box's two emissive triangles by power
    (scenes with four or more lights with a place go through its light tree, protocol 13);
    Cycles' light tree is switched off (`use_light_tree` False: triangles by power); Mitsuba
    samples the single emitter's area uniformly (the same here: one material);
  * Russian roulette: rayfarm decides after the BSDF sample of the 5th vertex on (depth >= 5,
    as Mitsuba's default; --rr-depth tells the script another D for an older build), continuing
    with probability min(max(throughput), 1). The peers keep their own defaults unless
    --peer-rr matched: then Mitsuba `rr_depth` D (its depth
    counts the same way; its probability is capped at 0.95, which cannot be changed); Cycles
    `min_light_bounces` D - 1: its first roulette weighs the same
    throughput (3 BSDF weights), at the next hit (whose emission it still adds) rather than
    before tracing to it, with probability min(sqrt(max(throughput)), 1), which cannot be
    changed: Cycles keeps paths longer (less noise, more time). --peer-rr default (the default)
    leaves the peers' defaults (Mitsuba rr_depth 5; Cycles min_light_bounces 0);
  * Cycles extras: no denoiser, no adaptive sampling, no clamping (sample_clamp_direct/indirect
    0), filter_glossy 0, caustics on, light_sampling_threshold 0, path guiding off, fixed seed per
    run, CPU device, `threads_mode` FIXED with --threads threads; its sampling pattern is left at
    Blender's default (printed).

glTF scenes with an environment map (`--env HDR`): rayfarm beside Cycles only.
  e.g. --scene ../shared/scenes/water-bottle/glTF/WaterBottle.gltf
       --env ../shared/scenes/environments/chinese_garden_1k.hdr
  Mitsuba 3 has no glTF importer (the Cornell mode above translates the Cornell box's untextured
  Lambert triangles by hand; textured metallic-roughness glTF is not translated), so it is
  skipped. Each renderer is compared with its own converged image (`--reference own`, forced;
  --ref-spp default 1024), since their material models differ; defaults 320x320, 8 bounces.
  A 1024-spp reference adds about 1/16 of a 64-spp render's relMSE, to both renderers alike.
  * rayfarm: the Cornell command plus `--env HDR`;
  * Cycles: Blender's own glTF importer (materials as it makes them: Principled BSDF with the
    textures; lights with export_import_convert_lighting_mode COMPAT), Principled switched to
    single-scatter GGX, the microfacet model of the glTF BRDF (--cycles-ggx multi keeps the
    importer's multiscatter GGX); the Cornell mode's render settings otherwise (box filter,
    bounces, no denoising or adaptive sampling, no clamping, light tree off unless
    --cycles-light-tree on (Blender's own default; rayfarm has one too since protocol 13, used
    with four or more emissive triangles or point and spot lights). Measure both and compare
    with Cycles' better one: on the water bottle Cycles does better with it off (2026-12-07:
    efficiency 667 off, 472 on), in benches/lamp_hall.py's hall of 48 lamps with it on (64 on,
    15 off); world importance map at Cycles' default, AUTOMATIC);
  * camera: the scene's first camera if it has one, else rayfarm's automatic camera
    (crates/rayfarm-scene/src/camera.rs `auto_camera`: the bounds' centre seen from direction
    normalize(0.35, 0.3, 1), yfov 40 deg, distance radius / sin(min(yfov, xfov) / 2) x 1.02, the
    bounds as `rayfarm info` prints them). Cycles is given that camera as a new camera object
    (glTF Y-up -> Blender Z-up: (x, y, z) -> (x, -z, y), as the importer converts the scene),
    sensor fit VERTICAL with the same vertical field of view; rayfarm's film keeps yfov and
    widens x with the image's aspect, as VERTICAL does;
  * environment: rayfarm looks up u = 0.5 + atan2(d.x, -d.z) / 2pi, v = acos(d.y) / pi (glTF
    axes, v = 0 the top row); Cycles' equirectangular lookup is u = 0.5 - atan2(y, x) / 2pi with
    +Z at the top (Blender axes), so its world is Texture Coordinate Generated -> Mapping (Vector,
    rotation Z -90 deg) -> Environment Texture (linear interpolation) -> Background strength 1;
  * match check, printed after the references: a Python model of the pure environment (rays
    of rayfarm's camera, 4x4 per pixel, rayfarm's lookup) against both converged images on the
    pixels whose rays all miss the scene's bounding sphere (this checks camera and environment
    mapping), and the two converged images' means over a 3x3 grid of regions and over the
    object (inside the sphere's outline): differences there come from the material models and
    are reported, not judged. With --out the references go there as a side-by-side PNG.

The EXR files are read with mitsuba's Bitmap (float32, linear Rec.709 in all three).
The table's "CPU cores" is the renderer process's CPU time (all threads) over its timed seconds:
at most --threads when the renderer keeps to its thread count, less on a busy machine.
"""

import argparse
import hashlib
import json
import math
import os
import re
import resource
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SCENE = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "scenes", "cornell-box",
                                              "converted", "cornell_box.gltf"))
# Bump when the translation of the scene for a peer changes, so that cached references made
# from the old translation are not reused.
CONVENTIONS_VERSION = 1
REL_EPS = 0.01
FORMULA = "relMSE = mean over pixels and RGB channels of (x - r)^2 / (r^2 + 0.01)"
PEERS = ("mitsuba-indep", "mitsuba-mj", "cycles")
MI_SAMPLER = {"mitsuba-indep": "independent", "mitsuba-mj": "multijitter"}
GOALS = {"mitsuba-best": 2.0, "cycles": 5.0}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- glTF geometry

def _quat_to_mat(q):
    x, y, z, w = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _node_matrix(node):
    if "matrix" in node:
        return np.array(node["matrix"], dtype=np.float64).reshape(4, 4).T  # column-major
    m = np.eye(4)
    s = np.diag(node.get("scale", [1.0, 1.0, 1.0]))
    m[:3, :3] = _quat_to_mat(node.get("rotation", [0.0, 0.0, 0.0, 1.0])) @ s
    m[:3, 3] = node.get("translation", [0.0, 0.0, 0.0])
    return m


def load_gltf(path, require_camera=True, check_materials=True):
    """Triangles, materials and the first camera of a .gltf (external .bin buffers).

    Returns {"meshes": [{name, positions (n,3) world space, indices (m,3), material}],
             "materials": [{name, base, emission (RGB radiance), double_sided, specular, metallic}],
             "camera": {origin, target, up, yfov_deg}} (None without a camera when not
             require_camera).
    """
    with open(path) as f:
        doc = json.load(f)
    base_dir = os.path.dirname(os.path.abspath(path))
    buffers = []
    for b in doc["buffers"]:
        with open(os.path.join(base_dir, b["uri"]), "rb") as f:
            buffers.append(f.read())
    ncomp = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
    dtype = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}

    def accessor(i):
        a = doc["accessors"][i]
        bv = doc["bufferViews"][a["bufferView"]]
        n, k, dt = a["count"], ncomp[a["type"]], np.dtype(dtype[a["componentType"]])
        start = bv.get("byteOffset", 0) + a.get("byteOffset", 0)
        stride = bv.get("byteStride", k * dt.itemsize)
        raw = np.frombuffer(buffers[bv["buffer"]], dtype=np.uint8)
        rows = [raw[start + j * stride: start + j * stride + k * dt.itemsize].view(dt) for j in range(n)]
        return np.array(rows).reshape(n, k)

    materials = []
    for m in doc.get("materials", []):
        pbr = m.get("pbrMetallicRoughness", {})
        ext = m.get("extensions", {})
        strength = ext.get("KHR_materials_emissive_strength", {}).get("emissiveStrength", 1.0)
        materials.append({
            "name": m.get("name", f"material{len(materials)}"),
            "base": list(pbr.get("baseColorFactor", [1, 1, 1, 1])[:3]),
            "metallic": pbr.get("metallicFactor", 1.0),
            "specular": ext.get("KHR_materials_specular", {}).get("specularFactor", 1.0),
            "emission": [c * strength for c in m.get("emissiveFactor", [0, 0, 0])],
            "double_sided": m.get("doubleSided", False),
            "textured": any(k.endswith("Texture") for k in pbr) or "emissiveTexture" in m,
        })

    meshes, camera = [], None

    def walk(ni, parent):
        nonlocal camera
        node = doc["nodes"][ni]
        world = parent @ _node_matrix(node)
        if "mesh" in node:
            mesh = doc["meshes"][node["mesh"]]
            for pi, prim in enumerate(mesh["primitives"]):
                if prim.get("mode", 4) != 4:
                    raise RuntimeError(f"{path}: mesh {mesh.get('name')}: only triangle lists are supported")
                pos = accessor(prim["attributes"]["POSITION"]).astype(np.float64)
                pos = (np.c_[pos, np.ones(len(pos))] @ world.T)[:, :3]
                if "indices" in prim:
                    idx = accessor(prim["indices"]).reshape(-1, 3).astype(np.uint32)
                else:
                    idx = np.arange(len(pos), dtype=np.uint32).reshape(-1, 3)
                if np.linalg.det(world[:3, :3]) < 0:
                    idx = idx[:, ::-1].copy()  # a mirroring transform flips the winding
                name = node.get("name") or mesh.get("name") or f"mesh{len(meshes)}"
                meshes.append({"name": f"{name}_{pi}" if len(mesh["primitives"]) > 1 else name,
                               "positions": pos.astype(np.float32), "indices": idx,
                               "material": prim.get("material")})
        if "camera" in node and camera is None:
            cam = doc["cameras"][node["camera"]]
            if cam.get("type") != "perspective":
                raise RuntimeError(f"{path}: the first camera is not perspective")
            origin = world @ [0, 0, 0, 1]
            ahead = world @ [0, 0, -1, 0]
            up = world @ [0, 1, 0, 0]
            camera = {"origin": origin[:3].tolist(), "target": (origin[:3] + ahead[:3]).tolist(),
                      "up": up[:3].tolist(), "yfov_deg": math.degrees(cam["perspective"]["yfov"])}
        for c in node.get("children", []):
            walk(c, world)

    for ni in doc["scenes"][doc.get("scene", 0)]["nodes"]:
        walk(ni, np.eye(4))
    if camera is None and require_camera:
        raise RuntimeError(f"{path}: no camera")
    for mat in materials if check_materials else []:
        if mat["metallic"] != 0 or mat["specular"] != 0 or mat["textured"]:
            log(f"warning: material {mat['name']}: only untextured Lambert (metallic 0, "
                f"KHR_materials_specular 0) is translated for Mitsuba; it is rendered as Lambert")
    return {"meshes": meshes, "materials": materials, "camera": camera, "doc": doc}


def scene_files(path):
    """The scene file and the buffers it names (for the cache key)."""
    with open(path) as f:
        doc = json.load(f)
    d = os.path.dirname(os.path.abspath(path))
    return [path] + [os.path.join(d, urllib.parse.unquote(b["uri"]))
                     for b in doc.get("buffers", []) + doc.get("images", [])
                     if "uri" in b and not b["uri"].startswith("data:")]


def write_ply(path, positions, indices):
    with open(path, "wb") as f:
        f.write((f"ply\nformat binary_little_endian 1.0\nelement vertex {len(positions)}\n"
                 "property float x\nproperty float y\nproperty float z\n"
                 f"element face {len(indices)}\nproperty list uchar int vertex_indices\nend_header\n").encode())
        f.write(np.ascontiguousarray(positions, dtype="<f4").tobytes())
        for tri in indices:
            f.write(struct.pack("<Biii", 3, *map(int, tri)))


# ----------------------------------------------------------------------------- glTF + environment

AUTO_CAMERA_YFOV_DEG = 40.0  # crates/rayfarm-scene/src/camera.rs


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def rayfarm_bounds(binary, scene):
    """The scene's bounds as rayfarm computes them (all triangle vertices, world space), from
    `rayfarm info`."""
    run = subprocess.run([binary, "info", scene], capture_output=True, text=True)
    m = re.search(r"bounds \[([^\]]*)\] \.\. \[([^\]]*)\]", run.stdout + run.stderr)
    if run.returncode != 0 or not m:
        raise RuntimeError(f"`{binary} info {scene}` printed no bounds (exit {run.returncode}):\n"
                           f"{run.stdout}{run.stderr}")
    return [np.array([float(x) for x in g.split(",")]) for g in m.groups()]


def auto_camera(lo, hi, aspect):
    """rayfarm's automatic camera (crates/rayfarm-scene/src/camera.rs `auto_camera`)."""
    center = (lo + hi) * 0.5
    radius = max(np.linalg.norm(hi - lo) * 0.5, 1e-3)
    yfov = math.radians(AUTO_CAMERA_YFOV_DEG)
    xfov = 2.0 * math.atan(math.tan(yfov * 0.5) * max(aspect, 1e-3))
    half = 0.5 * min(yfov, xfov)
    distance = radius / math.sin(half) * 1.02
    d = _unit([0.35, 0.3, 1.0])
    forward = -d
    right = _unit(np.cross(forward, [0.0, 1.0, 0.0]))
    return {"source": "rayfarm's automatic camera", "position": (center + d * distance).tolist(),
            "right": right.tolist(), "up": np.cross(right, forward).tolist(),
            "forward": forward.tolist(), "yfov": yfov}


def gltf_env_camera(args, binary):
    """(camera {source, position, right, up, forward (glTF axes), yfov (radians)}, bounds):
    the scene's first camera, else rayfarm's automatic one for the image's aspect."""
    lo = hi = None
    if binary:
        lo, hi = rayfarm_bounds(binary, os.path.abspath(args.scene))
    try:
        sc = load_gltf(args.scene, require_camera=False, check_materials=False)
    except Exception as e:  # the Python reader is minimal (no sparse accessors, no data: URIs)
        log(f"note: the script's glTF reader cannot read {args.scene} ({e}); bounds from `rayfarm info` only")
        sc = None
    if sc is not None and sc["meshes"]:
        p = np.concatenate([m["positions"] for m in sc["meshes"]]).astype(np.float64)
        plo, phi = p.min(axis=0), p.max(axis=0)
        if lo is None:
            lo, hi = plo, phi
        elif np.max(np.abs(np.r_[plo - lo, phi - hi])) > 1e-4 * max(np.linalg.norm(hi - lo), 1e-6):
            log(f"warning: bounds from the glTF {plo.tolist()} .. {phi.tolist()} differ from "
                f"rayfarm's {lo.tolist()} .. {hi.tolist()}; rayfarm's are used")
    if lo is None:
        raise RuntimeError("no scene bounds for the camera: no rayfarm binary (`rayfarm info`) and "
                           "the script's glTF reader failed")
    if sc is not None and sc["camera"] is not None:
        c = sc["camera"]
        forward = _unit(np.subtract(c["target"], c["origin"]))
        right = _unit(np.cross(forward, c["up"]))
        cam = {"source": "the scene's first camera", "position": list(c["origin"]),
               "right": right.tolist(), "up": np.cross(right, forward).tolist(),
               "forward": forward.tolist(), "yfov": math.radians(c["yfov_deg"])}
    else:
        cam = auto_camera(lo, hi, args.width / args.height)
    return cam, (lo, hi)


def gltf_to_blender(v):
    """glTF (Y up) to Blender (Z up) axes, as Blender's glTF importer converts: (x, -z, y)."""
    return [v[0], -v[2], v[1]]


def camera_rays(cam, width, height, ss):
    """Directions (height, width, ss*ss, 3) of rayfarm's camera_ray at ss x ss stratified
    points per pixel (crates/rayfarm-render/src/integrator.rs)."""
    k = (np.arange(ss) + 0.5) / ss
    fy = (np.arange(height)[:, None] + k[None, :]).reshape(height, 1, ss, 1)
    fx = (np.arange(width)[:, None] + k[None, :]).reshape(1, width, 1, ss)
    sx = 2.0 * fx / width - 1.0
    sy = 1.0 - 2.0 * fy / height
    th, aspect = math.tan(cam["yfov"] * 0.5), width / height
    r, u, f = (np.array(cam[n]) for n in ("right", "up", "forward"))
    d = (sx * th * aspect)[..., None] * r + (sy * th)[..., None] * u + f
    d = np.broadcast_to(d, (height, width, ss, ss, 3)).reshape(height, width, ss * ss, 3)
    return d / np.linalg.norm(d, axis=-1, keepdims=True)


def env_lookup(tex, d):
    """rayfarm's EnvLight::radiance: u = 0.5 + atan2(x, -z) / 2pi, v = acos(y) / pi, bilinear,
    wrapping in u and clamped in v (crates/rayfarm-render/src/scene.rs)."""
    h, w = tex.shape[:2]
    u = 0.5 + np.arctan2(d[..., 0], -d[..., 2]) / (2 * math.pi)
    v = np.arccos(np.clip(d[..., 1], -1.0, 1.0)) / math.pi
    x = u * w - 0.5
    y = np.clip(v * h - 0.5, 0.0, h - 1)
    x0 = np.floor(x)
    fx = (x - x0)[..., None]
    x0 = x0.astype(np.int64) % w
    x1 = (x0 + 1) % w
    y0 = np.floor(y).astype(np.int64)
    y1 = np.minimum(y0 + 1, h - 1)
    fy = (y - y0)[..., None]
    row = lambda yy: tex[yy, x0] * (1 - fx) + tex[yy, x1] * fx
    return row(y0) * (1 - fy) + row(y1) * fy


def environment_model(cam, bounds, env_path, width, height, ss=4):
    """(pure-environment image of rayfarm's camera, mask of the pixels whose ss*ss rays all
    miss the scene's bounding sphere (radius +2%): environment only in both renderers)."""
    d = camera_rays(cam, width, height, ss)
    img = env_lookup(read_rgb(env_path), d).mean(axis=2)
    lo, hi = bounds
    c, rad = (lo + hi) * 0.5, np.linalg.norm(hi - lo) * 0.5 * 1.02
    oc = c - np.array(cam["position"])
    t = d @ oc  # closest approach along each ray
    miss = oc @ oc - np.maximum(t, 0.0) ** 2 > rad * rad  # behind the camera: camera outside
    return img, miss.all(axis=2)


LUMINANCE = np.array([0.2126, 0.7152, 0.0722])


def match_report(cam, bounds, env_path, refs, outdir, keep):
    """Prints how rayfarm's and Cycles' converged images agree (see the module's docstring);
    returns the figures for the JSON summary."""
    rf, cy = refs["rayfarm"], refs["cycles"]
    h, w = rf.shape[:2]
    model, bg = environment_model(cam, bounds, env_path, w, h)
    out = {"background_pixels": int(bg.sum())}
    print()
    print(f"Match check of the converged images ({w}x{h}); camera: {cam['source']}, position "
          f"{np.round(cam['position'], 5).tolist()}, forward {np.round(cam['forward'], 5).tolist()}, "
          f"yfov {math.degrees(cam['yfov']):.3f} deg")
    if bg.sum() > 0:
        print(f"Environment only ({int(bg.sum())} pixels whose rays all miss the bounding sphere), "
              f"against a Python model of rayfarm's camera and lookup (4x4 rays per pixel):")
        print("| image | mean / model (R G B) | mean abs. pixel difference / model mean |")
        print("|---|---|---:|")
        for name, img in (("rayfarm", rf), ("cycles", cy)):
            ratio = [float(img[bg][:, k].mean() / model[bg][:, k].mean()) for k in range(3)]
            mad = float(np.abs(img[bg] - model[bg]).mean() / model[bg].mean())
            out[f"{name}_env_ratio"], out[f"{name}_env_mad"] = ratio, mad
            print(f"| {name} | {fmt_ratio(ratio)} | {100 * mad:.2f}% |")
    else:
        print("Environment only: no pixel misses the bounding sphere (the scene fills the image)")
    print("Mean luminance (Rec.709 Y) per region, rayfarm's converged image over Cycles': regions "
          "of a 3x3 grid (top row first), then the object (inside the bounding sphere's outline) "
          "and the background:")
    y_rf, y_cy = rf @ LUMINANCE, cy @ LUMINANCE
    grid = []
    for i in range(3):
        row = []
        for j in range(3):
            sl = (slice(i * h // 3, (i + 1) * h // 3), slice(j * w // 3, (j + 1) * w // 3))
            row.append(float(y_rf[sl].mean() / y_cy[sl].mean()))
        grid.append(row)
        print("  " + "  ".join(f"{x:6.3f}" for x in row))
    obj = ~bg
    regions = {"object": obj, "background": bg, "whole image": np.ones_like(bg)}
    for name, m in regions.items():
        if m.sum():
            r = float(y_rf[m].mean() / y_cy[m].mean())
            out[f"{name}_ratio"] = r
            rgb_r = [float(rf[m][:, k].mean() / cy[m][:, k].mean()) for k in range(3)]
            print(f"  {name:<11} ({int(m.sum())} px): Y {r:.3f}, R G B {fmt_ratio(rgb_r)} "
                  f"(rayfarm Y {y_rf[m].mean():.4f}, Cycles Y {y_cy[m].mean():.4f})")
    out["grid"] = grid
    if keep:
        sep = np.ones((h, 2, 3))
        png = os.path.join(outdir, "references-rayfarm-cycles-model.png")
        side = np.concatenate([rf, sep, cy, sep, model], axis=1)
        side = np.clip(side, 0.0, 1.0)
        side = np.where(side <= 0.0031308, 12.92 * side, 1.055 * np.power(side, 1 / 2.4) - 0.055)
        _mi_reader.Bitmap((side * 255 + 0.5).astype(np.uint8)).write(png)
        print(f"  side by side (rayfarm | Cycles | environment model, clamped sRGB): {png}")
    return out


# ----------------------------------------------------------------------------- worker: Mitsuba

def mitsuba_worker(cfg, send, requests):
    import drjit as dr
    dr.set_thread_count(cfg["threads"])  # before the variant's JIT starts its pool
    import mitsuba as mi
    mi.set_variant("llvm_ad_rgb")
    mi.set_log_level(mi.LogLevel.Warn)
    dr.set_thread_count(cfg["threads"])
    sc = load_gltf(cfg["scene"])
    tmp = tempfile.mkdtemp(prefix="vs_peers_mi_")
    try:
        cam = sc["camera"]
        try:
            to_world = mi.ScalarTransform4f().look_at(origin=cam["origin"], target=cam["target"], up=cam["up"])
        except TypeError:
            to_world = mi.ScalarTransform4f.look_at(origin=cam["origin"], target=cam["target"], up=cam["up"])
        base = {"type": "scene",
                "integrator": {"type": "path", "max_depth": cfg["bounces"] + 2}}
        if cfg["rr_depth"] is not None:
            base["integrator"]["rr_depth"] = cfg["rr_depth"]
        for k, m in enumerate(sc["meshes"]):
            ply = os.path.join(tmp, f"mesh{k}.ply")
            write_ply(ply, m["positions"], m["indices"])
            mat = sc["materials"][m["material"]] if m["material"] is not None else \
                {"base": [1, 1, 1], "emission": [0, 0, 0]}
            shape = {"type": "ply", "filename": ply, "face_normals": True,
                     "bsdf": {"type": "twosided",  # our convention: back faces shaded
                              "bsdf": {"type": "diffuse",
                                       "reflectance": {"type": "rgb", "value": mat["base"]}}}}
            if any(c > 0 for c in mat["emission"]):
                # Mitsuba's area emitter emits on the front side (CCW normal) only, as ours does.
                shape["emitter"] = {"type": "area", "radiance": {"type": "rgb", "value": mat["emission"]}}
            base[f"shape{k}_{m['name']}"] = shape
        scenes = {}

        def scene_for(sampler, spp):
            key = (sampler, spp)
            if key not in scenes:
                d = dict(base)
                d["sensor"] = {
                    "type": "perspective", "fov_axis": "y", "fov": cam["yfov_deg"],
                    "near_clip": 0.01, "far_clip": 1000.0, "to_world": to_world,
                    "sampler": {"type": sampler, "sample_count": spp},
                    "film": {"type": "hdrfilm", "width": cfg["width"], "height": cfg["height"],
                             "rfilter": {"type": "box"}, "pixel_format": "rgb",
                             "component_format": "float32"}}
                scenes[key] = mi.load_dict(d)
            return scenes[key]

        send({"ready": True, "mitsuba": mi.__version__, "drjit": dr.__version__,
              "threads": dr.thread_count()})
        for req in requests:
            scene = scene_for(req["sampler"], req["spp"])
            c0, t0 = time.process_time(), time.perf_counter()
            img = mi.render(scene, spp=req["spp"], seed=req["seed"])
            dr.eval(img)
            dr.sync_thread()
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            mi.Bitmap(img).write(req["out"])
            send({"seconds": seconds, "cpu": cpu})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- worker: Cycles

def cycles_gltf_env_setup(cfg, bpy):
    """glTF + environment mode: the importer's materials, rayfarm's camera, the environment
    rotated to rayfarm's mapping (see the module's docstring). Returns notes."""
    from mathutils import Matrix
    # glTF light intensities as given (the numbers rayfarm uses); 'SPEC' would divide by 683.
    bpy.ops.import_scene.gltf(filepath=cfg["scene"], export_import_convert_lighting_mode="COMPAT")
    scene = bpy.context.scene
    notes = []
    if cfg["ggx"] == "single":
        n = 0
        for mat in bpy.data.materials:
            for node in mat.node_tree.nodes if mat.node_tree else []:
                if node.type in ("BSDF_PRINCIPLED", "BSDF_GLASS") and node.distribution != "GGX":
                    node.distribution = "GGX"
                    n += 1
        notes.append(f"{n} Principled/Glass BSDF(s) switched to single-scatter GGX (the glTF BRDF's)")
    else:
        notes.append("Principled BSDFs as imported (multiscatter GGX)")
    for o in scene.objects:
        if o.type == "LIGHT" and o.data.type == "SUN":
            o.data.angle = 0.0  # glTF's directional light is a delta light, as in rayfarm

    cam = cfg["camera"]
    data = bpy.data.cameras.new("rayfarm_camera")
    data.type = "PERSP"
    data.sensor_fit = "VERTICAL"
    data.angle_y = cam["yfov"]
    data.shift_x = data.shift_y = 0.0
    data.clip_start = 1e-6
    data.clip_end = 1e6
    obj = bpy.data.objects.new("rayfarm_camera", data)
    scene.collection.objects.link(obj)
    r, u, f, p = (gltf_to_blender(cam[k]) for k in ("right", "up", "forward", "position"))
    # A camera looks down its local -Z with +Y up, in Blender as in glTF.
    obj.matrix_world = Matrix([[r[i], u[i], -f[i], p[i]] for i in range(3)] + [[0, 0, 0, 1]])
    scene.camera = obj

    world = bpy.data.worlds.new("rayfarm_env")
    if bpy.app.version < (5, 0, 0):
        world.use_nodes = True
    tree = world.node_tree
    tree.nodes.clear()
    coord = tree.nodes.new("ShaderNodeTexCoord")
    mapping = tree.nodes.new("ShaderNodeMapping")
    mapping.vector_type = "VECTOR"
    mapping.inputs["Rotation"].default_value = (0.0, 0.0, -math.pi / 2)
    tex = tree.nodes.new("ShaderNodeTexEnvironment")
    tex.image = bpy.data.images.load(cfg["env"])
    tex.interpolation = "Linear"
    tex.projection = "EQUIRECTANGULAR"
    bg = tree.nodes.new("ShaderNodeBackground")
    bg.inputs["Strength"].default_value = 1.0
    out = tree.nodes.new("ShaderNodeOutputWorld")
    tree.links.new(coord.outputs["Generated"], mapping.inputs["Vector"])
    tree.links.new(mapping.outputs["Vector"], tex.inputs["Vector"])
    tree.links.new(tex.outputs["Color"], bg.inputs["Color"])
    tree.links.new(bg.outputs["Background"], out.inputs["Surface"])
    scene.world = world
    notes.append(f"environment {os.path.basename(cfg['env'])} colour space "
                 f"{tex.image.colorspace_settings.name}; world importance map "
                 f"{getattr(world.cycles, 'sampling_method', '?')}")
    return notes


def cycles_cornell_setup(cfg, bpy):
    """The Cornell mode: the importer's camera; Lambert on both faces; emission from the front
    face only. Returns notes."""
    bpy.ops.import_scene.gltf(filepath=cfg["scene"])
    sc = load_gltf(cfg["scene"])
    scene = bpy.context.scene
    cams = [o for o in scene.objects if o.type == "CAMERA"]
    if not cams:
        raise RuntimeError("the glTF importer made no camera")
    scene.camera = cams[0]

    # Materials: Lambert on both faces; emission from the front face only.
    notes = []
    for m in sc["materials"]:
        mat = bpy.data.materials.get(m["name"])
        if mat is None:
            raise RuntimeError(f"no Blender material named {m['name']!r} after the import")
        mat.use_backface_culling = False
        tree = mat.node_tree
        tree.nodes.clear()
        out = tree.nodes.new("ShaderNodeOutputMaterial")
        diffuse = tree.nodes.new("ShaderNodeBsdfDiffuse")
        diffuse.inputs["Color"].default_value = (*m["base"], 1.0)
        diffuse.inputs["Roughness"].default_value = 0.0  # Lambert (above 0: Oren-Nayar)
        surface = diffuse.outputs[0]
        peak = max(m["emission"])
        if peak > 0:
            em = tree.nodes.new("ShaderNodeEmission")
            em.inputs["Color"].default_value = (*[c / peak for c in m["emission"]], 1.0)
            geo = tree.nodes.new("ShaderNodeNewGeometry")
            front = tree.nodes.new("ShaderNodeMath")
            front.operation = "MULTIPLY_ADD"  # backfacing * (-peak) + peak = peak * (1 - backfacing)
            tree.links.new(geo.outputs["Backfacing"], front.inputs[0])
            front.inputs[1].default_value = -peak
            front.inputs[2].default_value = peak
            tree.links.new(front.outputs[0], em.inputs["Strength"])
            add = tree.nodes.new("ShaderNodeAddShader")
            tree.links.new(diffuse.outputs[0], add.inputs[0])
            tree.links.new(em.outputs[0], add.inputs[1])
            surface = add.outputs[0]
            if hasattr(mat, "cycles") and hasattr(mat.cycles, "emission_sampling"):
                mat.cycles.emission_sampling = "FRONT"
            else:
                notes.append("no emission_sampling setting: back faces of the light are sampled too")
        tree.links.new(surface, out.inputs["Surface"])
    return notes


def cycles_worker(cfg, send, requests):
    import bpy
    bpy.ops.wm.read_factory_settings(use_empty=True)
    if cfg.get("env"):
        notes = cycles_gltf_env_setup(cfg, bpy)
    else:
        notes = cycles_cornell_setup(cfg, bpy)
    scene = bpy.context.scene
    r = scene.render
    r.engine = "CYCLES"
    r.resolution_x, r.resolution_y, r.resolution_percentage = cfg["width"], cfg["height"], 100
    r.threads_mode, r.threads = "FIXED", cfg["threads"]
    r.film_transparent = False
    c = scene.cycles
    c.device = "CPU"
    c.use_adaptive_sampling = False
    c.use_denoising = False
    if hasattr(c, "use_preview_denoising"):
        c.use_preview_denoising = False
    c.max_bounces = cfg["bounces"]
    for attr in ("diffuse_bounces", "glossy_bounces", "transmission_bounces", "volume_bounces",
                 "transparent_max_bounces"):
        setattr(c, attr, cfg["bounces"])
    if cfg["min_light_bounces"] is not None:
        c.min_light_bounces = cfg["min_light_bounces"]
    c.sample_clamp_direct = 0.0
    c.sample_clamp_indirect = 0.0
    c.blur_glossy = 0.0
    c.caustics_reflective = c.caustics_refractive = True
    c.use_light_tree = bool(cfg.get("light_tree", False))
    c.light_sampling_threshold = 0.0
    if hasattr(c, "use_guiding"):
        c.use_guiding = False
    c.pixel_filter_type = "BOX"
    c.filter_width = 1.0
    c.film_exposure = 1.0
    c.use_animated_seed = False
    vs = scene.view_settings
    vs.view_transform, vs.look, vs.exposure, vs.gamma = "Standard", "None", 0.0, 1.0
    im = r.image_settings
    if hasattr(im, "media_type"):
        im.media_type = "IMAGE"
    im.file_format = "OPEN_EXR"
    im.color_depth = "32"
    im.color_mode = "RGB"
    im.exr_codec = "ZIP"
    info = {"ready": True, "blender": bpy.app.version_string,
            "sampling_pattern": getattr(c, "sampling_pattern", "?"),
            "min_light_bounces": c.min_light_bounces, "light_tree": c.use_light_tree, "notes": notes}

    def render(spp, seed, out):
        c.samples = spp
        c.seed = seed
        c0, t0 = time.process_time(), time.perf_counter()
        bpy.ops.render.render(write_still=False)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        if out:
            bpy.data.images["Render Result"].save_render(filepath=out, scene=scene)
        return {"seconds": seconds, "cpu": cpu}

    render(1, 99999, None)  # untimed warm-up: first-render set-up of the process
    send(info)
    for req in requests:
        send(render(req["spp"], req["seed"], req["out"]))


def worker_main(kind, cfg):
    # The protocol goes over the original stdout; everything the libraries print goes to stderr.
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(obj):
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    def requests():
        for line in sys.stdin:
            if line.strip():
                yield json.loads(line)

    try:
        (mitsuba_worker if kind == "mitsuba" else cycles_worker)(cfg, send, requests())
    except Exception:
        send({"error": traceback.format_exc()})
        sys.exit(1)


class Worker:
    """A long-lived renderer process (Mitsuba or Cycles) that renders on request."""

    def __init__(self, kind, cfg, log_path):
        self.kind = kind
        self.log_path = log_path
        self.log = open(log_path, "w")
        self.p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", kind,
                                   "--worker-config", json.dumps(cfg)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                  text=True)
        self.info = self._recv()

    def _recv(self):
        line = self.p.stdout.readline()
        if not line:
            self.p.wait()
            raise RuntimeError(f"the {self.kind} worker died (exit {self.p.returncode}); its log "
                               f"{self.log_path} ends:\n{tail(self.log_path)}")
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"the {self.kind} worker failed:\n{msg['error']}")
        return msg

    def render(self, **req):
        self.p.stdin.write(json.dumps(req) + "\n")
        self.p.stdin.flush()
        msg = self._recv()
        return msg["seconds"], msg["cpu"]

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.close()
            try:
                self.p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


# ----------------------------------------------------------------------------- images, metrics

_mi_reader = None


def read_rgb(path):
    global _mi_reader
    if _mi_reader is None:
        import mitsuba as mi
        mi.set_variant("scalar_rgb")
        _mi_reader = mi
    bmp = _mi_reader.Bitmap(path)
    a = np.array(bmp, dtype=np.float64)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.shape[2] < 3:
        raise RuntimeError(f"{path}: {a.shape[2]} channel(s)")
    return a[:, :, :3]


def write_rgb(path, img):
    global _mi_reader
    if _mi_reader is None:
        import mitsuba as mi
        mi.set_variant("scalar_rgb")
        _mi_reader = mi
    _mi_reader.Bitmap(np.ascontiguousarray(img, dtype=np.float32)).write(path)


def rel_mse(x, r):
    return float(np.mean((x - r) ** 2 / (r * r + REL_EPS)))


def worst_share(x, r, frac):
    """The share of relMSE that the worst `frac` of the pixels hold."""
    e = np.sort(np.mean((x - r) ** 2 / (r * r + REL_EPS), axis=2).ravel())[::-1]
    return float(e[:max(1, int(len(e) * frac))].sum() / max(e.sum(), 1e-300))


def mean_ratio(x, r):
    """Per channel: mean(x) / mean(r), and the standard error of that ratio from the noise
    (pixel errors taken as independent)."""
    n = x.shape[0] * x.shape[1]
    ratio = [float(x[:, :, c].mean() / r[:, :, c].mean()) for c in range(3)]
    se = [float((x[:, :, c] - r[:, :, c]).std() / math.sqrt(n) / r[:, :, c].mean()) for c in range(3)]
    return ratio, se


def sha256_files(paths):
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- orchestration

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scene", default=DEFAULT_SCENE, help="glTF scene (default: the shared Cornell box)")
    p.add_argument("--env", metavar="HDR",
                   help="equirectangular environment map (.hdr/.exr): the glTF + environment mode, "
                        "rayfarm beside Cycles only, each against its own converged image")
    p.add_argument("--width", type=int, help="default 512 (Cornell), 320 (--env)")
    p.add_argument("--height", type=int, help="default 512 (Cornell), 320 (--env)")
    p.add_argument("--spp", type=int, default=64, help="samples per pixel (all renderers unless overridden)")
    p.add_argument("--mitsuba-spp", type=int, help="Mitsuba's spp (default --spp)")
    p.add_argument("--cycles-spp", type=int, help="Cycles' spp (default --spp)")
    p.add_argument("--bounces", type=int, default=8,
                   help="rayfarm --max-bounces = Cycles max_bounces = Mitsuba max_depth - 2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2, help="timed runs per renderer (alternating)")
    p.add_argument("--only", help="comma-separated renderers: rayfarm (all builds) or rayfarm-LABEL, "
                                  "mitsuba (both samplers), mitsuba-indep, mitsuba-mj, cycles")
    p.add_argument("--rayfarm-bin", action="append", default=[], metavar="[LABEL=]PATH",
                   help="rayfarm binary (repeatable; default env RAYFARM); the first is the one the "
                        "goals are judged for")
    p.add_argument("--rayfarm-env", action="append", default=[], metavar="[LABEL:]KEY=VAL",
                   help="environment for rayfarm runs (all builds, or the one labelled LABEL)")
    p.add_argument("--reference", choices=["shared", "own"],
                   help="shared (the Cornell default): one Mitsuba --ref-spp image for all; own (the "
                        "only choice with --env): each renderer's own --ref-spp image")
    p.add_argument("--ref-spp", type=int, help="reference spp (default 4096; 1024 with --env)")
    p.add_argument("--ref-pass-spp", type=int, default=64, help="Mitsuba references are rendered in passes of this many spp")
    p.add_argument("--rr-depth", type=int,
                   help="rayfarm's Russian-roulette start depth D that --peer-rr matched copies (Mitsuba "
                        "rr_depth D, Cycles min_light_bounces D - 1); default 5 (rayfarm's since 2026-12-06; 3 before)")
    p.add_argument("--peer-rr", choices=["matched", "default"], default="default",
                   help="default: each peer keeps its own defaults (Mitsuba rr_depth 5, Cycles "
                        "min_light_bounces 0); matched: the peers' Russian roulette starts where rayfarm's does")
    p.add_argument("--cycles-ggx", choices=["single", "multi"], default="single",
                   help="--env mode: Cycles' Principled BSDFs in single-scatter GGX (the glTF BRDF's "
                        "microfacet model) or as imported (multiscatter GGX)")
    p.add_argument("--cycles-light-tree", choices=["off", "on"], default="off",
                   help="--env mode: Cycles' light tree (off: lights picked by power; on: Blender's default, "
                        "and what rayfarm does with four or more lights)")
    p.add_argument("--cache", default=os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                                   os.path.expanduser("~/.cache"), "rayfarm-bench"))
    p.add_argument("--out", help="keep the images (and worker logs) in this folder")
    p.add_argument("--json", help="write a JSON summary to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-config", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    gltf = bool(args.env)
    if gltf:
        if args.reference == "shared":
            raise RuntimeError("--env: no shared reference (Mitsuba 3 has no glTF importer); "
                               "each renderer is compared with its own (--reference own)")
        args.env = os.path.abspath(args.env)
        if not os.path.isfile(args.env):
            raise RuntimeError(f"--env {args.env}: no such file")
        if os.path.abspath(args.scene) == os.path.abspath(DEFAULT_SCENE):
            log("note: --env with the Cornell box (the default --scene): a closed box, the "
                "environment is not seen")
    args.reference = args.reference or ("own" if gltf else "shared")
    args.width = args.width or (320 if gltf else 512)
    args.height = args.height or (320 if gltf else 512)
    args.ref_spp = args.ref_spp or (1024 if gltf else 4096)
    return args


def rayfarm_builds(args):
    specs = args.rayfarm_bin or ([os.environ["RAYFARM"]] if os.environ.get("RAYFARM") else [])
    builds = []
    for i, s in enumerate(specs):
        label, path = (s.split("=", 1) if "=" in s and not os.path.exists(s) else (None, s))
        if label is None:
            label = "rayfarm" if len(specs) == 1 else f"rayfarm-{i + 1}"
        elif not label.startswith("rayfarm"):
            label = f"rayfarm-{label}"
        path = os.path.abspath(path)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise RuntimeError(f"no rayfarm binary at {path}")
        builds.append({"label": label, "path": path, "env": {}})
    if len({b["label"] for b in builds}) != len(builds):
        raise RuntimeError("two rayfarm builds have the same label")
    for e in args.rayfarm_env:
        target = None
        if ":" in e.split("=", 1)[0]:
            target, e = e.split(":", 1)
            if not target.startswith("rayfarm"):
                target = f"rayfarm-{target}"
        if "=" not in e:
            raise RuntimeError(f"--rayfarm-env {e}: expected KEY=VAL")
        k, v = e.split("=", 1)
        hit = [b for b in builds if target is None or b["label"] == target]
        if not hit:
            raise RuntimeError(f"--rayfarm-env: no rayfarm build labelled {target}")
        for b in hit:
            b["env"][k] = v
    return builds


def select(args, builds):
    names = [b["label"] for b in builds] + (["cycles"] if args.env else list(PEERS))
    if not args.only:
        chosen = names
    else:
        chosen = []
        for w in (x.strip() for x in args.only.split(",") if x.strip()):
            if w == "rayfarm":
                add = [b["label"] for b in builds]
                if not add:
                    raise RuntimeError("--only rayfarm but no rayfarm binary (--rayfarm-bin or RAYFARM)")
            elif args.env and w.startswith("mitsuba"):
                raise RuntimeError("--only: Mitsuba 3 has no glTF importer; the --env mode compares "
                                   "rayfarm with Cycles only")
            elif w == "mitsuba":
                add = ["mitsuba-indep", "mitsuba-mj"]
            elif w in ("mitsuba-multijitter", "mitsuba-independent"):
                add = ["mitsuba-mj" if w.endswith("multijitter") else "mitsuba-indep"]
            elif w in names:
                add = [w]
            else:
                raise RuntimeError(f"--only: unknown renderer {w!r} (known: {', '.join(names)}, rayfarm, mitsuba)")
            chosen += [a for a in add if a not in chosen]
    if any(n.startswith("rayfarm") for n in chosen) and not builds:
        raise RuntimeError("no rayfarm binary: give --rayfarm-bin or set RAYFARM")
    return [n for n in names if n in chosen]  # fixed alternation order


class Bench:
    def __init__(self, args, builds, outdir, camera=None):
        self.args, self.builds, self.outdir = args, {b["label"]: b for b in builds}, outdir
        self.camera = camera  # --env mode: the camera both renderers use (glTF axes)
        self.load_seconds = {}  # --env mode: rayfarm's 16x16 1-spp run, warm
        self.workers = {}
        self.scene_key = sha256_files(scene_files(args.scene))
        # rayfarm's roulette start (depth >= D after the BSDF sample); matched peers copy it.
        d = args.rr_depth
        if d is None:
            d = 5
        self.rayfarm_rr_depth = d
        self.rr_depth = d if args.peer_rr == "matched" else None
        self.min_light_bounces = max(d - 1, 0) if args.peer_rr == "matched" else None

    def spp(self, name):
        if name.startswith("mitsuba"):
            return self.args.mitsuba_spp or self.args.spp
        if name == "cycles":
            return self.args.cycles_spp or self.args.spp
        return self.args.spp

    def worker(self, kind):
        if kind not in self.workers:
            a = self.args
            cfg = {"scene": os.path.abspath(a.scene), "width": a.width, "height": a.height,
                   "bounces": a.bounces, "threads": a.threads, "rr_depth": self.rr_depth,
                   "min_light_bounces": self.min_light_bounces}
            if a.env:
                cfg.update(env=a.env, camera=self.camera, ggx=a.cycles_ggx,
                           light_tree=a.cycles_light_tree == "on")
            log(f"starting the {kind} worker (log: {os.path.join(self.outdir, kind + '.log')})")
            t0 = time.perf_counter()
            self.workers[kind] = Worker(kind, cfg, os.path.join(self.outdir, f"{kind}.log"))
            log(f"  {kind} ready in {time.perf_counter() - t0:.1f} s: "
                f"{ {k: v for k, v in self.workers[kind].info.items() if k != 'ready'} }")
        return self.workers[kind]

    def render(self, name, spp, seed, out):
        """Renders one image to `out`; returns the timed seconds and the CPU seconds (all
        threads, user + system) the renderer's process spent in that time."""
        if name.startswith("rayfarm"):
            b = self.builds[name]
            a = self.args
            cmd = [b["path"], "render", os.path.abspath(a.scene), "-o", out, "--width", str(a.width),
                   "--height", str(a.height), "--spp", str(spp), "--max-bounces", str(a.bounces),
                   "--threads", str(a.threads), "--seed", str(seed), "--quiet"]
            if a.env:
                cmd += ["--env", a.env]
            env = dict(os.environ, **b["env"])
            r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
            run = subprocess.run(cmd, env=env, capture_output=True, text=True)
            seconds, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
            if run.returncode != 0:
                raise RuntimeError(f"{name} failed (exit {run.returncode}): {' '.join(cmd)}\n{run.stderr}")
            return seconds, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        if name.startswith("mitsuba"):
            return self.worker("mitsuba").render(sampler=MI_SAMPLER[name], spp=spp, seed=seed, out=out)
        return self.worker("cycles").render(spp=spp, seed=seed, out=out)

    def warm_up(self, name):
        """Untimed: Mitsuba compiles (and caches) its kernels for these settings; rayfarm's
        binary is read into the page cache by a tiny render (its timed runs still start and
        load the scene from scratch). Cycles' worker made its warm-up render when it started."""
        out = os.path.join(self.outdir, f"warmup-{name}.exr")
        if name.startswith("mitsuba"):
            t, _ = self.render(name, self.spp(name), 99999, out)
            log(f"  warm-up {name}: {t:.2f} s (untimed; kernel compilation or cache load)")
        elif name.startswith("rayfarm"):
            b = self.builds[name]
            cmd = [b["path"], "render", os.path.abspath(self.args.scene), "-o", out,
                   "--width", "16", "--height", "16", "--spp", "1", "--threads",
                   str(self.args.threads), "--quiet"] + (["--env", self.args.env] if self.args.env else [])
            subprocess.run(cmd, env=dict(os.environ, **b["env"]), check=True, capture_output=True)
            if self.args.env:
                # The same again, now from the page cache: what loading costs in every timed run.
                t0 = time.perf_counter()
                subprocess.run(cmd, env=dict(os.environ, **b["env"]), check=True, capture_output=True)
                self.load_seconds[name] = time.perf_counter() - t0
        else:
            self.worker("cycles")

    # -- references

    def ref_key(self, who):
        a = self.args
        key = {"scene": self.scene_key, "width": a.width, "height": a.height, "bounces": a.bounces,
               "spp": a.ref_spp, "conventions": CONVENTIONS_VERSION, "renderer": who}
        if who.startswith("mitsuba"):
            import mitsuba
            key.update(mitsuba=mitsuba.__version__, sampler=MI_SAMPLER[who])
        elif who == "cycles":
            key.update(blender=self.worker("cycles").info["blender"])
        else:
            b = self.builds[who]
            key.update(binary=sha256_files([b["path"]]), env=b["env"])
            key["renderer"] = "rayfarm"
        prefix = "cornell"
        if a.env:
            key.update(mode="gltf-env", env=sha256_files([a.env]),
                       camera={k: (np.round(v, 7).tolist() if k != "source" else v)
                               for k, v in self.camera.items()})
            if who == "cycles":
                key.update(ggx=a.cycles_ggx)
            prefix = "-".join(os.path.splitext(os.path.basename(x))[0] for x in (a.scene, a.env))
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        tag = who if not who.startswith("rayfarm") else "rayfarm"
        return key, f"{prefix}-{tag}-{a.width}x{a.height}-b{a.bounces}-{a.ref_spp}spp-{digest}"

    def reference(self, who):
        """The cached 4096-spp image of renderer `who` (made now when missing)."""
        key, stem = self.ref_key(who)
        d = os.path.join(self.args.cache, "refs")
        os.makedirs(d, exist_ok=True)
        path = os.path.join(d, stem + ".exr")
        if os.path.exists(path):
            log(f"reference ({who}, {self.args.ref_spp} spp): cached {path}")
            return read_rgb(path), path
        a = self.args
        log(f"reference ({who}, {a.ref_spp} spp): rendering once into {path}")
        t0 = time.perf_counter()
        tmp = path + f".tmp{os.getpid()}.exr"
        if who.startswith("mitsuba"):
            n_pass = max(1, math.ceil(a.ref_spp / a.ref_pass_spp))
            acc, done = None, 0
            for k in range(n_pass):
                spp = min(a.ref_pass_spp, a.ref_spp - done)
                t, _ = self.render(who, spp, 1_000_000 + k, tmp)
                img = read_rgb(tmp) * spp
                acc = img if acc is None else acc + img
                done += spp
                log(f"  pass {k + 1}/{n_pass}: {spp} spp in {t:.1f} s "
                    f"({time.perf_counter() - t0:.0f} s so far)")
            write_rgb(tmp, acc / done)
        else:
            t, _ = self.render(who, a.ref_spp, 1_000_000, tmp)
            log(f"  {t:.0f} s")
        os.replace(tmp, path)
        # Russian roulette does not change the expected image, so it is not in the key; it is
        # recorded here with the time it took.
        with open(os.path.join(d, stem + ".json"), "w") as f:
            json.dump(dict(key, seconds=round(time.perf_counter() - t0, 1), mitsuba_rr_depth=self.rr_depth,
                           cycles_min_light_bounces=self.min_light_bounces), f, indent=1)
        return read_rgb(path), path


def fmt_ratio(v):
    return " ".join(f"{x:.4f}" for x in v)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker, json.loads(args.worker_config))
        return
    builds = rayfarm_builds(args)
    names = select(args, builds)
    if args.repeat < 1:
        raise RuntimeError("--repeat must be at least 1")
    keep = bool(args.out)
    outdir = os.path.abspath(args.out) if keep else tempfile.mkdtemp(prefix="vs_peers_")
    os.makedirs(outdir, exist_ok=True)
    camera = bounds = None
    if args.env:
        camera, bounds = gltf_env_camera(args, builds[0]["path"] if builds else None)
    bench = Bench(args, builds, outdir, camera)
    load0 = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        print(f"vs_peers: {os.path.basename(args.scene)} {args.width}x{args.height}, {args.bounces} bounces, "
              f"{args.threads} threads, spp: " + ", ".join(f"{n} {bench.spp(n)}" for n in names) +
              f"; {args.repeat} timed run(s) each, alternating; peer RR {args.peer_rr} "
              f"(rayfarm's roulette from depth {bench.rayfarm_rr_depth})", flush=True)
        if args.env:
            print(f"environment {args.env}; each renderer against its own {args.ref_spp}-spp image; "
                  f"Mitsuba 3: skipped (it has no glTF importer)", flush=True)
            print(f"camera: {camera['source']}, position {np.round(camera['position'], 5).tolist()}, "
                  f"forward {np.round(camera['forward'], 5).tolist()}, yfov "
                  f"{math.degrees(camera['yfov']):.3f} deg (both renderers); scene bounds "
                  f"{bounds[0].tolist()} .. {bounds[1].tolist()}", flush=True)
        print(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} ({os.cpu_count()} cores); "
              f"{started}", flush=True)
        print(f"{FORMULA}; efficiency = 1 / (relMSE x seconds)", flush=True)
        for b in builds:
            if b["label"] in names:
                print(f"{b['label']}: {b['path']}" + (f" env {b['env']}" if b["env"] else ""), flush=True)

        # References first (cached after the first time), then warm-ups, then the timed runs.
        refs = {}
        if args.reference == "shared":
            img, path = bench.reference("mitsuba-indep")
            for n in names:
                refs[n] = (img, path)
        else:
            for n in names:
                refs[n] = bench.reference(n)
        match = None
        if args.env and "cycles" in names and any(n.startswith("rayfarm") for n in names):
            first_rf = next(n for n in names if n.startswith("rayfarm"))
            match = match_report(camera, bounds, args.env,
                                 {"rayfarm": refs[first_rf][0], "cycles": refs["cycles"][0]},
                                 outdir, keep)
            print(flush=True)
        log("warming up (untimed)")
        for n in names:
            bench.warm_up(n)
        if "mitsuba-indep" in names or "mitsuba-mj" in names:
            print(f"Mitsuba {bench.worker('mitsuba').info['mitsuba']} llvm_ad_rgb, drjit "
                  f"{bench.worker('mitsuba').info['drjit']}, {bench.worker('mitsuba').info['threads']} threads, "
                  f"rr_depth {bench.rr_depth or 'default (5)'}", flush=True)
        if "cycles" in names:
            ci = bench.worker("cycles").info
            print(f"Blender {ci['blender']} Cycles CPU, sampling pattern {ci['sampling_pattern']}, "
                  f"min_light_bounces {ci['min_light_bounces']}" +
                  (f", light tree {'on' if ci['light_tree'] else 'off'}" if args.env else ""), flush=True)
            for note in ci["notes"]:
                print(f"note: cycles: {note}", flush=True)

        runs = []
        for rep in range(args.repeat):
            for n in names:
                seed = rep + 1
                out = os.path.join(outdir, f"{n}-{rep + 1}.exr")
                t, cpu = bench.render(n, bench.spp(n), seed, out)
                img = read_rgb(out)
                ref = refs[n][0]
                if img.shape != ref.shape:
                    raise RuntimeError(f"{n}: image {img.shape} but reference {ref.shape}")
                e = rel_mse(img, ref)
                ratio, ratio_se = mean_ratio(img, ref)
                runs.append({"renderer": n, "repeat": rep + 1, "seed": seed, "spp": bench.spp(n),
                             "seconds": t, "cpu_seconds": cpu, "relmse": e, "mean_ratio": ratio,
                             "mean_ratio_se": ratio_se})
                if args.env:
                    runs[-1]["worst_1pct_share"] = worst_share(img, ref, 0.01)
                print(f"  run {rep + 1}/{args.repeat} {n:<16} {t:7.2f} s (CPU {cpu / t:.2f} cores)  "
                      f"relMSE {e:.5f}  mean/ref {fmt_ratio(ratio)}  load {os.getloadavg()[0]:.2f}", flush=True)
                if not keep:
                    os.remove(out)
        load1 = os.getloadavg()

        summary = {}
        for n in names:
            rs = [r for r in runs if r["renderer"] == n]
            sec = statistics.median(r["seconds"] for r in rs)
            e = statistics.fmean(r["relmse"] for r in rs)
            summary[n] = {"spp": bench.spp(n), "seconds_median": sec,
                          "seconds": [r["seconds"] for r in rs], "relmse_mean": e,
                          "relmse": [r["relmse"] for r in rs], "efficiency": 1.0 / (e * sec),
                          "mean_ratio": [statistics.fmean(r["mean_ratio"][c] for r in rs) for c in range(3)],
                          "mean_ratio_se": [math.sqrt(sum(r["mean_ratio_se"][c] ** 2 for r in rs)) / len(rs)
                                            for c in range(3)],
                          "cpu_cores": statistics.fmean(r["cpu_seconds"] / r["seconds"] for r in rs),
                          "reference": refs[n][1]}

        ours = [n for n in names if n.startswith("rayfarm")]
        first = ours[0] if ours else None
        print()
        print(f"Reference: {'Mitsuba independent' if args.reference == 'shared' else 'own'} "
              f"{args.ref_spp} spp. {FORMULA}. efficiency = 1 / (relMSE x seconds).")
        if args.env:
            print(f"Scene {os.path.basename(args.scene)}, environment {os.path.basename(args.env)}, "
                  f"{args.width}x{args.height}, {args.bounces} bounces; Mitsuba 3 skipped (no glTF importer). "
                  f"rayfarm's seconds include start-up and loading the scene, its textures and the "
                  f"environment: " + ", ".join(f"{n} {t:.2f} s (a warm 16x16 1-spp run)"
                                               for n, t in bench.load_seconds.items()) + ".")
        print(f"load average: start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, "
              f"end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}. CPU cores: the renderer's CPU time "
              f"(all threads) over its timed seconds.")
        print()
        head = ("| renderer | spp | seconds (median) | CPU cores | relMSE (mean) | efficiency | "
                "mean / ref (R G B) |")
        sep = "|---|---:|---:|---:|---:|---:|---|"
        if first:
            head += f" eff / {first} | {first} eff / this |"
            sep += "---:|---:|"
        print(head)
        print(sep)
        for n in names:
            s = summary[n]
            line = (f"| {n} | {s['spp']} | {s['seconds_median']:.2f} | {s['cpu_cores']:.2f} | "
                    f"{s['relmse_mean']:.5f} | {s['efficiency']:.2f} | {fmt_ratio(s['mean_ratio'])} |")
            if first:
                line += (f" {s['efficiency'] / summary[first]['efficiency']:.2f}x |"
                         f" {summary[first]['efficiency'] / s['efficiency']:.2f}x |")
            print(line)

        ratios = {}
        if ours:
            print()
            mi_names = [n for n in ("mitsuba-indep", "mitsuba-mj") if n in names]
            best_mi = max(mi_names, key=lambda n: summary[n]["efficiency"]) if mi_names else None
            for o in ours:
                for n in names:
                    if n == o or (n.startswith("rayfarm") and names.index(n) < names.index(o)):
                        continue
                    r = summary[o]["efficiency"] / summary[n]["efficiency"]
                    ratios[f"{o}/{n}"] = r
                    goal = ""
                    if n == best_mi:
                        g = GOALS["mitsuba-best"]
                        goal = f"  (best Mitsuba sampler; goal >= {g:g}: {'met' if r >= g else 'not met'})"
                    elif n == "cycles":
                        g = GOALS["cycles"]
                        goal = f"  (goal >= {g:g}: {'met' if r >= g else 'not met'})"
                    print(f"{o} / {n} = {r:.2f}x{goal}")
        if args.env:
            print()
            for n in names:
                sh = statistics.fmean(r["worst_1pct_share"] for r in runs if r["renderer"] == n)
                summary[n]["worst_1pct_share"] = sh
                print(f"{n}: the worst 1% of pixels hold {100 * sh:.0f}% of its relMSE (fireflies when high)")
        # A mean off the reference by more than 1%, beyond noise, points to a convention mismatch.
        print()
        for n in names:
            s = summary[n]
            off = [(abs(v - 1), se) for v, se in zip(s["mean_ratio"], s["mean_ratio_se"])]
            worst, se = max(off)
            if worst > 0.01:
                if worst > 4 * se:
                    print(f"warning: {n}'s mean differs from its reference by {100 * worst:.1f}% in a "
                          f"channel (> 1%, {worst / se:.0f} standard errors): a convention mismatch?")
                else:
                    print(f"note: {n}'s mean differs from its reference by {100 * worst:.1f}% in a channel, "
                          f"within the noise ({worst / se:.1f} standard errors)")
        print("mean / ref: per channel, the image's mean over the reference's; "
              "standard errors from the noise: " +
              ", ".join(f"{n} {100 * max(summary[n]['mean_ratio_se']):.2f}%" for n in names))

        if args.json:
            with open(args.json, "w") as f:
                json.dump({"started": started, "settings": {k: v for k, v in vars(args).items()
                                                            if not k.startswith("worker")},
                           "formula": FORMULA, "load_start": load0, "load_end": load1,
                           "rayfarm_rr_depth": bench.rayfarm_rr_depth, "mitsuba_rr_depth": bench.rr_depth,
                           "cycles_min_light_bounces": bench.min_light_bounces,
                           "builds": builds, "renderers": names,
                           "mitsuba": bench.workers["mitsuba"].info if "mitsuba" in bench.workers else None,
                           "cycles": bench.workers["cycles"].info if "cycles" in bench.workers else None,
                           "runs": runs, "summary": summary, "ratios": ratios, "goals": GOALS,
                           "camera": camera, "match": match,
                           "rayfarm_load_seconds": bench.load_seconds}, f, indent=1)
    finally:
        for w in bench.workers.values():
            w.close()
        if not keep:
            shutil.rmtree(outdir, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
