#!/usr/bin/env python3
"""Writes the glTF test scenes of benches/gltf_vs_cycles.sh: one per material extension.

Every scene is the same stage: four UV spheres (radius 0.5, with normals, UVs and tangents
along the parallels) in a row on a grey floor, a camera looking at them and a key light: an
emissive 2 x 2 quad (radiance 20, KHR_materials_emissive_strength) above, right and in front,
out of the picture. The benchmark adds a uniform white environment (radiance 1) in both
renderers. The key light is an area light on purpose: a delta light (KHR_lights_punctual)
makes a sub-pixel glint on every smooth surface, whose variance swamped the per-object means. Only the spheres' materials differ from scene to scene; the
first sphere of each scene is the plain-PBR reference of that row where that makes sense.
One scene differs in its stage: diffuse_transmission stands four thin double-sided sheets
(1 x 1, facing the camera) where the spheres stand and puts the key light behind them, so that
what the camera sees of a sheet beyond the environment's light is light passed through it
(and next-event estimation has to reach a light behind the surface).

Usage: python3 benches/gltf_ext/make_scenes.py [OUT_DIR]   (default: this script's folder)
Writes one .gltf per scene and stage.bin, the geometry they share. The output is
deterministic (same bytes on every run), so the files are committed.
"""

import json
import math
import os
import struct
import sys

SPHERE_RADIUS = 0.5
SPHERE_X = [-1.8, -0.6, 0.6, 1.8]
SEGMENTS, RINGS = 32, 16
FLOOR_HALF = 6.0
BIN_NAME = "stage.bin"  # the geometry, shared by every scene
IMAGE_WIDTH, IMAGE_HEIGHT = 200, 100
CAMERA_POS = (0.0, 1.3, 5.6)
CAMERA_TARGET = (0.0, 0.45, 0.0)
CAMERA_YFOV = 0.45
KEY_DIR = (-0.45, -0.8, -0.4)  # direction the key light faces (its light travels)
KEY_DISTANCE = 5.0  # from the origin, against KEY_DIR
KEY_HALF = 1.0
KEY_STRENGTH = 20.0
KEY_DIR_BEHIND = (-0.3, -0.75, 0.6)  # the key light of the sheet scene: behind and above them
SHEET_HALF = 0.5
SHEET_LIFT = 0.05  # the sheets' lower edge above the floor

FLOOR_MATERIAL = {
    "name": "floor",
    "pbrMetallicRoughness": {"baseColorFactor": [0.5, 0.5, 0.5, 1.0], "metallicFactor": 0.0, "roughnessFactor": 0.9},
}

KEY_MATERIAL = {
    "name": "key_light",
    "pbrMetallicRoughness": {"baseColorFactor": [0.0, 0.0, 0.0, 1.0], "metallicFactor": 0.0, "roughnessFactor": 1.0},
    "emissiveFactor": [1.0, 1.0, 1.0],
    "extensions": {"KHR_materials_emissive_strength": {"emissiveStrength": KEY_STRENGTH}},
}


def pbr(name, color, metallic=0.0, roughness=0.5, extensions=None, **extra):
    m = {
        "name": name,
        "pbrMetallicRoughness": {"baseColorFactor": list(color) + [1.0], "metallicFactor": metallic, "roughnessFactor": roughness},
    }
    if extensions:
        m["extensions"] = extensions
    m.update(extra)
    return m


