//! What a job's work units compute: an image (a render) or texel maps (a bake).
//!
//! A job is cut into *layers*, each an image or map region with its own sample count, and
//! every [`WorkUnit`] names its layer. A render has one layer; a bake has one per (map, pass),
//! where a map is an atlas, one object's map, or — in a multi-pass bake — one object's region
//! of the atlas. Masters, workers and the local runner all run units through
//! [`Workload::run_unit`], so a unit's result does not depend on where it ran.

use crate::{bake_unit, BakeSettings, Pass, TexelTable, MAX_SIZE};
use rayfarm_render::film::{plan_region, Region};
use rayfarm_render::{Film, RenderScene, RenderSettings, UnitResult, WorkUnit};
use std::sync::OnceLock;

/// Why a bake spec does not fit its scene, or a unit its job; each variant names the map,
/// mesh, layer or unit at fault.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum WorkloadError {
    #[error("uv set {0} does not exist")]
    NoUvSet(u8),
    #[error("spp is 0")]
    ZeroSpp,
    #[error("ao distance {0} is not positive")]
    AoDistance(f32),
    #[error("{0} layers; a bake has 1 to {MAX_LAYERS}")]
    LayerCount(usize),
    #[error("map {map}: size {width}x{height} is out of range")]
    MapSize { map: usize, width: u32, height: u32 },
    #[error("map {map}: region {region:?} is not inside the map")]
    MapRegion { map: usize, region: Region },
    #[error("map {0} has no meshes")]
    NoMeshes(usize),
    #[error("map {map}: mesh {mesh} does not exist (the scene has {meshes})")]
    NoSuchMesh {
        map: usize,
        mesh: usize,
        meshes: usize,
    },
    #[error("map {map}: mesh '{mesh}' has no uv set {uv_set}")]
    MeshWithoutUvSet {
        map: usize,
        mesh: String,
        uv_set: u8,
    },
    #[error("layer {layer}: map {map} does not exist")]
    NoSuchMap { layer: usize, map: usize },
    #[error("unit {unit:?}: layer {} does not exist", unit.layer)]
    NoSuchLayer { unit: WorkUnit },
    #[error("unit {unit:?} lies outside its layer")]
    UnitOutside { unit: WorkUnit },
    #[error("unit {unit:?} covers {pixels} pixels, more than a unit may ({max})")]
    UnitTooLarge {
        unit: WorkUnit,
        pixels: u64,
        max: u64,
    },
}

/// Most layers a job may have (maps x passes).
pub const MAX_LAYERS: usize = 65536;

/// One map of a bake: the meshes rasterised into it, the whole map's size, and the region of
/// it this map covers (the whole map, or an object's part of an atlas).
#[derive(Clone, Debug, PartialEq)]
pub struct MapSpec {
    pub meshes: Vec<usize>,
    pub width: u32,
    pub height: u32,
    pub region: Region,
}

/// A pass over one map.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerSpec {
    pub map: usize,
    pub pass: Pass,
}

/// Everything a node needs, besides the scene, to bake its units.
#[derive(Clone, Debug, PartialEq)]
pub struct BakeSpec {
    pub uv_set: u8,
    pub spp: u32,
    pub max_bounces: u32,
    pub seed: u64,
    pub ao_distance: f32,
    pub maps: Vec<MapSpec>,
    pub layers: Vec<LayerSpec>,
}

impl BakeSpec {
    pub fn settings(&self, pass: Pass) -> BakeSettings {
        BakeSettings {
            pass,
            spp: self.spp,
            max_bounces: self.max_bounces,
            seed: self.seed,
            ao_distance: self.ao_distance,
        }
    }

