//! What the renderer's examples share: their command line, `SCENE [WIDTH HEIGHT SPP [ENV.hdr |
//! sky]]` (`sky`: a uniform grey sky, for scenes without lights), and the scene it names with
//! its first camera, or an automatic one.

// Each example compiles this module on its own and reads only some of `Setup`.
#![allow(dead_code)]

use rayfarm_render::RenderSettings;
use rayfarm_scene::{Camera, CompiledScene, Environment};
use std::path::Path;

pub struct Setup {
    pub path: String,
    pub scene: CompiledScene,
    pub camera: Camera,
    pub width: u32,
    pub height: u32,
    pub spp: u32,
}

/// Reads the command line of example `name`, with default (width, height, spp); exits with a
/// usage or error line when it cannot.
pub fn setup(name: &str, defaults: (u32, u32, u32)) -> Setup {
    let args: Vec<String> = std::env::args().collect();
    let Some(path) = args.get(1) else {
        eprintln!("usage: {name} SCENE.gltf [WIDTH HEIGHT SPP [ENV.hdr | sky]]");
        std::process::exit(2);
    };
    let num = |i: usize, d: u32| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (width, height, spp) = (num(2, defaults.0), num(3, defaults.1), num(4, defaults.2));
    let fail = |e: &dyn std::fmt::Display| -> ! {
        eprintln!("error: {e}");
        std::process::exit(1);
    };
    let (mut scene, _) = rayfarm_scene::load(Path::new(path)).unwrap_or_else(|e| fail(&e));
    match args.get(5).map(String::as_str) {
        None => {}
        Some("sky") => scene.environment = Environment::Color([0.8, 0.8, 0.8]),
        Some(env) => {
            scene.environment =
                rayfarm_scene::env::load_env_map(Path::new(env)).unwrap_or_else(|e| fail(&e))
        }
    }
    let camera = scene.cameras.first().cloned().unwrap_or_else(|| {
        rayfarm_scene::camera::auto_camera(&scene, width as f32 / height as f32)
    });
    Setup {
        path: path.clone(),
        scene,
        camera,
        width,
        height,
        spp,
    }
}

/// The examples' render settings: 8 bounces, seed 1.
pub fn settings(width: u32, height: u32, spp: u32, camera: Camera) -> RenderSettings {
    RenderSettings {
        width,
        height,
        spp,
        max_bounces: 8,
        seed: 1,
        camera,
    }
}
