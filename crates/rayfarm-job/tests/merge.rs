//! Shared-folder jobs end to end, in one process: a job.desc and scene in NETDIR/<job-id>/,
//! parts baked by "nodes" (the same work units, cut by part), merged, and compared byte for
//! byte with what a local bake of the same job writes.

use glam::Vec3;
use rayfarm_bake::workload::run_local;
use rayfarm_bake::{BakeWork, Film, LayerSpec, MapSpec, Pass, Region, TexelTable, Workload};
use rayfarm_job::folder::JobSeal;
use rayfarm_job::jobdesc::{
    BakeDesc, BakeMode, JobDesc, OutputDesc, PartDesc, SceneRef, FILE_NAME, MERGED_MARKER,
};
use rayfarm_job::maps::{write_baked_glb, write_map_files, write_placeholder, BakedMap};
use rayfarm_job::merge::{check, merge, write_placeholders, MergeError, MergeOptions, PartProblem};
use rayfarm_job::parts::{part_units, write_part};
use rayfarm_job::renderjob::AnyJobDesc;
use rayfarm_proto::FarmKey;
use rayfarm_render::RenderScene;
use rayfarm_scene::{CompiledScene, Environment, Material};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SIZE: u32 = 24;
const PASSES: [Pass; 4] = [Pass::Complete, Pass::Ao, Pass::Albedo, Pass::Normal];
/// Edge of the parts' rectangles: not a divisor of the map or the bake tiles, on purpose.
const PART_PX: u32 = 10;
const TILE_PX: u32 = 8;
const SAMPLES_PER_UNIT: u32 = 3;

/// A floor and a wall meeting at an edge, each charted into its own part of one atlas, with
/// empty texels between the charts for padding to fill.
fn scene() -> CompiledScene {
    let mut s = CompiledScene::default();
    let grey = s.add_material(Material {
        base_color: [0.6, 0.5, 0.4, 1.0],
        metallic: 0.0,
        ..Default::default()
    });
    s.add_quad(
        "Floor",
        Vec3::new(-1.0, 0.0, -1.0),
        Vec3::Z * 2.0,
        Vec3::X * 2.0,
        grey,
    );
    s.add_quad(
        "Wall",
        Vec3::new(-1.0, 0.0, -1.0),
        Vec3::X * 2.0,
        Vec3::Y * 1.5,
        grey,
    );
    // Floor into [0.05, 0.45] x [0.1, 0.9], wall into [0.55, 0.95] x [0.2, 0.7].
    for (range, (u0, u1, v0, v1)) in [
        (0..4, (0.05, 0.45, 0.1, 0.9)),
        (4..8, (0.55, 0.95, 0.2, 0.7)),
    ] {
        for uv in &mut s.uv0[range] {
            *uv = [u0 + uv[0] * (u1 - u0), v0 + uv[1] * (v1 - v0)];
        }
    }
    s.environment = Environment::Color([0.8, 0.9, 1.0]);
    s
}

/// A job laid out as `rayfarm bake` lays it out (maps, then passes, then objects), with
/// each layer cut into parts of at most PART_PX square.
fn job(scene: &CompiledScene, mode: BakeMode, out_dir: &Path, gltf: bool) -> JobDesc {
    let blob = rayfarm_scene::blob::encode(scene);
    let hash = rayfarm_scene::blob::content_hash(&blob).unwrap();
    let meshes = vec![0usize, 1];
    let mut maps = Vec::new();
    let mut layers = Vec::new();
    let mut outputs = Vec::new();
    let mut parts = Vec::new();
    let mut job_maps: Vec<(Option<usize>, usize)> = Vec::new();
    if mode == BakeMode::Multi {
        for &m in &meshes {
            let region = TexelTable::chart_region(scene, &[m], 0, SIZE, SIZE).unwrap();
            job_maps.push((Some(m), maps.len()));
            maps.push(MapSpec {
                meshes: vec![m],
                width: SIZE,
                height: SIZE,
                region,
            });
        }
    } else {
        job_maps.push((None, 0));
        maps.push(MapSpec {
            meshes: meshes.clone(),
            width: SIZE,
            height: SIZE,
            region: Region::full(SIZE, SIZE),
        });
    }
    for pass in PASSES {
        let mut names = Vec::new();
        for &(mesh, map) in &job_maps {
            let layer = layers.len();
            layers.push(LayerSpec { map, pass });
            let r = maps[map].region;
            let mut y = r.y0;
            while y < r.y1 {
                let mut x = r.x0;
                while x < r.x1 {
                    let name = format!("p{:06}", parts.len());
                    parts.push(PartDesc {
                        name: name.clone(),
                        layer,
                        region: [x, y, (x + PART_PX).min(r.x1), (y + PART_PX).min(r.y1)],
                        mesh,
                    });
                    names.push(name);
                    x += PART_PX;
                }
                y += PART_PX;
            }
        }
        let stem = rayfarm_bake::map_name(None, pass, SIZE, SIZE);
        outputs.push(OutputDesc {
            files: vec![format!("{stem}.exr"), format!("{stem}.png")],
            stem,
            pass,
            width: SIZE,
            height: SIZE,
            atlas_meshes: meshes.clone(),
            parts: names,
        });
    }
    let spec = rayfarm_bake::BakeSpec {
        uv_set: 0,
        spp: 4,
        max_bounces: 3,
        seed: 11,
        ao_distance: 1.0,
        maps,
        layers,
    };
    spec.check(scene).unwrap();
    let desc = JobDesc {
        job_id: format!("job-{}", if mode == BakeMode::Multi { "m" } else { "s" }),
        created_unix_ms: 1,
        name: "test bake".into(),
        scene: SceneRef {
            file: "scene.rfscene".into(),
            blake3: rayfarm_scene::blob::hash_hex(&hash),
            bytes: blob.len() as u64,
        },
        bake: BakeDesc::from_bake_spec(&spec, 3, mode),
        outputs,
        parts,
        out_dir: out_dir.to_str().unwrap().into(),
        gltf_out: gltf.then(|| "baked.glb".to_string()),
        manager: None,
    };
    desc.validate().unwrap();
    desc
}

