//! Texel rasterisation: which surface point each texel of a UV map stands for.
//!
//! Texel `(x, y)` covers `[x, x+1) x [y, y+1)` in texel space, where `u * width` runs right and
//! `v * height` runs down (glTF's UV origin is the image's top-left corner), so a baked map
//! lines up with the model's textures. A texel is covered when
//! 1. its centre lies inside a UV triangle (the first such triangle in mesh order wins), or
//! 2. otherwise, the point of some UV triangle nearest its centre lies inside the texel's
//!    square (conservative coverage at chart edges); that nearest point is used, so the sample
//!    always lies on the triangle and never outside the geometry (no light leaking).
//!
//! UV coordinates outside [0, 1] are clipped, not wrapped. Overlapping UVs (a texel centre
//! inside triangles of two meshes, or strictly inside two triangles of one mesh) are counted
//! per mesh pair.

use rayfarm_render::film::Region;
use rayfarm_scene::CompiledScene;

/// The surface point a texel stands for: a triangle and the barycentrics of its second and
/// third vertex. `prim == u32::MAX` marks an empty texel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TexelPoint {
    pub prim: u32,
    pub b1: f32,
    pub b2: f32,
}

impl TexelPoint {
    pub const EMPTY: TexelPoint = TexelPoint {
        prim: u32::MAX,
        b1: 0.0,
        b2: 0.0,
    };
    pub fn is_covered(&self) -> bool {
        self.prim != u32::MAX
    }
}

/// Texels whose centre lies strictly inside triangles of two charts (or twice in one object).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlap {
    /// Mesh indices (the smaller first; equal for an object overlapping itself).
    pub meshes: (usize, usize),
    pub texels: u64,
}

/// The rasterised UV layout of one map (an atlas of several meshes or one mesh's map), or of
/// a region of it (one object's part of an atlas in a multi-pass bake).
#[derive(Clone, Debug)]
pub struct TexelTable {
    /// Size of the whole map: texel `(x, y)` covers `[x, x+1) x [y, y+1)` of `uv * (width, height)`.
    pub width: u32,
    pub height: u32,
    pub uv_set: u8,
    /// Mesh indices rasterised into this map.
    pub meshes: Vec<usize>,
    /// The texels this table holds (the whole map unless built with [`TexelTable::build_region`]).
    pub region: Region,
    /// One entry per texel of `region`, rows top to bottom.
    pub texels: Vec<TexelPoint>,
    /// Texels whose centre lies inside a triangle (the rest of the covered ones are edge texels).
    pub centre_texels: u64,
    /// Overlapping UVs, by mesh pair, in a fixed order.
    pub overlaps: Vec<Overlap>,
}

impl TexelTable {
    pub fn covered(&self) -> Vec<bool> {
        self.texels.iter().map(|t| t.is_covered()).collect()
    }
    pub fn covered_count(&self) -> u64 {
        self.texels.iter().filter(|t| t.is_covered()).count() as u64
    }
    /// Texels with overlapping UVs.
    pub fn overlap_texels(&self) -> u64 {
        self.overlaps.iter().map(|o| o.texels).sum()
    }
    /// Share of the covered texels whose UVs overlap, in [0, 1].
    pub fn overlap_share(&self) -> f64 {
        self.overlap_texels() as f64 / self.covered_count().max(1) as f64
    }

    /// The point of map texel `(x, y)`; empty outside the table's region.
    pub fn at(&self, x: u32, y: u32) -> &TexelPoint {
        let r = &self.region;
        if x < r.x0 || y < r.y0 || x >= r.x1 || y >= r.y1 {
            return &TexelPoint::EMPTY;
        }
        &self.texels[(y - r.y0) as usize * r.width() as usize + (x - r.x0) as usize]
    }

