//! The monitor's preview of a job: a bake's first output map (the complete pass when there is
//! one), or the latest frame of a render that has a part, as the parts written so far show
//! it; pixels of missing parts stay black. Read-only: it never writes into the job folder.
//!
//! Bounded, whatever the job's size: the preview is at most [`MAX_PREVIEW_PX`] on its long
//! side and is sampled down *while* the parts are read, one part at a time, so the memory one
//! build needs is the preview plus one part, never the full-resolution image. The manager asks
//! through a [`PreviewCache`]: a job's preview is built once per change of the job (its change
//! key), however many clients ask, at most [`MAX_PREVIEW_BUILDS`] builds run at once, and they
//! run on blocking threads, never on the async runtime.

use rayfarm_job::jobdesc::JobDesc;
use rayfarm_job::renderjob::{AnyJobDesc, RenderJobDesc};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Largest preview edge in pixels (bigger images are sampled down by whole steps).
pub const MAX_PREVIEW_PX: u32 = 512;
/// Previews built at the same time (each holds a preview and one part in memory).
pub const MAX_PREVIEW_BUILDS: usize = 2;
/// Jobs whose latest preview is kept (least recently asked for dropped first).
pub const MAX_CACHED_PREVIEWS: usize = 32;

/// A PNG of the job's map so far, or `None` when the job folder has no readable part yet.
/// Only an authenticated job.desc and parts are shown.
pub fn preview_png(job_dir: &Path, farm_key: &rayfarm_proto::FarmKey) -> Option<Vec<u8>> {
    let (desc, seal) =
        AnyJobDesc::read(&job_dir.join(rayfarm_job::jobdesc::FILE_NAME), farm_key).ok()?;
    match desc {
        AnyJobDesc::Bake(d) => bake_preview(job_dir, &d, &seal),
        AnyJobDesc::Render(d) => render_preview(job_dir, &d, &seal),
    }
}

/// A `w x h` image sampled down by a whole step to at most [`MAX_PREVIEW_PX`] on its long side:
/// preview pixel `(px, py)` shows full-size pixel `(px * step, py * step)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Grid {
    step: u32,
    pw: u32,
    ph: u32,
}

impl Grid {
    fn new(w: u32, h: u32) -> Grid {
        let step = w.max(h).div_ceil(MAX_PREVIEW_PX).max(1);
        Grid {
            step,
            pw: w.div_ceil(step),
            ph: h.div_ceil(step),
        }
    }

    fn len(&self) -> usize {
        self.pw as usize * self.ph as usize
    }

    /// For each preview pixel sampled inside `r` (full-size `x0..x1, y0..y1`): its index in the
    /// preview and the index of the full-size pixel within `r`'s rows.
    fn samples_in(&self, r: rayfarm_render::film::Region) -> impl Iterator<Item = (usize, usize)> {
        let s = self.step;
        let (px0, px1) = (r.x0.div_ceil(s), r.x1.div_ceil(s).min(self.pw));
        let (py0, py1) = (r.y0.div_ceil(s), r.y1.div_ceil(s).min(self.ph));
        let (pw, rw) = (self.pw as usize, r.width() as usize);
        (py0..py1).flat_map(move |py| {
            (px0..px1).map(move |px| {
                let (x, y) = (px * s - r.x0, py * s - r.y0);
                (py as usize * pw + px as usize, y as usize * rw + x as usize)
            })
        })
    }
}

