//! glTF animation: posing animated nodes at a time (`LoadOptions::time_s`) and
//! `animation_span`, through the public API, on small glTF files built here (one triangle and
//! keyframes in a data-URI buffer) and on `tests/data/animated_cube.gltf`.

use base64::Engine;
use rayfarm_scene::gltf_import::{animation_span_from_slice, load_from_slice_with};
use rayfarm_scene::{blob, CompiledScene, LoadOptions, SceneError, Warnings};
use std::path::{Path, PathBuf};

/// One animation channel of a test file.
struct Channel {
    node: usize,
    path: &'static str,
    interpolation: &'static str,
    times: Vec<f32>,
    /// Flat output values: 3 (translation, scale) or 4 (rotation) per element.
    values: Vec<f32>,
}

impl Channel {
    fn new(path: &'static str, interpolation: &'static str, times: &[f32], values: &[f32]) -> Self {
        Channel {
            node: 0,
            path,
            interpolation,
            times: times.to_vec(),
            values: values.to_vec(),
        }
    }
}

/// A glTF with the triangle (0,0,0) (1,0,0) (0,1,0) as mesh 0, the nodes `nodes` (JSON array
/// items; node 0 should show the mesh), a perspective camera 0, and the animations `animations`
/// (each a name and its channels), all keyframes in one data-URI buffer.
fn gltf(nodes: &str, animations: &[(&str, Vec<Channel>)]) -> String {
    let mut bin: Vec<u8> = Vec::new();
    let mut views = Vec::new();
    let mut accessors = Vec::new();
    let mut add = |data: &[f32], ty: &str, extra: &str| -> usize {
        let offset = bin.len();
        bin.extend(data.iter().flat_map(|v| v.to_le_bytes()));
        views.push(format!(
            r#"{{"buffer":0,"byteOffset":{offset},"byteLength":{}}}"#,
            data.len() * 4
        ));
        let per = match ty {
            "SCALAR" => 1,
            "VEC3" => 3,
            _ => 4,
        };
        accessors.push(format!(
            r#"{{"bufferView":{},"componentType":5126,"count":{},"type":"{ty}"{extra}}}"#,
            views.len() - 1,
            data.len() / per
        ));
        accessors.len() - 1
    };
    add(
        &[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
        "VEC3",
        r#","min":[0,0,0],"max":[1,1,0]"#,
    );
    let mut anims = Vec::new();
    for (name, channels) in animations {
        let mut samplers = Vec::new();
        let mut chans = Vec::new();
        for (i, c) in channels.iter().enumerate() {
            let input = add(&c.times, "SCALAR", "");
            let ty = match c.path {
                "rotation" => "VEC4",
                "weights" => "SCALAR",
                _ => "VEC3",
            };
            let output = add(&c.values, ty, "");
            samplers.push(format!(
                r#"{{"input":{input},"output":{output},"interpolation":"{}"}}"#,
                c.interpolation
            ));
            chans.push(format!(
                r#"{{"sampler":{i},"target":{{"node":{},"path":"{}"}}}}"#,
                c.node, c.path
            ));
        }
        anims.push(format!(
            r#"{{"name":"{name}","channels":[{}],"samplers":[{}]}}"#,
            chans.join(","),
            samplers.join(",")
        ));
    }
    let node_count = serde_json::from_str::<Vec<serde_json::Value>>(&format!("[{nodes}]"))
        .unwrap()
        .len();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bin);
    format!(
        r#"{{"asset":{{"version":"2.0"}},"scenes":[{{"nodes":[{roots}]}}],"scene":0,
        "nodes":[{nodes}],
        "meshes":[{{"primitives":[{{"attributes":{{"POSITION":0}}}}]}}],
        "cameras":[{{"type":"perspective","perspective":{{"yfov":0.8,"znear":0.1}}}}],
        "animations":[{anims}],
        "accessors":[{accessors}],
        "bufferViews":[{views}],
        "buffers":[{{"byteLength":{len},"uri":"data:application/octet-stream;base64,{b64}"}}]}}"#,
        roots = (0..node_count)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(","),
        anims = anims.join(","),
        accessors = accessors.join(","),
        views = views.join(","),
        len = bin.len(),
    )
}

