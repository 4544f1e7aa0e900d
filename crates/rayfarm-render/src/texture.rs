//! Texture lookups: UV transform, wrap modes, sRGB decoding, bilinear filtering (nearest when a
//! sampler asks for it) and trilinear MIP filtering of minified textures from ray cones.

use crate::math::DetMath;
use glam::{Vec2, Vec4};
use rayfarm_scene::{CompiledScene, Texture, TextureRef, WrapMode};
use std::sync::OnceLock;

/// sRGB-encoded byte to linear value.
pub fn srgb_to_linear(c: f32) -> f32 {
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf_d(2.4)
    }
}

/// Linear value to sRGB-encoded [0, 1].
pub fn linear_to_srgb(c: f32) -> f32 {
    let c = c.clamp(0.0, 1.0);
    if c <= 0.0031308 {
        c * 12.92
    } else {
        1.055 * c.powf_d(1.0 / 2.4) - 0.055
    }
}

/// A ray's cone (Akenine-Möller et al., "Texture Level of Detail Strategies for Real-Time Ray
/// Tracing", Ray Tracing Gems ch. 20): its width at the origin and how fast it widens, in radians,
/// so the width at distance `t` is `width + spread * t`. The camera gives the first one
/// ([`crate::integrator::camera_cone`]); [`RayCone::NONE`] (zero width, zero spread) means "no
/// footprint": every lookup then reads the full-resolution image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RayCone {
    pub width: f32,
    pub spread: f32,
}

impl RayCone {
    /// No footprint: textures are read at full resolution (baking, light sampling, shadow rays).
    pub const NONE: RayCone = RayCone {
        width: 0.0,
        spread: 0.0,
    };

    /// Width of the cone at distance `t` from its origin.
    #[inline(always)]
    pub fn width_at(self, t: f32) -> f32 {
        self.width + self.spread * t
    }

    /// The cone continuing from a hit at distance `t` with the same spread (a flat mirror: the
    /// surface's curvature is not added).
    #[inline(always)]
    pub fn advanced(self, t: f32) -> RayCone {
        RayCone {
            width: self.width_at(t),
            spread: self.spread,
        }
    }
}

/// A ray's footprint on the triangle it hit, per UV set: `0.5 * log2(uv area / world area) +
/// log2(cone width / |cos|)` (the chapter's lambda without the texture's own `0.5 * log2(w * h)`,
/// which [`Textures::sample`] adds). Negative infinity reads the full-resolution image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Footprint {
    pub lod_base: [f32; 2],
}

impl Footprint {
    /// Full resolution for every texture.
    pub const FULL_RESOLUTION: Footprint = Footprint {
        lod_base: [f32::NEG_INFINITY; 2],
    };

    /// The footprint of a cone `width` wide hitting a triangle of world-space area
    /// `world_area` whose UV triangles have areas `uv_areas`, at `cos_theta` between the ray and
    /// the geometric normal.
    #[inline]
    pub fn new(width: f32, cos_theta: f32, world_area: f32, uv_areas: [f32; 2]) -> Footprint {
        if width <= 0.0 {
            return Footprint::FULL_RESOLUTION;
        }
        let view = (width / cos_theta.abs()).log2_d();
        Footprint {
            lod_base: uv_areas.map(|a| 0.5 * (a / world_area).log2_d() + view),
        }
    }
}

/// One level of a texture's MIP pyramid below the full-resolution image.
struct MipLevel {
    width: u32,
    height: u32,
    rgba8: Vec<u8>,
}

/// Texture lookups and the MIP pyramid of every image (levels 1 and smaller; level 0 is the
/// compiled scene's image itself). A pyramid is built here on the first lookup that needs it
/// (so a worker is ready as soon as its BVH is, and images never minified cost nothing), and
/// never travels in the compiled blob. Whichever thread builds it, its bytes are the same.
pub struct Textures {
    srgb_lut: [f32; 256],
    /// `mips[image]`: levels 1, 2, ... down to 1x1, once built; empty without pyramids.
    mips: Vec<OnceLock<Vec<MipLevel>>>,
    /// Whether each image is filtered in linear RGB (a colour texture) or as stored.
    colour: Vec<bool>,
}

#[inline(always)]
fn wrap(i: i64, n: u32, mode: WrapMode) -> usize {
    let n = n as i64;
    (match mode {
        WrapMode::Repeat => crate::math::wrap_index(i, n),
        WrapMode::ClampToEdge => i.clamp(0, n - 1),
        WrapMode::MirroredRepeat => {
            let m = crate::math::wrap_index(i, 2 * n);
            if m < n {
                m
            } else {
                2 * n - 1 - m
            }
        }
    }) as usize
}

impl Default for Textures {
    fn default() -> Self {
        Self::new()
    }
}

fn srgb_lut() -> [f32; 256] {
    let mut lut = [0.0; 256];
    for (i, v) in lut.iter_mut().enumerate() {
        *v = srgb_to_linear(i as f32 / 255.0);
    }
    lut
}

/// Linear value to the nearest sRGB byte, by search in the decoding table (so encoding and
/// decoding agree exactly and no further float function is involved). [`SrgbEncoder`] does the
/// same faster; this is its reference.
#[cfg(test)]
fn linear_to_srgb_byte(lut: &[f32; 256], v: f32) -> u8 {
    let i = lut.partition_point(|&x| x < v);
    if i == 0 {
        return 0;
    }
    if i >= 256 {
        return 255;
    }
    if v - lut[i - 1] <= lut[i] - v {
        (i - 1) as u8
    } else {
        i as u8
    }
}