# scene name -> (extensions the scene exercises, [(node name, material)] for the four spheres
#                [, options: "shape" "sphere" (default) or "sheet", "key_dir" (default KEY_DIR)])
SCENES = {
    "base": ([], [
        ("diffuse_white", pbr("diffuse_white", (0.8, 0.8, 0.8), roughness=1.0)),
        ("plastic_red", pbr("plastic_red", (0.8, 0.1, 0.1), roughness=0.3)),
        ("metal_gold", pbr("metal_gold", (1.0, 0.78, 0.34), metallic=1.0, roughness=0.25)),
        ("glossy_blue", pbr("glossy_blue", (0.1, 0.2, 0.7), roughness=0.05)),
    ]),
    "clearcoat": (["KHR_materials_clearcoat"], [
        ("coat_none", pbr("coat_none", (0.7, 0.1, 0.1), roughness=0.6)),
        ("coat_smooth", pbr("coat_smooth", (0.7, 0.1, 0.1), roughness=0.6, extensions={
            "KHR_materials_clearcoat": {"clearcoatFactor": 1.0, "clearcoatRoughnessFactor": 0.03}})),
        ("coat_rough_half", pbr("coat_rough_half", (0.7, 0.1, 0.1), roughness=0.6, extensions={
            "KHR_materials_clearcoat": {"clearcoatFactor": 0.5, "clearcoatRoughnessFactor": 0.3}})),
        ("coat_on_metal", pbr("coat_on_metal", (1.0, 0.78, 0.34), metallic=1.0, roughness=0.5, extensions={
            "KHR_materials_clearcoat": {"clearcoatFactor": 1.0, "clearcoatRoughnessFactor": 0.05}})),
    ]),
    "sheen": (["KHR_materials_sheen"], [
        ("sheen_none", pbr("sheen_none", (0.05, 0.1, 0.4), roughness=0.8)),
        ("sheen_white_r03", pbr("sheen_white_r03", (0.05, 0.1, 0.4), roughness=0.8, extensions={
            "KHR_materials_sheen": {"sheenColorFactor": [1.0, 1.0, 1.0], "sheenRoughnessFactor": 0.3}})),
        ("sheen_orange_r08", pbr("sheen_orange_r08", (0.05, 0.1, 0.4), roughness=0.8, extensions={
            "KHR_materials_sheen": {"sheenColorFactor": [1.0, 0.5, 0.2], "sheenRoughnessFactor": 0.8}})),
        ("sheen_black_base", pbr("sheen_black_base", (0.0, 0.0, 0.0), roughness=0.8, extensions={
            "KHR_materials_sheen": {"sheenColorFactor": [1.0, 1.0, 1.0], "sheenRoughnessFactor": 0.5}})),
    ]),
    "transmission_volume": (["KHR_materials_transmission", "KHR_materials_volume", "KHR_materials_ior"], [
        ("thin_glass", pbr("thin_glass", (1.0, 1.0, 1.0), roughness=0.0, extensions={
            "KHR_materials_transmission": {"transmissionFactor": 1.0}})),
        ("solid_amber", pbr("solid_amber", (1.0, 1.0, 1.0), roughness=0.0, extensions={
            "KHR_materials_transmission": {"transmissionFactor": 1.0},
            "KHR_materials_volume": {"thicknessFactor": 1.0, "attenuationColor": [0.9, 0.5, 0.2], "attenuationDistance": 0.5}})),
        ("rough_water", pbr("rough_water", (1.0, 1.0, 1.0), roughness=0.2, extensions={
            "KHR_materials_transmission": {"transmissionFactor": 1.0},
            "KHR_materials_volume": {"thicknessFactor": 1.0},
            "KHR_materials_ior": {"ior": 1.33}})),
        ("opaque_ior2", pbr("opaque_ior2", (0.1, 0.2, 0.7), roughness=0.2, extensions={
            "KHR_materials_ior": {"ior": 2.0}})),
    ]),
    "iridescence": (["KHR_materials_iridescence"], [
        ("film_none", pbr("film_none", (0.05, 0.05, 0.05), roughness=0.15)),
        ("film_250nm", pbr("film_250nm", (0.05, 0.05, 0.05), roughness=0.15, extensions={
            "KHR_materials_iridescence": {"iridescenceFactor": 1.0, "iridescenceIor": 1.3,
                                          "iridescenceThicknessMinimum": 250, "iridescenceThicknessMaximum": 250}})),
        ("film_400nm", pbr("film_400nm", (0.05, 0.05, 0.05), roughness=0.15, extensions={
            "KHR_materials_iridescence": {"iridescenceFactor": 1.0, "iridescenceIor": 1.3,
                                          "iridescenceThicknessMinimum": 400, "iridescenceThicknessMaximum": 400}})),
        ("film_on_metal", pbr("film_on_metal", (0.9, 0.9, 0.9), metallic=1.0, roughness=0.15, extensions={
            "KHR_materials_iridescence": {"iridescenceFactor": 1.0, "iridescenceIor": 1.8,
                                          "iridescenceThicknessMinimum": 600, "iridescenceThicknessMaximum": 600}})),
    ]),
    "anisotropy": (["KHR_materials_anisotropy"], [
        ("aniso_none", pbr("aniso_none", (0.95, 0.95, 0.95), metallic=1.0, roughness=0.4)),
        ("aniso_05", pbr("aniso_05", (0.95, 0.95, 0.95), metallic=1.0, roughness=0.4, extensions={
            "KHR_materials_anisotropy": {"anisotropyStrength": 0.5}})),
        ("aniso_09", pbr("aniso_09", (0.95, 0.95, 0.95), metallic=1.0, roughness=0.4, extensions={
            "KHR_materials_anisotropy": {"anisotropyStrength": 0.9}})),
        ("aniso_09_rot90", pbr("aniso_09_rot90", (0.95, 0.95, 0.95), metallic=1.0, roughness=0.4, extensions={
            "KHR_materials_anisotropy": {"anisotropyStrength": 0.9, "anisotropyRotation": math.pi / 2}})),
    ]),
    "dispersion": (["KHR_materials_dispersion", "KHR_materials_transmission", "KHR_materials_volume"], [
        ("glass_no_dispersion", pbr("glass_no_dispersion", (1.0, 1.0, 1.0), roughness=0.0, extensions={
            "KHR_materials_transmission": {"transmissionFactor": 1.0},
            "KHR_materials_volume": {"thicknessFactor": 1.0},
            "KHR_materials_ior": {"ior": 1.6}})),
        ("dispersion_05", pbr("dispersion_05", (1.0, 1.0, 1.0), roughness=0.0, extensions={
            "KHR_materials_transmission": {"transmissionFactor": 1.0},
            "KHR_materials_volume": {"thicknessFactor": 1.0},
            "KHR_materials_ior": {"ior": 1.6},
            "KHR_materials_dispersion": {"dispersion": 0.5}})),
        ("dispersion_2", pbr("dispersion_2", (1.0, 1.0, 1.0), roughness=0.0, extensions={
            "KHR_materials_transmission": {"transmissionFactor": 1.0},
            "KHR_materials_volume": {"thicknessFactor": 1.0},
            "KHR_materials_ior": {"ior": 1.6},
            "KHR_materials_dispersion": {"dispersion": 2.0}})),
        ("dispersion_tinted", pbr("dispersion_tinted", (1.0, 1.0, 1.0), roughness=0.0, extensions={
            "KHR_materials_transmission": {"transmissionFactor": 1.0},
            "KHR_materials_volume": {"thicknessFactor": 1.0, "attenuationColor": [0.6, 0.8, 1.0], "attenuationDistance": 1.0},
            "KHR_materials_ior": {"ior": 1.6},
            "KHR_materials_dispersion": {"dispersion": 1.0}})),
    ]),
    "diffuse_transmission": (["KHR_materials_diffuse_transmission"], [
        ("dt_none", pbr("dt_none", (0.3, 0.7, 0.2), roughness=0.7, doubleSided=True)),
        ("dt_half", pbr("dt_half", (0.3, 0.7, 0.2), roughness=0.7, doubleSided=True, extensions={
            "KHR_materials_diffuse_transmission": {"diffuseTransmissionFactor": 0.5}})),
        ("dt_full", pbr("dt_full", (0.3, 0.7, 0.2), roughness=0.7, doubleSided=True, extensions={
            "KHR_materials_diffuse_transmission": {"diffuseTransmissionFactor": 1.0}})),
        ("dt_full_orange", pbr("dt_full_orange", (0.3, 0.7, 0.2), roughness=0.7, doubleSided=True, extensions={
            "KHR_materials_diffuse_transmission": {"diffuseTransmissionFactor": 1.0,
                                                   "diffuseTransmissionColorFactor": [1.0, 0.5, 0.1]}})),
    ], {"shape": "sheet", "key_dir": KEY_DIR_BEHIND}),
    "specular": (["KHR_materials_specular"], [
        ("spec_default", pbr("spec_default", (0.1, 0.1, 0.1), roughness=0.2)),
        ("spec_zero", pbr("spec_zero", (0.1, 0.1, 0.1), roughness=0.2, extensions={
            "KHR_materials_specular": {"specularFactor": 0.0}})),
        ("spec_half", pbr("spec_half", (0.1, 0.1, 0.1), roughness=0.2, extensions={
            "KHR_materials_specular": {"specularFactor": 0.5}})),
        ("spec_red_tint", pbr("spec_red_tint", (0.1, 0.1, 0.1), roughness=0.2, extensions={
            "KHR_materials_specular": {"specularFactor": 1.0, "specularColorFactor": [1.0, 0.3, 0.3]}})),
    ]),
    "emissive_strength": (["KHR_materials_emissive_strength"], [
        ("emit_1", pbr("emit_1", (0.0, 0.0, 0.0), roughness=0.8, emissiveFactor=[1.0, 0.5, 0.2])),
        ("emit_4", pbr("emit_4", (0.0, 0.0, 0.0), roughness=0.8, emissiveFactor=[1.0, 0.5, 0.2], extensions={
            "KHR_materials_emissive_strength": {"emissiveStrength": 4.0}})),
        ("emit_grey_3", pbr("emit_grey_3", (0.0, 0.0, 0.0), roughness=0.8, emissiveFactor=[0.5, 0.5, 0.5], extensions={
            "KHR_materials_emissive_strength": {"emissiveStrength": 3.0}})),
        ("emit_on_white", pbr("emit_on_white", (0.8, 0.8, 0.8), roughness=0.8, emissiveFactor=[0.2, 0.5, 1.0], extensions={
            "KHR_materials_emissive_strength": {"emissiveStrength": 2.0}})),
    ]),
}