/// What a client does at submission: the job folder with its desc and scene, placeholders in
/// the output folder. Returns the job.desc's path.
fn submit(netdir: &Path, desc: &JobDesc, scene: &CompiledScene) -> PathBuf {
    let dir = netdir.join(&desc.job_id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(&desc.scene.file),
        rayfarm_scene::blob::encode(scene),
    )
    .unwrap();
    std::fs::create_dir_all(&desc.out_dir).unwrap();
    let written = write_placeholders(desc).unwrap();
    assert_eq!(written.len(), 2 * desc.outputs.len());
    desc.write(&dir, &key()).unwrap()
}

/// The farm key the tests' client, nodes and merge hold.
fn key() -> FarmKey {
    FarmKey::from_secret("the merge tests' farm secret").unwrap()
}

/// The seal a merger of the job at `desc_path` holds (what a `merged` marker is sealed with).
fn marker_seal(desc_path: &Path, job_id: &str) -> JobSeal {
    JobSeal::new(&key(), job_id, &std::fs::read(desc_path).unwrap())
}

/// The seal of the job whose job.desc is `desc_path`, as a node reads it.
fn seal_of(desc_path: &Path) -> JobSeal {
    AnyJobDesc::read(desc_path, &key()).unwrap().1
}

/// What the nodes do: bake each part's units and write the part.
fn bake_parts(job_dir: &Path, desc: &JobDesc, rs: &RenderScene) {
    let seal = seal_of(&job_dir.join(FILE_NAME));
    let work = Workload::Bake(BakeWork::new(desc.to_bake_spec()));
    for part in &desc.parts {
        let units = part_units(desc, part, TILE_PX, SAMPLES_PER_UNIT).unwrap();
        let spp = desc.layer_spp(part.layer).unwrap();
        let mut done = 0;
        run_local(rs, &work, &units, &|_| {}, &mut |l, film| {
            assert_eq!(l, part.layer);
            write_part(job_dir, part, &film, spp, &seal).unwrap();
            done += 1;
        });
        assert_eq!(done, 1);
    }
}

/// What a local bake writes for the same job: every layer baked whole, outputs assembled,
/// padded and written by the same writers, into `out`.
fn local_bake(desc: &JobDesc, rs: &RenderScene, out: &Path) {
    let work = Workload::Bake(BakeWork::new(desc.to_bake_spec()));
    let units = work.plan(13, 2);
    let mut films: BTreeMap<usize, Film> = BTreeMap::new();
    run_local(rs, &work, &units, &|_| {}, &mut |l, f| {
        films.insert(l, f);
    });
    let mut complete = Vec::new();
    for o in &desc.outputs {
        let atlas = TexelTable::build(&rs.scene, &o.atlas_meshes, 0, o.width, o.height);
        let mut layer_films: Vec<(usize, &Film)> = Vec::new();
        for name in &o.parts {
            let p = desc.part(name).unwrap();
            if !layer_films
                .iter()
                .any(|(m, _)| *m == p.mesh.unwrap_or(usize::MAX))
            {
                layer_films.push((p.mesh.unwrap_or(usize::MAX), &films[&p.layer]));
            }
        }
        let film = if desc.bake.mode == BakeMode::Single {
            assert_eq!(layer_films.len(), 1);
            layer_films[0].1.clone()
        } else {
            rayfarm_bake::merge_objects(&rs.scene, &atlas, &layer_films).unwrap()
        };
        let raw = film.to_rgb(desc.bake.settings(o.pass).spp());
        let (px, _) =
            rayfarm_bake::dilate(&raw, o.width, o.height, &atlas.covered(), desc.bake.padding);
        let files = write_map_files(out, &o.stem, o.width, o.height, &px, o.pass).unwrap();
        if o.pass == Pass::Complete {
            complete.push(BakedMap {
                meshes: o.atlas_meshes.clone(),
                name: o.stem.clone(),
                png: std::fs::read(&files[1]).unwrap(),
            });
        }
    }
    if let Some(g) = &desc.gltf_out {
        write_baked_glb(&out.join(g), &rs.scene, complete, 0).unwrap();
    }
}

/// Every file under `root`: relative path -> contents (symlinks as their target).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let t = e.file_type().unwrap();
            if t.is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                out.insert(rel, target.to_string_lossy().as_bytes().to_vec());
            } else if t.is_dir() {
                out.insert(PathBuf::from(format!("{}/", rel.display())), Vec::new());
                walk(root, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    netdir: PathBuf,
    out: PathBuf,
    desc: JobDesc,
    desc_path: PathBuf,
    job_dir: PathBuf,
    rs: RenderScene,
}

fn setup(mode: BakeMode, gltf: bool) -> Setup {
    setup_edited(mode, gltf, |_| {})
}

/// [`setup`] with the job edited before it is submitted.
fn setup_edited(mode: BakeMode, gltf: bool, edit: impl Fn(&mut JobDesc)) -> Setup {
    setup_scene(mode, gltf, scene(), edit)
}

/// [`setup_edited`] with scene `s`.
fn setup_scene(mode: BakeMode, gltf: bool, s: CompiledScene, edit: impl Fn(&mut JobDesc)) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().canonicalize().unwrap();
    let netdir = root.join("netdir");
    let out = root.join("out");
    let mut desc = job(&s, mode, &out, gltf);
    edit(&mut desc);
    let desc_path = submit(&netdir, &desc, &s);
    let job_dir = desc_path.parent().unwrap().to_path_buf();
    let rs = RenderScene::new(s);
    bake_parts(&job_dir, &desc, &rs);
    Setup {
        _tmp: tmp,
        root,
        netdir,
        out,
        desc,
        desc_path,
        job_dir,
        rs,
    }
}

