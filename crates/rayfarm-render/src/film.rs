//! Work units and the film that accumulates their results.
//!
//! A work unit is a (tile, sample range). Rendering it yields, per pixel, the sum of its
//! samples in 24-bit fixed point held in `i128`. Integer addition is associative, so the film's
//! value for a pixel is the same whatever the tiling, the split of sample ranges or the order in
//! which units arrive — the basis of bit-identical distributed renders. A master adds results
//! as they arrive, from many threads at once, into a [`SharedFilm`]; the integers make the
//! order they are added in irrelevant.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

/// Fractional bits of the fixed-point sample sums: a resolution of 2^-24 ≈ 6e-8.
pub const FIXED_FRAC_BITS: u32 = 24;
/// Largest magnitude one sample may contribute (about 6.9e10 radiance units); larger values
/// (only ever seen with broken input) are saturated so sums cannot overflow.
pub const MAX_SAMPLE_VALUE: f64 = (1u64 << 36) as f64;

/// Why sums do not fit a film; each variant names the unit or region at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilmError {
    #[error("a film over {inner:?} lies outside this film's region {outer:?}")]
    FilmOutside { inner: Region, outer: Region },
    #[error("unit {unit:?} lies outside the film's region {region:?}")]
    UnitOutside { unit: WorkUnit, region: Region },
    #[error("unit {unit:?} carries {got} pixels instead of {expected}")]
    UnitPixels {
        unit: WorkUnit,
        got: usize,
        expected: usize,
    },
}

/// Converts one sample channel to fixed point.
#[inline(always)]
pub fn to_fixed(v: f32) -> i128 {
    let v = (v as f64).clamp(-MAX_SAMPLE_VALUE, MAX_SAMPLE_VALUE);
    let x = v * (1u64 << FIXED_FRAC_BITS) as f64;
    // `x.round() as i128` (half away from zero), without its two library calls (`round` is
    // one on x86-64 without SSE4.1, the i128 conversion another): |x| <= 2^60, so the integer
    // part converts to i64 exactly and the fraction `x - i` is exact.
    let i = x as i64;
    let frac = x - i as f64;
    // Without branches: the CPU mispredicted one on a third of the calls.
    let rounded = i + (frac >= 0.5) as i64 - (frac <= -0.5) as i64;
    rounded as i128
}

/// A rectangle of pixels `[x0, x1) x [y0, y1)` and a sample range `[sample_start, sample_end)`
/// of one layer of a job. A render has one layer (0); a bake has one per (map, pass). Units
/// order by layer first, so a scheduler handing them out in order finishes layers one by one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkUnit {
    pub layer: u32,
    pub sample_start: u32,
    pub sample_end: u32,
    pub y0: u32,
    pub x0: u32,
    pub y1: u32,
    pub x1: u32,
}

impl WorkUnit {
    pub fn pixels(&self) -> usize {
        (self.x1 - self.x0) as usize * (self.y1 - self.y0) as usize
    }
    pub fn samples(&self) -> u64 {
        self.pixels() as u64 * (self.sample_end - self.sample_start) as u64
    }
}

/// Per-pixel fixed-point sums of one unit, rows top to bottom within the tile.
#[derive(Clone, Debug, PartialEq)]
pub struct UnitResult {
    pub unit: WorkUnit,
    pub sums: Vec<[i128; 3]>,
    /// Samples dropped because they were not finite (each one is a bug worth reporting).
    pub nonfinite_samples: u64,
}

/// Cuts an image into units of layer 0: tiles of `tile_px` square, sample ranges of
/// `samples_per_unit`, ordered sample range first so early units cover the whole image.
pub fn plan_units(
    width: u32,
    height: u32,
    spp: u32,
    tile_px: u32,
    samples_per_unit: u32,
) -> Vec<WorkUnit> {
    plan_region(
        0,
        Region::full(width, height),
        spp,
        tile_px,
        samples_per_unit,
    )
}