    /// Checks the spec against the scene it will run on; errors name the field at fault.
    pub fn check(&self, scene: &rayfarm_scene::CompiledScene) -> Result<(), WorkloadError> {
        if self.uv_set > 1 {
            return Err(WorkloadError::NoUvSet(self.uv_set));
        }
        if self.spp == 0 {
            return Err(WorkloadError::ZeroSpp);
        }
        if !(self.ao_distance.is_finite() && self.ao_distance > 0.0) {
            return Err(WorkloadError::AoDistance(self.ao_distance));
        }
        if self.layers.is_empty() || self.layers.len() > MAX_LAYERS {
            return Err(WorkloadError::LayerCount(self.layers.len()));
        }
        for (i, m) in self.maps.iter().enumerate() {
            if m.width == 0 || m.height == 0 || m.width > MAX_SIZE || m.height > MAX_SIZE {
                return Err(WorkloadError::MapSize {
                    map: i,
                    width: m.width,
                    height: m.height,
                });
            }
            let r = m.region;
            if r.is_empty() || r.x1 > m.width || r.y1 > m.height {
                return Err(WorkloadError::MapRegion { map: i, region: r });
            }
            if m.meshes.is_empty() {
                return Err(WorkloadError::NoMeshes(i));
            }
            for &mi in &m.meshes {
                let Some(mesh) = scene.meshes.get(mi) else {
                    return Err(WorkloadError::NoSuchMesh {
                        map: i,
                        mesh: mi,
                        meshes: scene.meshes.len(),
                    });
                };
                if !mesh.has_uv[self.uv_set as usize] {
                    return Err(WorkloadError::MeshWithoutUvSet {
                        map: i,
                        mesh: mesh.name.clone(),
                        uv_set: self.uv_set,
                    });
                }
            }
        }
        for (i, l) in self.layers.iter().enumerate() {
            if l.map >= self.maps.len() {
                return Err(WorkloadError::NoSuchMap {
                    layer: i,
                    map: l.map,
                });
            }
        }
        Ok(())
    }
}

/// A bake ready to run: the spec and its texel tables, built on first use.
#[derive(Debug)]
pub struct BakeWork {
    pub spec: BakeSpec,
    tables: Vec<OnceLock<TexelTable>>,
}

impl BakeWork {
    pub fn new(spec: BakeSpec) -> BakeWork {
        let tables = spec.maps.iter().map(|_| OnceLock::new()).collect();
        BakeWork { spec, tables }
    }

    /// The texel table of map `i`, rasterised on first use.
    pub fn table(&self, scene: &rayfarm_scene::CompiledScene, i: usize) -> &TexelTable {
        self.tables[i].get_or_init(|| {
            let m = &self.spec.maps[i];
            TexelTable::build_region(
                scene,
                &m.meshes,
                self.spec.uv_set,
                m.width,
                m.height,
                m.region,
            )
        })
    }

    /// Hands over a table built elsewhere (it must be the one [`BakeWork::table`] would build).
    pub fn set_table(&self, i: usize, table: TexelTable) {
        let _ = self.tables[i].set(table);
    }
}

/// What a job's units compute.
#[derive(Debug)]
pub enum Workload {
    Render(RenderSettings),
    Bake(BakeWork),
}

impl Workload {
    pub fn layer_count(&self) -> usize {
        match self {
            Workload::Render(_) => 1,
            Workload::Bake(b) => b.spec.layers.len(),
        }
    }

    /// The image region a layer covers and its samples per pixel or texel.
    pub fn layer(&self, layer: usize) -> Option<(Region, u32)> {
        match self {
            Workload::Render(s) if layer == 0 => Some((Region::full(s.width, s.height), s.spp)),
            Workload::Render(_) => None,
            Workload::Bake(b) => {
                let l = b.spec.layers.get(layer)?;
                let map = b.spec.maps.get(l.map)?;
                Some((map.region, b.spec.settings(l.pass).spp()))
            }
        }
    }

    /// Every unit of the job, layer by layer.
    pub fn plan(&self, tile_px: u32, samples_per_unit: u32) -> Vec<WorkUnit> {
        (0..self.layer_count())
            .filter_map(|l| {
                let (region, spp) = self.layer(l)?;
                Some(plan_region(
                    l as u32,
                    region,
                    spp,
                    tile_px,
                    samples_per_unit,
                ))
            })
            .flatten()
            .collect()
    }

