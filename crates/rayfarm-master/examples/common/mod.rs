//! What the master's examples share: the shipped Cornell box, ready to render units of.

use rayfarm_render::{RenderScene, RenderSettings};
use std::path::Path;

/// The shipped Cornell box and settings to render it at `side` x `side`, `spp` samples per
/// pixel, 8 bounces, seed 1, through its own camera.
pub fn cornell(side: u32, spp: u32) -> (RenderScene, RenderSettings) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/cornell-box/cornell_box.gltf");
    let (scene, _) = rayfarm_scene::load(&path).expect("the shipped Cornell box");
    let camera = scene
        .cameras
        .first()
        .cloned()
        .unwrap_or_else(|| rayfarm_scene::camera::auto_camera(&scene, 1.0));
    let rs = RenderScene::new(scene);
    let settings = RenderSettings {
        width: side,
        height: side,
        spp,
        max_bounces: 8,
        seed: 1,
        camera,
    };
    (rs, settings)
}