/// Cuts an image into units of layer 0 that refine the whole image in passes: see
/// [`plan_region_progressive`].
pub fn plan_units_progressive(
    width: u32,
    height: u32,
    spp: u32,
    tile_px: u32,
    samples_per_unit: u32,
) -> Vec<WorkUnit> {
    plan_region_progressive(
        0,
        Region::full(width, height),
        spp,
        tile_px,
        samples_per_unit,
    )
}

/// The sample passes of a progressive plan: `[0, 1)`, `[1, 2)`, `[2, 4)`, `[4, 8)` ... each
/// twice as long as the one before, until a pass reaches `samples_per_unit`; then passes of
/// `samples_per_unit`. The last pass ends at `spp`.
pub fn progressive_passes(spp: u32, samples_per_unit: u32) -> Vec<(u32, u32)> {
    let cap = samples_per_unit.max(1);
    let mut out = Vec::new();
    let mut s = 0u32;
    let mut len = 1u32;
    while s < spp {
        let e = s.saturating_add(len).min(spp);
        out.push((s, e));
        s = e;
        // After [0, 1) comes [1, 2), then lengths double: each pass ends at a power of two.
        len = s.max(1).min(cap);
    }
    out
}

/// Units of `layer` over `region` that refine the whole region in passes (1, 2, 4, 8 ... spp
/// in all, see [`progressive_passes`]), so a viewer sees the whole image early and watch it
/// converge. Passes shorter than `samples_per_unit` use larger tiles (twice the edge for a
/// quarter of the samples or fewer), so a unit stays about as much work as a full one.
///
/// Every (pixel, sample) pair is in exactly one unit, as with [`plan_region`]: since samples
/// depend only on (seed, pixel, sample index) and results add as integers, the final image is
/// the same bytes whichever plan rendered it.
pub fn plan_region_progressive(
    layer: u32,
    region: Region,
    spp: u32,
    tile_px: u32,
    samples_per_unit: u32,
) -> Vec<WorkUnit> {
    let tile = tile_px.max(1);
    let cap = samples_per_unit.max(1);
    let mut out = Vec::new();
    for (s, e) in progressive_passes(spp, cap) {
        // Grow the tile edge by 2 for every factor of 4 the pass is shorter than `cap`.
        let mut edge = tile;
        let mut n = e - s;
        while n.saturating_mul(4) <= cap && edge.saturating_mul(2) <= crate::MAX_TILE_PX {
            n *= 4;
            edge *= 2;
        }
        push_pass(&mut out, layer, region, (s, e), edge);
    }
    out
}

/// Appends the tiles of `region` (edge `tile`, row by row) for the sample range `samples`.
fn push_pass(out: &mut Vec<WorkUnit>, layer: u32, region: Region, samples: (u32, u32), tile: u32) {
    let mut y = region.y0;
    while y < region.y1 {
        let mut x = region.x0;
        while x < region.x1 {
            out.push(WorkUnit {
                layer,
                sample_start: samples.0,
                sample_end: samples.1,
                y0: y,
                x0: x,
                y1: y.saturating_add(tile).min(region.y1),
                x1: x.saturating_add(tile).min(region.x1),
            });
            x = x.saturating_add(tile);
        }
        y = y.saturating_add(tile);
    }
}

/// A rectangle `[x0, x1) x [y0, y1)` of an image or map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Region {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

impl Region {
    pub fn full(width: u32, height: u32) -> Region {
        Region {
            x0: 0,
            y0: 0,
            x1: width,
            y1: height,
        }
    }
    pub fn width(&self) -> u32 {
        self.x1.saturating_sub(self.x0)
    }
    pub fn height(&self) -> u32 {
        self.y1.saturating_sub(self.y0)
    }
    pub fn pixels(&self) -> usize {
        self.width() as usize * self.height() as usize
    }
    pub fn is_empty(&self) -> bool {
        self.pixels() == 0
    }
    /// Whether `[x0, x1) x [y0, y1)` lies inside this region.
    pub fn contains_rect(&self, x0: u32, y0: u32, x1: u32, y1: u32) -> bool {
        x0 < x1 && y0 < y1 && x0 >= self.x0 && y0 >= self.y0 && x1 <= self.x1 && y1 <= self.y1
    }
}