fn render_preview(
    job_dir: &Path,
    desc: &RenderJobDesc,
    seal: &rayfarm_job::folder::JobSeal,
) -> Option<Vec<u8>> {
    let grid = Grid::new(desc.render.width, desc.render.height);
    let spp = desc.render.spp;
    for fi in (0..desc.frames.len()).rev() {
        // Parts of a frame add up (sums are linear), so the preview adds their sampled pixels.
        let mut sums = vec![[0i128; 3]; grid.len()];
        let mut any = false;
        for pi in desc.parts_of_frame(fi) {
            let p = desc.part_desc(pi)?;
            let Ok(part) = rayfarm_job::parts::read_part(job_dir, &p, spp, seal) else {
                continue;
            };
            any = true;
            let src = part.sums();
            for (d, s) in grid.samples_in(part.region) {
                for c in 0..3 {
                    sums[d][c] = sums[d][c].saturating_add(src[s][c]);
                }
            }
        }
        if any {
            let small = rayfarm_render::Film::from_sums(
                rayfarm_render::film::Region::full(grid.pw, grid.ph),
                sums,
                0,
            )
            .to_rgb(spp);
            let mut s = desc.image_settings();
            s.half = false;
            return rayfarm_job::images::encode_image(
                rayfarm_job::images::ImageFormat::Png,
                grid.pw,
                grid.ph,
                &small,
                &s,
            )
            .ok();
        }
    }
    None
}

fn bake_preview(
    job_dir: &Path,
    desc: &JobDesc,
    seal: &rayfarm_job::folder::JobSeal,
) -> Option<Vec<u8>> {
    let output = desc
        .outputs
        .iter()
        .find(|o| o.pass == rayfarm_bake::Pass::Complete)
        .or(desc.outputs.first())?;
    let grid = Grid::new(output.width, output.height);
    let mut px = vec![[0.0f32; 3]; grid.len()];
    let mut any = false;
    for name in &output.parts {
        let Some(p) = desc.part(name) else { continue };
        let Some(spp) = desc.layer_spp(p.layer) else {
            continue;
        };
        let Ok(film) = rayfarm_job::parts::read_part(job_dir, p, spp, seal) else {
            continue;
        };
        any = true;
        let scale = 1.0 / ((1u64 << rayfarm_render::film::FIXED_FRAC_BITS) as f64 * spp as f64);
        let src = film.sums();
        for (d, s) in grid.samples_in(film.region) {
            let v = src[s].map(|v| (v as f64 * scale) as f32);
            // In multi mode objects' regions may overlap: keep what is not black.
            if v != [0.0; 3] {
                px[d] = v;
            }
        }
    }
    if !any {
        return None;
    }
    rayfarm_job::maps::encode_map_png(grid.pw, grid.ph, &px, output.pass).ok()
}

/// What a job's preview depends on: when it changes, the preview is built again. The manager
/// uses the job's update time, its completed task count and its status.
pub type ChangeKey = (i64, u64, String);

struct Slot {
    key: ChangeKey,
    png: tokio::sync::OnceCell<Option<Arc<Vec<u8>>>>,
    last_asked: AtomicU64,
}

/// The latest preview of each job, built once per change key (see the module docs).
pub struct PreviewCache {
    slots: Mutex<HashMap<String, Arc<Slot>>>,
    builds: Arc<tokio::sync::Semaphore>,
    asked: AtomicU64,
    built: AtomicU64,
}

impl Default for PreviewCache {
    fn default() -> Self {
        PreviewCache {
            slots: Mutex::new(HashMap::new()),
            builds: Arc::new(tokio::sync::Semaphore::new(MAX_PREVIEW_BUILDS)),
            asked: AtomicU64::new(0),
            built: AtomicU64::new(0),
        }
    }
}