def uv_sphere(radius):
    """Positions, normals, UVs, tangents (VEC4, along +u: the parallels) and indices."""
    pos, nrm, uv, tan, idx = [], [], [], [], []
    for j in range(RINGS + 1):
        v = j / RINGS
        theta = v * math.pi  # 0 at the top (+Y)
        for i in range(SEGMENTS + 1):
            u = i / SEGMENTS
            phi = u * 2.0 * math.pi
            n = (math.sin(theta) * math.cos(phi), math.cos(theta), -math.sin(theta) * math.sin(phi))
            pos.append(tuple(radius * c for c in n))
            nrm.append(n)
            uv.append((u, v))
            # d(position)/du, normalised; at the poles use the limit direction.
            tan.append((-math.sin(phi), 0.0, -math.cos(phi), 1.0))
    row = SEGMENTS + 1
    for j in range(RINGS):
        for i in range(SEGMENTS):
            a, b = j * row + i, j * row + i + 1
            c, d = a + row, b + row
            if j != 0:
                idx += [a, c, b]
            if j != RINGS - 1:
                idx += [b, c, d]
    return pos, nrm, uv, tan, idx


def floor_quad(half):
    pos = [(-half, 0.0, -half), (half, 0.0, -half), (half, 0.0, half), (-half, 0.0, half)]
    nrm = [(0.0, 1.0, 0.0)] * 4
    uv = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]
    tan = [(1.0, 0.0, 0.0, 1.0)] * 4
    idx = [0, 2, 1, 0, 3, 2]
    return pos, nrm, uv, tan, idx