fn load_at(json: &str, time_s: Option<f32>) -> Result<(CompiledScene, Warnings), SceneError> {
    load_from_slice_with(
        json.as_bytes(),
        Path::new("anim.gltf"),
        &|_| Err(std::io::ErrorKind::NotFound.into()),
        &LoadOptions {
            time_s,
            ..Default::default()
        },
    )
}

fn scene_at(json: &str, time_s: f32) -> CompiledScene {
    let (scene, warnings) = load_at(json, Some(time_s)).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    scene
}

fn message(r: Result<(CompiledScene, Warnings), SceneError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn assert_close(a: [f32; 3], b: [f32; 3]) {
    let d = (0..3).map(|k| (a[k] - b[k]).abs()).fold(0.0, f32::max);
    assert!(d < 1e-6, "{a:?} != {b:?}");
}

/// Node 0 shows the triangle, with a rest pose whose scale an animated translation must keep.
const MESH_NODE: &str = r#"{"mesh":0,"translation":[0,5,0],"scale":[2,2,2]}"#;

#[test]
fn linear_translation_at_keyframes_and_between() {
    let json = gltf(
        MESH_NODE,
        &[(
            "Move",
            vec![Channel::new(
                "translation",
                "LINEAR",
                &[0.0, 2.0],
                &[0.0, 0.0, 0.0, 4.0, 0.0, -2.0],
            )],
        )],
    );
    // Vertex 1 is (1, 0, 0): world = translation + scale * (1, 0, 0); the animated translation
    // replaces the rest translation (0, 5, 0), the rest scale 2 stays.
    for (t, x, z) in [
        (0.0, 0.0, 0.0),
        (1.0, 2.0, -1.0),
        (0.5, 1.0, -0.5),
        (2.0, 4.0, -2.0),
    ] {
        let scene = scene_at(&json, t);
        assert_close(scene.positions[0], [x, 0.0, z]);
        assert_close(scene.positions[1], [x + 2.0, 0.0, z]);
    }
}

#[test]
fn step_holds_each_value_until_the_next_keyframe() {
    let json = gltf(
        MESH_NODE,
        &[(
            "Step",
            vec![Channel::new(
                "translation",
                "STEP",
                &[0.0, 1.0, 2.0],
                &[0.0, 0.0, 0.0, 10.0, 0.0, 0.0, 20.0, 0.0, 0.0],
            )],
        )],
    );
    for (t, x) in [
        (0.0, 0.0),
        (0.5, 0.0),
        (0.999, 0.0),
        (1.0, 10.0),
        (1.99, 10.0),
        (2.0, 20.0),
    ] {
        assert_eq!(scene_at(&json, t).positions[0], [x, 0.0, 0.0], "t = {t}");
    }
}

#[test]
fn rotation_slerps_halfway_to_45_degrees() {
    let h = std::f32::consts::FRAC_1_SQRT_2;
    let json = gltf(
        r#"{"mesh":0}"#,
        &[(
            "Turn",
            vec![Channel::new(
                "rotation",
                "LINEAR",
                &[0.0, 1.0],
                &[0.0, 0.0, 0.0, 1.0, 0.0, h, 0.0, h],
            )],
        )],
    );
    // At t = 0.5 the node turns 45 degrees about +Y: the quaternion (0, sin 22.5, 0, cos 22.5),
    // which takes (1, 0, 0) to (cos 45, 0, -sin 45) and keeps (0, 1, 0).
    let scene = scene_at(&json, 0.5);
    assert_close(scene.positions[1], [h, 0.0, -h]);
    assert_close(scene.positions[2], [0.0, 1.0, 0.0]);
    let scene = scene_at(&json, 1.0);
    assert_close(scene.positions[1], [0.0, 0.0, -1.0]);
    // A quarter of the way: 22.5 degrees, as slerp (not a normalized lerp) gives.
    let a = std::f32::consts::PI / 8.0;
    assert_close(scene_at(&json, 0.25).positions[1], [a.cos(), 0.0, -a.sin()]);
}

#[test]
fn cubic_spline_with_zero_tangents_eases_between_keyframes() {
    // (in-tangent, value, out-tangent) per keyframe, all tangents zero.
    let json = gltf(
        MESH_NODE,
        &[(
            "Ease",
            vec![Channel::new(
                "translation",
                "CUBICSPLINE",
                &[0.0, 1.0],
                &[
                    0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, //
                    0.0, 0.0, 0.0, 4.0, 2.0, 0.0, 0.0, 0.0, 0.0,
                ],
            )],
        )],
    );
    assert_eq!(scene_at(&json, 0.0).positions[0], [0.0, 0.0, 0.0]);
    assert_eq!(scene_at(&json, 1.0).positions[0], [4.0, 2.0, 0.0]);
    // With zero tangents the curve is v0 + (v1 - v0) * (3u^2 - 2u^3): smooth, flat at both ends.
    let mut previous = 0.0;
    for i in 1..20 {
        let u = i as f32 / 20.0;
        let x = scene_at(&json, u).positions[0][0];
        let s = 3.0 * u * u - 2.0 * u * u * u;
        assert!((x - 4.0 * s).abs() < 1e-5, "u = {u}: {x} vs {}", 4.0 * s);
        assert!(x > previous, "not increasing at u = {u}");
        previous = x;
    }
    assert_close(scene_at(&json, 0.5).positions[0], [2.0, 1.0, 0.0]);
    // Flat ends: a hundredth of the interval moves it 0.03% of the way, not 1%.
    assert!(scene_at(&json, 0.01).positions[0][0] < 4.0 * 0.001);
}

#[test]
fn times_outside_the_keyframes_clamp() {
    let json = gltf(
        MESH_NODE,
        &[(
            "Late",
            vec![Channel::new(
                "translation",
                "LINEAR",
                &[1.0, 2.0],
                &[1.0, 0.0, 0.0, 3.0, 0.0, 0.0],
            )],
        )],
    );
    for (t, x) in [
        (-3.0, 1.0),
        (0.0, 1.0),
        (1.0, 1.0),
        (1.5, 2.0),
        (2.0, 3.0),
        (100.0, 3.0),
    ] {
        assert_eq!(scene_at(&json, t).positions[0], [x, 0.0, 0.0], "t = {t}");
    }
}

#[test]
fn animated_camera_moves_and_the_rest_stays() {
    let json = gltf(
        r#"{"mesh":0},{"camera":0,"translation":[0,1,5]}"#,
        &[(
            "Dolly",
            vec![Channel {
                node: 1,
                ..Channel::new(
                    "translation",
                    "LINEAR",
                    &[0.0, 1.0],
                    &[0.0, 1.0, 5.0, 0.0, 1.0, 9.0],
                )
            }],
        )],
    );
    let (start, end) = (scene_at(&json, 0.0), scene_at(&json, 1.0));
    assert_eq!(start.cameras[0].position, [0.0, 1.0, 5.0]);
    assert_eq!(end.cameras[0].position, [0.0, 1.0, 9.0]);
    assert_eq!(start.cameras[0].forward, end.cameras[0].forward);
    assert_eq!(start.positions, end.positions);
}

#[test]
fn without_a_time_animations_are_ignored() {
    let channel = || {
        Channel::new(
            "translation",
            "LINEAR",
            &[0.0, 1.0],
            &[7.0, 0.0, 0.0, 9.0, 0.0, 0.0],
        )
    };
    let animated = gltf(MESH_NODE, &[("Move", vec![channel()])]);
    let still = gltf(MESH_NODE, &[]);
    let (rest, warnings) = load_at(&animated, None).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(rest, load_at(&still, None).unwrap().0);
    assert_eq!(rest.positions[0], [0.0, 5.0, 0.0]);
    // A time changes nothing in a file without animations.
    assert_eq!(
        blob::encode(&load_at(&still, Some(0.5)).unwrap().0),
        blob::encode(&rest)
    );
    // Nor is a broken animation read without a time.
    let mut broken = channel();
    broken.times = vec![1.0, 0.0];
    let broken = gltf(MESH_NODE, &[("Broken", vec![broken])]);
    assert_eq!(load_at(&broken, None).unwrap().0, rest);
}

#[test]
fn posing_is_deterministic() {
    let json = gltf(
        MESH_NODE,
        &[(
            "Turn",
            vec![Channel::new(
                "rotation",
                "LINEAR",
                &[0.0, 1.0],
                &[0.0, 0.0, 0.0, 1.0, 0.3, 0.5, 0.1, 0.8],
            )],
        )],
    );
    let a = blob::encode(&scene_at(&json, 0.37));
    let b = blob::encode(&scene_at(&json, 0.37));
    assert_eq!(a, b);
    assert_ne!(a, blob::encode(&scene_at(&json, 0.38)));
}

#[test]
fn the_first_channel_wins_and_unsupported_channels_warn_once() {
    let first = Channel::new(
        "translation",
        "LINEAR",
        &[0.0, 1.0],
        &[1.0, 0.0, 0.0, 1.0, 0.0, 0.0],
    );
    let second = Channel::new(
        "translation",
        "LINEAR",
        &[0.0, 1.0],
        &[2.0, 0.0, 0.0, 2.0, 0.0, 0.0],
    );
    let third = Channel::new("translation", "STEP", &[0.0], &[3.0, 0.0, 0.0]);
    let weights = || Channel::new("weights", "LINEAR", &[0.0, 1.0], &[0.0, 1.0]);
    let json = gltf(
        MESH_NODE,
        &[
            ("A", vec![first, weights()]),
            ("B", vec![second, weights()]),
            ("C", vec![third]),
        ],
    );
    let (scene, warnings) = load_at(&json, Some(0.5)).unwrap();
    assert_eq!(scene.positions[0], [1.0, 0.0, 0.0]);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("2 animation channel(s)")
            && warnings[0].contains("animation 1 ('B') channel 0 (node 0 translation)")
            && warnings[0].contains("the first channel in file order wins"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].contains("morph-target (weights) animation is not supported")
            && warnings[1].contains("ignoring 2 channel(s)"),
        "{warnings:?}"
    );
}