fn merge_matches_local_bake(mode: BakeMode) {
    let t = setup(mode, true);
    assert!(check(&t.job_dir, &t.desc, &seal_of(&t.desc_path)).is_empty());
    let report = merge(&t.desc_path, &key(), &MergeOptions::default()).unwrap();
    assert!(!report.already_merged);
    assert!(report.job_dir_removed, "{report:?}");
    assert!(report.left_in_job_dir.is_empty());
    assert_eq!(report.written.len(), 2 * PASSES.len() + 1);
    assert!(!t.job_dir.exists());
    assert_eq!(std::fs::read_dir(&t.netdir).unwrap().count(), 0);

    let reference = t.root.join("reference");
    std::fs::create_dir(&reference).unwrap();
    local_bake(&t.desc, &t.rs, &reference);
    let merged = snapshot(&t.out);
    let local = snapshot(&reference);
    assert_eq!(
        merged.keys().collect::<Vec<_>>(),
        local.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &local {
        assert!(
            merged[name] == *bytes,
            "{mode:?}: {} differs",
            name.display()
        );
    }
    // The maps are real results, not placeholders: the wall is lit and padded.
    let ao = image::open(t.out.join(format!("atlas_ao_{SIZE}.png")))
        .unwrap()
        .to_rgb8();
    let floor_texel = ao.get_pixel(SIZE / 4, SIZE / 2).0;
    assert!(floor_texel[0] > 100, "{floor_texel:?}");
}

#[test]
fn single_mode_merge_matches_local_bake_byte_for_byte() {
    merge_matches_local_bake(BakeMode::Single);
}

#[test]
fn multi_mode_merge_matches_local_bake_byte_for_byte() {
    merge_matches_local_bake(BakeMode::Multi);
}

/// In multi mode the merged maps also equal the single-mode ones where charts do not overlap
/// (rayfarm_bake::merge_objects' promise), so both cuts of a job give the same files.
#[test]
fn single_and_multi_mode_give_the_same_files() {
    let a = setup(BakeMode::Single, false);
    let b = setup(BakeMode::Multi, false);
    merge(&a.desc_path, &key(), &MergeOptions::default()).unwrap();
    merge(&b.desc_path, &key(), &MergeOptions::default()).unwrap();
    assert_eq!(snapshot(&a.out), snapshot(&b.out));
}

#[test]
fn missing_part_is_named_and_nothing_is_written() {
    let t = setup(BakeMode::Single, true);
    let gone = &t.desc.parts[5].name;
    std::fs::remove_file(t.job_dir.join("parts").join(format!("{gone}.rfpart"))).unwrap();
    let before = snapshot(&t.root);
    let e = merge(&t.desc_path, &key(), &MergeOptions::default()).unwrap_err();
    match &e {
        MergeError::Incomplete {
            missing, corrupt, ..
        } => {
            assert_eq!(missing, &vec![gone.clone()]);
            assert!(corrupt.is_empty());
        }
        other => panic!("{other}"),
    }
    let msg = e.to_string();
    assert!(
        msg.contains(gone) && msg.contains("nothing was written"),
        "{msg}"
    );
    assert_eq!(snapshot(&t.root), before);
    // The placeholders are still there, untouched.
    let png = image::open(t.out.join(format!("atlas_complete_{SIZE}.png")))
        .unwrap()
        .to_rgb8();
    assert!(png.pixels().all(|p| p.0 == [128; 3] || p.0 == [64; 3]));
    assert_eq!(
        check(&t.job_dir, &t.desc, &seal_of(&t.desc_path)),
        vec![PartProblem::Missing { part: gone.clone() }]
    );
}

#[test]
fn corrupt_part_is_named_and_nothing_is_written() {
    let t = setup(BakeMode::Multi, false);
    let bad = t.desc.parts[2].name.clone();
    let path = t.job_dir.join("parts").join(format!("{bad}.rfpart"));
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let missing = t.desc.parts[7].name.clone();
    std::fs::remove_file(t.job_dir.join("parts").join(format!("{missing}.rfpart"))).unwrap();
    let before = snapshot(&t.root);
    match merge(&t.desc_path, &key(), &MergeOptions::default()).unwrap_err() {
        MergeError::Incomplete {
            missing: m,
            corrupt,
            ..
        } => {
            assert_eq!(m, vec![missing]);
            assert_eq!(corrupt.len(), 1);
            assert_eq!(corrupt[0].0, bad);
            assert!(corrupt[0].1.contains("MAC"), "{}", corrupt[0].1);
        }
        other => panic!("{other}"),
    }
    assert_eq!(snapshot(&t.root), before);
}

#[test]
fn manager_can_refuse() {
    let t = setup(BakeMode::Single, false);
    let before = snapshot(&t.root);
    let ask = |job_id: &str| -> Result<(), rayfarm_job::merge::Refusal> {
        Err(format!("the manager says job {job_id} has 3 tasks running").into())
    };
    let e = merge(
        &t.desc_path,
        &key(),
        &MergeOptions {
            manager_check: Some(&ask),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, MergeError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("3 tasks running"), "{e}");
    assert_eq!(snapshot(&t.root), before);
}

#[test]
fn merging_twice_is_harmless() {
    let t = setup(BakeMode::Single, true);
    let kept = snapshot(&t.job_dir);
    merge(&t.desc_path, &key(), &MergeOptions::default()).unwrap();
    let after_first = snapshot(&t.root);
    // The folder is gone, so the second merge has nothing to read and changes nothing.
    let e = merge(&t.desc_path, &key(), &MergeOptions::default()).unwrap_err();
    assert!(e.to_string().contains("job.desc"), "{e}");
    assert_eq!(snapshot(&t.root), after_first);

    // A merge interrupted after its marker (the outputs all written) only finishes the removal.
    std::fs::create_dir_all(t.job_dir.join("parts")).unwrap();
    for (rel, bytes) in &kept {
        if !rel.to_string_lossy().ends_with('/') {
            std::fs::write(t.job_dir.join(rel), bytes).unwrap();
        }
    }
    std::fs::write(
        t.job_dir.join(MERGED_MARKER),
        marker_seal(&t.desc_path, &t.desc.job_id).sealed_marker(
            "rayfarm merge: every output of this job is written\n/x/atlas_ao_24.exr\n",
        ),
    )
    .unwrap();
    // Even with a part missing: the merge does not look at parts any more.
    std::fs::remove_file(
        t.job_dir
            .join("parts")
            .join(format!("{}.rfpart", t.desc.parts[0].name)),
    )
    .unwrap();
    let r = merge(&t.desc_path, &key(), &MergeOptions::default()).unwrap();
    assert!(r.already_merged && r.job_dir_removed, "{r:?}");
    assert_eq!(r.written, vec![PathBuf::from("/x/atlas_ao_24.exr")]);
    assert_eq!(snapshot(&t.root), after_first);
}

/// A `merged` marker written without the farm key (by anyone who can write the shared
/// folder) is not trusted: the job is merged from its parts as if it were not there. It made
/// `rayfarm merge` delete a finished job's parts and report success without writing a map.
#[test]
fn a_merged_marker_without_the_farm_keys_seal_is_ignored() {
    let forgeries: [fn(&Path, &str) -> String; 3] = [
        |_, _| "rayfarm merge: every output of this job is written\n/x/atlas_ao_24.exr\n".into(),
        |_, _| format!("rayfarm merge\nmac {}\n", "00".repeat(32)),
        // Sealed with the key, but for another job.
        |desc, _| marker_seal(desc, "another-job").sealed_marker("rayfarm merge\n"),
    ];
    for forge in forgeries {
        let t = setup(BakeMode::Single, false);
        let forged = forge(&t.desc_path, &t.desc.job_id);
        std::fs::write(t.job_dir.join(MERGED_MARKER), &forged).unwrap();
        let r = merge(&t.desc_path, &key(), &MergeOptions::default()).unwrap();
        assert!(!r.already_merged, "{forged:?}: {r:?}");
        assert!(!r.written.is_empty(), "{forged:?}: no map written: {r:?}");
        for f in &r.written {
            assert!(f.is_file(), "{forged:?}: {} was not written", f.display());
        }
    }
}

#[test]
fn unknown_files_keep_the_job_folder() {
    let t = setup(BakeMode::Single, false);
    std::fs::write(t.job_dir.join("notes.txt"), "mine").unwrap();
    let r = merge(&t.desc_path, &key(), &MergeOptions::default()).unwrap();
    assert!(!r.job_dir_removed);
    assert_eq!(r.left_in_job_dir, vec![t.job_dir.join("notes.txt")]);
    let left: Vec<_> = snapshot(&t.job_dir).into_keys().collect();
    assert_eq!(left, vec![PathBuf::from("notes.txt")]);
}

#[test]
fn out_dir_override_and_missing_out_dir() {
    let t = setup(BakeMode::Single, false);
    let elsewhere = t.root.join("seen-from-here");
    let e = merge(
        &t.desc_path,
        &key(),
        &MergeOptions {
            out_dir: Some(elsewhere.clone()),
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(matches!(e, MergeError::OutDir { .. }), "{e}");
    std::fs::create_dir(&elsewhere).unwrap();
    let r = merge(
        &t.desc_path,
        &key(),
        &MergeOptions {
            out_dir: Some(elsewhere.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.written.iter().all(|p| p.starts_with(&elsewhere)));
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 8);
}

/// Writes `text` as the job's job.desc, bypassing validation (as a hand edit would).
/// Writes an edited job.desc *with* a valid MAC, as a client holding the farm key could: what
/// the format's own checks must stop. (Edits without the key are refused by the MAC alone:
/// `edited_job_desc_without_the_key_is_refused`.)
fn tamper(t: &Setup, edit: impl Fn(String) -> String) {
    write_desc_text(&t.desc_path, &edit(t.desc.to_json()));
}

/// Writes `text` as the job.desc at `path`, with its MAC.
fn write_desc_text(path: &Path, text: &str) {
    let job_id = path
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    std::fs::write(path, text).unwrap();
    let mac = rayfarm_job::folder::desc_mac(&key(), job_id, text.as_bytes());
    std::fs::write(
        path.with_file_name(rayfarm_job::folder::DESC_MAC_FILE_NAME),
        rayfarm_job::folder::mac_file_text(&mac),
    )
    .unwrap();
}

#[test]
fn edited_job_desc_without_the_key_is_refused() {
    let t = setup(BakeMode::Single, false);
    let elsewhere = t.root.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let before = snapshot(&t.root);
    let text = t.desc.to_json().replace(
        &format!("\"out_dir\": {:?}", t.out.to_str().unwrap()),
        &format!("\"out_dir\": {:?}", elsewhere.to_str().unwrap()),
    );
    assert_ne!(text, t.desc.to_json());
    std::fs::write(&t.desc_path, &text).unwrap();
    let e = merge(&t.desc_path, &key(), &MergeOptions::default()).unwrap_err();
    assert!(e.to_string().contains("job.desc.mac does not match"), "{e}");
    assert!(
        e.to_string().contains(&t.desc_path.display().to_string()),
        "{e}"
    );
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    std::fs::write(&t.desc_path, t.desc.to_json()).unwrap();
    assert_eq!(snapshot(&t.root), before);
    // Another farm's key does not merge it either.
    let other = FarmKey::from_secret("another farm's secret here").unwrap();
    assert!(merge(&t.desc_path, &other, &MergeOptions::default()).is_err());
    merge(&t.desc_path, &key(), &MergeOptions::default()).unwrap();
}

#[test]
fn tampered_job_desc_cannot_write_outside_its_folders() {
    let t = setup(BakeMode::Single, true);
    let original = t.desc.to_json();
    let stem = format!("atlas_ao_{SIZE}");
    #[allow(clippy::type_complexity)]
    let edits: Vec<(&str, Box<dyn Fn(String) -> String>)> = vec![
        (
            "stem with ..",
            Box::new(move |s: String| s.replace(&stem, "../../escaped")),
        ),
        (
            "absolute stem",
            Box::new(|s: String| s.replace("\"atlas_albedo", "\"/tmp/atlas_albedo")),
        ),
        (
            "gltf outside",
            Box::new(|s: String| s.replace("\"baked.glb\"", "\"../baked.glb\"")),
        ),
        (
            "gltf absolute",
            Box::new(|s: String| s.replace("\"baked.glb\"", "\"/tmp/baked.glb\"")),
        ),
        (
            "hidden gltf",
            Box::new(|s: String| s.replace("\"baked.glb\"", "\".baked.glb\"")),
        ),
        (
            "scene outside",
            Box::new(|s: String| s.replace("\"scene.rfscene\"", "\"../scene.rfscene\"")),
        ),
        (
            "part outside",
            Box::new(|s: String| s.replace("\"p000003\"", "\"../../p000003\"")),
        ),
        (
            "part with slash",
            Box::new(|s: String| s.replace("\"p000003\"", "\"a/p000003\"")),
        ),
        (
            "part with NUL",
            Box::new(|s: String| s.replace("\"p000003\"", "\"p0\\u0000\"")),
        ),
        (
            "unicode slash",
            Box::new(|s: String| s.replace("\"baked.glb\"", "\"..\u{2215}baked.glb\"")),
        ),
        (
            "job id",
            Box::new(|s: String| s.replace("\"job-s\"", "\"../job-s\"")),
        ),
        (
            "other job id",
            Box::new(|s: String| s.replace("\"job-s\"", "\"job-x\"")),
        ),
        (
            "out_dir with ..",
            Box::new(|s: String| s.replace("/out\"", "/out/../netdir\"")),
        ),
        (
            "relative out_dir",
            Box::new(|s: String| {
                let (a, b) = s.split_once("\"out_dir\": \"").unwrap();
                let rest = &b[b.find('"').unwrap()..];
                format!("{a}\"out_dir\": \"netdir{rest}")
            }),
        ),
        (
            "files list",
            Box::new(|s: String| {
                s.replace(
                    &format!("\"atlas_normal_{SIZE}.png\""),
                    "\"../atlas_normal.png\"",
                )
            }),
        ),
        (
            "unknown field",
            Box::new(|s: String| {
                s.replace("\"padding\"", "\"out_path\": \"/tmp\",\n    \"padding\"")
            }),
        ),
        (
            "newer version",
            Box::new(|s: String| s.replace("\"version\": 2", "\"version\": 3")),
        ),
    ];
    let before = snapshot(&t.root);
    for (what, edit) in &edits {
        tamper(&t, edit);
        assert_ne!(t.desc.to_json(), edit(original.clone()), "{what}: no edit");
        let e = merge(&t.desc_path, &key(), &MergeOptions::default());
        let e = match e {
            Err(e) => e.to_string(),
            Ok(r) => panic!("{what}: merged {r:?}"),
        };
        eprintln!("{what}: {e}");
        tamper(&t, |s| s);
        assert_eq!(snapshot(&t.root), before, "{what}");
    }
    // Placeholders never leave the output folder either.
    tamper(&t, |s| s.replace("\"baked.glb\"", "\"../baked.glb\""));
    let tampered = JobDesc::from_json(
        &std::fs::read_to_string(&t.desc_path).unwrap(),
        &t.desc_path,
    )
    .unwrap();
    assert!(write_placeholders(&tampered).is_err());
    tamper(&t, |s| s);
    assert_eq!(snapshot(&t.root), before);
    // The untampered job still merges.
    merge(&t.desc_path, &key(), &MergeOptions::default()).unwrap();
}

/// A symlink planted at an output's name is replaced, never written through.
#[cfg(unix)]
#[test]
fn symlinks_in_the_output_folder_are_not_followed() {
    let t = setup(BakeMode::Single, false);
    let victim = t.root.join("victim.txt");
    std::fs::write(&victim, "precious").unwrap();
    let link = t.out.join(format!("atlas_ao_{SIZE}.png"));
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    merge(&t.desc_path, &key(), &MergeOptions::default()).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    assert!(!std::fs::symlink_metadata(&link).unwrap().is_symlink());
}

/// The job folder swapped for a symlink to another folder between the merge's checks and its
/// clean-up (anyone who can write the network folder can do that): the clean-up removes nothing
/// in the other folder, although it holds files with every name a job folder has.
#[cfg(unix)]
#[test]
fn a_job_folder_swapped_for_a_symlink_loses_nothing_at_clean_up() {
    let t = setup(BakeMode::Single, false);
    let victim = t.root.join("victim");
    std::fs::create_dir_all(victim.join(rayfarm_job::jobdesc::PARTS_DIR)).unwrap();
    let mut names = vec![
        FILE_NAME.to_string(),
        rayfarm_job::folder::DESC_MAC_FILE_NAME.to_string(),
        MERGED_MARKER.to_string(),
        t.desc.scene.file.clone(),
    ];
    names.extend(
        t.desc
            .parts
            .iter()
            .take(3)
            .map(|p| format!("parts/{}.{}", p.name, rayfarm_job::parts::PART_EXT)),
    );
    for n in &names {
        std::fs::write(victim.join(n), "precious").unwrap();
    }
    let before = snapshot(&victim);
    std::fs::rename(&t.job_dir, t.root.join("moved-away")).unwrap();
    std::os::unix::fs::symlink(&victim, &t.job_dir).unwrap();
    let (removed, left) =
        rayfarm_job::merge::remove_job_dir(&t.job_dir, &AnyJobDesc::Bake(t.desc.clone()));
    assert!(!removed);
    assert_eq!(left, vec![t.job_dir.clone()]);
    assert_eq!(snapshot(&victim), before);
    assert!(std::fs::symlink_metadata(&t.job_dir).unwrap().is_symlink());
}

/// A job.desc copied into some other folder is refused before anything is read or removed.
#[test]
fn job_desc_outside_its_job_folder_is_refused() {
    let t = setup(BakeMode::Single, false);
    let other = t.root.join("home");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("keep.txt"), "x").unwrap();
    let mac = rayfarm_job::folder::DESC_MAC_FILE_NAME;
    std::fs::copy(&t.desc_path, other.join(FILE_NAME)).unwrap();
    std::fs::copy(t.job_dir.join(mac), other.join(mac)).unwrap();
    let before = snapshot(&t.root);
    // The MAC binds the job id the folder is named after.
    let e = merge(&other.join(FILE_NAME), &key(), &MergeOptions::default()).unwrap_err();
    assert!(e.to_string().contains("job.desc.mac does not match"), "{e}");
    assert_eq!(snapshot(&t.root), before);
    // Even a folder that happens to have the job's name loses only the job's own files.
    let same = t.root.join("x").join(&t.desc.job_id);
    std::fs::create_dir_all(&same).unwrap();
    std::fs::write(same.join("keep.txt"), "x").unwrap();
    std::fs::copy(&t.desc_path, same.join(FILE_NAME)).unwrap();
    std::fs::copy(t.job_dir.join(mac), same.join(mac)).unwrap();
    std::fs::write(
        same.join(MERGED_MARKER),
        marker_seal(&t.desc_path, &t.desc.job_id).sealed_marker("rayfarm merge\n"),
    )
    .unwrap();
    let r = merge(&same.join(FILE_NAME), &key(), &MergeOptions::default()).unwrap();
    assert!(r.already_merged && !r.job_dir_removed);
    assert_eq!(r.left_in_job_dir, vec![same.join("keep.txt")]);
}

#[test]
fn placeholder_then_result_sizes_match() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_placeholder(dir.path(), "Floor_ao_16x8", 16, 8).unwrap();
    let img = image::open(&files[1]).unwrap();
    assert_eq!((img.width(), img.height()), (16, 8));
}

/// A job.desc that passes validation but does not fit its scene is refused before anything is
/// written: an object of the atlas without a layer, a mesh the scene lacks, another scene.
#[test]
fn job_not_fitting_its_scene_is_refused_before_writing() {
    // Output 0 (complete) loses the wall's layer: the wall's texels have no owner film.
    let t = setup_edited(BakeMode::Multi, false, |d| {
        let wall: Vec<String> = d
            .parts
            .iter()
            .filter(|p| p.mesh == Some(1) && d.outputs[0].parts.contains(&p.name))
            .map(|p| p.name.clone())
            .collect();
        d.outputs[0].parts.retain(|n| !wall.contains(n));
        d.parts.retain(|p| !wall.contains(&p.name));
        d.validate().unwrap();
    });
    let before = snapshot(&t.root);
    let e = merge(&t.desc_path, &key(), &MergeOptions::default()).unwrap_err();
    assert!(matches!(e, MergeError::Assemble { .. }), "{e}");
    assert!(
        e.to_string().contains("object 'Wall', which has no layer"),
        "{e}"
    );
    assert_eq!(snapshot(&t.root), before);

    let t = setup(BakeMode::Single, false);
    let before = snapshot(&t.root);
    let mut d = t.desc.clone();
    d.bake.maps[0].meshes[0] = 7;
    for o in &mut d.outputs {
        o.atlas_meshes[0] = 7;
    }
    d.validate().unwrap();
    write_desc_text(&t.desc_path, &d.to_json());
    let e = merge(&t.desc_path, &key(), &MergeOptions::default()).unwrap_err();
    assert!(e.to_string().contains("mesh 7 does not exist"), "{e}");
    tamper(&t, |s| s);
    // Another scene in the job folder (same size, another content hash), or a shorter one.
    let scene_path = t.job_dir.join("scene.rfscene");
    let original = std::fs::read(&scene_path).unwrap();
    let mut other = original.clone();
    other[40] ^= 1;
    for blob in [&other[..], &original[..original.len() - 1]] {
        std::fs::write(&scene_path, blob).unwrap();
        let e = merge(&t.desc_path, &key(), &MergeOptions::default()).unwrap_err();
        assert!(e.to_string().contains("the job folder is damaged"), "{e}");
    }
    std::fs::write(&scene_path, &original).unwrap();
    assert_eq!(snapshot(&t.root), before);
}

/// A FIFO planted at a part's name (or the job.desc's, or its MAC's) is refused at once: its
/// open blocked, waiting for a writer, and `rayfarm merge` and the manager's dispatch with it.
#[cfg(unix)]
#[test]
fn a_fifo_in_the_job_folder_is_refused_without_blocking() {
    fn mkfifo(p: &Path) {
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(
            unsafe { libc::mkfifo(c.as_ptr(), 0o644) },
            0,
            "mkfifo {}",
            p.display()
        );
    }
    for victim in ["part", FILE_NAME, rayfarm_job::folder::DESC_MAC_FILE_NAME] {
        let t = setup(BakeMode::Single, false);
        let path = if victim == "part" {
            t.job_dir
                .join("parts")
                .join(format!("{}.rfpart", t.desc.parts[0].name))
        } else {
            t.job_dir.join(victim)
        };
        std::fs::remove_file(&path).unwrap();
        mkfifo(&path);
        let (tx, rx) = std::sync::mpsc::channel();
        let desc = t.desc_path.clone();
        std::thread::spawn(move || {
            let _ = tx.send(merge(&desc, &key(), &MergeOptions::default()).map(|_| ()));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("merge blocked on a FIFO at the {victim}'s name"));
        assert!(r.is_err(), "a FIFO at the {victim}'s name was merged");
        // Unblock nothing is waiting; the folder is the test's.
        std::fs::remove_file(&path).unwrap();
    }
}

/// Session 18's fuzzing of job folders, kept as a bounded test: 60 seeded mutations of what a
/// writer without the farm key controls (the bytes of parts, job.desc, its MAC, the scene and
/// the `merged` marker; files swapped for folders, symlinks to a victim folder or FIFOs;
/// `parts/` swapped for a file or a symlink). For each, the manager's check and the merge must
/// return within 10 s without panicking, leave the victim folder as it was, and either refuse
/// with the output folder untouched (the placeholders) or write exactly what an untouched job
/// writes. Nothing else is allowed.
#[cfg(unix)]
#[test]
fn keyless_mutations_of_a_job_folder_are_refused_or_harmless() {
    // The outputs of the untouched job, relative to the output folder.
    let reference = {
        let t = setup(BakeMode::Multi, true);
        merge(&t.desc_path, &key(), &MergeOptions::default()).unwrap();
        snapshot(&t.out)
    };
    let mut z = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move |n: usize| -> usize {
        z ^= z << 13;
        z ^= z >> 7;
        z ^= z << 17;
        (z % n as u64) as usize
    };
    let (mut refused, mut merged) = (0, 0);
    for case in 0..60 {
        let t = setup(BakeMode::Multi, true);
        let victim = t.root.join("victim");
        std::fs::create_dir(&victim).unwrap();
        std::fs::write(victim.join("precious.txt"), "precious").unwrap();
        let victim_before = snapshot(&victim);
        let out_before = snapshot(&t.out);
        let parts_dir = t.job_dir.join("parts");
        let part = |i: usize| {
            parts_dir.join(format!(
                "{}.{}",
                t.desc.parts[i % t.desc.parts.len()].name,
                rayfarm_job::parts::PART_EXT
            ))
        };
        let targets = [
            part(rand(1000)),
            t.job_dir.join(FILE_NAME),
            t.job_dir.join(rayfarm_job::folder::DESC_MAC_FILE_NAME),
            t.job_dir.join(&t.desc.scene.file),
            t.job_dir.join(MERGED_MARKER),
        ];
        let target = targets[rand(targets.len())].clone();
        let kind = rand(9);
        let what = format!("case {case}: mutation {kind} of {}", target.display());
        let original = std::fs::read(&target).ok();
        match kind {
            // Bytes flipped in place (or a marker of random bytes).
            0 | 1 => {
                let mut b = original.clone().unwrap_or_else(|| vec![7; 64]);
                for _ in 0..1 + rand(8) {
                    let i = rand(b.len().max(1));
                    if i < b.len() {
                        b[i] ^= 1 << rand(8);
                    }
                }
                std::fs::write(&target, b).unwrap();
            }
            // Truncated, possibly to nothing.
            2 => {
                let b = original.clone().unwrap_or_default();
                let n = rand(b.len().max(1));
                std::fs::write(&target, &b[..n.min(b.len())]).unwrap();
            }
            // Garbage appended.
            3 => {
                let mut b = original.clone().unwrap_or_default();
                b.extend((0..1 + rand(4096)).map(|i| (i * 31) as u8));
                std::fs::write(&target, b).unwrap();
            }
            // A folder in the file's place.
            4 => {
                let _ = std::fs::remove_file(&target);
                std::fs::create_dir(&target).unwrap();
            }
            // A symlink to a file in the victim folder.
            5 => {
                let _ = std::fs::remove_file(&target);
                std::os::unix::fs::symlink(victim.join("precious.txt"), &target).unwrap();
            }
            // A FIFO.
            6 => {
                let _ = std::fs::remove_file(&target);
                let c = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).unwrap();
                // SAFETY: a valid NUL-terminated path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "{what}");
            }
            // `parts/` replaced by a file.
            7 => {
                std::fs::remove_dir_all(&parts_dir).unwrap();
                std::fs::write(&parts_dir, "not a folder").unwrap();
            }
            // `parts/` replaced by a symlink to the victim folder, holding copies of the parts.
            _ => {
                for e in std::fs::read_dir(&parts_dir).unwrap() {
                    let e = e.unwrap();
                    std::fs::copy(e.path(), victim.join(e.file_name())).unwrap();
                }
                std::fs::remove_dir_all(&parts_dir).unwrap();
                std::os::unix::fs::symlink(&victim, &parts_dir).unwrap();
            }
        }
        // Snapshots compared by their differences (the files are large).
        let differ = |a: &BTreeMap<PathBuf, Vec<u8>>, b: &BTreeMap<PathBuf, Vec<u8>>| {
            let keys: std::collections::BTreeSet<&PathBuf> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| k.display().to_string())
                .collect::<Vec<_>>()
        };
        let victim_mutated = snapshot(&victim);
        let (tx, rx) = std::sync::mpsc::channel();
        let (desc_path, job_dir, desc) = (t.desc_path.clone(), t.job_dir.clone(), t.desc.clone());
        std::thread::spawn(move || {
            let seal = AnyJobDesc::read(&desc_path, &key()).ok().map(|(_, s)| s);
            if let Some(seal) = seal {
                let _ = check(&job_dir, &desc, &seal);
            }
            let _ = tx.send(merge(&desc_path, &key(), &MergeOptions::default()).map(|_| ()));
        });
        let r = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{what}: check or merge hung or panicked"));
        let changed = differ(&snapshot(&victim), &victim_mutated);
        assert!(
            changed.is_empty(),
            "{what}: the victim changed: {changed:?}"
        );
        assert_eq!(
            victim_mutated
                .get(Path::new("precious.txt"))
                .map(|b| b.as_slice()),
            victim_before
                .get(Path::new("precious.txt"))
                .map(|b| b.as_slice()),
            "{what}"
        );
        match r {
            Err(e) => {
                refused += 1;
                let changed = differ(&snapshot(&t.out), &out_before);
                assert!(
                    changed.is_empty(),
                    "{what}: refused ({e}) but wrote {changed:?}"
                );
            }
            Ok(()) => {
                merged += 1;
                let changed = differ(&snapshot(&t.out), &reference);
                assert!(changed.is_empty(), "{what}: merged, but {changed:?} differ");
            }
        }
        // Leave no FIFO or symlink for the temporary folder's clean-up to trip on.
        let _ = std::fs::remove_file(&target);
    }
    eprintln!("{refused} mutations refused, {merged} harmless");
    assert!(refused > 20, "{refused} refused");
}

/// Peak resident memory of this test process (VmHWM), in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

/// The attack: someone who can write the network folder but has no key replaces a finished
/// job's scene with a file of the same size that keeps the genuine header (so its length and
/// header hash match job.desc) but claims a body of 1 GiB: a few kilobytes of zstd blocks that
/// each expand one byte 128 Ki-fold, padded with a skippable frame. `merge` decoded it, holding
/// the whole claimed body before it could check the hash (1 GiB of memory for a 1 MB file).
/// Now the body is checked against the hash in constant memory first, and the merge refuses
/// the job by the scene's name.
#[test]
fn a_scene_that_claims_a_huge_body_is_refused_in_constant_memory() {
    // A scene with an unused 512x512 noise image, so that its blob is about 1 MB.
    let mut s = scene();
    let mut z = 0x2545_f491_4f6c_dd1du64;
    let noise = (0..512 * 512 * 4)
        .map(|_| {
            z ^= z << 13;
            z ^= z >> 7;
            z ^= z << 17;
            z as u8
        })
        .collect();
    s.images.push(rayfarm_scene::Image {
        name: "noise".into(),
        width: 512,
        height: 512,
        rgba8: noise,
    });
    let t = setup_scene(BakeMode::Multi, true, s, |_| {});
    let scene_path = t.job_dir.join(&t.desc.scene.file);
    let genuine = std::fs::read(&scene_path).unwrap();
    let header_len = rayfarm_scene::blob::HEADER_LEN;
    let claim: u64 = 1 << 30;
    let mut bomb = Vec::new();
    {
        let mut enc = zstd::stream::write::Encoder::new(&mut bomb, 1).unwrap();
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..claim >> 20 {
            std::io::Write::write_all(&mut enc, &zeros).unwrap();
        }
        enc.finish().unwrap();
    }
    let pad = genuine.len() - header_len - bomb.len() - 8;
    bomb.extend_from_slice(&0x184D_2A50u32.to_le_bytes());
    bomb.extend_from_slice(&(pad as u32).to_le_bytes());
    bomb.resize(bomb.len() + pad, 0);
    let mut forged = genuine[..header_len].to_vec();
    forged[16..24].copy_from_slice(&claim.to_le_bytes());
    forged[24..32].copy_from_slice(&(bomb.len() as u64).to_le_bytes());
    forged.extend_from_slice(&bomb);
    assert_eq!(forged.len(), genuine.len());
    std::fs::write(&scene_path, &forged).unwrap();
    let out_before = snapshot(&t.out);
    let before = peak_rss_mib();
    let err = merge(&t.desc_path, &key(), &MergeOptions::default()).unwrap_err();
    let grown = peak_rss_mib().saturating_sub(before);
    assert!(grown < 256, "the merge's memory grew by {grown} MiB");
    assert!(
        matches!(&err, MergeError::Scene { path, reason }
            if path == &scene_path && reason.contains("hash mismatch")),
        "{err}"
    );
    assert_eq!(snapshot(&t.out), out_before, "the outputs were touched");
}

/// The attack: a writer without the key swaps a new job folder for a symlink to another folder
/// while the client prepares the job (a render client compiles its frames for seconds between
/// making the folder and writing job.desc). job.desc and its MAC were written by path, so into
/// that other folder; now they go through a handle opened without following a symlink, and
/// the other folder is left as it was.
#[test]
fn a_job_folder_swapped_for_a_symlink_gets_no_job_desc_elsewhere() {
    let t = setup(BakeMode::Single, false);
    let victim = t.root.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("precious.txt"), "precious").unwrap();
    let before = snapshot(&victim);
    std::fs::rename(&t.job_dir, t.root.join("moved-away")).unwrap();
    std::os::unix::fs::symlink(&victim, &t.job_dir).unwrap();
    let e = t.desc.write(&t.job_dir, &key()).unwrap_err();
    assert_eq!(snapshot(&victim), before, "job.desc was written elsewhere");
    assert!(
        e.to_string().contains(&t.job_dir.display().to_string()),
        "{e}"
    );
}