/// Where [`SrgbEncoder`]'s search starts: one entry per 1/1024 of the linear range.
const ENCODE_BUCKETS: usize = 1024;

/// The linear value `v` to the nearest sRGB byte, by search in the decoding table (so encoding
/// and decoding agree exactly and no further float function is involved), several times
/// faster than a binary search (`linear_to_srgb_byte`, its reference in the tests): a table gives, for the bucket of `v`, the
/// first byte whose linear value reaches the bucket's lower end, and a short scan goes on from
/// there. Every byte before that start decodes below the bucket, hence below `v`, so the scan
/// ends where the binary search does: the same byte, always (tested).
struct SrgbEncoder<'a> {
    lut: &'a [f32; 256],
    start: [u16; ENCODE_BUCKETS],
}

impl<'a> SrgbEncoder<'a> {
    fn new(lut: &'a [f32; 256]) -> SrgbEncoder<'a> {
        let mut start = [0u16; ENCODE_BUCKETS];
        for (b, s) in start.iter_mut().enumerate() {
            let lower = b as f32 / ENCODE_BUCKETS as f32;
            *s = lut.partition_point(|&x| x < lower) as u16;
        }
        SrgbEncoder { lut, start }
    }

    #[inline]
    fn encode(&self, v: f32) -> u8 {
        // `v * ENCODE_BUCKETS` is exact (a power of two) and the truncation floors it; negative
        // values, -0 and NaN go to bucket 0 and values from 1 up (and infinity) to the last, so
        // the bucket's lower end is at most `v`.
        let scaled = v * ENCODE_BUCKETS as f32;
        let bucket = if scaled >= 0.0 && scaled < ENCODE_BUCKETS as f32 {
            // SAFETY: finite and in `[0, ENCODE_BUCKETS)`, so the truncation fits a u32 (the
            // checked `as` cast cost a fifth of building a MIP level).
            unsafe { scaled.to_int_unchecked::<u32>() as usize }
        } else if scaled >= ENCODE_BUCKETS as f32 {
            ENCODE_BUCKETS - 1
        } else {
            0
        };
        let mut i = self.start[bucket] as usize;
        while i < 256 && self.lut[i] < v {
            i += 1;
        }
        if i == 0 {
            return 0;
        }
        if i >= 256 {
            return 255;
        }
        if v - self.lut[i - 1] <= self.lut[i] - v {
            (i - 1) as u8
        } else {
            i as u8
        }
    }
}

/// The next level down: each texel is the box average of the texels of `src` it covers
/// (2x2, or 3 wide/tall where a source dimension is odd, so every texel counts). Images used
/// as colour (`srgb`) are averaged in linear RGB and stored sRGB-encoded again; alpha and
/// data images are averaged as stored.
fn downsample(lut: &[f32; 256], src: &[u8], sw: u32, sh: u32, srgb: bool) -> MipLevel {
    let (dw, dh) = ((sw / 2).max(1), (sh / 2).max(1));
    let encoder = SrgbEncoder::new(lut);
    let decode = |c: usize, b: u8| {
        if srgb && c < 3 {
            lut[b as usize]
        } else {
            b as f32
        }
    };
    let encode = |c: usize, a: f32, n: f32| {
        let v = a / n;
        if srgb && c < 3 {
            encoder.encode(v)
        } else {
            (v + 0.5).min(255.0) as u8
        }
    };
    let mut out = Vec::with_capacity(dw as usize * dh as usize * 4);
    if sw >= 2 && sh >= 2 && sw.is_multiple_of(2) && sh.is_multiple_of(2) {
        // Every texel covers exactly 2x2 (most images): the general loop's sums, in its order
        // (row by row, left to right), without its spans; rows in parallel. A data channel's
        // float sum of four bytes is exact, so its rounded mean is the integer `(sum + 2) / 4`.
        use rayon::prelude::*;
        let row = sw as usize * 4;
        out.resize(dw as usize * dh as usize * 4, 0u8);
        out.par_chunks_mut(dw as usize * 4)
            .enumerate()
            .for_each(|(y, dst)| {
                let (r0, r1) = (&src[2 * y * row..][..row], &src[(2 * y + 1) * row..][..row]);
                let quads = dst
                    .chunks_exact_mut(4)
                    .zip(r0.chunks_exact(8).zip(r1.chunks_exact(8)));
                let mean = |a: u8, b: u8, d: u8, e: u8| {
                    ((a as u32 + b as u32 + d as u32 + e as u32 + 2) / 4) as u8
                };
                if srgb {
                    for (texel, (t, b)) in quads {
                        for c in 0..3 {
                            let mut acc = 0.0f32;
                            acc += lut[t[c] as usize];
                            acc += lut[t[4 + c] as usize];
                            acc += lut[b[c] as usize];
                            acc += lut[b[4 + c] as usize];
                            texel[c] = encoder.encode(acc / 4.0);
                        }
                        texel[3] = mean(t[3], t[7], b[3], b[7]);
                    }
                } else {
                    for (texel, (t, b)) in quads {
                        for c in 0..4 {
                            texel[c] = mean(t[c], t[4 + c], b[c], b[4 + c]);
                        }
                    }
                }
            });
    } else {
        let span = |d: u32, s: u32, n: u32| {
            let lo = d * n / s;
            let hi = ((d + 1) * n).div_ceil(s).min(n).max(lo + 1);
            lo..hi
        };
        for y in 0..dh {
            let ys = span(y, dh, sh);
            for x in 0..dw {
                let xs = span(x, dw, sw);
                let mut acc = [0.0f32; 4];
                let mut n = 0.0f32;
                for sy in ys.clone() {
                    for sx in xs.clone() {
                        let o = (sy as usize * sw as usize + sx as usize) * 4;
                        for (c, a) in acc.iter_mut().enumerate() {
                            *a += decode(c, src[o + c]);
                        }
                        n += 1.0;
                    }
                }
                for (c, &a) in acc.iter().enumerate() {
                    out.push(encode(c, a, n));
                }
            }
        }
    }
    MipLevel {
        width: dw,
        height: dh,
        rgba8: out,
    }
}

impl Textures {
    /// Lookups without MIP pyramids (every lookup reads the full-resolution image).
    pub fn new() -> Textures {
        Textures {
            srgb_lut: srgb_lut(),
            mips: Vec::new(),
            colour: Vec::new(),
        }
    }