    /// The texels the given meshes' charts can reach (their UV bounding box grown by one
    /// texel for conservative coverage, clipped to the map), or `None` when they reach none.
    pub fn chart_region(
        scene: &CompiledScene,
        meshes: &[usize],
        uv_set: u8,
        width: u32,
        height: u32,
    ) -> Option<Region> {
        let uvs = if uv_set == 0 { &scene.uv0 } else { &scene.uv1 };
        let (w, h) = (width as usize, height as usize);
        let mut out: Option<Region> = None;
        for &mi in meshes {
            let m = &scene.meshes[mi];
            for prim in m.first_triangle..m.first_triangle + m.triangle_count {
                let p = scene.triangles[prim as usize].map(|i| {
                    let uv = uvs.get(i as usize).copied().unwrap_or([0.0; 2]);
                    [uv[0] as f64 * w as f64, uv[1] as f64 * h as f64]
                });
                let Some((x0, x1, y0, y1)) = bbox(p, 1.0, Region::full(width, height)) else {
                    continue;
                };
                let (x0, x1, y0, y1) = (x0 as u32, x1 as u32, y0 as u32, y1 as u32);
                out = Some(match out {
                    None => Region { x0, y0, x1, y1 },
                    Some(r) => Region {
                        x0: r.x0.min(x0),
                        y0: r.y0.min(y0),
                        x1: r.x1.max(x1),
                        y1: r.y1.max(y1),
                    },
                });
            }
        }
        out
    }

    /// Rasterises the given meshes' triangles in UV set `uv_set` into a `width x height` map.
    /// Deterministic: depends only on the scene and the arguments. The caller checks the
    /// arguments first ([`crate::select_objects`], [`crate::check_size`]).
    pub fn build(
        scene: &CompiledScene,
        meshes: &[usize],
        uv_set: u8,
        width: u32,
        height: u32,
    ) -> TexelTable {
        Self::build_region(
            scene,
            meshes,
            uv_set,
            width,
            height,
            Region::full(width, height),
        )
    }