def key_quad(half):
    """A square in the XY plane facing -Z (which the node's rotation turns to KEY_DIR)."""
    pos = [(-half, -half, 0.0), (-half, half, 0.0), (half, half, 0.0), (half, -half, 0.0)]
    nrm = [(0.0, 0.0, -1.0)] * 4
    uv = [(0.0, 1.0), (0.0, 0.0), (1.0, 0.0), (1.0, 1.0)]
    tan = [(1.0, 0.0, 0.0, 1.0)] * 4
    idx = [0, 1, 2, 0, 2, 3]
    return pos, nrm, uv, tan, idx


def sheet_quad(half):
    """A square standing in the XY plane, facing +Z (the camera), its lower edge at y = 0."""
    pos = [(-half, 0.0, 0.0), (half, 0.0, 0.0), (half, 2 * half, 0.0), (-half, 2 * half, 0.0)]
    nrm = [(0.0, 0.0, 1.0)] * 4
    uv = [(0.0, 1.0), (1.0, 1.0), (1.0, 0.0), (0.0, 0.0)]
    tan = [(1.0, 0.0, 0.0, 1.0)] * 4
    idx = [0, 1, 2, 0, 2, 3]
    return pos, nrm, uv, tan, idx


def look_at_quaternion(eye, target):
    """Rotation (x, y, z, w) that turns glTF's camera (looking down -Z, +Y up) towards target."""
    f = [t - e for t, e in zip(target, eye)]
    fl = math.sqrt(sum(c * c for c in f))
    f = [c / fl for c in f]
    z = [-c for c in f]  # camera +Z points backwards
    up = (0.0, 1.0, 0.0)
    x = [up[1] * z[2] - up[2] * z[1], up[2] * z[0] - up[0] * z[2], up[0] * z[1] - up[1] * z[0]]
    xl = math.sqrt(sum(c * c for c in x))
    x = [c / xl for c in x]
    y = [z[1] * x[2] - z[2] * x[1], z[2] * x[0] - z[0] * x[2], z[0] * x[1] - z[1] * x[0]]
    return matrix_to_quaternion(x, y, z)