impl PreviewCache {
    /// The preview of job `job_id` (folder `job_dir`) as of `key`: the cached one when the
    /// key has not changed, else built (once, however many callers wait for it).
    pub async fn get(
        &self,
        job_id: &str,
        key: ChangeKey,
        job_dir: PathBuf,
        farm_key: &rayfarm_proto::FarmKey,
    ) -> Result<Option<Arc<Vec<u8>>>, String> {
        let tick = self.asked.fetch_add(1, Ordering::Relaxed);
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let slot = match slots.get(job_id) {
                Some(s) if s.key == key => s.clone(),
                _ => {
                    let s = Arc::new(Slot {
                        key,
                        png: tokio::sync::OnceCell::new(),
                        last_asked: AtomicU64::new(tick),
                    });
                    slots.insert(job_id.to_string(), s.clone());
                    s
                }
            };
            slot.last_asked.store(tick, Ordering::Relaxed);
            while slots.len() > MAX_CACHED_PREVIEWS {
                let oldest = slots
                    .iter()
                    .min_by_key(|(_, s)| s.last_asked.load(Ordering::Relaxed))
                    .map(|(id, _)| id.clone());
                match oldest {
                    Some(id) => slots.remove(&id),
                    None => break,
                };
            }
            slot
        };
        let png = slot
            .png
            .get_or_try_init(|| async {
                let permit = self
                    .builds
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|e| format!("preview builds stopped: {e}"))?;
                self.built.fetch_add(1, Ordering::Relaxed);
                // The permit goes with the build: a request that gives up (a timeout, a client
                // gone) does not free a slot while its build still runs.
                let farm_key = farm_key.clone();
                tokio::task::spawn_blocking(move || {
                    let png = preview_png(&job_dir, &farm_key).map(Arc::new);
                    drop(permit);
                    png
                })
                .await
                .map_err(|e| format!("preview build failed: {e}"))
            })
            .await?;
        Ok(png.clone())
    }

    /// Forgets a job's preview (the job was deleted).
    pub fn evict(&self, job_id: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(job_id);
    }

    /// Keeps only the previews of jobs for which `keep` says true.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|id, _| keep(id));
    }

    /// Previews built so far (for tests and logs).
    pub fn builds(&self) -> u64 {
        self.built.load(Ordering::Relaxed)
    }

    pub fn cached(&self) -> usize {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayfarm_render::film::Region;

    #[test]
    fn a_huge_image_is_sampled_down_to_the_limit() {
        let g = Grid::new(8192, 8192);
        assert_eq!((g.step, g.pw, g.ph), (16, 512, 512));
        let g = Grid::new(100, 30);
        assert_eq!((g.step, g.pw, g.ph), (1, 100, 30));
        let g = Grid::new(1025, 3);
        assert_eq!((g.step, g.pw, g.ph), (3, 342, 1));
    }

    /// Every preview pixel is sampled from exactly one tile of a tiling, at the pixel
    /// `(px * step, py * step)`.
    #[test]
    fn tiles_sample_each_preview_pixel_once() {
        let (w, h) = (1000, 700);
        let g = Grid::new(w, h);
        let mut hits = vec![0u32; g.len()];
        for y0 in (0..h).step_by(96) {
            for x0 in (0..w).step_by(128) {
                let r = Region {
                    x0,
                    y0,
                    x1: (x0 + 128).min(w),
                    y1: (y0 + 96).min(h),
                };
                for (d, s) in g.samples_in(r) {
                    hits[d] += 1;
                    let (px, py) = (d as u32 % g.pw, d as u32 / g.pw);
                    let (x, y) = (s as u32 % r.width() + r.x0, s as u32 / r.width() + r.y0);
                    assert_eq!((x, y), (px * g.step, py * g.step));
                }
            }
        }
        assert!(hits.iter().all(|&n| n == 1), "{hits:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parallel_requests_build_once_per_change() {
        let cache = Arc::new(PreviewCache::default());
        let dir = tempfile::tempdir().unwrap();
        let key = (1, 0, "active".to_string());
        let fk = rayfarm_proto::FarmKey::from_secret("a test farm secret, long enough").unwrap();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..6 {
            let (c, k, d, fk) = (
                cache.clone(),
                key.clone(),
                dir.path().to_path_buf(),
                fk.clone(),
            );
            set.spawn(async move { c.get("j1", k, d, &fk).await });
        }
        while let Some(r) = set.join_next().await {
            // No job.desc: no preview, but still one build.
            assert_eq!(r.unwrap().unwrap(), None);
        }
        assert_eq!(cache.builds(), 1);
        cache
            .get("j1", key.clone(), dir.path().to_path_buf(), &fk)
            .await
            .unwrap();
        assert_eq!(cache.builds(), 1);
        cache
            .get("j1", (2, 1, "active".into()), dir.path().to_path_buf(), &fk)
            .await
            .unwrap();
        assert_eq!(cache.builds(), 2);
        cache.evict("j1");
        assert_eq!(cache.cached(), 0);
    }
}