/// Units of `layer` over `region` (tiles start at the region's corner), sample range first.
pub fn plan_region(
    layer: u32,
    region: Region,
    spp: u32,
    tile_px: u32,
    samples_per_unit: u32,
) -> Vec<WorkUnit> {
    let tile = tile_px.max(1);
    let chunk = samples_per_unit.max(1);
    let mut out = Vec::new();
    let mut s = 0;
    while s < spp {
        let e = (s + chunk).min(spp);
        push_pass(&mut out, layer, region, (s, e), tile);
        s = e;
    }
    out
}

/// The accumulated image, or a region of it (a bake of one object covers only the part of
/// the map its charts lie in).
/// The largest side of an image (what `--width` and `--height` accept).
pub const MAX_IMAGE_SIDE: u32 = 32768;
/// The most pixels an image may have: a film keeps 48 bytes a pixel (three 128-bit sums), so
/// 2^28 pixels (16384 x 16384) take 12 GiB, and the RGB image written from it 3 GiB more.
pub const MAX_IMAGE_PIXELS: u64 = 1 << 28;

/// Why an image of `width` x `height` cannot be rendered (a side of 0 or over
/// [`MAX_IMAGE_SIDE`], or more than [`MAX_IMAGE_PIXELS`] pixels), or `None`.
pub fn image_size_problem(width: u32, height: u32) -> Option<String> {
    if width == 0 || height == 0 || width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE {
        return Some(format!(
            "{width}x{height} pixels: each side must be 1 to {MAX_IMAGE_SIDE}"
        ));
    }
    let pixels = width as u64 * height as u64;
    if pixels > MAX_IMAGE_PIXELS {
        return Some(format!(
            "{width}x{height} is {:.0} M pixels, more than the {} M a render holds ({} GiB of film \
             at 48 bytes a pixel)",
            pixels as f64 / 1e6,
            MAX_IMAGE_PIXELS / 1_000_000,
            (MAX_IMAGE_PIXELS * 48) >> 30
        ));
    }
    None
}

#[derive(Clone, Debug)]
pub struct Film {
    /// The part of the image this film holds; `sums` has one entry per pixel of it.
    pub region: Region,
    sums: Vec<[i128; 3]>,
    pub nonfinite_samples: u64,
}

impl Film {
    pub fn new(width: u32, height: u32) -> Film {
        Film::new_region(Region::full(width, height))
    }

    pub fn new_region(region: Region) -> Film {
        Film {
            region,
            sums: vec![[0; 3]; region.pixels()],
            nonfinite_samples: 0,
        }
    }

    /// A film from sums (one per pixel of `region`, rows top to bottom).
    pub fn from_sums(region: Region, sums: Vec<[i128; 3]>, nonfinite_samples: u64) -> Film {
        assert_eq!(sums.len(), region.pixels(), "sums must cover the region");
        Film {
            region,
            sums,
            nonfinite_samples,
        }
    }

    /// Adds another film's sums (a tile of this one, say). Its region must lie inside this
    /// film's. Sums are fixed point, so the order films are added in does not matter.
    pub fn add_film(&mut self, other: &Film) -> Result<(), FilmError> {
        let r = other.region;
        if !self.region.contains_rect(r.x0, r.y0, r.x1, r.y1) {
            return Err(FilmError::FilmOutside {
                inner: r,
                outer: self.region,
            });
        }
        let (tw, rw) = (r.width() as usize, self.region.width() as usize);
        for y in r.y0..r.y1 {
            let src = &other.sums[(y - r.y0) as usize * tw..][..tw];
            let start = (y - self.region.y0) as usize * rw + (r.x0 - self.region.x0) as usize;
            add_row(&mut self.sums[start..][..tw], src);
        }
        self.nonfinite_samples = self
            .nonfinite_samples
            .saturating_add(other.nonfinite_samples);
        Ok(())
    }

