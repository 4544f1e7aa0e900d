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
pub mod lanes;
pub mod lighttree;
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
/// Largest tile edge a job may plan (`--tile`; progressive passes grow their tiles to at most
/// this), so that no unit has more than [`MAX_UNIT_PIXELS`].
pub const MAX_TILE_PX: u32 = 4096;
/// Most pixels (or texels) one work unit may cover: a unit's result holds 48 bytes a pixel,
/// so a unit from the wire is refused beyond this (768 MiB) before it is rendered.
pub const MAX_UNIT_PIXELS: u64 = (MAX_TILE_PX as u64) * (MAX_TILE_PX as u64);

/// Renders every unit on the current rayon pool, adding each result to a film as it finishes.
/// `progress(samples_done)` is called from worker threads as units finish.
///
/// The film's sums are integers, so the order of the adds does not change a bit; adding as
/// units finish (rather than batch by batch) keeps every thread busy to the end: batches of 16
/// units left 6% of two cores idle at each batch's end.
pub fn render_local(
    scene: &RenderScene,
    settings: &RenderSettings,
    units: &[WorkUnit],
    progress: &(dyn Fn(u64) + Sync),
) -> Film {
    use rayon::prelude::*;
    let film = std::sync::Mutex::new(Film::new(settings.width, settings.height));
    units.par_iter().for_each(|u| {
        let r = scene.render_unit(settings, u);
        progress(u.samples());
        film.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .add(&r)
            .expect("planned units fit the film");
    });
    film.into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