    /// Checks that a unit (from the wire) belongs to this job.
    pub fn check_unit(&self, u: &WorkUnit) -> Result<(), WorkloadError> {
        let Some((region, spp)) = self.layer(u.layer as usize) else {
            return Err(WorkloadError::NoSuchLayer { unit: *u });
        };
        if !region.contains_rect(u.x0, u.y0, u.x1, u.y1)
            || u.sample_start >= u.sample_end
            || u.sample_end > spp
        {
            return Err(WorkloadError::UnitOutside { unit: *u });
        }
        // (At most 32768 x 32768: no overflow.)
        let pixels = u64::from(u.x1 - u.x0) * u64::from(u.y1 - u.y0);
        if pixels > rayfarm_render::MAX_UNIT_PIXELS {
            return Err(WorkloadError::UnitTooLarge {
                unit: *u,
                pixels,
                max: rayfarm_render::MAX_UNIT_PIXELS,
            });
        }
        Ok(())
    }

    /// Renders or bakes one unit. A pure function of (scene, workload, unit).
    pub fn run_unit(&self, scene: &RenderScene, unit: &WorkUnit) -> UnitResult {
        match self {
            Workload::Render(s) => scene.render_unit(s, unit),
            Workload::Bake(b) => {
                let l = b.spec.layers[unit.layer as usize];
                let table = b.table(&scene.scene, l.map);
                bake_unit(scene, table, &b.spec.settings(l.pass), unit)
            }
        }
    }

    /// An empty film for a layer.
    pub fn film(&self, layer: usize) -> Option<Film> {
        self.layer(layer).map(|(r, _)| Film::new_region(r))
    }
}

/// Runs every unit on the current rayon pool, adding results layer by layer in unit order;
/// `on_layer(layer, film)` receives each layer's film as soon as its last unit is in, so only
/// a few layers' films are in memory at once. `progress(samples)` is called as units finish.
pub fn run_local(
    scene: &RenderScene,
    work: &Workload,
    units: &[WorkUnit],
    progress: &(dyn Fn(u64) + Sync),
    on_layer: &mut dyn FnMut(usize, Film),
) {
    use rayon::prelude::*;
    use std::collections::BTreeMap;
    let mut left: BTreeMap<usize, usize> = BTreeMap::new();
    for u in units {
        *left.entry(u.layer as usize).or_default() += 1;
    }
    let mut films: BTreeMap<usize, Film> = BTreeMap::new();
    // Results are added batch by batch so memory stays bounded for high sample counts.
    let batch = (rayon::current_num_threads() * 8).max(16);
    for chunk in units.chunks(batch) {
        let results: Vec<UnitResult> = chunk
            .par_iter()
            .map(|u| {
                let r = work.run_unit(scene, u);
                progress(u.samples());
                r
            })
            .collect();
        for r in &results {
            let l = r.unit.layer as usize;
            let film = films
                .entry(l)
                .or_insert_with(|| work.film(l).expect("planned units have layers"));
            film.add(r).expect("planned units fit their layer");
            let n = left.get_mut(&l).expect("counted above");
            *n -= 1;
            if *n == 0 {
                if let Some(f) = films.remove(&l) {
                    on_layer(l, f);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A master (or manager) holding the key could assign one unit covering a whole 16384 x
    /// 16384 image: 2^28 pixels of 48-byte sums, a 12 GiB allocation that aborted the worker.
    /// Units beyond `MAX_UNIT_PIXELS` are refused by name before anything is allocated; the
    /// planners never make one (`film` tests).
    #[test]
    fn a_unit_beyond_the_pixel_limit_is_refused() {
        let camera =
            rayfarm_scene::camera::auto_camera(&rayfarm_scene::CompiledScene::default(), 1.0);
        let work = Workload::Render(RenderSettings {
            width: 16384,
            height: 16384,
            spp: 4,
            max_bounces: 1,
            seed: 0,
            camera,
        });
        let unit = |x1, y1| WorkUnit {
            layer: 0,
            sample_start: 0,
            sample_end: 1,
            x0: 0,
            y0: 0,
            x1,
            y1,
        };
        work.check_unit(&unit(4096, 4096)).unwrap();
        let e = work.check_unit(&unit(16384, 16384)).unwrap_err();
        assert!(
            matches!(e, WorkloadError::UnitTooLarge { pixels, .. } if pixels == 1 << 28),
            "{e}"
        );
        assert!(e.to_string().contains("268435456 pixels"), "{e}");
        assert!(matches!(
            work.check_unit(&unit(4097, 4096)),
            Err(WorkloadError::UnitTooLarge { .. })
        ));
    }
}