    /// Adds a unit's sums. Returns an error if the unit does not fit this film.
    pub fn add(&mut self, r: &UnitResult) -> Result<(), FilmError> {
        check_fits(self.region, r)?;
        let u = &r.unit;
        let tw = (u.x1 - u.x0) as usize;
        let rw = self.region.width() as usize;
        for y in u.y0..u.y1 {
            let row = &r.sums[(y - u.y0) as usize * tw..][..tw];
            let start = (y - self.region.y0) as usize * rw + (u.x0 - self.region.x0) as usize;
            add_row(&mut self.sums[start..][..tw], row);
        }
        self.nonfinite_samples = self.nonfinite_samples.saturating_add(r.nonfinite_samples);
        Ok(())
    }

    /// The raw fixed-point sums, rows of the region top to bottom.
    pub fn sums(&self) -> &[[i128; 3]] {
        &self.sums
    }

    /// The image as linear RGB: sums divided by `spp`.
    pub fn to_rgb(&self, spp: u32) -> Vec<[f32; 3]> {
        let scale = 1.0 / ((1u64 << FIXED_FRAC_BITS) as f64 * spp.max(1) as f64);
        self.sums
            .iter()
            .map(|s| s.map(|v| (v as f64 * scale) as f32))
            .collect()
    }
}

/// Whether `r` fits a film over `region`: its rectangle inside, one sum per pixel.
pub fn check_fits(region: Region, r: &UnitResult) -> Result<(), FilmError> {
    let u = &r.unit;
    if !region.contains_rect(u.x0, u.y0, u.x1, u.y1) {
        return Err(FilmError::UnitOutside { unit: *u, region });
    }
    if r.sums.len() != u.pixels() {
        return Err(FilmError::UnitPixels {
            unit: *u,
            got: r.sums.len(),
            expected: u.pixels(),
        });
    }
    Ok(())
}

/// Adds a row of sums into a row of a film.
#[inline]
fn add_row(dst: &mut [[i128; 3]], src: &[[i128; 3]]) {
    for (d, s) in dst.iter_mut().zip(src) {
        for c in 0..3 {
            d[c] = d[c].saturating_add(s[c]);
        }
    }
}

/// Rows of a [`SharedFilm`] behind one lock.
pub const BAND_ROWS: u32 = 8;

/// A film that many threads add results into at once: a master merging results as they
/// arrive from its sessions and its own cores.
///
/// The region's rows are cut into bands of [`BAND_ROWS`], each behind a lock of its own. A
/// result locks the bands its rows lie in one after the other, never two at once, so adds into
/// different bands run side by side, no lock is held longer than one band's rows of one result
/// take to add, and no two locks can wait for each other. The sums are integers, so the film
/// holds the same bytes whatever order the results arrive in and however their adds
/// interleave: [`SharedFilm::into_film`] is the [`Film`] a sequential merge of the same results
/// gives. (Each sum saturates as [`Film::add`]'s do; sums of samples bounded by
/// [`MAX_SAMPLE_VALUE`] would need more than 2^66 samples in a pixel to reach the bound.)
#[derive(Debug)]
pub struct SharedFilm {
    region: Region,
    /// Band `b` holds rows `b * BAND_ROWS ..` of the region (fewer in the last band).
    bands: Vec<Mutex<Vec<[i128; 3]>>>,
    nonfinite_samples: AtomicU64,
}

impl SharedFilm {
    pub fn new(region: Region) -> SharedFilm {
        let (w, h) = (region.width() as usize, region.height());
        let bands = (0..h.div_ceil(BAND_ROWS))
            .map(|b| {
                let rows = (h - b * BAND_ROWS).min(BAND_ROWS) as usize;
                Mutex::new(vec![[0; 3]; rows * w])
            })
            .collect();
        SharedFilm {
            region,
            bands,
            nonfinite_samples: AtomicU64::new(0),
        }
    }

    pub fn region(&self) -> Region {
        self.region
    }

