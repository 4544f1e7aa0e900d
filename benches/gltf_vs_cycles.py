"""Renders each glTF test scene with rayfarm and with Blender's Cycles, and compares per-object means.

Run by benches/gltf_vs_cycles.sh with the Python of a venv that holds the `bpy` wheel (Blender as
a module); see that script for the command. For each scene:

  1. rayfarm renders it twice (seeds 0 and 1) to linear EXR, with a uniform environment;
  2. Cycles imports the same file with Blender's own glTF importer and renders it to a
     multilayer EXR holding the combined image and the object index pass (IndexOB), with the
     same resolution, samples, bounces, camera, environment and a 1-pixel box filter; once with
     the Principled BSDFs as imported (multiscatter GGX) and once switched to single-scatter
     GGX, the microfacet model of the glTF BRDF (--ggx chooses);
     Three extensions Blender 5.0's importer drops are given to Cycles by this script after the
     import, from the .gltf JSON (see `add_unimported_extensions`): KHR_materials_iridescence
     (Principled's Thin Film inputs), KHR_materials_diffuse_transmission (a Translucent BSDF
     added to the Principled BSDF, whose base colour keeps the reflected share) and
     KHR_materials_dispersion (Principled 5.0 has no Dispersion input: three Glass BSDFs, one
     per colour channel, each with the index of refraction the extension gives at rayfarm's
     wavelength for that channel);
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
    p.add_argument("--anisotropy", choices=["importer", "gltf"], default="importer",
                   help="KHR_materials_anisotropy in Cycles: as the importer maps it (Anisotropic = "
                        "strength, Principled's own stretch of the lobe) or with Roughness and "
                        "Anisotropic chosen so that Principled's GGX lobe is the glTF one")
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


# KHR_materials_dispersion: the wavelength (nm) each colour channel stands for, as rayfarm takes
# them (the sRGB primaries' dominant wavelengths, crates/rayfarm-render/src/bsdf.rs
# CHANNEL_WAVELENGTH_NM), so that both renderers refract a channel by the same index.
CHANNEL_WAVELENGTH_NM = (611.4, 549.1, 464.3)
# What add_unimported_extensions gives Cycles beyond the importer.
SCRIPT_EXTENSIONS = ("KHR_materials_iridescence", "KHR_materials_diffuse_transmission", "KHR_materials_dispersion")


def dispersion_iors(ior, dispersion):
    """The extension's indices per channel: n(l) = n_d + (n_d - 1) / V_d (523655 / l^2 - 1.5168),
    V_d = 20 / dispersion (Abbe number), and at least 1."""
    return [max(ior + (ior - 1.0) * dispersion / 20.0 * (523655.0 / (lam * lam) - 1.5168), 1.0)
            for lam in CHANNEL_WAVELENGTH_NM]


def _principled_and_output(mat):
    tree = mat.node_tree
    out = next((n for n in tree.nodes if n.type == "OUTPUT_MATERIAL" and n.is_active_output), None)
    if out is None or not out.inputs["Surface"].is_linked:
        raise RuntimeError(f"material {mat.name}: no active output with a surface shader")
    bsdf = next((n for n in tree.nodes if n.type == "BSDF_PRINCIPLED"), None)
    if bsdf is None:
        raise RuntimeError(f"material {mat.name}: the importer made no Principled BSDF")
    return tree, bsdf, out


def _surface_link(tree, out):
    """The socket that feeds the material output's Surface (the importer's Principled BSDF)."""
    return out.inputs["Surface"].links[0].from_socket


def _copy_principled(tree, bsdf):
    """A second Principled BSDF with the same settings and the same input links."""
    dup = tree.nodes.new("ShaderNodeBsdfPrincipled")
    dup.distribution, dup.subsurface_method = bsdf.distribution, bsdf.subsurface_method
    for i, src in enumerate(bsdf.inputs):
        dst = dup.inputs[i]
        if hasattr(src, "default_value"):
            try:
                dst.default_value = src.default_value
            except (TypeError, AttributeError):
                pass
        for link in src.links:
            tree.links.new(link.from_socket, dst)
    return dup


def _value(tree, socket):
    """An output socket carrying `socket`'s value (its link, or a Value node with its default)."""
    if socket.is_linked:
        return socket.links[0].from_socket
    node = tree.nodes.new("ShaderNodeValue")
    node.outputs[0].default_value = socket.default_value
    return node.outputs[0]


