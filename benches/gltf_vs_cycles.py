"""Renders each glTF test scene with rayfarm and with Blender's Cycles, and compares per-object means.

Run by benches/gltf_vs_cycles.sh with the Python of a venv that holds the `bpy` wheel (Blender as
a module); see that script for the command. For each scene:

  1. rayfarm renders it twice (seeds 0 and 1) to linear EXR, with a uniform environment;
  2. Cycles imports the same file with Blender's own glTF importer and renders it to a
     multilayer EXR holding the combined image and the object index pass (IndexOB), with the
     same resolution, samples, bounces, camera, environment and a 1-pixel box filter; once with
     the Principled BSDFs as imported (multiscatter GGX) and once switched to single-scatter
     GGX, the microfacet model of the glTF BRDF (--ggx chooses);
  3. every object (a glTF node with a mesh) gets a mask from IndexOB, eroded by one pixel so
     that pixels shared with a neighbour or the background do not count, and the script prints
     the masked mean of both images and their relative difference in luminance. The difference
     between rayfarm's two seeds is printed too: it is the noise floor of the comparison.

Differences are reported, never treated as failures: the exit status is non-zero only when a
tool is missing or a render fails.
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

import bpy
import numpy as np

# Blender's bundled Python modules (OpenImageIO reads both renderers' EXR files).
sys.path.append(os.path.join(bpy.utils.resource_path("LOCAL"), "python", "lib", "python3.11", "site-packages"))
import OpenImageIO as oiio  # noqa: E402

LUMINANCE = np.array([0.2126, 0.7152, 0.0722])  # Rec. 709 / sRGB primaries, linear


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rayfarm", required=True, help="the rayfarm binary")
    p.add_argument("--scenes", required=True, help="folder of .gltf test scenes")
    p.add_argument("--out", required=True, help="folder for the EXR and PNG files")
    p.add_argument("--width", type=int, default=200)
    p.add_argument("--height", type=int, default=100)
    p.add_argument("--spp", type=int, default=256, help="samples per pixel, both renderers")
    p.add_argument("--bounces", type=int, default=16, help="rayfarm --max-bounces = Cycles max_bounces")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--env", default="1,1,1", help="uniform environment radiance R,G,B in both renderers")
    p.add_argument("--only", nargs="*", help="scene names (file stems) to run; default all")
    p.add_argument("--json", help="also write the table to this JSON file")
    p.add_argument("--ggx", choices=["both", "multi", "single"], default="both",
                   help="Cycles renders with the importer's Principled BSDFs as they are (multiscatter "
                        "GGX), with them switched to single-scatter GGX as the glTF BRDF is, or both")
    return p.parse_args()


def read_exr(path):
    """{channel name: float32 array (height, width)} of an EXR file (every subimage)."""
    inp = oiio.ImageInput.open(path)
    if inp is None:
        raise RuntimeError(f"cannot read {path}: {oiio.geterror()}")
    out = {}
    try:
        sub = 0
        while inp.seek_subimage(sub, 0):
            spec = inp.spec()
            pixels = inp.read_image(sub, 0, 0, spec.nchannels, oiio.FLOAT)
            if pixels is None:
                raise RuntimeError(f"cannot read {path}: {inp.geterror()}")
            pixels = np.asarray(pixels).reshape(spec.height, spec.width, spec.nchannels)
            for c, name in enumerate(spec.channelnames):
                out[name] = pixels[:, :, c]
            sub += 1
    finally:
        inp.close()
    return out


def rgb(channels, prefix=""):
    return np.stack([channels[prefix + c] for c in "RGB"], axis=-1)


def write_png(path, left, right):
    """rayfarm | Cycles side by side, clamped sRGB, for a look by eye."""
    img = np.concatenate([left, np.ones((left.shape[0], 2, 3)), right], axis=1)
    img = np.clip(img, 0.0, 1.0)
    img = np.where(img <= 0.0031308, 12.92 * img, 1.055 * np.power(img, 1 / 2.4) - 0.055)
    spec = oiio.ImageSpec(img.shape[1], img.shape[0], 3, oiio.UINT8)
    out = oiio.ImageOutput.create(path)
    out.open(path, spec)
    out.write_image((img * 255 + 0.5).astype(np.uint8))
    out.close()


def render_rayfarm(args, scene_path, out_path, seed):
    cmd = ["nice", "-n", "19", args.rayfarm, "render", scene_path, "-o", out_path,
           "--spp", str(args.spp), "--width", str(args.width), "--height", str(args.height),
           "--max-bounces", str(args.bounces), "--threads", str(args.threads), "--seed", str(seed),
           "--env-color", args.env]
    t0 = time.time()
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"rayfarm failed on {scene_path} (exit {run.returncode}):\n{run.stderr}")
    ignored = []
    for line in run.stderr.splitlines():
        if "ignoring unsupported glTF extension(s):" in line:
            ignored += [e.strip() for e in line.split("ignoring unsupported glTF extension(s):")[1].split(",")]
    return time.time() - t0, ignored


@contextlib.contextmanager
def quiet_stdout():
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def set_world(env):
    world = bpy.data.worlds.new("uniform")
    if bpy.app.version < (5, 0, 0):  # from 5.0 on a world always uses its nodes
        world.use_nodes = True
    nodes = world.node_tree.nodes
    bg = next((n for n in nodes if n.type == "BACKGROUND"), None)
    if bg is None:
        bg = nodes.new("ShaderNodeBackground")
        out = next((n for n in nodes if n.type == "OUTPUT_WORLD"), None) or nodes.new("ShaderNodeOutputWorld")
        world.node_tree.links.new(bg.outputs[0], out.inputs[0])
    bg.inputs["Color"].default_value = (*env, 1.0)
    bg.inputs["Strength"].default_value = 1.0
    bpy.context.scene.world = world


def render_cycles(args, scene_path, out_path, env, single_scatter):
    """Imports with Blender's glTF importer and renders; returns (seconds, {pass index: name})."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    # glTF light intensities as given (lux for the sun = Cycles' irradiance in W/m^2), the same
    # numbers rayfarm uses; the default 'SPEC' mode divides them by 683.
    with quiet_stdout():  # the importer logs every node it makes
        bpy.ops.import_scene.gltf(filepath=scene_path, export_import_convert_lighting_mode="COMPAT")
    scene = bpy.context.scene
    cams = [o for o in scene.objects if o.type == "CAMERA"]
    if not cams:
        raise RuntimeError(f"{scene_path}: the importer made no camera")
    scene.camera = cams[0]
    for o in scene.objects:
        if o.type == "LIGHT" and o.data.type == "SUN":
            o.data.angle = 0.0  # glTF's directional light is a delta light, as in rayfarm
    if single_scatter:
        for mat in bpy.data.materials:
            for node in mat.node_tree.nodes if mat.node_tree else []:
                if node.type == "BSDF_PRINCIPLED":
                    node.distribution = "GGX"
    index_to_name = {}
    meshes = sorted((o for o in scene.objects if o.type == "MESH"), key=lambda o: o.name)
    for k, o in enumerate(meshes, start=1):
        o.pass_index = k
        index_to_name[k] = o.name
    set_world(env)

    r = scene.render
    r.engine = "CYCLES"
    r.resolution_x, r.resolution_y, r.resolution_percentage = args.width, args.height, 100
    r.threads_mode, r.threads = "FIXED", args.threads
    r.film_transparent = False
    c = scene.cycles
    c.device = "CPU"
    c.samples = args.spp
    c.use_adaptive_sampling = False
    c.use_denoising = False
    c.seed = 0
    c.max_bounces = args.bounces
    for attr in ("diffuse_bounces", "glossy_bounces", "transmission_bounces", "volume_bounces",
                 "transparent_max_bounces"):
        setattr(c, attr, args.bounces)
    c.sample_clamp_direct = 0.0
    c.sample_clamp_indirect = 0.0  # the default 10 would cut bright caustic paths
    c.blur_glossy = 0.0
    c.caustics_reflective = c.caustics_refractive = True
    c.light_sampling_threshold = 0.0
    if hasattr(c, "use_guiding"):
        c.use_guiding = False
    c.pixel_filter_type = "BOX"  # rayfarm's film is a 1-pixel box
    c.filter_width = 1.0
    c.film_exposure = 1.0
    vs = scene.view_settings
    vs.view_transform, vs.look, vs.exposure, vs.gamma = "Standard", "None", 0.0, 1.0
    scene.view_layers[0].use_pass_object_index = True
    im = r.image_settings
    if hasattr(im, "media_type"):  # Blender 5.0 splits multilayer EXR into its own media type
        im.media_type = "MULTI_LAYER_IMAGE"
    im.file_format = "OPEN_EXR_MULTILAYER"
    im.color_depth = "32"
    im.exr_codec = "ZIP"
    r.filepath = out_path
    r.use_file_extension = False
    t0 = time.time()
    with quiet_stdout():  # Blender prints a line per tile and sample
        bpy.ops.render.render(write_still=True)
    if not os.path.exists(out_path):
        raise RuntimeError(f"Cycles wrote no image for {scene_path}")
    return time.time() - t0, index_to_name


