//! Texture level of detail from ray cones: minified textures are filtered over the pixel's
//! footprint, magnified ones and baking read the full-resolution image, and the result stays a
//! pure function of the ray.

mod common;
use common::*;
use glam::{Vec2, Vec3, Vec3A};
use rayfarm_render::bvh::Hit;
use rayfarm_render::texture::{Footprint, Textures};
use rayfarm_render::{RenderScene, RenderSettings};
use rayfarm_scene::{
    Camera, CompiledScene, Environment, Image, Material, Projection, Texture, TextureRef, WrapMode,
};

/// A 200 x 200 emissive ground plane at y = 0 (black base colour, so pixels show the texture
/// alone) with a black-and-white 2x2 checker repeated 400 times along each side: texels of
/// 0.25 units.
fn checker_plane() -> CompiledScene {
    let mut s = CompiledScene::default();
    let (b, w) = ([0u8, 0, 0, 255], [255u8, 255, 255, 255]);
    s.images.push(Image {
        name: "checker".into(),
        width: 2,
        height: 2,
        rgba8: [b, w, w, b].concat(),
    });
    s.textures.push(Texture {
        image: 0,
        wrap_s: WrapMode::Repeat,
        wrap_t: WrapMode::Repeat,
        nearest: false,
    });
    let mut tex = TextureRef::new(0, 0);
    tex.transform = [400.0, 0.0, 0.0, 0.0, 400.0, 0.0];
    let m = s.add_material(Material {
        base_color: [0.0, 0.0, 0.0, 1.0],
        emissive: [1.0; 3],
        emissive_texture: Some(tex),
        double_sided: true,
        ..Default::default()
    });
    s.add_quad(
        "ground",
        Vec3::new(-100.0, 0.0, 0.0),
        Vec3::new(200.0, 0.0, 0.0),
        Vec3::new(0.0, 0.0, -200.0),
        m,
    );
    s.environment = Environment::Black;
    s
}

/// Half a unit above the plane, looking slightly down at it: most of the ground is seen at a
/// grazing angle, far away.
fn grazing_camera() -> Camera {
    let f = Vec3::new(0.0, -0.2, -1.0).normalize();
    let r = f.cross(Vec3::Y).normalize();
    Camera {
        name: "grazing".into(),
        projection: Projection::Perspective {
            yfov: 60f32.to_radians(),
            aspect: None,
        },
        position: [0.0, 0.5, 0.0],
        right: r.to_array(),
        up: r.cross(f).to_array(),
        forward: f.to_array(),
    }
}

fn settings() -> RenderSettings {
    RenderSettings {
        width: 64,
        height: 48,
        spp: 4,
        max_bounces: 0,
        seed: 7,
        camera: grazing_camera(),
    }
}

/// The horizon is at row 15; rows 16..23 see the ground far away at a grazing angle, many
/// texels per pixel. (From row 27 down the texture is magnified: both renders are identical.)
fn far_rows(px: &[[f32; 3]]) -> Vec<f32> {
    px[16 * 64..23 * 64].iter().map(|p| p[0]).collect()
}

#[test]
fn distant_checkerboard_averages_to_its_mean_with_mip_levels() {
    let with_mip = RenderScene::new(checker_plane());
    // The same scene with lookups that never leave level 0.
    let mut without_mip = RenderScene::new(checker_plane());
    without_mip.textures = Textures::new();
    let a = far_rows(&render(&with_mip, &settings(), 2, 16, 4));
    let b = far_rows(&render(&without_mip, &settings(), 2, 16, 4));
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len() as f32;
    // The checker's mean is 0.5 in linear light (the pyramid averages decoded values).
    let dev = |v: &[f32]| v.iter().map(|x| (x - 0.5) * (x - 0.5)).sum::<f32>() / v.len() as f32;
    assert!(
        (mean(&a) - 0.5).abs() < 0.03,
        "mean {} with MIP levels",
        mean(&a)
    );
    // Measured: 3e-5 against 6e-3.
    assert!(
        dev(&a) * 20.0 < dev(&b),
        "per-pixel variance around the mean: {} with MIP levels, {} without",
        dev(&a),
        dev(&b)
    );
}

#[test]
fn textured_render_is_the_same_on_any_threads_and_units() {
    let rs = RenderScene::new(checker_plane());
    let s = settings();
    let reference = render(&rs, &s, 1, 8, 4);
    for (threads, tile, spu) in [(2, 13, 1), (3, 64, 2)] {
        let other = render(&rs, &s, threads, tile, spu);
        let same = reference
            .iter()
            .zip(&other)
            .all(|(x, y)| x.map(f32::to_bits) == y.map(f32::to_bits));
        assert!(
            same,
            "{threads} threads, tile {tile}, {spu} samples per unit"
        );
    }
}

/// Pyramids built up front, all at once (`RenderScene::for_images`), render the same bytes as
/// pyramids built by the first lookup that needs them.
#[test]
fn pyramids_built_up_front_render_the_same_bytes() {
    let lazy = RenderScene::new(checker_plane());
    let eager = RenderScene::for_images(checker_plane());
    let s = settings();
    let a = render(&lazy, &s, 2, 16, 4);
    let b = render(&eager, &s, 2, 16, 4);
    assert!(a
        .iter()
        .zip(&b)
        .all(|(x, y)| x.map(f32::to_bits) == y.map(f32::to_bits)));
    // The rows that minify the checker differ from a render without pyramids at all, so the
    // pyramids were used.
    let mut none = RenderScene::new(checker_plane());
    none.textures = Textures::new();
    assert_ne!(far_rows(&render(&none, &s, 2, 16, 4)), far_rows(&b));
}

#[test]
fn baking_reads_textures_at_full_resolution() {
    let rs = RenderScene::new(checker_plane());
    // A grazing direction onto triangle 0, where a camera cone would pick a coarse level.
    let dir = rayfarm_render::math::normalize(Vec3A::new(0.0, -0.05, -1.0));
    // At a texel centre of level 0 (a pure black or white texel).
    let (b1, b2) = (0.3, 0.200625);
    let baked = rs.surface_at(0, b1, b2, dir);
    let hit = Hit {
        t: 1.0,
        u: b1,
        v: b2,
        prim: 0,
    };
    let org = baked.p - dir;
    let level0 = rs.surface_filtered(&hit, org, dir, 0.0);
    let wide = rs.surface_filtered(&hit, org, dir, 1.0);
    assert_eq!(baked.emission.to_array(), level0.emission.to_array());
    // Full resolution is the one bilinear lookup at the point's UVs.
    let t = rs.scene.triangles[0].map(|i| Vec2::from(rs.scene.uv0[i as usize]));
    let uv = t[0] * (1.0 - b1 - b2) + t[1] * b1 + t[2] * b2;
    let r = rs.scene.materials[0].emissive_texture.unwrap();
    let c = rs.textures.sample(
        &rs.scene,
        &r,
        &[uv, Vec2::ZERO],
        true,
        &Footprint::FULL_RESOLUTION,
    );
    assert_eq!(baked.emission.x, c.x);
    // A wide cone reads the 1x1 level: the checker's mean.
    assert!((wide.emission.x - 0.5).abs() < 0.01, "{}", wide.emission);
    assert_ne!(wide.emission.x, level0.emission.x);
}