    /// Builds the MIP pyramid of every image of `scene`. An image any material reads as colour
    /// (base colour, emissive, specular colour, sheen colour) is filtered in linear RGB; others
    /// as stored. Deterministic: integer box sums of table values, in a fixed order.
    pub fn build(scene: &CompiledScene) -> Textures {
        let srgb_lut = srgb_lut();
        let mut colour = vec![false; scene.images.len()];
        for m in &scene.materials {
            for r in [
                &m.base_color_texture,
                &m.emissive_texture,
                &m.specular_color_texture,
                &m.sheen_color_texture,
            ]
            .into_iter()
            .flatten()
            {
                if let Some(t) = scene.textures.get(r.texture as usize) {
                    if let Some(c) = colour.get_mut(t.image as usize) {
                        *c = true;
                    }
                }
            }
        }
        let mips = scene.images.iter().map(|_| OnceLock::new()).collect();
        Textures {
            srgb_lut,
            mips,
            colour,
        }
    }

    /// Builds every image's pyramid now, several at once, instead of on first use (where a
    /// render thread needing one another thread is building waits for it). For renders, which
    /// minify textures almost always; baking reads full resolution and need not call it.
    pub fn build_all_levels(&self, scene: &CompiledScene) {
        use rayon::prelude::*;
        (0..scene.images.len()).into_par_iter().for_each(|i| {
            self.levels(scene, i);
        });
    }

    /// The pyramid of image `image` of `scene` (levels 1 and smaller), built on first use;
    /// empty for `Textures::new`.
    fn levels(&self, scene: &CompiledScene, image: usize) -> &[MipLevel] {
        let (Some(cell), Some(img)) = (self.mips.get(image), scene.images.get(image)) else {
            return &[];
        };
        if let Some(levels) = cell.get() {
            return levels;
        }
        // Built outside the cell, not in `get_or_init`: `downsample` splits rows over rayon,
        // and a thread waiting for its rows may pick up a render unit that needs this very
        // image, which would re-enter an initialising `OnceLock` (a deadlock). Two threads may
        // build the same pyramid; they make the same bytes and the first one stays.
        let srgb = self.colour.get(image).copied().unwrap_or(false);
        let mut levels: Vec<MipLevel> = Vec::new();
        let (mut w, mut h) = (img.width, img.height);
        while w > 1 || h > 1 {
            let src = levels.last().map_or(&img.rgba8[..], |l| &l.rgba8[..]);
            let next = downsample(&self.srgb_lut, src, w, h, srgb);
            (w, h) = (next.width, next.height);
            levels.push(next);
        }
        let _ = cell.set(levels);
        cell.get().map_or(&[], |l| &l[..])
    }

    /// Samples `r` at the UVs of the hit (`uvs[set]`) with the ray's footprint `fp`. Colour
    /// textures (`srgb`) have their RGB decoded before filtering; alpha is always linear.
    ///
    /// Magnified (lambda <= 0, or no footprint): one bilinear lookup in the full-resolution
    /// image (nearest when the sampler asks for it). Minified: trilinear, bilinear in the two
    /// levels around lambda and a linear blend between them.
    #[inline(always)]
    pub fn sample(
        &self,
        scene: &CompiledScene,
        r: &TextureRef,
        uvs: &[Vec2; 2],
        srgb: bool,
        fp: &Footprint,
    ) -> Vec4 {
        let set = (r.uv_set as usize).min(1);
        let Vec2 { x: u, y: v } = texture_uv(r, uvs[set]);
        let m = &r.transform;
        let tex = &scene.textures[r.texture as usize];
        let img = &scene.images[tex.image as usize];
        let lod_base = fp.lod_base[set];
        if lod_base > f32::NEG_INFINITY && !self.mips.is_empty() {
            // The texture transform scales UV areas by its determinant.
            let det = (m[0] * m[4] - m[1] * m[3]).abs();
            let texels = img.width as f32 * img.height as f32 * det;
            let lambda = lod_base + 0.5 * texels.log2_d();
            let levels = if lambda > 0.0 {
                self.levels(scene, tex.image as usize)
            } else {
                &[]
            };
            if lambda > 0.0 && !levels.is_empty() {
                let lambda = lambda.min(levels.len() as f32);
                let l0 = crate::math::floor(lambda);
                let frac = lambda - l0;
                let l0 = l0 as usize;
                let level = |l: usize| -> (&[u8], u32, u32) {
                    if l == 0 {
                        (&img.rgba8, img.width, img.height)
                    } else {
                        let m = &levels[l - 1];
                        (&m.rgba8, m.width, m.height)
                    }
                };
                let a = self.bilinear(tex, level(l0), u, v, srgb);
                if frac <= 0.0 || l0 >= levels.len() {
                    return a;
                }
                let b = self.bilinear(tex, level(l0 + 1), u, v, srgb);
                return a.lerp(b, frac);
            }
        }
        let level0 = (&img.rgba8[..], img.width, img.height);
        if tex.nearest {
            let x = u * img.width as f32;
            let y = v * img.height as f32;
            if !x.is_finite() || !y.is_finite() {
                return self.fetch(tex, level0, 0, 0, srgb);
            }
            let (x, y) = (crate::math::floor(x), crate::math::floor(y));
            return self.fetch(tex, level0, x as i64, y as i64, srgb);
        }
        self.bilinear(tex, level0, u, v, srgb)
    }