def blender_extensions():
    """The extensions Blender's glTF importer declares it handles (the rest it ignores)."""
    try:
        from io_scene_gltf2.io.imp.gltf2_io_gltf import glTFImporter
        return set(glTFImporter("", {"import_user_extensions": [], "loglevel": 50}).extensions_managed)
    except Exception as e:  # only the report's "Cycles sees it" column depends on it
        print(f"note: cannot list the importer's extensions: {e}", file=sys.stderr)
        return None


def read_cycles(path):
    """(RGB image, integer object index image) of a Cycles multilayer EXR."""
    cyc = read_exr(path)
    combined = next((n for n in cyc if n.endswith("Combined.R")), None)
    index_pass = next((n for n in cyc if n.endswith(("IndexOB.X", "Object Index.X"))), None)
    if combined is None or index_pass is None:
        raise RuntimeError(f"{path} lacks the combined or the object index pass; its channels: {sorted(cyc)}")
    return rgb(cyc, combined[:-1]), np.rint(cyc[index_pass]).astype(np.int32)


def rel(a, b):
    return (a - b) / b if b > 0 else float("nan")


def main():
    args = parse_args()
    env = tuple(float(x) for x in args.env.split(","))
    os.makedirs(args.out, exist_ok=True)
    scenes = sorted(f[:-5] for f in os.listdir(args.scenes) if f.endswith(".gltf"))
    order = ["base"] + [s for s in scenes if s != "base"]
    scenes = [s for s in order if s in scenes and (not args.only or s in args.only)]
    variants = {"both": ["multi", "single"], "multi": ["multi"], "single": ["single"]}[args.ggx]
    blender_ext = blender_extensions()
    print(f"Blender {bpy.app.version_string}; {args.width}x{args.height}, {args.spp} spp, "
          f"{args.bounces} bounces, environment {args.env}, {args.threads} thread(s)", flush=True)

    rows, ext_report = [], []
    for name in scenes:
        path = os.path.abspath(os.path.join(args.scenes, name + ".gltf"))
        with open(path) as f:
            doc = json.load(f)
        exercised = doc.get("extras", {}).get("exercises", [])
        rf = [os.path.join(args.out, f"{name}.rayfarm{s}.exr") for s in (0, 1)]
        t_rf, ignored = render_rayfarm(args, path, rf[0], 0)
        render_rayfarm(args, path, rf[1], 1)
        img_rf = [rgb(read_exr(p)) for p in rf]
        img_cy, times, index, index_to_name = {}, [], None, None
        for v in variants:
            cy = os.path.join(args.out, f"{name}.cycles-{v}.exr")
            t, names = render_cycles(args, path, cy, env, single_scatter=(v == "single"))
            times.append(f"Cycles ({'multiscatter' if v == 'multi' else 'single-scatter'} GGX) {t:.1f} s")
            img_cy[v], idx = read_cycles(cy)
            if index is None:
                index, index_to_name = idx, names
            if img_cy[v].shape != img_rf[0].shape:
                raise RuntimeError(f"{name}: image sizes differ: {img_rf[0].shape} vs {img_cy[v].shape}")
            write_png(os.path.join(args.out, f"{name}.{v}.png"), img_rf[0], img_cy[v])
        print(f"{name}: rayfarm {t_rf:.1f} s, " + ", ".join(times), flush=True)

        # Interior pixels only: the pixel and its four neighbours carry the same index.
        inner = np.zeros_like(index, dtype=bool)
        inner[1:-1, 1:-1] = True
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            inner &= index == np.roll(np.roll(index, dy, axis=0), dx, axis=1)
        for k, obj in [(0, "(environment)")] + sorted(index_to_name.items()):
            mask = inner & (index == k)
            n = int(mask.sum())
            if n == 0:
                continue
            m_rf, m_rf1 = (img[mask].mean(axis=0) for img in img_rf)
            l_rf, l_rf1 = float(m_rf @ LUMINANCE), float(m_rf1 @ LUMINANCE)
            row = {"scene": name, "object": obj, "pixels": n,
                   "rayfarm_rgb": [round(float(x), 5) for x in m_rf], "rayfarm_lum": l_rf,
                   "seed_noise": abs(rel(l_rf1, l_rf))}
            for v in variants:
                m_cy = img_cy[v][mask].mean(axis=0)
                row[f"cycles_{v}_rgb"] = [round(float(x), 5) for x in m_cy]
                row[f"cycles_{v}_lum"] = float(m_cy @ LUMINANCE)
                row[f"rel_diff_{v}"] = rel(l_rf, row[f"cycles_{v}_lum"])
            rows.append(row)
        for ext in exercised:
            ext_report.append((name, ext, ext not in ignored,
                               None if blender_ext is None else ext in blender_ext))

    # Luminance means and relative differences (rayfarm - Cycles) / Cycles; RGB of the first variant.
    f3 = lambda v: " ".join(f"{x:.3f}" for x in v)
    first = variants[0]
    head = f"| scene | object | px | rayfarm RGB | Cycles ({first}) RGB | rayfarm Y |"
    for v in variants:
        head += f" Cycles ({v}) Y | diff ({v}) |"
    print()
    print(head + " seed noise |")
    print("|---|---|---:|---|---|---:|" + "---:|---:|" * len(variants) + "---:|")
    for r in rows:
        line = (f"| {r['scene']} | {r['object']} | {r['pixels']} | {f3(r['rayfarm_rgb'])} "
                f"| {f3(r[f'cycles_{first}_rgb'])} | {r['rayfarm_lum']:.4f} |")
        for v in variants:
            line += f" {r[f'cycles_{v}_lum']:.4f} | {100 * r[f'rel_diff_{v}']:+.1f}% |"
        print(line + f" {100 * r['seed_noise']:.1f}% |")
    print()
    yes_no = lambda v: "?" if v is None else ("yes" if v else "no")
    print("| scene | extension | rayfarm reads it | Blender importer reads it |")
    print("|---|---|---|---|")
    for scene, ext, ours, theirs in ext_report:
        print(f"| {scene} | {ext} | {yes_no(ours)} | {yes_no(theirs)} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "extensions": ext_report}, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