    /// Like [`TexelTable::build`], but keeps only the texels of `region` (inside the map).
    /// Every texel of the region gets exactly the point the whole map's table gives it, so
    /// tables of regions tile a map without changing a bit of the result.
    pub fn build_region(
        scene: &CompiledScene,
        meshes: &[usize],
        uv_set: u8,
        width: u32,
        height: u32,
        region: Region,
    ) -> TexelTable {
        let region = Region {
            x0: region.x0.min(width),
            y0: region.y0.min(height),
            x1: region.x1.min(width),
            y1: region.y1.min(height),
        };
        let (w, h) = (width as usize, height as usize);
        let rw = region.width() as usize;
        let idx = |x: usize, y: usize| (y - region.y0 as usize) * rw + (x - region.x0 as usize);
        let uvs = if uv_set == 0 { &scene.uv0 } else { &scene.uv1 };
        let n = region.pixels();
        let mut texels = vec![TexelPoint::EMPTY; n];
        let mut strict = vec![false; n];
        let mut overlapped = vec![false; n];
        let mut owner_mesh = vec![u32::MAX; n];
        let mut pairs: std::collections::BTreeMap<(usize, usize), u64> = Default::default();
        let tri_uv = |prim: usize| -> [[f64; 2]; 3] {
            scene.triangles[prim].map(|i| {
                let uv = uvs.get(i as usize).copied().unwrap_or([0.0; 2]);
                [uv[0] as f64 * w as f64, uv[1] as f64 * h as f64]
            })
        };
        let prims = || {
            meshes.iter().flat_map(|&mi| {
                let m = &scene.meshes[mi];
                (m.first_triangle..m.first_triangle + m.triangle_count).map(move |p| (mi, p))
            })
        };
        // Pass 1: texel centres inside triangles.
        for (mi, prim) in prims() {
            let [a, b, c] = tri_uv(prim as usize);
            let det = cross(sub(b, a), sub(c, a));
            if det.abs() < 1e-12 || !det.is_finite() {
                continue;
            }
            let Some((x0, x1, y0, y1)) = bbox([a, b, c], 0.0, region) else {
                continue;
            };
            for y in y0..y1 {
                for x in x0..x1 {
                    let q = [x as f64 + 0.5, y as f64 + 0.5];
                    let b1 = cross(sub(q, a), sub(c, a)) / det;
                    let b2 = cross(sub(b, a), sub(q, a)) / det;
                    let b0 = 1.0 - b1 - b2;
                    let min = b0.min(b1).min(b2);
                    if min < -1e-7 {
                        continue;
                    }
                    let i = idx(x, y);
                    let is_strict = min > 1e-4;
                    if !texels[i].is_covered() {
                        texels[i] = TexelPoint {
                            prim,
                            b1: b1 as f32,
                            b2: b2 as f32,
                        };
                        strict[i] = is_strict;
                        owner_mesh[i] = mi as u32;
                    } else if !overlapped[i]
                        && (owner_mesh[i] as usize != mi || is_strict || strict[i])
                    {
                        // Within one mesh a centre on a shared edge is not an overlap; across
                        // meshes any shared centre is.
                        overlapped[i] = true;
                        let o = owner_mesh[i] as usize;
                        *pairs.entry((o.min(mi), o.max(mi))).or_default() += 1;
                    }
                }
            }
        }
        let centre_texels = texels.iter().filter(|t| t.is_covered()).count() as u64;
        // Pass 2: conservative coverage of texels the charts' edges cross.
        let mut best = vec![f64::INFINITY; n];
        let mut edge = vec![TexelPoint::EMPTY; n];
        for (_, prim) in prims() {
            let [a, b, c] = tri_uv(prim as usize);
            let det = cross(sub(b, a), sub(c, a));
            if det.abs() < 1e-12 || !det.is_finite() {
                continue;
            }
            let Some((x0, x1, y0, y1)) = bbox([a, b, c], 1.0, region) else {
                continue;
            };
            for y in y0..y1 {
                for x in x0..x1 {
                    let i = idx(x, y);
                    if texels[i].is_covered() {
                        continue;
                    }
                    let q = [x as f64 + 0.5, y as f64 + 0.5];
                    let (p, b1, b2) = nearest_on_triangle(q, a, b, c, det);
                    let d = sub(p, q);
                    if d[0].abs().max(d[1].abs()) > 0.5 {
                        continue;
                    }
                    let dist = d[0] * d[0] + d[1] * d[1];
                    if dist < best[i] {
                        best[i] = dist;
                        edge[i] = TexelPoint {
                            prim,
                            b1: b1 as f32,
                            b2: b2 as f32,
                        };
                    }
                }
            }
        }
        for (t, e) in texels.iter_mut().zip(edge) {
            if !t.is_covered() {
                *t = e;
            }
        }
        TexelTable {
            width,
            height,
            uv_set,
            meshes: meshes.to_vec(),
            region,
            texels,
            centre_texels,
            overlaps: pairs
                .into_iter()
                .map(|(meshes, texels)| Overlap { meshes, texels })
                .collect(),
        }
    }
}

fn sub(a: [f64; 2], b: [f64; 2]) -> [f64; 2] {
    [a[0] - b[0], a[1] - b[1]]
}

fn cross(a: [f64; 2], b: [f64; 2]) -> f64 {
    a[0] * b[1] - a[1] * b[0]
}

/// Texel range `[x0, x1) x [y0, y1)` within `clip` whose centres may lie within `grow` texels
/// of the triangle.
fn bbox(p: [[f64; 2]; 3], grow: f64, clip: Region) -> Option<(usize, usize, usize, usize)> {
    let lo = |k: usize| p.iter().map(|v| v[k]).fold(f64::INFINITY, f64::min) - grow;
    let hi = |k: usize| p.iter().map(|v| v[k]).fold(f64::NEG_INFINITY, f64::max) + grow;
    let range = |k: usize, c0: u32, c1: u32| -> Option<(usize, usize)> {
        let (l, h) = (lo(k), hi(k));
        if !(l.is_finite() && h.is_finite()) || h < c0 as f64 || l > c1 as f64 {
            return None;
        }
        let a = (l - 0.5).floor().max(c0 as f64) as usize;
        let b = ((h - 0.5).floor() + 1.0).clamp(c0 as f64, c1 as f64) as usize;
        (a < b).then_some((a, b))
    };
    let (x0, x1) = range(0, clip.x0, clip.x1)?;
    let (y0, y1) = range(1, clip.y0, clip.y1)?;
    Some((x0, x1, y0, y1))
}