def direction_quaternion(d):
    """Rotation that turns -Z into direction d (d must not be vertical)."""
    return look_at_quaternion((0.0, 0.0, 0.0), d)


def matrix_to_quaternion(x, y, z):
    # Columns x, y, z of the rotation matrix.
    m00, m01, m02 = x[0], y[0], z[0]
    m10, m11, m12 = x[1], y[1], z[1]
    m20, m21, m22 = x[2], y[2], z[2]
    tr = m00 + m11 + m22
    if tr > 0:
        s = math.sqrt(tr + 1.0) * 2
        w, qx, qy, qz = 0.25 * s, (m21 - m12) / s, (m02 - m20) / s, (m10 - m01) / s
    elif m00 > m11 and m00 > m22:
        s = math.sqrt(1.0 + m00 - m11 - m22) * 2
        w, qx, qy, qz = (m21 - m12) / s, 0.25 * s, (m01 + m10) / s, (m02 + m20) / s
    elif m11 > m22:
        s = math.sqrt(1.0 + m11 - m00 - m22) * 2
        w, qx, qy, qz = (m02 - m20) / s, (m01 + m10) / s, 0.25 * s, (m12 + m21) / s
    else:
        s = math.sqrt(1.0 + m22 - m00 - m11) * 2
        w, qx, qy, qz = (m10 - m01) / s, (m02 + m20) / s, (m12 + m21) / s, 0.25 * s
    return [round(qx, 7), round(qy, 7), round(qz, 7), round(w, 7)]


class Buffer:
    """One binary buffer (the shared stage.bin) with its views and accessors."""

    def __init__(self):
        self.data = bytearray()
        self.views, self.accessors = [], []

    def add(self, values, kind, comps, target):
        fmt = "<" + ("I" if kind == "u32" else "f") * comps
        while len(self.data) % 4:
            self.data.append(0)
        start = len(self.data)
        for v in values:
            self.data += struct.pack(fmt, *(v if comps > 1 else (v,)))
        self.views.append({"buffer": 0, "byteOffset": start, "byteLength": len(self.data) - start, "target": target})
        acc = {
            "bufferView": len(self.views) - 1,
            "componentType": 5125 if kind == "u32" else 5126,
            "count": len(values),
            "type": {1: "SCALAR", 2: "VEC2", 3: "VEC3", 4: "VEC4"}[comps],
        }
        if kind == "f32" and comps == 3 and target == 34962:
            acc["min"] = [min(v[k] for v in values) for k in range(3)]
            acc["max"] = [max(v[k] for v in values) for k in range(3)]
        self.accessors.append(acc)
        return len(self.accessors) - 1

    def add_mesh_data(self, geometry):
        pos, nrm, uv, tan, idx = geometry
        # Round through float32 first so that min/max equal the stored values exactly.
        f32 = lambda vs: [tuple(struct.unpack("<f", struct.pack("<f", c))[0] for c in v) for v in vs]
        return {
            "POSITION": self.add(f32(pos), "f32", 3, 34962),
            "NORMAL": self.add(f32(nrm), "f32", 3, 34962),
            "TEXCOORD_0": self.add(f32(uv), "f32", 2, 34962),
            "TANGENT": self.add(f32(tan), "f32", 4, 34962),
        }, self.add(idx, "u32", 1, 34963)