#[test]
fn bad_keyframes_are_errors_naming_the_channel() {
    let linear = |times: &[f32], values: &[f32]| {
        gltf(
            MESH_NODE,
            &[(
                "Bad",
                vec![Channel::new("translation", "LINEAR", times, values)],
            )],
        )
    };
    // Two times, three values.
    let msg = message(load_at(&linear(&[0.0, 1.0], &[0.0; 9]), Some(0.5)));
    assert!(
        msg.starts_with("anim.gltf: animation 0 ('Bad') channel 0: the output accessor 2 holds 3 values but 2 keyframe time(s) with LINEAR interpolation need 2"),
        "{msg}"
    );
    // CUBICSPLINE needs three values per time.
    let json = gltf(
        MESH_NODE,
        &[(
            "Bad",
            vec![Channel::new(
                "translation",
                "CUBICSPLINE",
                &[0.0, 1.0],
                &[0.0; 6],
            )],
        )],
    );
    let msg = message(load_at(&json, Some(0.5)));
    assert!(msg.contains("CUBICSPLINE interpolation need 6"), "{msg}");
    // Decreasing times.
    let msg = message(load_at(&linear(&[0.0, 2.0, 1.0], &[0.0; 9]), Some(0.5)));
    assert!(
        msg.contains("animation 0 ('Bad') channel 0: keyframe times must not decrease")
            && msg.contains("time 2 (1 s)"),
        "{msg}"
    );
    // No keyframes.
    let msg = message(load_at(&linear(&[], &[]), Some(0.5)));
    assert!(msg.contains("holds no keyframe times"), "{msg}");
    // A rotation of zero length.
    let json = gltf(
        MESH_NODE,
        &[(
            "Bad",
            vec![Channel::new("rotation", "STEP", &[0.0], &[0.0; 4])],
        )],
    );
    let msg = message(load_at(&json, Some(0.5)));
    assert!(msg.contains("is not a rotation"), "{msg}");
    // A translation given as VEC4.
    let json = gltf(
        MESH_NODE,
        &[(
            "Bad",
            vec![Channel::new("translation", "LINEAR", &[0.0], &[0.0; 4])],
        )],
    )
    .replace(r#""count":1,"type":"VEC3""#, r#""count":1,"type":"VEC4""#);
    let msg = message(load_at(&json, Some(0.5)));
    assert!(msg.contains("must be of type VEC3, not VEC4"), "{msg}");
    // A target node that does not exist (the gltf crate does not check it).
    let json = gltf(
        MESH_NODE,
        &[(
            "Bad",
            vec![Channel {
                node: 9,
                ..Channel::new("translation", "LINEAR", &[0.0], &[0.0; 3])
            }],
        )],
    );
    let msg = message(load_at(&json, Some(0.5)));
    assert!(
        msg.contains("targets node 9 but there are 1 nodes"),
        "{msg}"
    );
    // A time that is not a number.
    let msg = message(load_at(&linear(&[0.0], &[0.0; 3]), Some(f32::NAN)));
    assert!(msg.contains("must be a finite number of seconds"), "{msg}");
}

/// Broken or hostile animation JSON gives an error or a warning, never a panic; without a time
/// the importer does not look at animations beyond what the gltf crate validates.
#[test]
fn hostile_animation_json() {
    let base = gltf(
        MESH_NODE,
        &[(
            "A",
            vec![Channel::new(
                "translation",
                "LINEAR",
                &[0.0, 1.0],
                &[0.0; 6],
            )],
        )],
    );
    let span = |json: &str| {
        animation_span_from_slice(json.as_bytes(), Path::new("anim.gltf"), &|_| {
            Err(std::io::ErrorKind::NotFound.into())
        })
    };
    // (replace, by, what loading at a time says, whether loading without one succeeds)
    for (from, to, expected, loads_at_rest) in [
        (
            r#""path":"translation""#,
            r#""path":"pointer""#,
            "warning: anim.gltf: ignoring 1 animation channel(s) whose target path is not",
            true,
        ),
        (
            r#""node":0,"#,
            r#""node":4294967295,"#,
            "channel 0 targets node 4294967295 but there are 1 nodes",
            true,
        ),
        (
            r#""sampler":0"#,
            r#""sampler":7"#,
            "channels[0].sampler: Index out of bounds",
            false,
        ),
        (
            r#""input":1"#,
            r#""input":99"#,
            "samplers[0].input: Index out of bounds",
            false,
        ),
        (
            r#""output":2"#,
            r#""output":1"#,
            "the output accessor 1 must be of type VEC3, not SCALAR",
            true,
        ),
        (
            r#""LINEAR""#,
            r#""SMOOTH""#,
            "samplers[0].interpolation: Invalid value",
            false,
        ),
        (
            r#""count":2,"type":"SCALAR""#,
            r#""count":100000000,"type":"SCALAR""#,
            "accessor 1 takes the animations past 67108864 keyframe components",
            true,
        ),
    ] {
        assert!(base.contains(from), "{from}");
        let json = base.replace(from, to);
        assert_eq!(load_at(&json, None).is_ok(), loads_at_rest, "{to}");
        for t in [-1.0, 0.5, 2.0] {
            let said = match load_at(&json, Some(t)) {
                Ok((_, warnings)) => format!("warning: {}", warnings.join("; ")),
                Err(e) => e.to_string(),
            };
            assert!(said.contains(expected), "{to} at {t} s: {said}");
        }
        let _ = span(&json);
    }
}

#[test]
fn animation_span_covers_every_channel() {
    let span = |json: &str| {
        animation_span_from_slice(json.as_bytes(), Path::new("anim.gltf"), &|_| {
            Err(std::io::ErrorKind::NotFound.into())
        })
    };
    let json = gltf(
        r#"{"mesh":0},{"camera":0}"#,
        &[
            (
                "A",
                vec![Channel::new(
                    "translation",
                    "LINEAR",
                    &[0.5, 1.0, 2.0],
                    &[0.0; 9],
                )],
            ),
            (
                "B",
                vec![
                    Channel {
                        node: 1,
                        ..Channel::new("scale", "STEP", &[1.0, 3.0], &[1.0; 6])
                    },
                    Channel::new("weights", "LINEAR", &[0.25, 1.0], &[0.0, 1.0]),
                ],
            ),
        ],
    );
    assert_eq!(span(&json).unwrap(), Some((0.25, 3.0)));
    assert_eq!(span(&gltf(MESH_NODE, &[])).unwrap(), None);
    let bad = gltf(
        MESH_NODE,
        &[(
            "A",
            vec![Channel::new("scale", "STEP", &[3.0, 1.0], &[1.0; 6])],
        )],
    );
    assert!(span(&bad)
        .unwrap_err()
        .to_string()
        .contains("keyframe times must not decrease"));
}

fn animated_cube() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/animated_cube.gltf")
}