    #[inline(always)]
    fn fetch(
        &self,
        tex: &Texture,
        (data, w, h): (&[u8], u32, u32),
        x: i64,
        y: i64,
        srgb: bool,
    ) -> Vec4 {
        let xi = wrap(x, w, tex.wrap_s);
        let yi = wrap(y, h, tex.wrap_t);
        let o = (yi * w as usize + xi) * 4;
        self.decode(&data[o..o + 4], srgb)
    }

    /// One texel's four bytes as linear RGBA (RGB from sRGB when `srgb`).
    #[inline(always)]
    fn decode(&self, p: &[u8], srgb: bool) -> Vec4 {
        if srgb {
            Vec4::new(
                self.srgb_lut[p[0] as usize],
                self.srgb_lut[p[1] as usize],
                self.srgb_lut[p[2] as usize],
                p[3] as f32 / 255.0,
            )
        } else {
            Vec4::new(p[0] as f32, p[1] as f32, p[2] as f32, p[3] as f32) / 255.0
        }
    }

    #[inline(always)]
    fn bilinear(
        &self,
        tex: &Texture,
        level: (&[u8], u32, u32),
        u: f32,
        v: f32,
        srgb: bool,
    ) -> Vec4 {
        let x = u * level.1 as f32 - 0.5;
        let y = v * level.2 as f32 - 0.5;
        if !x.is_finite() || !y.is_finite() {
            return self.fetch(tex, level, 0, 0, srgb);
        }
        let (x0, y0) = (crate::math::floor(x), crate::math::floor(y));
        let (fx, fy) = (x - x0, y - y0);
        let (x0, y0) = (x0 as i64, y0 as i64);
        let (data, w, h) = level;
        // (`x0 < w - 1`, not `x0 + 1 < w`: a UV of 1e19 makes `x0` i64::MAX, and the sum wraps.)
        if x0 >= 0 && y0 >= 0 && x0 < w as i64 - 1 && y0 < h as i64 - 1 {
            // All four texels inside the image (most lookups): every wrap mode leaves their
            // indices as they are, so they are read directly, with one bounds check.
            let row = w as usize * 4;
            let o = (y0 as usize * w as usize + x0 as usize) * 4;
            if let Some(q) = data.get(o..o + row + 8) {
                let texel = |p: &[u8]| self.decode(&p[..4], srgb);
                let a = texel(q).lerp(texel(&q[4..]), fx);
                let b = texel(&q[row..]).lerp(texel(&q[row + 4..]), fx);
                return a.lerp(b, fy);
            }
        }
        let a = self
            .fetch(tex, level, x0, y0, srgb)
            .lerp(self.fetch(tex, level, x0.wrapping_add(1), y0, srgb), fx);
        let b = self.fetch(tex, level, x0, y0.wrapping_add(1), srgb).lerp(
            self.fetch(tex, level, x0.wrapping_add(1), y0.wrapping_add(1), srgb),
            fx,
        );
        a.lerp(b, fy)
    }
}

/// Mesh coordinates `uv` in texture `r`'s space: its transform (KHR_texture_transform) applied.
#[inline(always)]
pub fn texture_uv(r: &TextureRef, uv: Vec2) -> Vec2 {
    let m = &r.transform;
    Vec2::new(
        m[0] * uv.x + m[1] * uv.y + m[2],
        m[3] * uv.x + m[4] * uv.y + m[5],
    )
}

/// Mean luminance of an emission texture over regions of UV space: what an emissive triangle's
/// share of the light samples is weighed by (a texture that is black but for a logo would
/// otherwise make every triangle under it a full-strength light that NEE samples in vain).
///
/// A pyramid of box-filtered linear luminance: level 0 is the image, each next level the mean of
/// 2x2 texels of the one before (1, 2 or 4 at an odd edge), down to 1x1. Built at scene set-up
/// only for emission textures and dropped afterwards.
pub struct LuminancePyramid {
    /// (width, height, luminance per texel, rows top to bottom), finest first.
    levels: Vec<(u32, u32, Vec<f32>)>,
}

impl LuminancePyramid {
    /// Texels of the finest level at most (2048 x 2048: 16 MiB while a scene is set up).
    pub const MAX_TEXELS: usize = 2048 * 2048;

    /// The pyramid of `rgba8` (`width * height * 4` bytes), its RGB decoded from sRGB when
    /// `srgb` (a colour texture, as emission is).
    pub fn new(rgba8: &[u8], width: u32, height: u32, srgb: bool) -> LuminancePyramid {
        Self::build(rgba8, width, height, srgb, true)
    }

