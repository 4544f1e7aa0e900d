//! The compiled scene's binary form: versioned, zstd-compressed and content-hashed.
//!
//! A blob is a fixed 64-byte header followed by the zstd-compressed body:
//!
//! | offset | size | field                                             |
//! |--------|------|---------------------------------------------------|
//! | 0      | 8    | magic [`BLOB_MAGIC`] (`"RFSCENE\0"`)              |
//! | 8      | 4    | format version, [`BLOB_VERSION`]                  |
//! | 12     | 4    | flags, always 0                                   |
//! | 16     | 8    | uncompressed body length                          |
//! | 24     | 8    | compressed body length (the rest of the blob)     |
//! | 32     | 32   | BLAKE3 hash of the uncompressed body              |
//!
//! All integers are little endian. The body is written field by field in the order of
//! [`CompiledScene`]'s declaration: vectors and strings as a `u64` count followed by their
//! elements (strings as UTF-8 bytes), `f32` as its IEEE bits, `bool` as a byte 0 or 1, `Option`
//! as a byte 0 (`None`) or 1 followed by the value, and enums as a one-byte tag (in declaration
//! order) followed by the variant's fields. Encoding is deterministic, so the hash in the header
//! is a content hash: equal scenes have equal hashes (and equal blobs).
//!
//! Blobs arrive over the network, so [`decode`] treats them as hostile: it never panics, never
//! allocates more than the data actually present can justify (the header's claims are checked
//! against the blob and a limit before anything is allocated, and every element count against
//! the bytes that remain), and finishes with [`CompiledScene::validate`].

use crate::{
    AlphaMode, Camera, CompiledScene, Environment, Image, Light, LightKind, Material, Mesh,
    Projection, SceneError, Texture, TextureRef, WrapMode,
};
use std::io::Read;

/// First eight bytes of every blob.
pub const BLOB_MAGIC: [u8; 8] = *b"RFSCENE\0";
/// The body layout version this code writes and reads. Version 2 added the sheen and clearcoat
/// fields of [`Material`], version 3 its volume fields, version 4 its iridescence, anisotropy,
/// dispersion and diffuse-transmission fields.
pub const BLOB_VERSION: u32 = 4;
/// Largest uncompressed body [`decode`] accepts (4 GiB).
pub const MAX_DECOMPRESSED_BYTES: u64 = 4 << 30;
/// Size of the fixed header that precedes the compressed body.
pub const HEADER_LEN: usize = 64;

/// zstd level used by [`encode`].
const ZSTD_LEVEL: i32 = 3;

fn blob_err(msg: impl Into<String>) -> SceneError {
    SceneError::Blob(msg.into())
}

// ---------------------------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------------------------

fn finite<const N: usize>(what: &str, i: usize, v: &[f32; N]) -> Result<(), String> {
    if v.iter().all(|c| c.is_finite()) {
        Ok(())
    } else {
        Err(format!("{what}[{i}] is not finite ({v:?})"))
    }
}

fn finite_field<const N: usize>(
    what: &str,
    i: usize,
    field: &str,
    v: &[f32; N],
) -> Result<(), String> {
    if v.iter().all(|c| c.is_finite()) {
        Ok(())
    } else if N == 1 {
        let x = v.first().copied().unwrap_or(0.0);
        Err(format!("{what}[{i}].{field} is not finite ({x})"))
    } else {
        Err(format!("{what}[{i}].{field} is not finite ({v:?})"))
    }
}

fn per_vertex_len(
    name: &str,
    len: usize,
    vertices: usize,
    may_be_empty: bool,
) -> Result<(), String> {
    if len == vertices || (may_be_empty && len == 0) {
        Ok(())
    } else if may_be_empty {
        Err(format!(
            "{name} has {len} entries but there are {vertices} vertices (must be empty or equal)"
        ))
    } else {
        Err(format!(
            "{name} has {len} entries but there are {vertices} vertices"
        ))
    }
}

