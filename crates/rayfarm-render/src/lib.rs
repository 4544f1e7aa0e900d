//! rayfarm's renderer: BVH, sampling, materials, lights, the path tracer and the film.
//!
//! Architecture invariant: this crate does no IO. It turns a [`rayfarm_scene::CompiledScene`]
//! and [`RenderSettings`] into per-unit results ([`film::UnitResult`]) that a [`film::Film`]
//! accumulates; where the units run (threads here, workers elsewhere) is the caller's business.
//! Rendering a unit is a pure function of (scene, settings, unit).

pub mod bsdf;
pub mod bvh;
pub mod film;
pub mod integrator;
pub mod isa;
pub mod math;
pub mod sampler;
pub mod scene;
pub mod texture;

pub use film::{plan_units, plan_units_progressive, Film, FilmError, UnitResult, WorkUnit};
pub use integrator::{camera_cone, camera_ray, RenderSettings};
pub use scene::RenderScene;
pub use texture::RayCone;

/// Default tile edge in pixels.
pub const DEFAULT_TILE_PX: u32 = 32;
/// Default samples per work unit.
pub const DEFAULT_SAMPLES_PER_UNIT: u32 = 16;

/// Renders every unit on the current rayon pool, adding results to a film in unit order.
/// `progress(samples_done)` is called from worker threads as units finish; returning `false`
/// from `keep_going` stops early (the film then holds what finished).
pub fn render_local(
    scene: &RenderScene,
    settings: &RenderSettings,
    units: &[WorkUnit],
    progress: &(dyn Fn(u64) + Sync),
) -> Film {
    use rayon::prelude::*;
    // Results are added batch by batch so memory stays bounded for high sample counts.
    let batch = (rayon::current_num_threads() * 8).max(16);
    let mut film = Film::new(settings.width, settings.height);
    for chunk in units.chunks(batch) {
        let results: Vec<UnitResult> = chunk
            .par_iter()
            .map(|u| {
                let r = scene.render_unit(settings, u);
                progress(u.samples());
                r
            })
            .collect();
        for r in &results {
            film.add(r).expect("planned units fit the film");
        }
    }
    film
}