def build(scene_name, used, spheres, options=None):
    options = options or {}
    buf = Buffer()
    sphere_attrs, sphere_idx = buf.add_mesh_data(uv_sphere(SPHERE_RADIUS))
    floor_attrs, floor_idx = buf.add_mesh_data(floor_quad(FLOOR_HALF))
    key_attrs, key_idx = buf.add_mesh_data(key_quad(KEY_HALF))
    # Every scene's buffer holds the sheet too (appended last, so the other accessors keep
    # their numbers), so that all scenes share one stage.bin; scenes of spheres drop its
    # accessors and views.
    sheet_attrs, sheet_idx = buf.add_mesh_data(sheet_quad(SHEET_HALF))
    sheet = options.get("shape", "sphere") == "sheet"
    if not sheet:
        del buf.accessors[-5:], buf.views[-5:]
    obj_attrs, obj_idx = (sheet_attrs, sheet_idx) if sheet else (sphere_attrs, sphere_idx)
    key_dir = options.get("key_dir", KEY_DIR)
    materials = [FLOOR_MATERIAL, KEY_MATERIAL] + [m for _, m in spheres]
    meshes = [{"name": "floor", "primitives": [{"attributes": floor_attrs, "indices": floor_idx, "material": 0}]},
              {"name": "key_light", "primitives": [{"attributes": key_attrs, "indices": key_idx, "material": 1}]}]
    key_len = math.sqrt(sum(c * c for c in key_dir))
    nodes = [{"name": "floor", "mesh": 0},
             {"name": "key_light", "mesh": 1, "rotation": direction_quaternion(key_dir),
              "translation": [round(-KEY_DISTANCE * c / key_len, 6) for c in key_dir]}]
    for k, (name, _) in enumerate(spheres):
        meshes.append({"name": name, "primitives": [{"attributes": obj_attrs, "indices": obj_idx, "material": k + 2}]})
        nodes.append({"name": name, "mesh": k + 2,
                      "translation": [SPHERE_X[k], SHEET_LIFT if sheet else SPHERE_RADIUS, 0.0]})
    nodes.append({"name": "camera", "camera": 0, "translation": list(CAMERA_POS),
                  "rotation": look_at_quaternion(CAMERA_POS, CAMERA_TARGET)})
    ext_used = set(["KHR_materials_emissive_strength"])
    for _, m in spheres:
        ext_used.update(m.get("extensions", {}).keys())
    doc = {
        "asset": {"version": "2.0", "generator": "rayfarm benches/gltf_ext/make_scenes.py"},
        "extensionsUsed": sorted(ext_used),
        "scene": 0,
        "scenes": [{"name": scene_name, "nodes": list(range(len(nodes)))}],
        "nodes": nodes,
        "cameras": [{"name": "camera", "type": "perspective", "perspective": {
            "yfov": CAMERA_YFOV, "aspectRatio": IMAGE_WIDTH / IMAGE_HEIGHT, "znear": 0.05, "zfar": 100.0}}],
        "meshes": meshes,
        "materials": materials,
        "accessors": buf.accessors,
        "bufferViews": buf.views,
        "buffers": [{"byteLength": len(buf.data), "uri": BIN_NAME}],
        "extras": {"exercises": used},
    }
    return doc, bytes(buf.data)


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
    os.makedirs(out_dir, exist_ok=True)
    stage = None
    for name, (used, spheres, *options) in SCENES.items():
        doc, data = build(name, used, spheres, *options)
        # Every scene has the same geometry, so they share one binary buffer.
        assert stage is None or stage == data
        stage = data
        path = os.path.join(out_dir, name + ".gltf")
        with open(path, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
        print(path)
    with open(os.path.join(out_dir, BIN_NAME), "wb") as f:
        f.write(stage)


if __name__ == "__main__":
    main()