    /// [`LuminancePyramid::new`]; `direct` lets an image of at most `MAX_TEXELS` take the
    /// direct path to its finest level (false only in tests, which check the two agree).
    fn build(rgba8: &[u8], width: u32, height: u32, srgb: bool, direct: bool) -> LuminancePyramid {
        let lut = srgb_lut();
        let decode = |b: u8| {
            if srgb {
                lut[b as usize]
            } else {
                b as f32 / 255.0
            }
        };
        let (iw, ih) = (width.max(1) as usize, height.max(1) as usize);
        // The finest level kept: the image itself up to MAX_TEXELS texels, else the image
        // box-filtered by a power of two (a 16k x 16k image would need 1 GiB of floats).
        let mut f = 1usize;
        while (iw.div_ceil(f)) * (ih.div_ceil(f)) > Self::MAX_TEXELS {
            f *= 2;
        }
        let (w, h) = (iw.div_ceil(f), ih.div_ceil(f));
        let whole = rgba8.len() >= iw * ih * 4;
        // Rows of the finest level in parallel (a 2048 x 2048 image took 40 ms on one thread).
        use rayon::prelude::*;
        let luminance =
            |p: &[u8]| 0.2126 * decode(p[0]) + 0.7152 * decode(p[1]) + 0.0722 * decode(p[2]);
        let base: Vec<f32> = if direct && f == 1 && whole {
            // The image itself (most images): each texel's luminance, written in place. The
            // same numbers as the general loop's `(0 + l) / 1`.
            let mut base = vec![0.0f32; w * h];
            base.par_chunks_mut(w)
                .zip(rgba8.par_chunks(iw * 4))
                .for_each(|(out, row)| {
                    for (o, p) in out.iter_mut().zip(row.chunks_exact(4)) {
                        *o = 0.0 + luminance(p).max(0.0);
                    }
                });
            base
        } else {
            (0..h)
                .into_par_iter()
                .flat_map_iter(|oy| {
                    let mut sum = vec![0.0f32; w];
                    let mut count = vec![0u32; w];
                    if whole {
                        for y in oy * f..((oy + 1) * f).min(ih) {
                            let row = &rgba8[y * iw * 4..(y + 1) * iw * 4];
                            for (x, p) in row.chunks_exact(4).enumerate() {
                                sum[x / f] += luminance(p).max(0.0);
                                count[x / f] += 1;
                            }
                        }
                    }
                    sum.into_iter()
                        .zip(count)
                        .map(|(s, c)| if c > 0 { s / c as f32 } else { 0.0 })
                })
                .collect()
        };
        let mut levels = vec![(w as u32, h as u32, base)];
        loop {
            let (lw, lh, data) = &levels[levels.len() - 1];
            if *lw == 1 && *lh == 1 {
                break;
            }
            let (nw, nh) = (lw.div_ceil(2), lh.div_ceil(2));
            let (lw, lh) = (*lw as usize, *lh as usize);
            let mut next = vec![0.0f32; nw as usize * nh as usize];
            next.par_chunks_mut(nw as usize)
                .enumerate()
                .for_each(|(y, row)| {
                    for (x, o) in row.iter_mut().enumerate() {
                        let (mut sum, mut count) = (0.0f32, 0u32);
                        for yy in (2 * y)..(2 * y + 2).min(lh) {
                            for xx in (2 * x)..(2 * x + 2).min(lw) {
                                sum += data[yy * lw + xx];
                                count += 1;
                            }
                        }
                        *o = sum / count as f32;
                    }
                });
            levels.push((nw, nh, next));
        }
        LuminancePyramid { levels }
    }