/// The point of triangle `abc` nearest `q` (outside it), with its barycentrics (b1, b2).
fn nearest_on_triangle(
    q: [f64; 2],
    a: [f64; 2],
    b: [f64; 2],
    c: [f64; 2],
    det: f64,
) -> ([f64; 2], f64, f64) {
    let b1 = cross(sub(q, a), sub(c, a)) / det;
    let b2 = cross(sub(b, a), sub(q, a)) / det;
    if b1 >= 0.0 && b2 >= 0.0 && b1 + b2 <= 1.0 {
        return (q, b1, b2);
    }
    // Nearest point on each edge, as (point, b1, b2).
    let seg = |p0: [f64; 2], p1: [f64; 2]| -> ([f64; 2], f64) {
        let d = sub(p1, p0);
        let len2 = d[0] * d[0] + d[1] * d[1];
        let t = if len2 > 0.0 {
            ((q[0] - p0[0]) * d[0] + (q[1] - p0[1]) * d[1]) / len2
        } else {
            0.0
        };
        let t = t.clamp(0.0, 1.0);
        ([p0[0] + d[0] * t, p0[1] + d[1] * t], t)
    };
    let (pab, tab) = seg(a, b); // b1 = t, b2 = 0
    let (pbc, tbc) = seg(b, c); // b1 = 1 - t, b2 = t
    let (pca, tca) = seg(c, a); // b1 = 0, b2 = 1 - t
    let dist = |p: [f64; 2]| {
        let d = sub(p, q);
        d[0] * d[0] + d[1] * d[1]
    };
    let mut best = (pab, tab, 0.0, dist(pab));
    for cand in [(pbc, 1.0 - tbc, tbc), (pca, 0.0, 1.0 - tca)] {
        let d = dist(cand.0);
        if d < best.3 {
            best = (cand.0, cand.1, cand.2, d);
        }
    }
    (best.0, best.1, best.2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use glam::Vec3;

    fn quad_scene() -> CompiledScene {
        let mut s = CompiledScene::default();
        let m = s.add_material(Default::default());
        s.add_quad("q", Vec3::ZERO, Vec3::X, Vec3::Z, m);
        s
    }

    #[test]
    fn full_quad_covers_every_texel_once() {
        let s = quad_scene();
        let t = TexelTable::build(&s, &[0], 0, 16, 16);
        assert_eq!(t.centre_texels, 256);
        assert!(t.overlaps.is_empty(), "{:?}", t.overlaps);
    }

    #[test]
    fn half_quad_gets_conservative_edge() {
        let mut s = quad_scene();
        // Shrink the UVs to [0.2, 0.7] so chart edges cross texels.
        for uv in &mut s.uv0 {
            uv[0] = 0.2 + uv[0] * 0.5;
            uv[1] = 0.2 + uv[1] * 0.5;
        }
        let t = TexelTable::build(&s, &[0], 0, 10, 10);
        // Centres 2.5..6.5 lie inside [2, 7): 5 x 5; texels 2..=6 plus the edge-crossed ones.
        assert_eq!(t.centre_texels, 25);
        assert_eq!(t.covered_count(), 25);
        for uv in &mut s.uv0 {
            uv[0] -= 0.03;
            uv[1] -= 0.03;
        }
        let t = TexelTable::build(&s, &[0], 0, 10, 10);
        // [1.7, 6.7): centres 2.5..6.5 inside; texel 1 (and its row/column) crossed.
        assert_eq!(t.centre_texels, 25);
        assert_eq!(t.covered_count(), 36);
        let p = t.texels[10 + 1];
        assert!(p.is_covered());
    }

    #[test]
    fn overlap_is_reported() {
        let mut s = quad_scene();
        let m = 0;
        s.add_quad("r", Vec3::Y, Vec3::X, Vec3::Z, m);
        let t = TexelTable::build(&s, &[0, 1], 0, 8, 8);
        assert_eq!(
            t.overlaps,
            vec![Overlap {
                meshes: (0, 1),
                texels: 64
            }]
        );
        assert!((t.overlap_share() - 1.0).abs() < 1e-12);
    }
}