#[test]
fn animated_cube_data_file() {
    let path = animated_cube();
    assert_eq!(
        rayfarm_scene::animation_span(&path).unwrap(),
        Some((0.0, 2.0))
    );
    let at = |t: f32| {
        let (scene, warnings) = rayfarm_scene::load_with(
            &path,
            &LoadOptions {
                time_s: Some(t),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        scene
    };
    let (rest, warnings) = rayfarm_scene::load(&path).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(rest.triangles.len(), 12);
    assert_eq!(rest.lights.len(), 1);
    assert_eq!(rest.cameras.len(), 1);
    // The rest pose is the pose at 0 s.
    assert_eq!(at(0.0).bounds(), rest.bounds());
    let (min, max) = rest.bounds().unwrap();
    assert_close(min, [-1.5, -0.5, -0.5]);
    assert_close(max, [-0.5, 0.5, 0.5]);
    // At 1 s: centred on the origin, turned 90 degrees (the same box again).
    let (min, max) = at(1.0).bounds().unwrap();
    assert_close(min, [-0.5, -0.5, -0.5]);
    assert_close(max, [0.5, 0.5, 0.5]);
    // At 0.5 s: halfway along X and turned 45 degrees, so the box is sqrt(2) wide in X and Z.
    let (min, max) = at(0.5).bounds().unwrap();
    let r = std::f32::consts::FRAC_1_SQRT_2;
    assert!((min[0] - (-0.5 - r)).abs() < 1e-5 && (max[0] - (-0.5 + r)).abs() < 1e-5);
    assert!((min[2] + r).abs() < 1e-5 && (max[2] - r).abs() < 1e-5);
    // At 2 s and after: at +1 on X.
    let (min, max) = at(2.0).bounds().unwrap();
    assert_close(min, [0.5, -0.5, -0.5]);
    assert_close(max, [1.5, 0.5, 0.5]);
    assert_eq!(at(5.0), at(2.0));
    // The camera and the light do not move.
    for t in [0.0, 0.7, 2.0] {
        let s = at(t);
        assert_eq!(s.cameras, rest.cameras);
        assert_eq!(s.lights, rest.lights);
    }
}

/// The file is valid glTF 2.0 as far as rayfarm relies on it: POSITION min/max match the
/// data, the buffer length matches, every view lies in the buffer. (The Khronos glTF-Validator
/// reported no issues for it when it was written.)
#[test]
fn animated_cube_data_file_is_consistent() {
    let text = std::fs::read_to_string(animated_cube()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let buffer = &json["buffers"][0];
    let uri = buffer["uri"].as_str().unwrap();
    let payload = uri.split_once(";base64,").unwrap().1;
    let bin = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .unwrap();
    assert_eq!(buffer["byteLength"].as_u64().unwrap() as usize, bin.len());
    for view in json["bufferViews"].as_array().unwrap() {
        let end = view["byteOffset"].as_u64().unwrap() + view["byteLength"].as_u64().unwrap();
        assert!(end as usize <= bin.len());
    }
    let position = json["meshes"][0]["primitives"][0]["attributes"]["POSITION"]
        .as_u64()
        .unwrap() as usize;
    let acc = &json["accessors"][position];
    let view = &json["bufferViews"][acc["bufferView"].as_u64().unwrap() as usize];
    let offset = view["byteOffset"].as_u64().unwrap() as usize;
    let count = acc["count"].as_u64().unwrap() as usize;
    let mut min = [f32::INFINITY; 3];
    let mut max = [f32::NEG_INFINITY; 3];
    for i in 0..count * 3 {
        let o = offset + 4 * i;
        let v = f32::from_le_bytes(bin[o..o + 4].try_into().unwrap());
        min[i % 3] = min[i % 3].min(v);
        max[i % 3] = max[i % 3].max(v);
    }
    let as_f32 = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    assert_eq!(as_f32(&acc["min"]), min.to_vec());
    assert_eq!(as_f32(&acc["max"]), max.to_vec());
}
