//! Fuzzes `rayfarm_scene::gltf_import::load_from_slice` (at rest and posed at a time) and
//! `animation_span_from_slice` with `.gltf` JSON and `.glb` containers:
//! any bytes must give a scene or an error, never a panic. External buffers and images are
//! reported missing (data URIs and the GLB BIN chunk are still read), so only the importer runs.
//! The seeds include EXT_meshopt_compression and KHR_draco_mesh_compression GLBs, so the
//! decoders of both run on mutated streams and JSON.
//!
//! Run from the repository root: `RUSTC_BOOTSTRAP=1 cargo fuzz run gltf_load`
//! (seeds: fuzz/seeds/gltf_load; add `-s none` where the address sanitizer is unavailable).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let missing =
        |_: &Path| -> std::io::Result<Vec<u8>> { Err(std::io::ErrorKind::NotFound.into()) };
    let _ = rayfarm_scene::gltf_import::load_from_slice(data, Path::new("fuzz.glb"), &missing);
    // Posed at a time too, so the animation reader and its interpolation run.
    let posed = rayfarm_scene::LoadOptions {
        time_s: Some(0.75),
        ..Default::default()
    };
    let _ = rayfarm_scene::gltf_import::load_from_slice_with(
        data,
        Path::new("fuzz.glb"),
        &missing,
        &posed,
    );
    let _ = rayfarm_scene::gltf_import::animation_span_from_slice(
        data,
        Path::new("fuzz.glb"),
        &missing,
    );
});