def add_unimported_extensions(doc):
    """Gives Cycles the glTF extensions Blender 5.0's importer drops, from the file's JSON.

    Materials are found by name (the importer keeps the glTF material names). Returns a list
    of notes on what was only approximated. Factors only: the scenes use no textures for these
    extensions, and a texture is reported and left out.
    """
    notes = []
    for m in doc.get("materials", []):
        ext = m.get("extensions", {})
        if not any(k in ext for k in ("KHR_materials_iridescence", "KHR_materials_diffuse_transmission",
                                      "KHR_materials_dispersion")):
            continue
        name = m.get("name")
        mat = bpy.data.materials.get(name)
        if mat is None:
            raise RuntimeError(f"no Blender material named {name!r} after the import")
        tree, bsdf, out = _principled_and_output(mat)
        for e, v in ext.items():
            for key in v:
                if key.endswith("Texture") and e in ("KHR_materials_iridescence",
                                                     "KHR_materials_diffuse_transmission",
                                                     "KHR_materials_dispersion"):
                    notes.append(f"{name}: {e}.{key} left out (factors only)")
        pbr = m.get("pbrMetallicRoughness", {})
        metallic = pbr.get("metallicFactor", 1.0)
        transmission = ext.get("KHR_materials_transmission", {}).get("transmissionFactor", 0.0)
        ior = ext.get("KHR_materials_ior", {}).get("ior", 1.5)

        ir = ext.get("KHR_materials_iridescence")
        if ir is not None and ir.get("iridescenceFactor", 0.0) > 0.0:
            factor = ir.get("iridescenceFactor", 0.0)
            film = bsdf
            if factor < 1.0:
                # Principled's thin film has no weight: mix a filmed copy into the original.
                film = _copy_principled(tree, bsdf)
                mix = tree.nodes.new("ShaderNodeMixShader")
                mix.inputs["Fac"].default_value = factor
                src = _surface_link(tree, out)
                tree.links.new(src, mix.inputs[1])
                tree.links.new(film.outputs["BSDF"], mix.inputs[2])
                tree.links.new(mix.outputs["Shader"], out.inputs["Surface"])
            # Without a thickness texture the film is iridescenceThicknessMaximum thick.
            film.inputs["Thin Film Thickness"].default_value = ir.get("iridescenceThicknessMaximum", 400.0)
            film.inputs["Thin Film IOR"].default_value = ir.get("iridescenceIor", 1.3)

        dt = ext.get("KHR_materials_diffuse_transmission")
        if dt is not None and dt.get("diffuseTransmissionFactor", 0.0) > 0.0:
            d = dt["diffuseTransmissionFactor"]
            color = dt.get("diffuseTransmissionColorFactor", [1.0, 1.0, 1.0])
            if metallic > 0.0 or transmission > 0.0:
                notes.append(f"{name}: diffuse transmission with metallic {metallic} / transmission "
                             f"{transmission}: the base colour scale also dims the metal / refraction")
            # glTF: spec + (1 - F) * ((1 - d) * diffuse(base) + d * btdf(color)). Principled keeps
            # the specular layer and its diffuse base takes the reflected share (base colour
            # scaled by 1 - d); a Translucent BSDF (Lambertian transmission) adds the rest,
            # weighted by 1 - F with F the Fresnel node's exact dielectric reflectance at the view
            # direction (the glTF reference's weight; Cycles' Fresnel node inverts the IOR on
            # back faces, so feed it 1/ior there to get the same F on both sides of a sheet).
            base = bsdf.inputs["Base Color"]
            if base.is_linked:
                scale = tree.nodes.new("ShaderNodeVectorMath")
                scale.operation = "SCALE"
                tree.links.new(base.links[0].from_socket, scale.inputs[0])
                scale.inputs["Scale"].default_value = 1.0 - d
                tree.links.new(scale.outputs[0], base)
            else:
                c = base.default_value
                base.default_value = (c[0] * (1.0 - d), c[1] * (1.0 - d), c[2] * (1.0 - d), c[3])
            geo = tree.nodes.new("ShaderNodeNewGeometry")
            eta = tree.nodes.new("ShaderNodeMath")
            eta.operation = "MULTIPLY_ADD"  # backfacing * (1/ior - ior) + ior
            tree.links.new(geo.outputs["Backfacing"], eta.inputs[0])
            eta.inputs[1].default_value = 1.0 / ior - ior
            eta.inputs[2].default_value = ior
            fres = tree.nodes.new("ShaderNodeFresnel")
            tree.links.new(eta.outputs[0], fres.inputs["IOR"])
            if bsdf.inputs["Normal"].is_linked:
                tree.links.new(bsdf.inputs["Normal"].links[0].from_socket, fres.inputs["Normal"])
            weight = tree.nodes.new("ShaderNodeMath")
            weight.operation = "MULTIPLY_ADD"  # F * (-w) + w = (1 - F) * w
            w = d * (1.0 - metallic) * (1.0 - transmission)
            tree.links.new(fres.outputs[0], weight.inputs[0])
            weight.inputs[1].default_value = -w
            weight.inputs[2].default_value = w
            tint = tree.nodes.new("ShaderNodeVectorMath")
            tint.operation = "SCALE"
            tint.inputs[0].default_value = tuple(color[:3])
            tree.links.new(weight.outputs[0], tint.inputs["Scale"])
            trans = tree.nodes.new("ShaderNodeBsdfTranslucent")
            tree.links.new(tint.outputs[0], trans.inputs["Color"])
            if bsdf.inputs["Normal"].is_linked:
                tree.links.new(bsdf.inputs["Normal"].links[0].from_socket, trans.inputs["Normal"])
            add = tree.nodes.new("ShaderNodeAddShader")
            tree.links.new(_surface_link(tree, out), add.inputs[0])
            tree.links.new(trans.outputs[0], add.inputs[1])
            tree.links.new(add.outputs[0], out.inputs["Surface"])

        dp = ext.get("KHR_materials_dispersion")
        if dp is not None and dp.get("dispersion", 0.0) > 0.0 and transmission > 0.0:
            # Principled 5.0 has no Dispersion input. Each channel refracts through its own Glass
            # BSDF (colour: that channel of the base colour, index: the extension's at rayfarm's
            # wavelength for it); Cycles picks one of the three by weight, so a path that entered
            # in one channel carries nothing in the others, as in rayfarm. The Glass BSDF tints
            # its reflection too (Principled does not): exact for the white glass of the scenes.
            iors = dispersion_iors(ior, dp["dispersion"])
            color = pbr.get("baseColorFactor", [1.0, 1.0, 1.0, 1.0])
            if bsdf.inputs["Base Color"].is_linked or any(abs(c - 1.0) > 1e-6 for c in color[:3]):
                notes.append(f"{name}: dispersion on a non-white glass: the Glass BSDFs tint the reflection too")
            total = None
            for k in range(3):
                glass = tree.nodes.new("ShaderNodeBsdfGlass")
                glass.distribution = "MULTI_GGX" if bsdf.distribution == "MULTI_GGX" else "GGX"
                glass.inputs["Color"].default_value = tuple(color[c] if c == k else 0.0 for c in range(3)) + (1.0,)
                glass.inputs["IOR"].default_value = iors[k]
                tree.links.new(_value(tree, bsdf.inputs["Roughness"]), glass.inputs["Roughness"])
                if bsdf.inputs["Normal"].is_linked:
                    tree.links.new(bsdf.inputs["Normal"].links[0].from_socket, glass.inputs["Normal"])
                if total is None:
                    total = glass.outputs[0]
                else:
                    add = tree.nodes.new("ShaderNodeAddShader")
                    tree.links.new(total, add.inputs[0])
                    tree.links.new(glass.outputs[0], add.inputs[1])
                    total = add.outputs[0]
            if transmission < 1.0:
                # The refracting share: mix with the Principled BSDF, which keeps the rest.
                bsdf.inputs["Transmission Weight"].default_value = 0.0
                mix = tree.nodes.new("ShaderNodeMixShader")
                mix.inputs["Fac"].default_value = transmission
                tree.links.new(_surface_link(tree, out), mix.inputs[1])
                tree.links.new(total, mix.inputs[2])
                total = mix.outputs[0]
                notes.append(f"{name}: dispersion with transmission {transmission}: Principled mixed with the glass")
            tree.links.new(total, out.inputs["Surface"])
    return notes