impl CompiledScene {
    /// Checks every count, index and required-finite value, so that a renderer may index without
    /// checks. The message names the offending field, e.g.
    /// `triangle 12 refers to vertex 99 but there are 40 vertices`.
    ///
    /// Finite values are required for positions, material factors and texture transforms,
    /// lights, cameras and the environment; normals, tangents and UVs are not checked.
    pub fn validate(&self) -> Result<(), String> {
        let nv = self.positions.len();
        per_vertex_len("normals", self.normals.len(), nv, false)?;
        per_vertex_len("tangents", self.tangents.len(), nv, true)?;
        per_vertex_len("uv0", self.uv0.len(), nv, true)?;
        per_vertex_len("uv1", self.uv1.len(), nv, true)?;
        for (i, p) in self.positions.iter().enumerate() {
            finite("positions", i, p)?;
        }

        let nt = self.triangles.len();
        for (i, t) in self.triangles.iter().enumerate() {
            for &v in t {
                if v as usize >= nv {
                    return Err(format!(
                        "triangle {i} refers to vertex {v} but there are {nv} vertices"
                    ));
                }
            }
        }
        if self.triangle_materials.len() != nt {
            return Err(format!(
                "triangle_materials has {} entries but there are {nt} triangles",
                self.triangle_materials.len()
            ));
        }
        let nm = self.materials.len();
        for (i, &m) in self.triangle_materials.iter().enumerate() {
            if m as usize >= nm {
                return Err(format!(
                    "triangle {i} uses material {m} but there are {nm} materials"
                ));
            }
        }

        for (i, mesh) in self.meshes.iter().enumerate() {
            let end = u64::from(mesh.first_triangle) + u64::from(mesh.triangle_count);
            if end > nt as u64 {
                return Err(format!(
                    "mesh {i} ({:?}) covers triangles {}..{end} but there are {nt} triangles",
                    mesh.name, mesh.first_triangle
                ));
            }
        }

        let ntex = self.textures.len();
        for (i, m) in self.materials.iter().enumerate() {
            finite_field("materials", i, "base_color", &m.base_color)?;
            finite_field("materials", i, "metallic", &[m.metallic])?;
            finite_field("materials", i, "roughness", &[m.roughness])?;
            finite_field("materials", i, "normal_scale", &[m.normal_scale])?;
            finite_field("materials", i, "emissive", &m.emissive)?;
            finite_field("materials", i, "specular", &[m.specular])?;
            finite_field("materials", i, "specular_color", &m.specular_color)?;
            finite_field("materials", i, "transmission", &[m.transmission])?;
            finite_field("materials", i, "ior", &[m.ior])?;
            finite_field("materials", i, "sheen_color", &m.sheen_color)?;
            finite_field("materials", i, "sheen_roughness", &[m.sheen_roughness])?;
            finite_field("materials", i, "clearcoat", &[m.clearcoat])?;
            finite_field(
                "materials",
                i,
                "clearcoat_roughness",
                &[m.clearcoat_roughness],
            )?;
            finite_field(
                "materials",
                i,
                "clearcoat_normal_scale",
                &[m.clearcoat_normal_scale],
            )?;
            finite_field("materials", i, "thickness", &[m.thickness])?;
            finite_field("materials", i, "attenuation_color", &m.attenuation_color)?;
            // Infinite means no absorption; NaN, zero and negative distances are errors.
            if m.attenuation_distance.is_nan() || m.attenuation_distance <= 0.0 {
                return Err(format!(
                    "materials[{i}].attenuation_distance must be positive ({})",
                    m.attenuation_distance
                ));
            }
            finite_field("materials", i, "iridescence", &[m.iridescence])?;
            finite_field("materials", i, "iridescence_ior", &[m.iridescence_ior])?;
            finite_field(
                "materials",
                i,
                "iridescence_thickness",
                &[m.iridescence_thickness_min, m.iridescence_thickness_max],
            )?;
            finite_field(
                "materials",
                i,
                "anisotropy",
                &[m.anisotropy_strength, m.anisotropy_rotation],
            )?;
            finite_field("materials", i, "dispersion", &[m.dispersion])?;
            finite_field(
                "materials",
                i,
                "diffuse_transmission",
                &[m.diffuse_transmission],
            )?;
            finite_field(
                "materials",
                i,
                "diffuse_transmission_color",
                &m.diffuse_transmission_color,
            )?;
            finite_field("materials", i, "alpha_cutoff", &[m.alpha_cutoff])?;
            let slots = [
                ("base_color_texture", &m.base_color_texture),
                ("metallic_roughness_texture", &m.metallic_roughness_texture),
                ("normal_texture", &m.normal_texture),
                ("emissive_texture", &m.emissive_texture),
                ("specular_texture", &m.specular_texture),
                ("specular_color_texture", &m.specular_color_texture),
                ("transmission_texture", &m.transmission_texture),
                ("sheen_color_texture", &m.sheen_color_texture),
                ("sheen_roughness_texture", &m.sheen_roughness_texture),
                ("clearcoat_texture", &m.clearcoat_texture),
                (
                    "clearcoat_roughness_texture",
                    &m.clearcoat_roughness_texture,
                ),
                ("clearcoat_normal_texture", &m.clearcoat_normal_texture),
                ("iridescence_texture", &m.iridescence_texture),
                (
                    "iridescence_thickness_texture",
                    &m.iridescence_thickness_texture,
                ),
                ("anisotropy_texture", &m.anisotropy_texture),
                (
                    "diffuse_transmission_texture",
                    &m.diffuse_transmission_texture,
                ),
                (
                    "diffuse_transmission_color_texture",
                    &m.diffuse_transmission_color_texture,
                ),
            ];
            for (slot, r) in slots {
                let Some(r) = r else { continue };
                if r.texture as usize >= ntex {
                    return Err(format!(
                        "material {i} ({:?}) {slot} refers to texture {} but there are {ntex} textures",
                        m.name, r.texture
                    ));
                }
                if r.uv_set > 1 {
                    return Err(format!(
                        "material {i} ({:?}) {slot} uses uv set {} (only 0 and 1 exist)",
                        m.name, r.uv_set
                    ));
                }
                if !r.transform.iter().all(|c| c.is_finite()) {
                    return Err(format!(
                        "material {i} ({:?}) {slot} transform is not finite ({:?})",
                        m.name, r.transform
                    ));
                }
            }
        }

        let nimg = self.images.len();
        for (i, t) in self.textures.iter().enumerate() {
            if t.image as usize >= nimg {
                return Err(format!(
                    "texture {i} refers to image {} but there are {nimg} images",
                    t.image
                ));
            }
        }
        for (i, img) in self.images.iter().enumerate() {
            if img.width == 0 || img.height == 0 {
                return Err(format!(
                    "image {i} ({:?}) is {}x{} (both sides must be at least 1)",
                    img.name, img.width, img.height
                ));
            }
            let want = u64::from(img.width)
                .checked_mul(u64::from(img.height))
                .and_then(|n| n.checked_mul(4));
            if want != Some(img.rgba8.len() as u64) {
                return Err(format!(
                    "image {i} ({:?}) is {}x{} but has {} bytes of rgba8 data",
                    img.name,
                    img.width,
                    img.height,
                    img.rgba8.len()
                ));
            }
        }

        for (i, l) in self.lights.iter().enumerate() {
            if let LightKind::Spot {
                inner_cone,
                outer_cone,
            } = l.kind
            {
                finite_field("lights", i, "inner_cone", &[inner_cone])?;
                finite_field("lights", i, "outer_cone", &[outer_cone])?;
            }
            finite_field("lights", i, "color", &l.color)?;
            finite_field("lights", i, "intensity", &[l.intensity])?;
            finite_field("lights", i, "position", &l.position)?;
            finite_field("lights", i, "direction", &l.direction)?;
        }

        for (i, c) in self.cameras.iter().enumerate() {
            match c.projection {
                Projection::Perspective { yfov, aspect } => {
                    finite_field("cameras", i, "yfov", &[yfov])?;
                    if let Some(a) = aspect {
                        finite_field("cameras", i, "aspect", &[a])?;
                    }
                }
                Projection::Orthographic { xmag, ymag } => {
                    finite_field("cameras", i, "xmag", &[xmag])?;
                    finite_field("cameras", i, "ymag", &[ymag])?;
                }
            }
            finite_field("cameras", i, "position", &c.position)?;
            finite_field("cameras", i, "right", &c.right)?;
            finite_field("cameras", i, "up", &c.up)?;
            finite_field("cameras", i, "forward", &c.forward)?;
        }

        match &self.environment {
            Environment::Black => {}
            Environment::Color(c) => {
                if !c.iter().all(|x| x.is_finite()) {
                    return Err(format!("environment colour is not finite ({c:?})"));
                }
            }
            Environment::Map {
                width,
                height,
                texels,
            } => {
                if *width == 0 || *height == 0 {
                    return Err(format!(
                        "environment map is {width}x{height} (both sides must be at least 1)"
                    ));
                }
                let want = u64::from(*width).checked_mul(u64::from(*height));
                if want != Some(texels.len() as u64) {
                    return Err(format!(
                        "environment map is {width}x{height} but has {} texels",
                        texels.len()
                    ));
                }
                for (i, t) in texels.iter().enumerate() {
                    finite("environment texels", i, t)?;
                }
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// Serializes, compresses and hashes `scene`. Deterministic: equal scenes give equal bytes.
///
/// Does not validate; call [`CompiledScene::validate`] first, since [`decode`] rejects invalid
/// scenes.
pub fn encode(scene: &CompiledScene) -> Vec<u8> {
    let mut body = Vec::with_capacity(estimated_body_len(scene));
    write_scene(&mut body, scene);
    wrap_body(&body)
}

/// Compresses and hashes an already serialized body and puts the header in front.
fn wrap_body(body: &[u8]) -> Vec<u8> {
    // Compressing an in-memory buffer only fails if zstd itself cannot allocate.
    let compressed = zstd::bulk::compress(body, ZSTD_LEVEL)
        .expect("zstd compression of an in-memory buffer failed");
    let hash = blake3::hash(body);
    let mut out = Vec::with_capacity(HEADER_LEN + compressed.len());
    out.extend_from_slice(&BLOB_MAGIC);
    out.extend_from_slice(&BLOB_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&(compressed.len() as u64).to_le_bytes());
    out.extend_from_slice(hash.as_bytes());
    out.extend_from_slice(&compressed);
    out
}

fn estimated_body_len(s: &CompiledScene) -> usize {
    let images: usize = s.images.iter().map(|i| i.rgba8.len() + 64).sum();
    let env = match &s.environment {
        Environment::Map { texels, .. } => texels.len() * 12,
        _ => 0,
    };
    1024 + s.meshes.len() * 64
        + s.positions.len() * 12
        + s.normals.len() * 12
        + s.tangents.len() * 16
        + s.uv0.len() * 8
        + s.uv1.len() * 8
        + s.triangles.len() * 16
        + s.materials.len() * 256
        + s.textures.len() * 8
        + images
        + s.lights.len() * 96
        + s.cameras.len() * 96
        + env
}

struct W<'a>(&'a mut Vec<u8>);

impl W<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn bool(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn len(&mut self, n: usize) {
        self.u64(n as u64);
    }
    fn f32(&mut self, v: f32) {
        self.0.extend_from_slice(&v.to_bits().to_le_bytes());
    }
    fn f32s<const N: usize>(&mut self, v: &[f32; N]) {
        for &x in v {
            self.f32(x);
        }
    }
    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn f32_vec<const N: usize>(&mut self, v: &[[f32; N]]) {
        self.len(v.len());
        for x in v {
            self.f32s(x);
        }
    }
    fn tex_ref(&mut self, r: &Option<TextureRef>) {
        match r {
            None => self.u8(0),
            Some(r) => {
                self.u8(1);
                self.u32(r.texture);
                self.u8(r.uv_set);
                self.f32s(&r.transform);
            }
        }
    }
}

fn write_mesh(w: &mut W, m: &Mesh) {
    w.str(&m.name);
    w.u32(m.first_triangle);
    w.u32(m.triangle_count);
    w.bool(m.has_uv[0]);
    w.bool(m.has_uv[1]);
}

fn write_material(w: &mut W, m: &Material) {
    w.str(&m.name);
    w.f32s(&m.base_color);
    w.tex_ref(&m.base_color_texture);
    w.f32(m.metallic);
    w.f32(m.roughness);
    w.tex_ref(&m.metallic_roughness_texture);
    w.tex_ref(&m.normal_texture);
    w.f32(m.normal_scale);
    w.f32s(&m.emissive);
    w.tex_ref(&m.emissive_texture);
    w.f32(m.specular);
    w.tex_ref(&m.specular_texture);
    w.f32s(&m.specular_color);
    w.tex_ref(&m.specular_color_texture);
    w.f32(m.transmission);
    w.tex_ref(&m.transmission_texture);
    w.f32(m.ior);
    w.f32s(&m.sheen_color);
    w.tex_ref(&m.sheen_color_texture);
    w.f32(m.sheen_roughness);
    w.tex_ref(&m.sheen_roughness_texture);
    w.f32(m.clearcoat);
    w.tex_ref(&m.clearcoat_texture);
    w.f32(m.clearcoat_roughness);
    w.tex_ref(&m.clearcoat_roughness_texture);
    w.tex_ref(&m.clearcoat_normal_texture);
    w.f32(m.clearcoat_normal_scale);
    w.f32(m.thickness);
    w.f32s(&m.attenuation_color);
    w.f32(m.attenuation_distance);
    w.f32(m.iridescence);
    w.tex_ref(&m.iridescence_texture);
    w.f32(m.iridescence_ior);
    w.f32(m.iridescence_thickness_min);
    w.f32(m.iridescence_thickness_max);
    w.tex_ref(&m.iridescence_thickness_texture);
    w.f32(m.anisotropy_strength);
    w.f32(m.anisotropy_rotation);
    w.tex_ref(&m.anisotropy_texture);
    w.f32(m.dispersion);
    w.f32(m.diffuse_transmission);
    w.tex_ref(&m.diffuse_transmission_texture);
    w.f32s(&m.diffuse_transmission_color);
    w.tex_ref(&m.diffuse_transmission_color_texture);
    w.u8(match m.alpha_mode {
        AlphaMode::Opaque => 0,
        AlphaMode::Mask => 1,
        AlphaMode::Blend => 2,
    });
    w.f32(m.alpha_cutoff);
    w.bool(m.double_sided);
}

fn wrap_tag(m: WrapMode) -> u8 {
    match m {
        WrapMode::Repeat => 0,
        WrapMode::ClampToEdge => 1,
        WrapMode::MirroredRepeat => 2,
    }
}

fn write_texture(w: &mut W, t: &Texture) {
    w.u32(t.image);
    w.u8(wrap_tag(t.wrap_s));
    w.u8(wrap_tag(t.wrap_t));
    w.bool(t.nearest);
}

fn write_image(w: &mut W, i: &Image) {
    w.str(&i.name);
    w.u32(i.width);
    w.u32(i.height);
    w.len(i.rgba8.len());
    w.0.extend_from_slice(&i.rgba8);
}

fn write_light(w: &mut W, l: &Light) {
    w.str(&l.name);
    match l.kind {
        LightKind::Point => w.u8(0),
        LightKind::Spot {
            inner_cone,
            outer_cone,
        } => {
            w.u8(1);
            w.f32(inner_cone);
            w.f32(outer_cone);
        }
        LightKind::Directional => w.u8(2),
    }
    w.f32s(&l.color);
    w.f32(l.intensity);
    w.f32s(&l.position);
    w.f32s(&l.direction);
}

fn write_camera(w: &mut W, c: &Camera) {
    w.str(&c.name);
    match c.projection {
        Projection::Perspective { yfov, aspect } => {
            w.u8(0);
            w.f32(yfov);
            match aspect {
                None => w.u8(0),
                Some(a) => {
                    w.u8(1);
                    w.f32(a);
                }
            }
        }
        Projection::Orthographic { xmag, ymag } => {
            w.u8(1);
            w.f32(xmag);
            w.f32(ymag);
        }
    }
    w.f32s(&c.position);
    w.f32s(&c.right);
    w.f32s(&c.up);
    w.f32s(&c.forward);
}

fn write_scene(out: &mut Vec<u8>, s: &CompiledScene) {
    let w = &mut W(out);
    w.len(s.meshes.len());
    for m in &s.meshes {
        write_mesh(w, m);
    }
    w.f32_vec(&s.positions);
    w.f32_vec(&s.normals);
    w.f32_vec(&s.tangents);
    w.f32_vec(&s.uv0);
    w.f32_vec(&s.uv1);
    w.len(s.triangles.len());
    for t in &s.triangles {
        for &v in t {
            w.u32(v);
        }
    }
    w.len(s.triangle_materials.len());
    for &m in &s.triangle_materials {
        w.u32(m);
    }
    w.len(s.materials.len());
    for m in &s.materials {
        write_material(w, m);
    }
    w.len(s.textures.len());
    for t in &s.textures {
        write_texture(w, t);
    }
    w.len(s.images.len());
    for i in &s.images {
        write_image(w, i);
    }
    w.len(s.lights.len());
    for l in &s.lights {
        write_light(w, l);
    }
    w.len(s.cameras.len());
    for c in &s.cameras {
        write_camera(w, c);
    }
    match &s.environment {
        Environment::Black => w.u8(0),
        Environment::Color(c) => {
            w.u8(1);
            w.f32s(c);
        }
        Environment::Map {
            width,
            height,
            texels,
        } => {
            w.u8(2);
            w.u32(*width);
            w.u32(*height);
            w.f32_vec(texels);
        }
    }
    match s.resolution {
        None => w.u8(0),
        Some([x, y]) => {
            w.u8(1);
            w.u32(x);
            w.u32(y);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Header
// ---------------------------------------------------------------------------------------------

struct Header {
    body_len: u64,
    compressed_len: u64,
    hash: [u8; 32],
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    for (d, s) in a.iter_mut().zip(b) {
        *d = *s;
    }
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    for (d, s) in a.iter_mut().zip(b) {
        *d = *s;
    }
    u64::from_le_bytes(a)
}

/// Checks magic, version and flags and reads the header (does not look at the body).
fn read_header(blob: &[u8]) -> Result<Header, SceneError> {
    let magic_len = blob.len().min(BLOB_MAGIC.len());
    if blob.get(..magic_len) != BLOB_MAGIC.get(..magic_len) || blob.is_empty() {
        return Err(blob_err("not a rayfarm compiled scene"));
    }
    if blob.len() < HEADER_LEN {
        return Err(blob_err(format!(
            "truncated header ({} bytes, need {HEADER_LEN})",
            blob.len()
        )));
    }
    let field = |from: usize, to: usize| blob.get(from..to).unwrap_or_default();
    let version = le_u32(field(8, 12));
    if version != BLOB_VERSION {
        return Err(blob_err(format!(
            "compiled scene format version {version} is not supported \
             (this rayfarm reads version {BLOB_VERSION})"
        )));
    }
    let flags = le_u32(field(12, 16));
    if flags != 0 {
        return Err(blob_err(format!("unknown header flags {flags:#x}")));
    }
    let mut hash = [0u8; 32];
    for (d, s) in hash.iter_mut().zip(field(32, 64)) {
        *d = *s;
    }
    Ok(Header {
        body_len: le_u64(field(16, 24)),
        compressed_len: le_u64(field(24, 32)),
        hash,
    })
}

/// The BLAKE3 hash of the scene body as recorded in the blob's header, after checking magic and
/// version. Cheap: nothing is decompressed or verified (that is [`decode`]'s job).
pub fn content_hash(blob: &[u8]) -> Result<[u8; 32], SceneError> {
    read_header(blob).map(|h| h.hash)
}

/// Lower-case hexadecimal form of a content hash (64 characters).
pub fn hash_hex(hash: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for &b in hash {
        for nibble in [b >> 4, b & 15] {
            s.push(char::from(
                DIGITS.get(usize::from(nibble)).copied().unwrap_or(b'0'),
            ));
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// Decodes and validates a blob, accepting bodies up to [`MAX_DECOMPRESSED_BYTES`].
pub fn decode(blob: &[u8]) -> Result<CompiledScene, SceneError> {
    decode_with_limit(blob, MAX_DECOMPRESSED_BYTES)
}

/// Decodes and validates a blob whose uncompressed body may be at most `max_decompressed` bytes.
pub fn decode_with_limit(blob: &[u8], max_decompressed: u64) -> Result<CompiledScene, SceneError> {
    let (header, payload, body_len) = checked_lengths(blob, max_decompressed)?;
    let body = decompress(payload, body_len)?;
    if blake3::hash(&body).as_bytes() != &header.hash {
        return Err(blob_err("content hash mismatch: the data is corrupt"));
    }
    let scene = read_scene(&body)?;
    scene
        .validate()
        .map_err(|e| blob_err(format!("invalid scene: {e}")))?;
    Ok(scene)
}

/// The header and payload of `blob`, checked against each other and against
/// `max_decompressed`, and the body's length.
fn checked_lengths(
    blob: &[u8],
    max_decompressed: u64,
) -> Result<(Header, &[u8], usize), SceneError> {
    let header = read_header(blob)?;
    let payload = blob.get(HEADER_LEN..).unwrap_or_default();
    let actual = payload.len() as u64;
    if header.compressed_len > actual {
        return Err(blob_err(format!(
            "truncated: the header announces {} compressed bytes but only {actual} follow",
            header.compressed_len
        )));
    }
    if header.compressed_len < actual {
        return Err(blob_err(format!(
            "{} unexpected bytes after the compressed body",
            actual - header.compressed_len
        )));
    }
    if header.body_len > max_decompressed {
        return Err(blob_err(format!(
            "the uncompressed body would be {} bytes, more than the limit of {max_decompressed}",
            header.body_len
        )));
    }
    let body_len = usize::try_from(header.body_len).map_err(|_| {
        blob_err(format!(
            "the uncompressed body would be {} bytes, more than this machine can address",
            header.body_len
        ))
    })?;
    Ok((header, payload, body_len))
}

/// Checks that `blob`'s body is the one its header's hash names, in constant memory: the body
/// is decompressed a block at a time into the hash and never kept. [`decode`] holds the whole
/// body before it can check the hash, so a blob from a folder others can write (a farm job's
/// scene) is verified with this first: a forged blob that keeps a genuine header but claims a
/// body of gigabytes (a few kilobytes of zstd blocks that each expand a byte 128 Ki-fold) then
/// costs decompression time, not memory.
pub fn verify(blob: &[u8]) -> Result<(), SceneError> {
    let (header, payload, body_len) = checked_lengths(blob, MAX_DECOMPRESSED_BYTES)?;
    let zerr = |e: std::io::Error| blob_err(format!("corrupt compressed body: {e}"));
    let mut dec = zstd::stream::read::Decoder::with_buffer(payload).map_err(zerr)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0usize;
    loop {
        let n = dec.read(&mut buf).map_err(zerr)?;
        if n == 0 {
            break;
        }
        total = total.saturating_add(n);
        if total > body_len {
            return Err(blob_err(format!(
                "the body decompresses to more than the {body_len} bytes the header says"
            )));
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    if total < body_len {
        return Err(blob_err(format!(
            "the body decompresses to {total} bytes but the header says {body_len}"
        )));
    }
    if hasher.finalize().as_bytes() != &header.hash {
        return Err(blob_err("content hash mismatch: the data is corrupt"));
    }
    Ok(())
}

/// Decompresses `payload`, which must yield exactly `expected` bytes.
///
/// Streams into a buffer that grows with the output actually produced (never beyond `expected`),
/// so a small blob whose header claims a huge body cannot make us allocate that claim.
fn decompress(payload: &[u8], expected: usize) -> Result<Vec<u8>, SceneError> {
    const FIRST_CHUNK: usize = 1 << 20;
    let zerr = |e: std::io::Error| blob_err(format!("corrupt compressed body: {e}"));
    let mut dec = zstd::stream::read::Decoder::with_buffer(payload).map_err(zerr)?;
    let mut out: Vec<u8> = Vec::new();
    let mut filled = 0usize;
    while filled < expected {
        if filled == out.len() {
            let grow = out.len().max(FIRST_CHUNK).min(expected - filled);
            out.resize(filled.saturating_add(grow), 0);
        }
        let Some(dst) = out.get_mut(filled..) else {
            break;
        };
        let n = dec.read(dst).map_err(zerr)?;
        if n == 0 {
            break;
        }
        filled = filled.saturating_add(n);
    }
    out.truncate(filled);
    if filled < expected {
        return Err(blob_err(format!(
            "the body decompresses to {filled} bytes but the header says {expected}"
        )));
    }
    // The body must end exactly where the header says.
    let mut probe = [0u8; 1];
    if dec.read(&mut probe).map_err(zerr)? != 0 {
        return Err(blob_err(format!(
            "the body decompresses to more than the {expected} bytes the header says"
        )));
    }
    Ok(out)
}

// Smallest encoded sizes of the variable-size elements (empty names, `None`s, smallest variant).
const MESH_MIN: usize = 8 + 4 + 4 + 1 + 1;
const MATERIAL_MIN: usize = 8 + 16 + 1 + 4 + 4 + 1 + 1 + 4 + 12 + 1 + 4 + 1 + 12 + 1 + 4 + 1 + 4
    // sheen and clearcoat (version 2)
    + 12 + 1 + 4 + 1 + 4 + 1 + 4 + 1 + 1 + 4
    // volume (version 3)
    + 4 + 12 + 4
    // iridescence, anisotropy, dispersion, diffuse transmission (version 4)
    + 4 + 1 + 4 + 4 + 4 + 1 + 4 + 4 + 1 + 4 + 4 + 1 + 12 + 1
    + 1 + 4 + 1;
const TEXTURE_LEN: usize = 4 + 1 + 1 + 1;
const IMAGE_MIN: usize = 8 + 4 + 4 + 8;
const LIGHT_MIN: usize = 8 + 1 + 12 + 4 + 12 + 12;
const CAMERA_MIN: usize = 8 + 1 + 4 + 1 + 48;

/// Bounds-checked little-endian reader over the body. Errors name the field being read:
/// `list[index].field` inside an element of a list, `field` outside.
struct Reader<'a> {
    rest: &'a [u8],
    list: &'static str,
    index: usize,
}

impl<'a> Reader<'a> {
    fn new(body: &'a [u8]) -> Self {
        Reader {
            rest: body,
            list: "",
            index: 0,
        }
    }

    fn at(&mut self, list: &'static str, index: usize) {
        self.list = list;
        self.index = index;
    }

    fn place(&self, field: &str) -> String {
        if self.list.is_empty() {
            field.to_string()
        } else {
            format!("{}[{}].{field}", self.list, self.index)
        }
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], SceneError> {
        if n > self.rest.len() {
            return Err(blob_err(format!(
                "truncated while reading {}",
                self.place(field)
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self, field: &str) -> Result<u8, SceneError> {
        Ok(self.take(1, field)?.first().copied().unwrap_or(0))
    }

    fn u32(&mut self, field: &str) -> Result<u32, SceneError> {
        Ok(le_u32(self.take(4, field)?))
    }

    fn u64(&mut self, field: &str) -> Result<u64, SceneError> {
        Ok(le_u64(self.take(8, field)?))
    }

    fn f32(&mut self, field: &str) -> Result<f32, SceneError> {
        Ok(f32::from_bits(self.u32(field)?))
    }

    fn f32s<const N: usize>(&mut self, field: &str) -> Result<[f32; N], SceneError> {
        let bytes = self.take(4 * N, field)?;
        let mut out = [0f32; N];
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = f32::from_bits(le_u32(b));
        }
        Ok(out)
    }

    fn tag(&mut self, field: &str, variants: u8) -> Result<u8, SceneError> {
        let t = self.u8(field)?;
        if t >= variants {
            return Err(blob_err(format!(
                "{} has invalid tag {t}",
                self.place(field)
            )));
        }
        Ok(t)
    }

    fn bool(&mut self, field: &str) -> Result<bool, SceneError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(blob_err(format!(
                "{} has invalid bool value {v}",
                self.place(field)
            ))),
        }
    }

    /// Reads an element count and checks that `count` elements of at least `elem_size` encoded
    /// bytes each fit in what remains, so the count can be used as a capacity.
    fn count(&mut self, field: &str, elem_size: usize) -> Result<usize, SceneError> {
        let n = self.u64(field)?;
        let fits = usize::try_from(n).ok().filter(|&n| {
            n.checked_mul(elem_size)
                .is_some_and(|b| b <= self.rest.len())
        });
        fits.ok_or_else(|| {
            blob_err(format!(
                "{} claims {n} elements but only {} bytes remain",
                self.place(field),
                self.rest.len()
            ))
        })
    }

    fn bytes(&mut self, field: &str) -> Result<&'a [u8], SceneError> {
        let n = self.count(field, 1)?;
        self.take(n, field)
    }

    fn string(&mut self, field: &str) -> Result<String, SceneError> {
        let b = self.bytes(field)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(blob_err(format!(
                "{} is not valid utf-8",
                self.place(field)
            ))),
        }
    }

    fn f32_vec<const N: usize>(&mut self, field: &str) -> Result<Vec<[f32; N]>, SceneError> {
        let n = self.count(field, 4 * N)?;
        let bytes = self.take(n.saturating_mul(4 * N), field)?;
        let mut v = Vec::with_capacity(n);
        for chunk in bytes.chunks_exact(4 * N) {
            let mut a = [0f32; N];
            for (o, b) in a.iter_mut().zip(chunk.chunks_exact(4)) {
                *o = f32::from_bits(le_u32(b));
            }
            v.push(a);
        }
        Ok(v)
    }

    fn u32_vec<const N: usize>(&mut self, field: &str) -> Result<Vec<[u32; N]>, SceneError> {
        let n = self.count(field, 4 * N)?;
        let bytes = self.take(n.saturating_mul(4 * N), field)?;
        let mut v = Vec::with_capacity(n);
        for chunk in bytes.chunks_exact(4 * N) {
            let mut a = [0u32; N];
            for (o, b) in a.iter_mut().zip(chunk.chunks_exact(4)) {
                *o = le_u32(b);
            }
            v.push(a);
        }
        Ok(v)
    }

    /// Reads a counted list of elements of at least `min_size` encoded bytes each.
    fn list<T>(
        &mut self,
        list: &'static str,
        min_size: usize,
        mut read: impl FnMut(&mut Self) -> Result<T, SceneError>,
    ) -> Result<Vec<T>, SceneError> {
        let n = self.count(list, min_size)?;
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            self.at(list, i);
            v.push(read(self)?);
        }
        self.at("", 0);
        Ok(v)
    }

    fn tex_ref(&mut self, field: &'static str) -> Result<Option<TextureRef>, SceneError> {
        if !self.option(field)? {
            return Ok(None);
        }
        Ok(Some(TextureRef {
            texture: self.u32(field)?,
            uv_set: self.u8(field)?,
            transform: self.f32s(field)?,
        }))
    }

    fn option(&mut self, field: &str) -> Result<bool, SceneError> {
        Ok(self.tag(field, 2)? == 1)
    }
}

fn read_mesh(r: &mut Reader) -> Result<Mesh, SceneError> {
    Ok(Mesh {
        name: r.string("name")?,
        first_triangle: r.u32("first_triangle")?,
        triangle_count: r.u32("triangle_count")?,
        has_uv: [r.bool("has_uv[0]")?, r.bool("has_uv[1]")?],
    })
}

fn read_material(r: &mut Reader) -> Result<Material, SceneError> {
    Ok(Material {
        name: r.string("name")?,
        base_color: r.f32s("base_color")?,
        base_color_texture: r.tex_ref("base_color_texture")?,
        metallic: r.f32("metallic")?,
        roughness: r.f32("roughness")?,
        metallic_roughness_texture: r.tex_ref("metallic_roughness_texture")?,
        normal_texture: r.tex_ref("normal_texture")?,
        normal_scale: r.f32("normal_scale")?,
        emissive: r.f32s("emissive")?,
        emissive_texture: r.tex_ref("emissive_texture")?,
        specular: r.f32("specular")?,
        specular_texture: r.tex_ref("specular_texture")?,
        specular_color: r.f32s("specular_color")?,
        specular_color_texture: r.tex_ref("specular_color_texture")?,
        transmission: r.f32("transmission")?,
        transmission_texture: r.tex_ref("transmission_texture")?,
        ior: r.f32("ior")?,
        sheen_color: r.f32s("sheen_color")?,
        sheen_color_texture: r.tex_ref("sheen_color_texture")?,
        sheen_roughness: r.f32("sheen_roughness")?,
        sheen_roughness_texture: r.tex_ref("sheen_roughness_texture")?,
        clearcoat: r.f32("clearcoat")?,
        clearcoat_texture: r.tex_ref("clearcoat_texture")?,
        clearcoat_roughness: r.f32("clearcoat_roughness")?,
        clearcoat_roughness_texture: r.tex_ref("clearcoat_roughness_texture")?,
        clearcoat_normal_texture: r.tex_ref("clearcoat_normal_texture")?,
        clearcoat_normal_scale: r.f32("clearcoat_normal_scale")?,
        thickness: r.f32("thickness")?,
        attenuation_color: r.f32s("attenuation_color")?,
        attenuation_distance: r.f32("attenuation_distance")?,
        iridescence: r.f32("iridescence")?,
        iridescence_texture: r.tex_ref("iridescence_texture")?,
        iridescence_ior: r.f32("iridescence_ior")?,
        iridescence_thickness_min: r.f32("iridescence_thickness_min")?,
        iridescence_thickness_max: r.f32("iridescence_thickness_max")?,
        iridescence_thickness_texture: r.tex_ref("iridescence_thickness_texture")?,
        anisotropy_strength: r.f32("anisotropy_strength")?,
        anisotropy_rotation: r.f32("anisotropy_rotation")?,
        anisotropy_texture: r.tex_ref("anisotropy_texture")?,
        dispersion: r.f32("dispersion")?,
        diffuse_transmission: r.f32("diffuse_transmission")?,
        diffuse_transmission_texture: r.tex_ref("diffuse_transmission_texture")?,
        diffuse_transmission_color: r.f32s("diffuse_transmission_color")?,
        diffuse_transmission_color_texture: r.tex_ref("diffuse_transmission_color_texture")?,
        alpha_mode: match r.tag("alpha_mode", 3)? {
            0 => AlphaMode::Opaque,
            1 => AlphaMode::Mask,
            _ => AlphaMode::Blend,
        },
        alpha_cutoff: r.f32("alpha_cutoff")?,
        double_sided: r.bool("double_sided")?,
    })
}

fn read_wrap(r: &mut Reader, field: &str) -> Result<WrapMode, SceneError> {
    Ok(match r.tag(field, 3)? {
        0 => WrapMode::Repeat,
        1 => WrapMode::ClampToEdge,
        _ => WrapMode::MirroredRepeat,
    })
}

fn read_texture(r: &mut Reader) -> Result<Texture, SceneError> {
    Ok(Texture {
        image: r.u32("image")?,
        wrap_s: read_wrap(r, "wrap_s")?,
        wrap_t: read_wrap(r, "wrap_t")?,
        nearest: r.bool("nearest")?,
    })
}

fn read_image(r: &mut Reader) -> Result<Image, SceneError> {
    Ok(Image {
        name: r.string("name")?,
        width: r.u32("width")?,
        height: r.u32("height")?,
        rgba8: r.bytes("rgba8")?.to_vec(),
    })
}

fn read_light(r: &mut Reader) -> Result<Light, SceneError> {
    Ok(Light {
        name: r.string("name")?,
        kind: match r.tag("kind", 3)? {
            0 => LightKind::Point,
            1 => LightKind::Spot {
                inner_cone: r.f32("inner_cone")?,
                outer_cone: r.f32("outer_cone")?,
            },
            _ => LightKind::Directional,
        },
        color: r.f32s("color")?,
        intensity: r.f32("intensity")?,
        position: r.f32s("position")?,
        direction: r.f32s("direction")?,
    })
}

fn read_camera(r: &mut Reader) -> Result<Camera, SceneError> {
    Ok(Camera {
        name: r.string("name")?,
        projection: match r.tag("projection", 2)? {
            0 => Projection::Perspective {
                yfov: r.f32("yfov")?,
                aspect: if r.option("aspect")? {
                    Some(r.f32("aspect")?)
                } else {
                    None
                },
            },
            _ => Projection::Orthographic {
                xmag: r.f32("xmag")?,
                ymag: r.f32("ymag")?,
            },
        },
        position: r.f32s("position")?,
        right: r.f32s("right")?,
        up: r.f32s("up")?,
        forward: r.f32s("forward")?,
    })
}

fn read_scene(body: &[u8]) -> Result<CompiledScene, SceneError> {
    let r = &mut Reader::new(body);
    let meshes = r.list("meshes", MESH_MIN, read_mesh)?;
    let positions = r.f32_vec("positions")?;
    let normals = r.f32_vec("normals")?;
    let tangents = r.f32_vec("tangents")?;
    let uv0 = r.f32_vec("uv0")?;
    let uv1 = r.f32_vec("uv1")?;
    let triangles = r.u32_vec("triangles")?;
    let triangle_materials = r
        .u32_vec::<1>("triangle_materials")?
        .into_iter()
        .map(|[m]| m)
        .collect();
    let materials = r.list("materials", MATERIAL_MIN, read_material)?;
    let textures = r.list("textures", TEXTURE_LEN, read_texture)?;
    let images = r.list("images", IMAGE_MIN, read_image)?;
    let lights = r.list("lights", LIGHT_MIN, read_light)?;
    let cameras = r.list("cameras", CAMERA_MIN, read_camera)?;
    let environment = match r.tag("environment", 3)? {
        0 => Environment::Black,
        1 => Environment::Color(r.f32s("environment.color")?),
        _ => Environment::Map {
            width: r.u32("environment.width")?,
            height: r.u32("environment.height")?,
            texels: r.f32_vec("environment.texels")?,
        },
    };
    let resolution = if r.option("resolution")? {
        Some([r.u32("resolution[0]")?, r.u32("resolution[1]")?])
    } else {
        None
    };
    if !r.rest.is_empty() {
        return Err(blob_err(format!(
            "{} unexpected bytes after the end of the scene",
            r.rest.len()
        )));
    }
    Ok(CompiledScene {
        meshes,
        positions,
        normals,
        tangents,
        uv0,
        uv1,
        triangles,
        triangle_materials,
        materials,
        textures,
        images,
        lights,
        cameras,
        environment,
        resolution,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn tex(texture: u32, uv_set: u8) -> Option<TextureRef> {
        Some(TextureRef {
            texture,
            uv_set,
            transform: [0.5, 0.0, 0.25, 0.0, 2.0, -1.0],
        })
    }

    /// A small scene that uses every field and every enum variant.
    fn full_scene() -> CompiledScene {
        let full_material = Material {
            name: "fülle ✓".into(),
            base_color: [0.8, 0.1, 0.2, 0.5],
            base_color_texture: tex(0, 0),
            metallic: 0.25,
            roughness: 0.75,
            metallic_roughness_texture: tex(1, 1),
            normal_texture: Some(TextureRef::new(0, 1)),
            normal_scale: 0.9,
            emissive: [3.0, 2.0, 1.0],
            emissive_texture: tex(1, 0),
            specular: 0.4,
            specular_texture: tex(0, 0),
            specular_color: [0.9, 0.8, 0.7],
            specular_color_texture: tex(1, 1),
            transmission: 0.6,
            transmission_texture: tex(0, 1),
            ior: 1.33,
            sheen_color: [0.2, 0.3, 0.4],
            sheen_color_texture: tex(1, 0),
            sheen_roughness: 0.7,
            sheen_roughness_texture: tex(0, 0),
            clearcoat: 0.9,
            clearcoat_texture: tex(1, 1),
            clearcoat_roughness: 0.1,
            clearcoat_roughness_texture: tex(0, 0),
            clearcoat_normal_texture: tex(1, 0),
            clearcoat_normal_scale: 0.8,
            thickness: 0.25,
            attenuation_color: [0.9, 0.5, 0.1],
            attenuation_distance: 2.0,
            iridescence: 0.7,
            iridescence_texture: tex(0, 1),
            iridescence_ior: 1.8,
            iridescence_thickness_min: 50.0,
            iridescence_thickness_max: 900.0,
            iridescence_thickness_texture: tex(1, 0),
            anisotropy_strength: 0.6,
            anisotropy_rotation: -1.25,
            anisotropy_texture: tex(0, 0),
            dispersion: 0.3,
            diffuse_transmission: 0.45,
            diffuse_transmission_texture: tex(1, 1),
            diffuse_transmission_color: [0.3, 0.6, 0.9],
            diffuse_transmission_color_texture: tex(0, 1),
            alpha_mode: AlphaMode::Mask,
            alpha_cutoff: 0.3,
            double_sided: true,
        };
        let blend = Material {
            name: "glass".into(),
            alpha_mode: AlphaMode::Blend,
            ..Material::default()
        };
        CompiledScene {
            meshes: vec![
                Mesh {
                    name: "floor".into(),
                    first_triangle: 0,
                    triangle_count: 1,
                    has_uv: [true, false],
                },
                Mesh {
                    name: String::new(),
                    first_triangle: 1,
                    triangle_count: 1,
                    has_uv: [false, true],
                },
            ],
            positions: vec![
                [0.0, 0.0, 0.0],
                [1.0, 0.0, 0.0],
                [1.0, 1.0, -0.0],
                [0.0, 1.0, 1e-30],
            ],
            normals: vec![[0.0, 0.0, 1.0]; 4],
            tangents: vec![
                [1.0, 0.0, 0.0, 1.0],
                [1.0, 0.0, 0.0, -1.0],
                [0.0, 1.0, 0.0, 1.0],
                [0.0, 0.0, 1.0, 1.0],
            ],
            uv0: vec![[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]],
            uv1: vec![[0.5, 0.5], [0.25, 0.0], [1.0, 0.125], [0.0, 1.0]],
            triangles: vec![[0, 1, 2], [0, 2, 3]],
            triangle_materials: vec![0, 2],
            materials: vec![full_material, Material::default(), blend],
            textures: vec![
                Texture {
                    image: 0,
                    wrap_s: WrapMode::Repeat,
                    wrap_t: WrapMode::ClampToEdge,
                    nearest: true,
                },
                Texture {
                    image: 1,
                    wrap_s: WrapMode::MirroredRepeat,
                    wrap_t: WrapMode::Repeat,
                    nearest: false,
                },
            ],
            images: vec![
                Image {
                    name: "checker".into(),
                    width: 2,
                    height: 1,
                    rgba8: vec![0, 0, 0, 255, 255, 255, 255, 255],
                },
                Image {
                    name: String::new(),
                    width: 1,
                    height: 1,
                    rgba8: vec![1, 2, 3, 4],
                },
            ],
            lights: vec![
                Light {
                    name: "bulb".into(),
                    kind: LightKind::Point,
                    color: [1.0, 0.9, 0.8],
                    intensity: 100.0,
                    position: [0.0, 3.0, 0.0],
                    direction: [0.0, 0.0, -1.0],
                },
                Light {
                    name: "spot".into(),
                    kind: LightKind::Spot {
                        inner_cone: 0.2,
                        outer_cone: 0.5,
                    },
                    color: [1.0, 1.0, 1.0],
                    intensity: 50.0,
                    position: [1.0, 2.0, 3.0],
                    direction: [0.0, -1.0, 0.0],
                },
                Light {
                    name: "sun".into(),
                    kind: LightKind::Directional,
                    color: [1.0, 0.95, 0.9],
                    intensity: 3.0,
                    position: [0.0; 3],
                    direction: [0.0, -0.6, -0.8],
                },
            ],
            cameras: vec![
                Camera {
                    name: "main".into(),
                    projection: Projection::Perspective {
                        yfov: 0.8,
                        aspect: Some(1.5),
                    },
                    position: [0.0, 1.0, 5.0],
                    right: [1.0, 0.0, 0.0],
                    up: [0.0, 1.0, 0.0],
                    forward: [0.0, 0.0, -1.0],
                },
                Camera {
                    name: "free aspect".into(),
                    projection: Projection::Perspective {
                        yfov: 1.0,
                        aspect: None,
                    },
                    position: [0.0; 3],
                    right: [1.0, 0.0, 0.0],
                    up: [0.0, 1.0, 0.0],
                    forward: [0.0, 0.0, -1.0],
                },
                Camera {
                    name: "top".into(),
                    projection: Projection::Orthographic {
                        xmag: 2.0,
                        ymag: 1.5,
                    },
                    position: [0.0, 10.0, 0.0],
                    right: [1.0, 0.0, 0.0],
                    up: [0.0, 0.0, -1.0],
                    forward: [0.0, -1.0, 0.0],
                },
            ],
            environment: Environment::Map {
                width: 2,
                height: 2,
                texels: vec![[0.1, 0.2, 0.3], [1.0, 2.0, 3.0], [0.0; 3], [5.0, 5.0, 5.0]],
            },
            resolution: Some([640, 480]),
        }
    }

    fn body_of(scene: &CompiledScene) -> Vec<u8> {
        let mut body = Vec::new();
        write_scene(&mut body, scene);
        body
    }

    fn blob_err_msg(r: Result<CompiledScene, SceneError>) -> String {
        match r {
            Ok(_) => panic!("decode unexpectedly succeeded"),
            Err(SceneError::Blob(m)) => m,
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }

    fn set_u64(blob: &mut [u8], at: usize, v: u64) {
        blob[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    #[test]
    fn blob_round_trips_every_variant() {
        let envs = [
            Environment::Black,
            Environment::Color([0.5, 0.25, 2.0]),
            full_scene().environment,
        ];
        for env in envs {
            for resolution in [Some([1920, 1080]), None] {
                let scene = CompiledScene {
                    environment: env.clone(),
                    resolution,
                    ..full_scene()
                };
                scene.validate().unwrap();
                let blob = encode(&scene);
                assert_eq!(&blob[..8], &BLOB_MAGIC);
                assert_eq!(decode(&blob).unwrap(), scene);
            }
        }
        let empty = CompiledScene::default();
        assert_eq!(decode(&encode(&empty)).unwrap(), empty);
    }

    #[test]
    fn blob_encoding_is_deterministic_and_hash_is_content_hash() {
        let scene = full_scene();
        let a = encode(&scene);
        let b = encode(&scene.clone());
        assert_eq!(a, b);
        let body = body_of(&scene);
        let hash = content_hash(&a).unwrap();
        assert_eq!(hash, *blake3::hash(&body).as_bytes());
        assert_eq!(hash_hex(&hash), blake3::hash(&body).to_hex().as_str());
        assert_eq!(hash_hex(&[0xab; 32]), "ab".repeat(32));
        let mut other = scene.clone();
        other.positions[0][0] = 0.5;
        assert_ne!(content_hash(&encode(&other)).unwrap(), hash);
    }

    #[test]
    fn blob_minimum_element_sizes_match_the_encoder() {
        let mut b = Vec::new();
        write_mesh(
            &mut W(&mut b),
            &Mesh {
                name: String::new(),
                first_triangle: 0,
                triangle_count: 0,
                has_uv: [false; 2],
            },
        );
        assert_eq!(b.len(), MESH_MIN);
        b.clear();
        write_material(
            &mut W(&mut b),
            &Material {
                name: String::new(),
                ..Material::default()
            },
        );
        assert_eq!(b.len(), MATERIAL_MIN);
        b.clear();
        write_texture(&mut W(&mut b), &full_scene().textures[0]);
        assert_eq!(b.len(), TEXTURE_LEN);
        b.clear();
        write_image(
            &mut W(&mut b),
            &Image {
                name: String::new(),
                width: 0,
                height: 0,
                rgba8: vec![],
            },
        );
        assert_eq!(b.len(), IMAGE_MIN);
        b.clear();
        let mut light = full_scene().lights[0].clone();
        light.name.clear();
        write_light(&mut W(&mut b), &light);
        assert_eq!(b.len(), LIGHT_MIN);
        b.clear();
        let mut cam = full_scene().cameras[1].clone();
        cam.name.clear();
        write_camera(&mut W(&mut b), &cam);
        assert_eq!(b.len(), CAMERA_MIN);
    }

    #[test]
    fn blob_validate_catches_bad_indices_and_values() {
        type Breaker = fn(&mut CompiledScene);
        let cases: &[(Breaker, &str)] = &[
            (
                |s| s.triangles[1][2] = 99,
                "triangle 1 refers to vertex 99 but there are 4 vertices",
            ),
            (
                |s| s.triangle_materials[0] = 3,
                "triangle 0 uses material 3 but there are 3 materials",
            ),
            (
                |s| s.triangle_materials.pop().map(drop).unwrap_or(()),
                "triangle_materials has 1 entries but there are 2 triangles",
            ),
            (
                |s| s.normals.truncate(3),
                "normals has 3 entries but there are 4 vertices",
            ),
            (|s| s.normals.clear(), "normals has 0 entries"),
            (|s| s.tangents.truncate(1), "tangents has 1 entries"),
            (|s| s.uv1.push([0.0; 2]), "uv1 has 5 entries"),
            (
                |s| s.meshes[1].triangle_count = 2,
                "mesh 1 (\"\") covers triangles 1..3 but there are 2 triangles",
            ),
            (
                |s| {
                    s.meshes[0].first_triangle = u32::MAX;
                    s.meshes[0].triangle_count = u32::MAX;
                },
                "mesh 0",
            ),
            (
                |s| s.materials[0].emissive_texture = tex(2, 0),
                "emissive_texture refers to texture 2 but there are 2 textures",
            ),
            (
                |s| s.materials[0].normal_texture = tex(0, 2),
                "normal_texture uses uv set 2",
            ),
            (
                |s| s.textures[1].image = 7,
                "texture 1 refers to image 7 but there are 2 images",
            ),
            (
                |s| s.images[0].rgba8.pop().map(drop).unwrap_or(()),
                "image 0 (\"checker\") is 2x1 but has 7 bytes",
            ),
            (
                |s| {
                    s.images[1].width = u32::MAX;
                    s.images[1].height = u32::MAX;
                },
                "image 1 (\"\") is 4294967295x4294967295",
            ),
            (
                |s| {
                    s.images[1].width = 0;
                    s.images[1].rgba8.clear();
                },
                "image 1 (\"\") is 0x1",
            ),
            (
                |s| {
                    s.environment = Environment::Map {
                        width: 3,
                        height: 1,
                        texels: vec![[0.0; 3]; 2],
                    }
                },
                "environment map is 3x1 but has 2 texels",
            ),
            (
                |s| {
                    s.environment = Environment::Map {
                        width: 0,
                        height: 0,
                        texels: vec![],
                    }
                },
                "environment map is 0x0",
            ),
            (
                |s| s.environment = Environment::Color([f32::INFINITY, 0.0, 0.0]),
                "environment colour is not finite",
            ),
            (
                |s| s.positions[2][1] = f32::NAN,
                "positions[2] is not finite",
            ),
            (
                |s| s.lights[1].intensity = f32::INFINITY,
                "lights[1].intensity is not finite (inf)",
            ),
            (
                |s| {
                    s.lights[1].kind = LightKind::Spot {
                        inner_cone: f32::NAN,
                        outer_cone: 0.1,
                    }
                },
                "lights[1].inner_cone",
            ),
            (
                |s| s.cameras[2].up[0] = f32::NAN,
                "cameras[2].up is not finite",
            ),
            (
                |s| {
                    s.cameras[0].projection = Projection::Perspective {
                        yfov: 1.0,
                        aspect: Some(f32::INFINITY),
                    }
                },
                "cameras[0].aspect",
            ),
            (
                |s| s.materials[1].ior = f32::NAN,
                "materials[1].ior is not finite",
            ),
        ];
        for (i, (breaker, want)) in cases.iter().enumerate() {
            let mut s = full_scene();
            breaker(&mut s);
            let err = s
                .validate()
                .expect_err(&format!("case {i} ({want}) passed validation"));
            assert!(
                err.contains(want),
                "case {i}: {err:?} does not contain {want:?}"
            );
            // decode runs validate too.
            let msg = blob_err_msg(decode(&encode(&s)));
            assert!(
                msg.starts_with("invalid scene: ") && msg.contains(want),
                "{msg}"
            );
        }
    }

    #[test]
    fn blob_rejects_wrong_magic_and_version() {
        let mut blob = encode(&full_scene());
        blob[0] = b'X';
        assert_eq!(blob_err_msg(decode(&blob)), "not a rayfarm compiled scene");
        assert!(content_hash(&blob).is_err());
        assert!(decode(b"PK\x03\x04 this is a zip").is_err());

        let mut blob = encode(&full_scene());
        blob[8..12].copy_from_slice(&7u32.to_le_bytes());
        let msg = blob_err_msg(decode(&blob));
        assert_eq!(
            msg,
            "compiled scene format version 7 is not supported (this rayfarm reads version 4)"
        );
        assert!(content_hash(&blob).is_err());

        let mut blob = encode(&full_scene());
        blob[12] = 1;
        assert!(blob_err_msg(decode(&blob)).contains("flags"));
    }

    #[test]
    fn blob_rejects_every_truncation() {
        let blob = encode(&full_scene());
        for len in 0..blob.len() {
            assert!(
                decode(&blob[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
        assert!(content_hash(&blob[..HEADER_LEN - 1]).is_err());
        assert!(content_hash(&blob[..HEADER_LEN]).is_ok());
        // A consistent header around a truncated zstd frame.
        let mut cut = blob[..blob.len() - 3].to_vec();
        set_u64(&mut cut, 24, (blob.len() - 3 - HEADER_LEN) as u64);
        assert!(decode(&cut).is_err());
        // Every truncation of the body itself, correctly wrapped, is rejected by the parser.
        let body = body_of(&full_scene());
        for len in 0..body.len() {
            let msg = blob_err_msg(decode(&wrap_body(&body[..len])));
            assert!(
                msg.starts_with("truncated while reading ") || msg.contains(" claims "),
                "{len}: {msg}"
            );
        }
    }

    #[test]
    fn blob_rejects_corrupt_bytes() {
        let blob = encode(&full_scene());
        // zstd has a few bits whose value does not change the output; flipping them is harmless
        // (the content hash proves the body is intact). Every other flip must be rejected.
        let mut rejected = 0;
        for i in HEADER_LEN..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x20;
            match decode(&bad) {
                Err(_) => rejected += 1,
                Ok(s) => assert_eq!(s, full_scene(), "flipped byte {i} changed the scene"),
            }
        }
        let payload = blob.len() - HEADER_LEN;
        assert!(
            rejected * 10 >= payload * 9,
            "only {rejected} of {payload} flips rejected"
        );
        let mut bad = blob.clone();
        bad[HEADER_LEN + payload / 2] ^= 0xff;
        assert!(decode(&bad).is_err());
        let mut bad = blob.clone();
        bad[40] ^= 1; // in the hash
        assert_eq!(
            blob_err_msg(decode(&bad)),
            "content hash mismatch: the data is corrupt"
        );
    }

    #[test]
    fn verify_checks_the_body_against_the_header_hash() {
        let blob = encode(&full_scene());
        verify(&blob).unwrap();
        let mut flipped = blob.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x40;
        assert!(verify(&flipped).is_err());
        let mut other_hash = blob.clone();
        other_hash[40] ^= 1;
        assert!(blob_err_msg(verify(&other_hash).map(|_| full_scene())).contains("hash mismatch"));
        // A header that claims one byte more, or one less, than the body holds.
        for delta in [1i64, -1] {
            let mut b = blob.clone();
            let len = u64::from_le_bytes(b[16..24].try_into().unwrap());
            set_u64(&mut b, 16, (len as i64 + delta) as u64);
            assert!(
                blob_err_msg(verify(&b).map(|_| full_scene())).contains("decompresses to"),
                "{delta}"
            );
        }
    }

    #[test]
    fn blob_checks_header_lengths_before_allocating() {
        let blob = encode(&full_scene());
        let mut huge = blob.clone();
        set_u64(&mut huge, 16, 1 << 40);
        let t = Instant::now();
        let msg = blob_err_msg(decode(&huge));
        assert!(
            msg.contains("1099511627776") && msg.contains("limit"),
            "{msg}"
        );
        assert!(t.elapsed() < Duration::from_secs(1));

        // Just under the limit but far more than the data holds: fails without a 4 GiB buffer.
        set_u64(&mut huge, 16, MAX_DECOMPRESSED_BYTES);
        assert!(blob_err_msg(decode(&huge)).contains("decompresses to"));
        assert!(t.elapsed() < Duration::from_secs(1));

        let body_len = body_of(&full_scene()).len() as u64;
        assert!(decode_with_limit(&blob, body_len).is_ok());
        assert!(blob_err_msg(decode_with_limit(&blob, body_len - 1)).contains("limit"));

        let mut short = blob.clone();
        set_u64(&mut short, 16, body_len - 1);
        assert!(blob_err_msg(decode(&short)).contains("more than"));
        let mut long = blob.clone();
        set_u64(&mut long, 16, body_len + 1);
        assert!(blob_err_msg(decode(&long)).contains("decompresses to"));

        let mut claims_more = blob.clone();
        set_u64(&mut claims_more, 24, u64::MAX);
        assert!(blob_err_msg(decode(&claims_more)).starts_with("truncated"));
    }

    #[test]
    fn blob_rejects_huge_element_counts_quickly() {
        let t = Instant::now();
        let prefixes: [Vec<u8>; 3] = [
            vec![],                      // the meshes count
            0u64.to_le_bytes().to_vec(), // the positions count, after no meshes
            1u64.to_le_bytes().to_vec(), // the first mesh's name length
        ];
        for prefix in prefixes {
            let mut body = prefix;
            body.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
            body.extend_from_slice(&[0u8; 100]);
            let msg = blob_err_msg(decode(&wrap_body(&body)));
            assert!(msg.contains("claims 9223372036854775807 elements"), "{msg}");
        }
        // An image whose rgba8 length is absurd.
        let mut scene = CompiledScene::default();
        scene.images.push(Image {
            name: "x".into(),
            width: 1,
            height: 1,
            rgba8: vec![1, 2, 3, 4],
        });
        let mut body = body_of(&scene);
        // rgba8's length precedes the 4 pixel bytes, the lights and cameras counts and 2 tags.
        let at = body.len() - 2 - 8 - 8 - 4 - 8;
        body[at..at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        let msg = blob_err_msg(decode(&wrap_body(&body)));
        assert!(msg.starts_with("images[0].rgba8 claims"), "{msg}");
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn blob_rejects_trailing_bytes_and_bad_encodings() {
        let mut blob = encode(&full_scene());
        blob.push(0);
        assert!(blob_err_msg(decode(&blob)).contains("after the compressed body"));

        let mut body = body_of(&full_scene());
        body.push(0);
        assert_eq!(
            blob_err_msg(decode(&wrap_body(&body))),
            "1 unexpected bytes after the end of the scene"
        );

        // One mesh named "m": count(8) len(8) 'm' first(4) count(4) has_uv(2).
        let scene = CompiledScene {
            meshes: vec![Mesh {
                name: "m".into(),
                first_triangle: 0,
                triangle_count: 0,
                has_uv: [false; 2],
            }],
            ..CompiledScene::default()
        };
        let good = body_of(&scene);
        assert!(decode(&wrap_body(&good)).is_ok());

        let mut bad = good.clone();
        bad[16] = 0xff;
        assert_eq!(
            blob_err_msg(decode(&wrap_body(&bad))),
            "meshes[0].name is not valid utf-8"
        );

        let mut bad = good.clone();
        bad[25] = 2;
        assert_eq!(
            blob_err_msg(decode(&wrap_body(&bad))),
            "meshes[0].has_uv[0] has invalid bool value 2"
        );

        let n = good.len();
        let mut bad = good.clone();
        bad[n - 2] = 9;
        assert_eq!(
            blob_err_msg(decode(&wrap_body(&bad))),
            "environment has invalid tag 9"
        );
        let mut bad = good.clone();
        bad[n - 1] = 2;
        assert_eq!(
            blob_err_msg(decode(&wrap_body(&bad))),
            "resolution has invalid tag 2"
        );

        let mut mat = CompiledScene {
            materials: vec![Material::default()],
            ..CompiledScene::default()
        };
        mat.materials[0].name.clear();
        let mut bad = body_of(&mat);
        // alpha_mode is 6 bytes before the end of the material (alpha_cutoff + double_sided).
        let at = bad.len() - 2 - 8 * 4 - 4 - 1 - 1;
        assert_eq!(bad[at], 0);
        bad[at] = 3;
        assert_eq!(
            blob_err_msg(decode(&wrap_body(&bad))),
            "materials[0].alpha_mode has invalid tag 3"
        );
    }

    /// Writes the fuzzing seeds: `cargo test -p rayfarm-scene write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_fuzz_seeds() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/blob_decode");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("all_variants.bin"), encode(&full_scene())).unwrap();
        // Odd first byte: the fuzz target wraps the rest as a body with a correct header.
        let mut body = vec![1u8];
        body.extend_from_slice(&body_of(&full_scene()));
        std::fs::write(dir.join("all_variants_body.bin"), body).unwrap();
    }
}