    fn band(&self, b: u32) -> MutexGuard<'_, Vec<[i128; 3]>> {
        // Adding integers cannot panic, so a poisoned band is still whole.
        self.bands[b as usize]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a unit's sums. Returns an error, having added nothing, if the unit does not fit.
    pub fn add(&self, r: &UnitResult) -> Result<(), FilmError> {
        check_fits(self.region, r)?;
        let u = &r.unit;
        let (tw, rw) = ((u.x1 - u.x0) as usize, self.region.width() as usize);
        let x = (u.x0 - self.region.x0) as usize;
        let (y0, y1) = (u.y0 - self.region.y0, u.y1 - self.region.y0);
        let mut y = y0;
        while y < y1 {
            let b = y / BAND_ROWS;
            let end = ((b + 1) * BAND_ROWS).min(y1);
            let mut band = self.band(b);
            for row in y..end {
                let src = &r.sums[(row - y0) as usize * tw..][..tw];
                let start = (row - b * BAND_ROWS) as usize * rw + x;
                add_row(&mut band[start..][..tw], src);
            }
            y = end;
        }
        // Saturating, as `Film`'s: a count from the wire must not wrap to hide (or invent) the
        // warning about dropped samples.
        let _ = self
            .nonfinite_samples
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_add(r.nonfinite_samples))
            });
        Ok(())
    }

    /// The sums at the region's rows `ys` and columns `xs` (relative to the region's corner;
    /// row-major, `ys.len() * xs.len()` of them), as each row stands when it is read: what a
    /// preview needs without copying the film.
    pub fn gather(&self, ys: &[u32], xs: &[u32]) -> Vec<[i128; 3]> {
        let rw = self.region.width() as usize;
        let mut out = Vec::with_capacity(ys.len() * xs.len());
        for &y in ys {
            let band = self.band(y / BAND_ROWS);
            let row = &band[(y % BAND_ROWS) as usize * rw..][..rw];
            out.extend(xs.iter().map(|&x| row[x as usize]));
        }
        out
    }

    /// A copy of the film as it stands (each band as it is when read).
    pub fn to_film(&self) -> Film {
        let mut sums = Vec::with_capacity(self.region.pixels());
        for b in 0..self.bands.len() {
            sums.extend_from_slice(&self.band(b as u32));
        }
        Film::from_sums(
            self.region,
            sums,
            self.nonfinite_samples.load(Ordering::Relaxed),
        )
    }

    /// The film, once no thread adds into it any more; each band is freed as it is copied.
    pub fn into_film(self) -> Film {
        let mut sums = Vec::with_capacity(self.region.pixels());
        for band in self.bands {
            sums.extend_from_slice(&band.into_inner().unwrap_or_else(|p| p.into_inner()));
        }
        Film::from_sums(self.region, sums, self.nonfinite_samples.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The count of dropped samples comes from peers (units, parts): a huge one saturates, it
    /// never wraps to a small number (release) or panics (debug).
    #[test]
    fn dropped_sample_counts_saturate() {
        let mut f = Film::from_sums(Region::full(2, 1), vec![[0; 3]; 2], u64::MAX - 1);
        let other = Film::from_sums(Region::full(2, 1), vec![[0; 3]; 2], 5);
        f.add_film(&other).unwrap();
        assert_eq!(f.nonfinite_samples, u64::MAX);
        let mut g = Film::new(2, 1);
        g.nonfinite_samples = u64::MAX - 2;
        let unit = plan_units(2, 1, 1, 8, 1).remove(0);
        let r = UnitResult {
            unit,
            sums: vec![[0; 3]; 2],
            nonfinite_samples: 7,
        };
        g.add(&r).unwrap();
        assert_eq!(g.nonfinite_samples, u64::MAX);
        // The master's shared film too (a worker's counts came from the wire and wrapped).
        let shared = SharedFilm::new(Region::full(2, 1));
        for n in [u64::MAX - 1, 5] {
            let r = UnitResult {
                unit,
                sums: vec![[0; 3]; 2],
                nonfinite_samples: n,
            };
            shared.add(&r).unwrap();
        }
        assert_eq!(shared.into_film().nonfinite_samples, u64::MAX);
    }

    /// No planned unit is larger than a worker accepts (`MAX_UNIT_PIXELS`), whatever the tile
    /// edge asked for (up to `MAX_TILE_PX`) and however the progressive passes grow it.
    #[test]
    fn planned_units_stay_within_the_unit_pixel_limit() {
        for tile in [32, 3000, crate::MAX_TILE_PX] {
            for units in [
                plan_units_progressive(12000, 9000, 256, tile, 16),
                plan_units(12000, 9000, 16, tile, 16),
            ] {
                let largest = units.iter().map(|u| u.pixels() as u64).max().unwrap();
                assert!(largest <= crate::MAX_UNIT_PIXELS, "tile {tile}: {largest}");
            }
        }
    }

    #[test]
    fn to_fixed_rounds_half_away_from_zero_as_f64_round_does() {
        let reference = |v: f32| {
            let v = (v as f64).clamp(-MAX_SAMPLE_VALUE, MAX_SAMPLE_VALUE);
            (v * (1u64 << FIXED_FRAC_BITS) as f64).round() as i128
        };
        let half = 0.5 / (1u64 << FIXED_FRAC_BITS) as f64;
        let mut values = vec![
            0.0f32,
            -0.0,
            half as f32,
            -half as f32,
            (3.0 * half) as f32,
            (-3.0 * half) as f32,
            1e-30,
            1e30,
            -1e30,
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            (MAX_SAMPLE_VALUE) as f32,
        ];
        let mut x = 0x1234_5678u32;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            values.push(f32::from_bits(x));
            values.push((x >> 8) as f32 / (1u32 << 24) as f32 * 50.0 - 10.0);
        }
        for v in values {
            assert_eq!(to_fixed(v), reference(v), "{v:e} ({:#x})", v.to_bits());
        }
    }

    /// How many times each (pixel, sample) of a `w` x `h` x `spp` image is in `units`.
    fn coverage(units: &[WorkUnit], w: u32, h: u32, spp: u32) -> Vec<u32> {
        let mut c = vec![0u32; (w * h * spp) as usize];
        for u in units {
            for y in u.y0..u.y1 {
                for x in u.x0..u.x1 {
                    for s in u.sample_start..u.sample_end {
                        c[((y * w + x) * spp + s) as usize] += 1;
                    }
                }
            }
        }
        c
    }

    /// Results of every shape added from several threads at once, each in an order of its
    /// own, into a shared film over a region whose edges and tiles lie across band edges: the
    /// bytes of a sequential merge.
    #[test]
    fn a_shared_film_filled_from_many_threads_equals_a_sequential_merge() {
        let region = Region {
            x0: 3,
            y0: 5,
            x1: 40,
            y1: 38,
        };
        let mut units = plan_region(0, region, 12, 7, 3);
        units.extend(plan_region_progressive(0, region, 6, 5, 4));
        let results: Vec<UnitResult> = units
            .iter()
            .enumerate()
            .map(|(i, &unit)| UnitResult {
                unit,
                sums: (0..unit.pixels() as i128)
                    .map(|p| {
                        let v = (i as i128 * 7919 + p * 104_729) % 100_003 * 1_000_003;
                        [v, -v / 3, v - (1 << 40)]
                    })
                    .collect(),
                nonfinite_samples: i as u64 % 3,
            })
            .collect();
        let mut sequential = Film::new_region(region);
        for r in &results {
            sequential.add(r).unwrap();
        }
        let shared = SharedFilm::new(region);
        std::thread::scope(|s| {
            for t in 0..4 {
                let (shared, results) = (&shared, &results);
                s.spawn(move || {
                    for r in results.iter().skip(t).step_by(4).rev() {
                        shared.add(r).unwrap();
                    }
                });
            }
        });
        assert_eq!(shared.to_film().sums(), sequential.sums());
        let film = shared.into_film();
        assert_eq!(film.region, region);
        assert_eq!(film.sums(), sequential.sums());
        assert_eq!(film.nonfinite_samples, sequential.nonfinite_samples);
    }

    #[test]
    fn a_shared_film_refuses_what_does_not_fit_without_adding_and_gathers_pixels() {
        let region = Region::full(4, 20);
        let shared = SharedFilm::new(region);
        let unit = WorkUnit {
            layer: 0,
            sample_start: 0,
            sample_end: 1,
            x0: 1,
            y0: 6,
            x1: 3,
            y1: 11,
        };
        let short = UnitResult {
            unit,
            sums: vec![[1; 3]; 9],
            nonfinite_samples: 1,
        };
        assert!(matches!(
            shared.add(&short),
            Err(FilmError::UnitPixels { got: 9, .. })
        ));
        let outside = UnitResult {
            unit: WorkUnit { x1: 5, ..unit },
            sums: vec![[1; 3]; 20],
            nonfinite_samples: 1,
        };
        assert!(matches!(
            shared.add(&outside),
            Err(FilmError::UnitOutside { .. })
        ));
        assert!(shared.to_film().sums().iter().all(|s| *s == [0; 3]));
        let r = UnitResult {
            unit,
            sums: (0..10).map(|i| [i, 0, 0]).collect(),
            nonfinite_samples: 1,
        };
        shared.add(&r).unwrap();
        // Rows 6 and 10 lie in two bands; pixel (2, 10) is the unit's last.
        assert_eq!(
            shared.gather(&[0, 6, 10], &[0, 2]),
            vec![[0; 3], [0; 3], [0; 3], [1, 0, 0], [0; 3], [9, 0, 0]]
        );
        assert_eq!(shared.into_film().nonfinite_samples, 1);
    }

    #[test]
    fn progressive_passes_double_then_hold() {
        assert_eq!(
            progressive_passes(40, 16),
            vec![(0, 1), (1, 2), (2, 4), (4, 8), (8, 16), (16, 32), (32, 40)]
        );
        assert_eq!(progressive_passes(1, 16), vec![(0, 1)]);
        assert_eq!(
            progressive_passes(5, 1),
            vec![(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
        );
        assert_eq!(progressive_passes(3, 2), vec![(0, 1), (1, 2), (2, 3)]);
        assert!(progressive_passes(0, 16).is_empty());
    }

    #[test]
    fn every_plan_covers_each_pixel_sample_exactly_once() {
        for (w, h, spp, tile, spu) in [
            (40, 30, 24, 8, 16),
            (37, 5, 1, 32, 16),
            (100, 70, 64, 32, 16),
            (9, 9, 7, 2, 3),
            (1, 1, 3, 1, 1),
        ] {
            for units in [
                plan_units(w, h, spp, tile, spu),
                plan_units_progressive(w, h, spp, tile, spu),
            ] {
                assert!(
                    coverage(&units, w, h, spp).iter().all(|&n| n == 1),
                    "{w}x{h} {spp} spp tile {tile} spu {spu}"
                );
            }
        }
    }

    #[test]
    fn a_progressive_plan_hands_out_whole_passes_in_order_with_similar_work_per_unit() {
        let units = plan_units_progressive(256, 256, 64, 32, 16);
        // The scheduler hands units out in `Ord` order: the first pass covers the whole image.
        let mut sorted = units.clone();
        sorted.sort();
        let first_pass: Vec<_> = sorted.iter().take_while(|u| u.sample_end == 1).collect();
        let px: usize = first_pass.iter().map(|u| u.pixels()).sum();
        assert_eq!(px, 256 * 256);
        // 1 spp over 128 px tiles: as many samples as 16 spp over 32 px tiles.
        assert_eq!(first_pass[0].samples(), 128 * 128);
        let max = units.iter().map(|u| u.samples()).max().unwrap();
        let min = units.iter().map(|u| u.samples()).min().unwrap();
        assert!(
            max <= 2 * min,
            "unit work varies from {min} to {max} samples"
        );
    }
}
