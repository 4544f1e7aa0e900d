#!/usr/bin/env python3
"""Writes the many-lights benchmark scene: a hall lit by 48 small lamps and nothing else.

    python3 benches/lamp_hall.py OUT_DIR      -> OUT_DIR/lamp_hall.gltf (+ .bin), OUT_DIR/black.hdr

A grey floor (20 x 20) and back wall, four spheres (two red and glossy), and an 8 x 6 grid of
0.3 x 0.3 emissive quads (double-sided, four colours, strengths 10-50 by
KHR_materials_emissive_strength) 2.5-3.1 above the floor; a camera at eye height. Every light
is an emissive triangle (96 of them), so a renderer that picks lights by power alone sends most
light samples to lamps far from the point being shaded; a light tree (rayfarm since protocol
13, Cycles since 3.5) sends them to the near ones. `black.hdr` is an all-black environment for
`benches/vs_peers.sh --env`, whose glTF mode needs one:

    python3 benches/lamp_hall.py /tmp/hall
    bash benches/vs_peers.sh --scene /tmp/hall/lamp_hall.gltf --env /tmp/hall/black.hdr \\
        --width 240 --height 160

The files are deterministic (no randomness).
"""
import json
import math
import os
import struct
import sys


class Builder:
    def __init__(self):
        self.bin = bytearray()
        self.accessors, self.views, self.meshes, self.nodes = [], [], [], []
        self.materials = []

    def _view(self, data, target):
        while len(self.bin) % 4:
            self.bin.append(0)
        self.views.append({"buffer": 0, "byteOffset": len(self.bin), "byteLength": len(data),
                           "target": target})
        self.bin += data
        return len(self.views) - 1

    def _vec3(self, vs):
        data = b"".join(struct.pack("<3f", *v) for v in vs)
        view = self._view(data, 34962)
        lo = [min(v[k] for v in vs) for k in range(3)]
        hi = [max(v[k] for v in vs) for k in range(3)]
        self.accessors.append({"bufferView": view, "componentType": 5126, "count": len(vs),
                               "type": "VEC3", "min": lo, "max": hi})
        return len(self.accessors) - 1

    def _indices(self, idx):
        data = b"".join(struct.pack("<I", i) for i in idx)
        view = self._view(data, 34963)
        self.accessors.append({"bufferView": view, "componentType": 5125, "count": len(idx),
                               "type": "SCALAR"})
        return len(self.accessors) - 1

    def material(self, m):
        self.materials.append(m)
        return len(self.materials) - 1

    def mesh(self, name, pos, nrm, idx, material):
        prim = {"attributes": {"POSITION": self._vec3(pos), "NORMAL": self._vec3(nrm)},
                "indices": self._indices(idx), "material": material}
        self.meshes.append({"name": name, "primitives": [prim]})
        self.nodes.append({"name": name, "mesh": len(self.meshes) - 1})

    def quad(self, name, origin, e1, e2, material):
        """Two triangles, counter-clockwise seen from the side cross(e1, e2) points to."""
        o = origin
        p = [o, [o[k] + e1[k] for k in range(3)], [o[k] + e1[k] + e2[k] for k in range(3)],
             [o[k] + e2[k] for k in range(3)]]
        n = [e1[1] * e2[2] - e1[2] * e2[1], e1[2] * e2[0] - e1[0] * e2[2], e1[0] * e2[1] - e1[1] * e2[0]]
        ln = math.sqrt(sum(c * c for c in n))
        n = [c / ln for c in n]
        self.mesh(name, p, [n] * 4, [0, 1, 2, 0, 2, 3], material)

    def sphere(self, name, c, r, rings, segs, material):
        pos, nrm, idx = [], [], []
        for i in range(rings + 1):
            th = math.pi * i / rings
            for j in range(segs + 1):
                ph = 2 * math.pi * j / segs
                n = [math.sin(th) * math.cos(ph), math.cos(th), -math.sin(th) * math.sin(ph)]
                nrm.append(n)
                pos.append([c[k] + r * n[k] for k in range(3)])
        for i in range(rings):
            for j in range(segs):
                a, b = i * (segs + 1) + j, (i + 1) * (segs + 1) + j
                idx += [a, b, a + 1, a + 1, b, b + 1]
        self.mesh(name, pos, nrm, idx, material)

    def write(self, path, camera):
        """The glTF at `path` and its buffer beside it (an external .bin, which
        benches/vs_peers.py's reader needs to find the camera)."""
        bin_name = os.path.splitext(os.path.basename(path))[0] + ".bin"
        self.nodes.append({"name": "camera", "camera": 0, "translation": camera["position"],
                           "rotation": camera["rotation"]})
        doc = {
            "asset": {"version": "2.0", "generator": "rayfarm benches/lamp_hall.py"},
            "extensionsUsed": ["KHR_materials_emissive_strength"],
            "scene": 0,
            "scenes": [{"nodes": list(range(len(self.nodes)))}],
            "nodes": self.nodes,
            "meshes": self.meshes,
            "materials": self.materials,
            "cameras": [{"type": "perspective",
                         "perspective": {"yfov": camera["yfov"], "znear": 0.01,
                                         "aspectRatio": camera["aspect"]}}],
            "accessors": self.accessors,
            "bufferViews": self.views,
            "buffers": [{"byteLength": len(self.bin), "uri": bin_name}],
        }
        with open(path, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
        with open(os.path.join(os.path.dirname(path), bin_name), "wb") as f:
            f.write(bytes(self.bin))


def look_rotation(pos, target):
    """Quaternion (x, y, z, w) turning the camera's -Z towards target, +Y up."""
    f = [target[k] - pos[k] for k in range(3)]
    lf = math.sqrt(sum(c * c for c in f))
    f = [c / lf for c in f]
    # right = f x up, up' = right x f; camera axes: X = right, Y = up', Z = -f
    r = [f[1] * 0 - f[2] * 1, f[2] * 0 - f[0] * 0, f[0] * 1 - f[1] * 0]
    lr = math.sqrt(sum(c * c for c in r))
    r = [c / lr for c in r]
    u = [r[1] * f[2] - r[2] * f[1], r[2] * f[0] - r[0] * f[2], r[0] * f[1] - r[1] * f[0]]
    z = [-c for c in f]
    m = [[r[0], u[0], z[0]], [r[1], u[1], z[1]], [r[2], u[2], z[2]]]
    t = m[0][0] + m[1][1] + m[2][2]
    if t > 0:
        s = 0.5 / math.sqrt(t + 1)
        return [(m[2][1] - m[1][2]) * s, (m[0][2] - m[2][0]) * s, (m[1][0] - m[0][1]) * s, 0.25 / s]
    if m[0][0] > m[1][1] and m[0][0] > m[2][2]:
        s = 2 * math.sqrt(1 + m[0][0] - m[1][1] - m[2][2])
        return [0.25 * s, (m[0][1] + m[1][0]) / s, (m[0][2] + m[2][0]) / s, (m[2][1] - m[1][2]) / s]
    if m[1][1] > m[2][2]:
        s = 2 * math.sqrt(1 + m[1][1] - m[0][0] - m[2][2])
        return [(m[0][1] + m[1][0]) / s, 0.25 * s, (m[1][2] + m[2][1]) / s, (m[0][2] - m[2][0]) / s]
    s = 2 * math.sqrt(1 + m[2][2] - m[0][0] - m[1][1])
    return [(m[0][2] + m[2][0]) / s, (m[1][2] + m[2][1]) / s, 0.25 * s, (m[1][0] - m[0][1]) / s]


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    b = Builder()
    grey = b.material({"name": "grey", "pbrMetallicRoughness": {
        "baseColorFactor": [0.6, 0.6, 0.6, 1.0], "metallicFactor": 0.0, "roughnessFactor": 1.0}})
    red = b.material({"name": "red", "pbrMetallicRoughness": {
        "baseColorFactor": [0.7, 0.2, 0.1, 1.0], "metallicFactor": 0.0, "roughnessFactor": 0.3}})
    b.quad("floor", [-10, 0, 10], [20, 0, 0], [0, 0, -20], grey)
    b.quad("wall", [-10, 0, -8], [20, 0, 0], [0, 6, 0], grey)
    for i, x in enumerate([-4.0, -1.0, 2.5, 5.0]):
        b.sphere(f"ball{i}", [x, 0.6, -1.0 - i], 0.6, 12, 24, red if i % 2 == 0 else grey)
    hues = [[1.0, 0.75, 0.5], [0.25, 0.75, 1.0], [1.0, 1.0, 1.0], [1.0, 0.17, 0.17]]
    for gx in range(8):
        for gz in range(6):
            k = gx * 6 + gz
            lamp = b.material({
                "name": f"lamp{k}", "doubleSided": True,
                "pbrMetallicRoughness": {"baseColorFactor": [0, 0, 0, 1], "metallicFactor": 0.0,
                                         "roughnessFactor": 1.0},
                "emissiveFactor": hues[k % 4],
                "extensions": {"KHR_materials_emissive_strength": {
                    "emissiveStrength": 10.0 + 10.0 * (k % 5)}}})
            x, z = -8.0 + 2.2 * gx, 6.0 - 2.4 * gz
            b.quad(f"lamp{k}", [x, 2.5 + 0.3 * (k % 3), z], [0.3, 0, 0], [0, 0, 0.3], lamp)
    pos, target = [0.0, 1.8, 9.0], [0.0, 1.0, -1.0]
    b.write(os.path.join(out, "lamp_hall.gltf"),
            {"position": pos, "rotation": look_rotation(pos, target), "yfov": 0.9, "aspect": 1.5})
    # An all-black 8 x 4 Radiance HDR (flat RGBE scanlines).
    with open(os.path.join(out, "black.hdr"), "wb") as f:
        f.write(b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 4 +X 8\n" + bytes(8 * 4 * 4))
    print(os.path.join(out, "lamp_hall.gltf"))


if __name__ == "__main__":
    main()