def gltf_anisotropy_lobe(doc):
    """Sets Principled's Roughness and Anisotropic so that its GGX lobe is the glTF one.

    glTF: alpha_t = mix(alpha, 1, strength^2) along the anisotropy direction, alpha_b = alpha
    across (alpha = roughness^2). Principled (Cycles 4+): alpha_x = r^2 / k along the tangent,
    alpha_y = r^2 k across, k = sqrt(1 - 0.9 Anisotropic). So r^2 = sqrt(alpha_t alpha_b) and
    Anisotropic = (1 - alpha_b / alpha_t) / 0.9, which exists while alpha_t / alpha_b <= 10.
    The rotation stays as the importer sets it. Factors only; returns notes.
    """
    notes = []
    for m in doc.get("materials", []):
        an = m.get("extensions", {}).get("KHR_materials_anisotropy")
        if an is None:
            continue
        name = m.get("name")
        pbr = m.get("pbrMetallicRoughness", {})
        if "metallicRoughnessTexture" in pbr or "anisotropyTexture" in an:
            notes.append(f"{name}: textured roughness or anisotropy, left as imported")
            continue
        mat = bpy.data.materials.get(name)
        if mat is None:
            raise RuntimeError(f"no Blender material named {name!r} after the import")
        _, bsdf, _ = _principled_and_output(mat)
        s = an.get("anisotropyStrength", 0.0)
        alpha = pbr.get("roughnessFactor", 1.0) ** 2
        at, ab = alpha + (1.0 - alpha) * s * s, alpha
        if at <= 0.0:
            continue
        aniso = (1.0 - ab / at) / 0.9
        if aniso > 1.0:
            notes.append(f"{name}: alpha_t / alpha_b = {at / ab:.1f} is beyond Principled's 10; clamped")
            aniso = 1.0
        bsdf.inputs["Roughness"].default_value = (at * ab) ** 0.25
        bsdf.inputs["Anisotropic"].default_value = aniso
    return notes