    /// Mean luminance around the UV rectangle `lo..hi` (texture coordinates after the texture
    /// transform) of texture `tex`: the mean of the texels, at the finest level on which the
    /// rectangle spans at most two texels per axis, that it covers, with one texel more on each
    /// side (bilinear lookups reach half a texel past a point). Positive whenever a lookup inside
    /// the rectangle can read a non-black texel; the 1x1 level (the image's mean) for a
    /// rectangle as large as the image or not finite.
    pub fn region_mean(&self, tex: &Texture, lo: Vec2, hi: Vec2) -> f32 {
        let (du, dv) = (hi.x - lo.x, hi.y - lo.y);
        let last = self.levels.len() - 1;
        // Beyond 2^24 texels from the origin a float no longer tells texels apart (and the
        // texel indices below could overflow): the image's mean.
        let (w0, h0) = (self.levels[0].0 as f32, self.levels[0].1 as f32);
        let far = lo.x.abs().max(hi.x.abs()) * w0 > 16_777_216.0
            || lo.y.abs().max(hi.y.abs()) * h0 > 16_777_216.0;
        if !(lo.is_finite() && hi.is_finite()) || far {
            return self.levels[last].2[0];
        }
        let level = (0..last)
            .find(|&l| {
                let (w, h, _) = &self.levels[l];
                du * *w as f32 <= 2.0 && dv * *h as f32 <= 2.0
            })
            .unwrap_or(last);
        let (w, h, data) = &self.levels[level];
        if level == last {
            return data[0];
        }
        let x0 = crate::math::floor(lo.x * *w as f32) as i64 - 1;
        let x1 = crate::math::floor(hi.x * *w as f32) as i64 + 1;
        let y0 = crate::math::floor(lo.y * *h as f32) as i64 - 1;
        let y1 = crate::math::floor(hi.y * *h as f32) as i64 + 1;
        let (mut sum, mut count) = (0.0f32, 0u32);
        for y in y0..=y1 {
            let yi = wrap(y, *h, tex.wrap_t);
            for x in x0..=x1 {
                sum += data[yi * *w as usize + wrap(x, *w, tex.wrap_s)];
                count += 1;
            }
        }
        sum / count.max(1) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `downsample` as it was before its 2x2 fast path and [`SrgbEncoder`]: the reference.
    fn downsample_reference(
        lut: &[f32; 256],
        src: &[u8],
        sw: u32,
        sh: u32,
        srgb: bool,
    ) -> MipLevel {
        let (dw, dh) = ((sw / 2).max(1), (sh / 2).max(1));
        let span = |d: u32, s: u32, n: u32| {
            let lo = d * n / s;
            let hi = ((d + 1) * n).div_ceil(s).min(n).max(lo + 1);
            lo..hi
        };
        let mut out = Vec::with_capacity(dw as usize * dh as usize * 4);
        for y in 0..dh {
            let ys = span(y, dh, sh);
            for x in 0..dw {
                let xs = span(x, dw, sw);
                let mut acc = [0.0f32; 4];
                let mut n = 0.0f32;
                for sy in ys.clone() {
                    for sx in xs.clone() {
                        let o = (sy as usize * sw as usize + sx as usize) * 4;
                        for c in 0..4 {
                            let b = src[o + c];
                            acc[c] += if srgb && c < 3 {
                                lut[b as usize]
                            } else {
                                b as f32
                            };
                        }
                        n += 1.0;
                    }
                }
                for (c, a) in acc.iter().enumerate() {
                    let v = a / n;
                    out.push(if srgb && c < 3 {
                        linear_to_srgb_byte(lut, v)
                    } else {
                        (v + 0.5).min(255.0) as u8
                    });
                }
            }
        }
        MipLevel {
            width: dw,
            height: dh,
            rgba8: out,
        }
    }

    #[test]
    fn fast_downsample_and_encoder_give_the_reference_bytes() {
        let lut = srgb_lut();
        let encoder = SrgbEncoder::new(&lut);
        let mut x = 0x9e37_79b9u32;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..300_000 {
            let v = (next() >> 8) as f32 / (1u32 << 24) as f32 * 1.2 - 0.1;
            assert_eq!(encoder.encode(v), linear_to_srgb_byte(&lut, v), "{v:e}");
        }
        for &v in &lut {
            assert_eq!(encoder.encode(v), linear_to_srgb_byte(&lut, v));
        }
        for v in [
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            -0.0,
            0.0,
            1.0,
            f32::MIN_POSITIVE,
            1.0 - f32::EPSILON,
        ] {
            assert_eq!(encoder.encode(v), linear_to_srgb_byte(&lut, v), "{v:e}");
        }
        for (w, h) in [
            (8, 8),
            (6, 4),
            (7, 5),
            (2, 9),
            (1, 6),
            (9, 1),
            (1, 1),
            (64, 32),
        ] {
            let src: Vec<u8> = (0..w * h * 4).map(|_| next() as u8).collect();
            for srgb in [false, true] {
                assert_eq!(
                    downsample(&lut, &src, w, h, srgb).rgba8,
                    downsample_reference(&lut, &src, w, h, srgb).rgba8,
                    "{w}x{h} srgb {srgb}"
                );
            }
        }
    }
    use rayfarm_scene::Image;

    /// A 4x4 data texture whose red channel is 0, 16, 32, ... row by row.
    fn scene_4x4() -> CompiledScene {
        let mut s = CompiledScene::default();
        s.images.push(Image {
            name: "ramp".into(),
            width: 4,
            height: 4,
            rgba8: (0..16u8).flat_map(|i| [i * 16, 0, 0, 255]).collect(),
        });
        s.textures.push(Texture {
            image: 0,
            wrap_s: WrapMode::ClampToEdge,
            wrap_t: WrapMode::ClampToEdge,
            nearest: false,
        });
        s
    }

    #[test]
    fn luminance_pyramid_averages_down_to_the_mean() {
        // 3 x 2, odd width: level 1 is 2 x 1 (a 2x2 block and a 1x2 column), level 2 is 1 x 1.
        let grey = |v: u8| [v, v, v, 255];
        let rgba: Vec<u8> = [0u8, 51, 102, 153, 204, 255]
            .iter()
            .flat_map(|&v| grey(v))
            .collect();
        let p = LuminancePyramid::new(&rgba, 3, 2, false);
        let v: Vec<f32> = [0u8, 51, 102, 153, 204, 255]
            .iter()
            .map(|&b| (0.2126 + 0.7152 + 0.0722) * (b as f32 / 255.0))
            .collect();
        assert_eq!(p.levels.len(), 3);
        assert_eq!((p.levels[1].0, p.levels[1].1), (2, 1));
        let l1 = &p.levels[1].2;
        assert!((l1[0] - (v[0] + v[1] + v[3] + v[4]) / 4.0).abs() < 1e-6);
        assert!((l1[1] - (v[2] + v[5]) / 2.0).abs() < 1e-6);
        assert_eq!((p.levels[2].0, p.levels[2].1), (1, 1));
        let tex = Texture {
            image: 0,
            wrap_s: WrapMode::Repeat,
            wrap_t: WrapMode::Repeat,
            nearest: false,
        };
        // A rectangle larger than the image reads the 1x1 level.
        let whole = p.region_mean(&tex, Vec2::new(-0.5, 0.0), Vec2::new(1.5, 1.0));
        assert_eq!(whole, p.levels[2].2[0]);
        let nan = p.region_mean(&tex, Vec2::new(f32::NAN, 0.0), Vec2::new(0.5, 0.5));
        assert_eq!(nan, p.levels[2].2[0]);
        // A degenerate rectangle far out (its indices would overflow an i64).
        let far = Vec2::new(4e18, 0.5);
        assert_eq!(p.region_mean(&tex, far, far), p.levels[2].2[0]);
    }

    #[test]
    fn luminance_pyramid_direct_path_makes_the_general_paths_bits() {
        let mut state = 7u32;
        let mut next = || {
            state = state.wrapping_mul(747796405).wrapping_add(2891336453);
            (state >> 24) as u8
        };
        for (w, h) in [(1, 1), (2, 1), (7, 5), (64, 33), (128, 128)] {
            let rgba: Vec<u8> = (0..w * h * 4).map(|_| next()).collect();
            for srgb in [false, true] {
                let a = LuminancePyramid::build(&rgba, w, h, srgb, true);
                let b = LuminancePyramid::build(&rgba, w, h, srgb, false);
                assert_eq!(a.levels.len(), b.levels.len());
                for (la, lb) in a.levels.iter().zip(&b.levels) {
                    assert_eq!((la.0, la.1), (lb.0, lb.1));
                    let same =
                        la.2.iter()
                            .zip(&lb.2)
                            .all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{w}x{h} srgb {srgb}: level {}x{} differs", la.0, la.1);
                }
            }
        }
    }

    #[test]
    fn a_large_image_starts_its_pyramid_box_filtered() {
        // 2049 x 2048 texels is over MAX_TEXELS: the pyramid starts at 1025 x 1024, each texel
        // the mean of up to 2x2.
        let (w, h) = (2049u32, 2048u32);
        let mut rgba = vec![0u8; (w * h * 4) as usize];
        let lit = (5 * w + 2048) as usize; // (2048, 5): alone in its 1x2 block at the edge
        rgba[lit * 4..lit * 4 + 3].copy_from_slice(&[255, 255, 255]);
        let p = LuminancePyramid::new(&rgba, w, h, false);
        assert_eq!((p.levels[0].0, p.levels[0].1), (1025, 1024));
        let v = p.levels[0].2[2 * 1025 + 1024];
        assert!((v - 0.5).abs() < 1e-6, "{v}");
        assert_eq!(p.levels.last().unwrap().0, 1);
    }

    const WRAP_MODES: [WrapMode; 3] = [
        WrapMode::Repeat,
        WrapMode::ClampToEdge,
        WrapMode::MirroredRepeat,
    ];

    /// Uniform numbers in [0, 1) from a xorshift generator seeded with `seed` (not 0).
    fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    /// Bilinear lookups read texels inside the image directly and wrap only at the edges: the
    /// same bits as wrapping every index, for every wrap mode, size and colour space.
    #[test]
    fn bilinear_inside_the_image_matches_the_wrapped_reads() {
        let mut next = uniform(0x9e37_79b9_7f4a_7c15);
        let modes = WRAP_MODES;
        let (mut inside, mut edge) = (0, 0);
        for case in 0..90 {
            let (w, h) = (1 + (next() * 23.0) as u32, 1 + (next() * 19.0) as u32);
            let rgba: Vec<u8> = (0..w * h * 4).map(|_| (next() * 256.0) as u8).collect();
            let tex = Texture {
                image: 0,
                wrap_s: modes[case % 3],
                wrap_t: modes[(case / 3) % 3],
                nearest: false,
            };
            let textures = Textures::new();
            // Far and huge coordinates too: a UV of 1e19 puts the texel index at i64::MAX.
            let far = [
                1e19f32,
                -1e19,
                1e30,
                -1e30,
                8388608.0,
                -8388609.0,
                0.999_999_9,
            ];
            for i in 0..200 {
                let (mut u, mut v) = (next() * 3.0 - 1.0, next() * 3.0 - 1.0);
                if i % 10 == 0 {
                    u = far[(i / 10) % far.len()];
                }
                if i % 15 == 0 {
                    v = far[(i / 15 + 3) % far.len()];
                }
                let srgb = next() < 0.5;
                let level = (&rgba[..], w, h);
                let got = textures.bilinear(&tex, level, u, v, srgb);
                let (x, y) = (u * w as f32 - 0.5, v * h as f32 - 0.5);
                let (x0, y0) = (crate::math::floor(x), crate::math::floor(y));
                let (fx, fy) = (x - x0, y - y0);
                let (x0, y0) = (x0 as i64, y0 as i64);
                let at = |dx: i64, dy: i64| {
                    textures.fetch(&tex, level, x0.wrapping_add(dx), y0.wrapping_add(dy), srgb)
                };
                let want = at(0, 0)
                    .lerp(at(1, 0), fx)
                    .lerp(at(0, 1).lerp(at(1, 1), fx), fy);
                assert_eq!(
                    got.to_array().map(f32::to_bits),
                    want.to_array().map(f32::to_bits),
                    "{w}x{h} {tex:?} at ({u}, {v})"
                );
                if x0 >= 0 && y0 >= 0 && x0 < w as i64 - 1 && y0 < h as i64 - 1 {
                    inside += 1;
                } else {
                    edge += 1;
                }
            }
        }
        assert!(
            inside > 1000 && edge > 1000,
            "{inside} inside, {edge} at edges"
        );
    }

    /// The property the light weights rely on: wherever a full-resolution lookup inside a UV
    /// rectangle can return light, the rectangle's mean is positive (else NEE would never pick
    /// a triangle that emits). Random images that are black but for one texel, random
    /// rectangles, every wrap mode, sizes odd and even; lookups through [`Textures::sample`].
    #[test]
    fn region_mean_is_positive_wherever_a_lookup_sees_light() {
        let mut next = uniform(0x2545_f491_4f6c_dd1d);
        let modes = WRAP_MODES;
        let (mut lit, mut dark) = (0, 0);
        for case in 0..300 {
            let (w, h) = (1 + (next() * 37.0) as u32, 1 + (next() * 29.0) as u32);
            let mut rgba = vec![0u8; (w * h * 4) as usize];
            let t = ((next() * (w * h) as f32) as u32).min(w * h - 1) as usize;
            rgba[t * 4..t * 4 + 4].copy_from_slice(&[255, 200, 100, 255]);
            let mut s = CompiledScene::default();
            s.images.push(Image {
                name: "one".into(),
                width: w,
                height: h,
                rgba8: rgba.clone(),
            });
            let tex = Texture {
                image: 0,
                wrap_s: modes[case % 3],
                wrap_t: modes[(case / 3) % 3],
                nearest: case % 7 == 0,
            };
            s.textures.push(tex.clone());
            let textures = Textures::build(&s);
            let p = LuminancePyramid::new(&rgba, w, h, true);
            let lo = Vec2::new(next() * 3.0 - 1.0, next() * 3.0 - 1.0);
            let size = Vec2::new(next(), next()) * if case % 2 == 0 { 0.2 } else { 1.5 };
            let hi = lo + size;
            let mut seen = false;
            for i in 0..=16 {
                for j in 0..=16 {
                    let uv = lo + size * Vec2::new(i as f32 / 16.0, j as f32 / 16.0);
                    let c = textures.sample(
                        &s,
                        &TextureRef::new(0, 0),
                        &[uv, uv],
                        true,
                        &Footprint::FULL_RESOLUTION,
                    );
                    seen |= c.x > 0.0 || c.y > 0.0 || c.z > 0.0;
                }
            }
            let mean = p.region_mean(&tex, lo, hi);
            assert!(mean >= 0.0 && mean.is_finite());
            if seen {
                lit += 1;
                assert!(
                    mean > 0.0,
                    "case {case}: {w}x{h}, lit texel {t}, {lo} .. {hi}"
                );
            } else {
                dark += 1;
            }
        }
        // Both kinds of rectangle occurred.
        assert!(lit > 30 && dark > 30, "lit {lit}, dark {dark}");
    }

    /// The footprint whose lambda for a 4x4 texture is `lambda`.
    fn footprint(lambda: f32) -> Footprint {
        Footprint {
            lod_base: [lambda - 2.0; 2],
        }
    }

    fn red(t: &Textures, s: &CompiledScene, uv: Vec2, fp: &Footprint) -> f32 {
        t.sample(s, &TextureRef::new(0, 0), &[uv, uv], false, fp).x
    }

    #[test]
    fn pyramid_is_a_box_filter_down_to_one_texel() {
        let s = scene_4x4();
        let t = Textures::build(&s);
        let levels = t.levels(&s, 0);
        let sizes: Vec<(u32, u32)> = levels.iter().map(|l| (l.width, l.height)).collect();
        assert_eq!(sizes, vec![(2, 2), (1, 1)]);
        // Level 1's top-left texel: mean of 0, 16, 64, 80.
        assert_eq!(levels[0].rgba8[0], 40);
        // Level 2: mean of everything, 120.
        assert_eq!(levels[1].rgba8[0], 120);
    }

    #[test]
    fn magnified_textures_read_level_zero() {
        let s = scene_4x4();
        let t = Textures::build(&s);
        for uv in [
            Vec2::new(0.3, 0.6),
            Vec2::new(0.125, 0.875),
            Vec2::new(0.51, 0.02),
        ] {
            let full = red(&t, &s, uv, &Footprint::FULL_RESOLUTION);
            for lambda in [-3.0, -0.5, 0.0] {
                assert_eq!(
                    red(&t, &s, uv, &footprint(lambda)).to_bits(),
                    full.to_bits()
                );
            }
            // Without pyramids every footprint reads level 0 too.
            let bare = Textures::new();
            assert_eq!(
                red(&bare, &s, uv, &footprint(1.5)).to_bits(),
                full.to_bits()
            );
        }
    }

    #[test]
    fn minified_textures_blend_two_levels() {
        let s = scene_4x4();
        let t = Textures::build(&s);
        let uv = Vec2::new(0.25, 0.25);
        // Level 1 at its top-left texel centre: 40 / 255; level 2: 120 / 255.
        let l1 = red(&t, &s, uv, &footprint(1.0));
        let l2 = red(&t, &s, uv, &footprint(2.0));
        assert!((l1 - 40.0 / 255.0).abs() < 1e-6, "{l1}");
        assert!((l2 - 120.0 / 255.0).abs() < 1e-6, "{l2}");
        let mid = red(&t, &s, uv, &footprint(1.25));
        assert!((mid - (0.75 * l1 + 0.25 * l2)).abs() < 1e-6, "{mid}");
        // Past the last level the 1x1 level is used.
        assert_eq!(red(&t, &s, uv, &footprint(9.0)), l2);
    }

    #[test]
    fn colour_images_are_filtered_in_linear_light() {
        let lut = srgb_lut();
        // Black and white average to linear 0.5, which is sRGB byte 188, not 128.
        let src = [0, 0, 0, 0, 255, 255, 255, 255];
        let l = downsample(&lut, &src, 2, 1, true);
        assert_eq!(l.rgba8, vec![188, 188, 188, 128]);
        let l = downsample(&lut, &src, 2, 1, false);
        assert_eq!(l.rgba8, vec![128, 128, 128, 128]);
        // Odd sizes: every source texel counts (3 wide -> 1, a box of all three).
        let src = [30, 0, 0, 0, 60, 0, 0, 0, 90, 0, 0, 0];
        assert_eq!(downsample(&lut, &src, 3, 1, false).rgba8, vec![60, 0, 0, 0]);
    }
}
