//! Texture lookups: UV transform, wrap modes, bilinear or nearest filtering, sRGB decoding.

use glam::{Vec2, Vec4};
use rayfarm_scene::{CompiledScene, TextureRef, WrapMode};

/// sRGB-encoded byte to linear value.
pub fn srgb_to_linear(c: f32) -> f32 {
    if c <= 0.04045 {
        c / 12.92
    } else {
        ((c + 0.055) / 1.055).powf(2.4)
    }
}

/// Linear value to sRGB-encoded [0, 1].
pub fn linear_to_srgb(c: f32) -> f32 {
    let c = c.clamp(0.0, 1.0);
    if c <= 0.0031308 {
        c * 12.92
    } else {
        1.055 * c.powf(1.0 / 2.4) - 0.055
    }
}

pub struct Textures {
    srgb_lut: [f32; 256],
}

#[inline(always)]
fn wrap(i: i64, n: u32, mode: WrapMode) -> usize {
    let n = n as i64;
    (match mode {
        WrapMode::Repeat => i.rem_euclid(n),
        WrapMode::ClampToEdge => i.clamp(0, n - 1),
        WrapMode::MirroredRepeat => {
            let m = i.rem_euclid(2 * n);
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

impl Textures {
    pub fn new() -> Textures {
        let mut srgb_lut = [0.0; 256];
        for (i, v) in srgb_lut.iter_mut().enumerate() {
            *v = srgb_to_linear(i as f32 / 255.0);
        }
        Textures { srgb_lut }
    }

    /// Samples `r` at the UVs of the hit (`uvs[set]`). Colour textures (`srgb`) have their RGB
    /// decoded before filtering; alpha is always linear.
    #[inline]
    pub fn sample(
        &self,
        scene: &CompiledScene,
        r: &TextureRef,
        uvs: &[Vec2; 2],
        srgb: bool,
    ) -> Vec4 {
        let uv = uvs[(r.uv_set as usize).min(1)];
        let m = &r.transform;
        let u = m[0] * uv.x + m[1] * uv.y + m[2];
        let v = m[3] * uv.x + m[4] * uv.y + m[5];
        let tex = &scene.textures[r.texture as usize];
        let img = &scene.images[tex.image as usize];
        let (w, h) = (img.width, img.height);
        let fetch = |x: i64, y: i64| -> Vec4 {
            let xi = wrap(x, w, tex.wrap_s);
            let yi = wrap(y, h, tex.wrap_t);
            let o = (yi * w as usize + xi) * 4;
            let p = &img.rgba8[o..o + 4];
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
        };
        let x = u * w as f32 - 0.5;
        let y = v * h as f32 - 0.5;
        if !x.is_finite() || !y.is_finite() {
            return fetch(0, 0);
        }
        if tex.nearest {
            return fetch((x + 0.5).floor() as i64, (y + 0.5).floor() as i64);
        }
        let (x0, y0) = (x.floor(), y.floor());
        let (fx, fy) = (x - x0, y - y0);
        let (x0, y0) = (x0 as i64, y0 as i64);
        let a = fetch(x0, y0).lerp(fetch(x0 + 1, y0), fx);
        let b = fetch(x0, y0 + 1).lerp(fetch(x0 + 1, y0 + 1), fx);
        a.lerp(b, fy)
    }
}