def render_cycles(args, scene_path, out_path, env, single_scatter):
    """Imports with Blender's glTF importer and renders; returns (seconds, {pass index: name})."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    # glTF light intensities as given (lux for the sun = Cycles' irradiance in W/m^2), the same
    # numbers rayfarm uses; the default 'SPEC' mode divides them by 683.
    with quiet_stdout():  # the importer logs every node it makes
        bpy.ops.import_scene.gltf(filepath=scene_path, export_import_convert_lighting_mode="COMPAT")
    with open(scene_path) as f:
        doc = json.load(f)
    notes = add_unimported_extensions(doc)
    if args.anisotropy == "gltf":
        notes += gltf_anisotropy_lobe(doc)
    for note in notes:
        print(f"note: {os.path.basename(scene_path)}: {note}", file=sys.stderr)
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
                if node.type in ("BSDF_PRINCIPLED", "BSDF_GLASS"):
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
          f"{args.bounces} bounces, environment {args.env}, {args.threads} thread(s), "
          f"anisotropy lobe in Cycles: {args.anisotropy}", flush=True)

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
    print("| scene | extension | rayfarm reads it | Blender importer reads it | Cycles renders it |")
    print("|---|---|---|---|---|")
    for scene, ext, ours, theirs in ext_report:
        cycles = ("yes (importer)" if theirs else
                  "yes (this script's nodes)" if ext in SCRIPT_EXTENSIONS else "no")
        print(f"| {scene} | {ext} | {yes_no(ours)} | {yes_no(theirs)} | {cycles} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "extensions": ext_report}, f, indent=1)


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
