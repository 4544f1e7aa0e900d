//! Analytic checks: furnace tests and an area light over a plane, whose answers are known.

mod common;
use common::*;
use glam::Vec3;
use rayfarm_render::RenderSettings;
use rayfarm_scene::{CompiledScene, Environment, Material};

fn furnace_scene(m: Material) -> CompiledScene {
    let mut s = CompiledScene::default();
    let mat = s.add_material(m);
    s.add_sphere("sphere", Vec3::ZERO, 1.0, 48, 96, mat);
    s.environment = Environment::Color([1.0; 3]);
    s
}

fn furnace_settings(spp: u32) -> RenderSettings {
    RenderSettings {
        width: 48,
        height: 48,
        spp,
        max_bounces: 16,
        seed: 1,
        camera: ortho_camera([0.0, 0.0, 5.0], [0.0; 3], 0.9),
    }
}

/// A white Lambertian material with no specular: the base the furnace tests add layers to.
fn white_lambert() -> Material {
    Material {
        base_color: [1.0; 4],
        metallic: 0.0,
        roughness: 1.0,
        specular: 0.0,
        ..Default::default()
    }
}

/// Renders a sphere of `m` in the white furnace and checks that its mean lies in `[lo, hi]`
/// (above `hi` it gains energy, below `lo` it loses more than its model explains).
fn assert_furnace_mean(name: &str, m: Material, lo: f64, hi: f64) {
    let settings = furnace_settings(64);
    let img = quick(furnace_scene(m), &settings);
    let got = sphere_mean(&img, &settings);
    eprintln!("furnace {name}: sphere mean {got:.4}");
    assert!(got <= hi, "{name} gains energy: {got}");
    assert!(got >= lo, "{name} loses too much: {got}");
}

/// A white Lambertian sphere (pure diffuse: specular 0) in a uniform white environment
/// reflects exactly what arrives: every pixel is 1.
#[test]
fn furnace_white_diffuse_sphere_is_one() {
    let img = quick(furnace_scene(white_lambert()), &furnace_settings(64));
    let mean = mean(&img);
    for c in mean {
        assert!((c - 1.0).abs() < 0.01, "mean {mean:?}");
    }
    for p in &img {
        assert!((p[0] - 1.0).abs() < 0.05, "pixel {p:?}");
    }
}

/// Directional albedo of the white-metal GGX lobe for a viewing cosine, by quadrature of the
/// same BSDF the renderer uses (an independent midpoint rule over the hemisphere).
fn ggx_albedo(roughness: f32, mu: f32) -> f64 {
    let b = rayfarm_render::bsdf::Bsdf::base(
        glam::Vec3A::ONE,
        1.0,
        (roughness * roughness).max(rayfarm_render::bsdf::MIN_ALPHA),
        glam::Vec3A::splat(0.04),
        1.0,
        0.0,
    );
    let wo = glam::Vec3A::new((1.0 - mu * mu).max(0.0).sqrt(), 0.0, mu);
    // Midpoint rule over half vectors, spaced by the inverse CDF of D(h) cos(theta_h) so the
    // grid follows the lobe however sharp it is: tan^2(theta_h) = alpha^2 u / (1 - u).
    let a2 = (b.alpha as f64).powi(2);
    let (nu, np) = (2000, 256);
    let mut sum = 0.0f64;
    for i in 0..nu {
        let u = (i as f64 + 0.5) / nu as f64;
        let cos2 = 1.0 / (1.0 + a2 * u / (1.0 - u));
        let (ch, sh) = (cos2.sqrt(), (1.0 - cos2).sqrt());
        let d = a2 / (std::f64::consts::PI * (cos2 * (a2 - 1.0) + 1.0).powi(2));
        for j in 0..np {
            let phi = (j as f64 + 0.5) / np as f64 * std::f64::consts::TAU;
            let h = glam::DVec3::new(sh * phi.cos(), sh * phi.sin(), ch);
            let wo64 = wo.as_dvec3();
            let oh = wo64.dot(h);
            if oh <= 0.0 {
                continue;
            }
            let wi = 2.0 * oh * h - wo64;
            if wi.z <= 0.0 {
                continue;
            }
            let (f, _) = b.eval(wo, wi.as_vec3().into());
            // pdf of h is D cos(theta_h) / (2 pi) per unit (u, phi); dwi = 4 (wo.h) dh.
            sum += f.x as f64 * wi.z * 4.0 * oh / (d * ch);
        }
    }
    sum / (nu * np) as f64
}

/// White metallic GGX spheres: single-scattering GGX loses the energy of light that would
/// scatter between microfacets, so the image equals the lobe's directional albedo: 1 for smooth
/// metal, less for rough metal at grazing angles. We check the image against that albedo and
/// that smooth spheres render 1 within 1%.
#[test]
fn furnace_ggx_metal_spheres() {
    for &roughness in &[0.05f32, 0.25, 0.5, 1.0] {
        let m = Material {
            base_color: [1.0; 4],
            metallic: 1.0,
            roughness,
            ..Default::default()
        };
        let settings = furnace_settings(64);
        let img = quick(furnace_scene(m), &settings);
        // Compare each pixel that sees the sphere with the albedo at its viewing angle.
        let (w, h) = (settings.width as usize, settings.height as usize);
        let mut got = 0.0f64;
        let mut want = 0.0f64;
        let mut n = 0usize;
        let mut table = std::collections::HashMap::new();
        for y in 0..h {
            for x in 0..w {
                let sx = (2.0 * (x as f32 + 0.5) / w as f32 - 1.0) * 0.9;
                let sy = (1.0 - 2.0 * (y as f32 + 0.5) / h as f32) * 0.9;
                let r2 = sx * sx + sy * sy;
                if r2 > 0.8 {
                    continue; // near the silhouette a pixel mixes sphere and background
                }
                let mu = (1.0 - r2).sqrt();
                let key = (mu * 200.0).round() as i32;
                let a = *table
                    .entry(key)
                    .or_insert_with(|| ggx_albedo(roughness, key as f32 / 200.0));
                got += img[y * w + x][0] as f64;
                want += a;
                n += 1;
            }
        }
        let (got, want) = (got / n as f64, want / n as f64);
        eprintln!("roughness {roughness}: image {got:.4}, albedo {want:.4}");
        assert!(
            (got - want).abs() < 0.01 * want,
            "roughness {roughness}: {got} vs {want}"
        );
        if roughness <= 0.25 {
            assert!(
                (got - 1.0).abs() < 0.01,
                "smooth metal should conserve energy: {got}"
            );
        }
    }
}

/// Mean over the pixels that see the sphere of `furnace_scene` (away from the silhouette).
fn sphere_mean(img: &[[f32; 3]], settings: &RenderSettings) -> f64 {
    let (w, h) = (settings.width as usize, settings.height as usize);
    let (mut sum, mut n) = (0.0f64, 0usize);
    for y in 0..h {
        for x in 0..w {
            let sx = (2.0 * (x as f32 + 0.5) / w as f32 - 1.0) * 0.9;
            let sy = (1.0 - 2.0 * (y as f32 + 0.5) / h as f32) * 0.9;
            if sx * sx + sy * sy <= 0.8 {
                sum += img[y * w + x].iter().map(|&c| c as f64).sum::<f64>() / 3.0;
                n += 1;
            }
        }
    }
    sum / n as f64
}

/// White furnace for the layered materials: a white sheen (KHR_materials_sheen) or a white
/// clearcoat (KHR_materials_clearcoat) over a white Lambertian base, in a uniform white
/// environment. The albedo scaling and the Fresnel-weighted coat must not create energy: the
/// sphere's mean stays at most 1 (plus noise), and not far below it (the single-scattering
/// sheen and coat lobes lose a little at grazing angles).
#[test]
fn furnace_sheen_and_clearcoat_do_not_gain_energy() {
    let white = white_lambert();
    let cases = [
        ("sheen r=0.07", [1.0, 0.07, 0.0, 0.0]),
        ("sheen r=0.5", [1.0, 0.5, 0.0, 0.0]),
        ("sheen r=1", [1.0, 1.0, 0.0, 0.0]),
        ("clearcoat r=0.05", [0.0, 0.0, 1.0, 0.05]),
        ("clearcoat r=0.5", [0.0, 0.0, 1.0, 0.5]),
        ("sheen r=0.5 + clearcoat r=0.3", [1.0, 0.5, 1.0, 0.3]),
    ];
    for (name, [sheen, sheen_r, coat, coat_r]) in cases {
        let m = Material {
            sheen_color: [sheen; 3],
            sheen_roughness: sheen_r,
            clearcoat: coat,
            clearcoat_roughness: coat_r,
            ..white.clone()
        };
        assert_furnace_mean(name, m, 0.9, 1.01);
    }
}

/// White furnace for KHR_materials_diffuse_transmission, _anisotropy and _iridescence.
/// Diffuse transmission only moves energy between the hemispheres, so a white sphere that
/// transmits renders 1. Anisotropic GGX is single-scattering like the isotropic lobe (it
/// loses a share at grazing angles and more the rougher it gets along its direction); the
/// thin film changes the Fresnel term per channel, but a white dielectric under it still
/// reflects at most what arrives.
#[test]
fn furnace_new_lobes() {
    let white = white_lambert();
    let cases = [
        (
            "diffuse transmission 1",
            Material {
                diffuse_transmission: 1.0,
                ..white.clone()
            },
            (0.99, 1.01),
        ),
        (
            "diffuse transmission 0.5",
            Material {
                diffuse_transmission: 0.5,
                ..white.clone()
            },
            (0.99, 1.01),
        ),
        (
            "anisotropic metal r=0.3 strength 0.7",
            Material {
                metallic: 1.0,
                roughness: 0.3,
                anisotropy_strength: 0.7,
                ..white.clone()
            },
            (0.75, 1.01),
        ),
        (
            "rough glass r=0.3",
            Material {
                roughness: 0.3,
                specular: 1.0,
                transmission: 1.0,
                thickness: 1.0,
                ..white.clone()
            },
            (0.85, 1.01),
        ),
        (
            "rough dispersive glass r=0.5",
            Material {
                roughness: 0.5,
                specular: 1.0,
                transmission: 1.0,
                thickness: 1.0,
                dispersion: 1.0,
                ..white.clone()
            },
            (0.8, 1.01),
        ),
        (
            "iridescent dielectric r=0.2, 400 nm",
            Material {
                roughness: 0.2,
                specular: 1.0,
                iridescence: 1.0,
                ..white.clone()
            },
            (0.9, 1.01),
        ),
    ];
    for (name, m, (lo, hi)) in cases {
        assert_furnace_mean(name, m, lo, hi);
    }
}

/// KHR_materials_diffuse_transmission: a sheet that transmits diffusely (black base, no
/// specular, transmission colour c) lit from behind by a square emitter of radiance 1 at
/// distance 1 shows `c E / pi` to a camera in front, E being the irradiance at its centre.
#[test]
fn diffuse_transmission_sheet_matches_analytic_irradiance() {
    let mut s = CompiledScene::default();
    let colour = [1.0f32, 0.5, 0.25];
    let sheet = s.add_material(Material {
        base_color: [0.0, 0.0, 0.0, 1.0],
        metallic: 0.0,
        specular: 0.0,
        diffuse_transmission: 1.0,
        diffuse_transmission_color: colour,
        ..Default::default()
    });
    let light = s.add_material(Material {
        base_color: [0.0, 0.0, 0.0, 1.0],
        emissive: [1.0; 3],
        ..Default::default()
    });
    s.add_quad(
        "sheet",
        Vec3::new(-2.0, -2.0, 0.0),
        Vec3::X * 4.0,
        Vec3::Y * 4.0,
        sheet,
    );
    s.add_quad(
        "light",
        Vec3::new(-3.0, -3.0, -1.0),
        Vec3::X * 6.0,
        Vec3::Y * 6.0,
        light,
    );
    let settings = RenderSettings {
        width: 16,
        height: 16,
        spp: 256,
        max_bounces: 4,
        seed: 5,
        camera: ortho_camera([0.0, 0.0, 5.0], [0.0; 3], 0.05),
    };
    let got = mean(&quick(s, &settings));
    let e = square_light_irradiance(1.0, 3.0, 1.0);
    for c in 0..3 {
        let want = colour[c] as f64 * e / std::f64::consts::PI;
        eprintln!("channel {c}: {:.4}, expected {want:.4}", got[c]);
        assert!(
            (got[c] - want).abs() < 0.01 * want,
            "channel {c}: {} vs {want}",
            got[c]
        );
    }
}

/// Adds the closed box `lo..hi` with outward-facing quads.
fn add_box(s: &mut CompiledScene, lo: Vec3, hi: Vec3, material: u32) {
    let d = hi - lo;
    let (x, y, z) = (Vec3::X * d.x, Vec3::Y * d.y, Vec3::Z * d.z);
    s.add_quad("top", Vec3::new(lo.x, lo.y, hi.z), x, y, material);
    s.add_quad("bottom", lo, y, x, material);
    s.add_quad("right", Vec3::new(hi.x, lo.y, lo.z), y, z, material);
    s.add_quad("left", lo, z, y, material);
    s.add_quad("back", Vec3::new(lo.x, hi.y, lo.z), z, x, material);
    s.add_quad("front", lo, x, z, material);
}

/// A smooth glass slab (IOR 1.5, thickness 0.5, attenuationColor (0.5, 0.25, 1) at
/// attenuationDistance 1, the given dispersion) in front of an emitter of radiance 1, seen at
/// normal incidence against a black sky: the mean transmitted radiance per channel.
fn glass_slab_transmission(dispersion: f32, spp: u32) -> [f64; 3] {
    slab(dispersion, 0.0, spp)
}

/// The slab of [`glass_slab_transmission`] with the given roughness too.
fn slab(dispersion: f32, roughness: f32, spp: u32) -> [f64; 3] {
    let mut s = CompiledScene::default();
    let glass = s.add_material(Material {
        base_color: [1.0; 4],
        metallic: 0.0,
        roughness,
        transmission: 1.0,
        ior: 1.5,
        thickness: 0.5,
        attenuation_color: [0.5, 0.25, 1.0],
        attenuation_distance: 1.0,
        dispersion,
        ..Default::default()
    });
    let light = s.add_material(Material {
        base_color: [0.0, 0.0, 0.0, 1.0],
        emissive: [1.0; 3],
        ..Default::default()
    });
    add_box(
        &mut s,
        Vec3::new(-2.0, -2.0, 0.0),
        Vec3::new(2.0, 2.0, 0.5),
        glass,
    );
    s.add_quad(
        "light",
        Vec3::new(-3.0, -3.0, -1.0),
        Vec3::X * 6.0,
        Vec3::Y * 6.0,
        light,
    );
    let settings = RenderSettings {
        width: 24,
        height: 24,
        spp,
        max_bounces: 16,
        seed: 3,
        camera: ortho_camera([0.0, 0.0, 5.0], [0.0; 3], 0.5),
    };
    mean(&quick(s, &settings))
}

/// Checks `got` against the slab's analytic transmission: each face transmits 1 - F
/// (F = 0.04), the glass keeps a = attenuationColor^(0.5 / 1) per crossing, and light
/// bouncing between the faces adds a geometric series: T = (1 - F)² a / (1 - F² a²).
fn assert_slab_transmission(got: [f64; 3], tolerance: f64) {
    let f = 0.04f64;
    for (c, colour) in [0.5f64, 0.25, 1.0].iter().enumerate() {
        let a = colour.powf(0.5);
        let want = (1.0 - f).powi(2) * a / (1.0 - f * f * a * a);
        eprintln!("channel {c}: transmitted {:.4}, expected {want:.4}", got[c]);
        assert!(
            (got[c] - want).abs() < tolerance * want,
            "channel {c}: {} vs {want}",
            got[c]
        );
    }
}

/// KHR_materials_transmission with roughness: a slightly rough slab (roughness 0.1) scatters
/// the transmitted light into a narrow cone; seen from straight above in front of an emitter
/// larger than that cone, it transmits what the smooth slab does, within 2% (the rough
/// interfaces' single-scattering loss and shadowing).
#[test]
fn rough_glass_slab_transmits_like_a_smooth_one() {
    assert_slab_transmission(slab(0.0, 0.1, 128), 0.02);
}

/// KHR_materials_volume: Beer-Lambert absorption through the slab.
#[test]
fn glass_slab_absorbs_as_beer_lambert_says() {
    assert_slab_transmission(glass_slab_transmission(0.0, 64), 0.01);
}

/// KHR_materials_dispersion: at normal incidence every wavelength goes straight through the
/// slab, so dispersion must not change what it transmits; the path picks one channel at the
/// first refraction (weight 3) and keeps it, which is unbiased. Dispersion 1 is an Abbe
/// number of 20.
#[test]
fn dispersive_slab_transmits_like_a_plain_one_at_normal_incidence() {
    assert_slab_transmission(glass_slab_transmission(1.0, 128), 0.02);
}

/// Irradiance at the centre under a parallel square light of radiance L, by the form factor of a
/// rectangle (four corner-aligned quarters).
fn square_light_irradiance(l: f64, half: f64, height: f64) -> f64 {
    let x = half / height;
    let y = x;
    let f = 1.0 / (2.0 * std::f64::consts::PI)
        * (x / (1.0 + x * x).sqrt() * (y / (1.0 + x * x).sqrt()).atan()
            + y / (1.0 + y * y).sqrt() * (x / (1.0 + y * y).sqrt()).atan());
    std::f64::consts::PI * l * 4.0 * f
}

/// A grey Lambertian floor (20 x 20 at y = 0, double-sided) under a square lamp of radiance 3,
/// `half` wide each way from the axis, `height` above it, facing down.
fn floor_under_square_lamp(half: f32, height: f32) -> CompiledScene {
    let mut s = CompiledScene::default();
    let floor = s.add_material(Material {
        base_color: [0.5, 0.5, 0.5, 1.0],
        metallic: 0.0,
        specular: 0.0,
        double_sided: true,
        ..Default::default()
    });
    let light = s.add_material(Material {
        base_color: [0.0, 0.0, 0.0, 1.0],
        metallic: 0.0,
        specular: 0.0,
        emissive: [3.0, 3.0, 3.0],
        ..Default::default()
    });
    s.add_quad(
        "floor",
        Vec3::new(-10.0, 0.0, 10.0),
        Vec3::new(20.0, 0.0, 0.0),
        Vec3::new(0.0, 0.0, -20.0),
        floor,
    );
    s.add_quad(
        "lamp",
        Vec3::new(-half, height, -half),
        Vec3::new(2.0 * half, 0.0, 0.0),
        Vec3::new(0.0, 0.0, 2.0 * half),
        light,
    );
    s
}

#[test]
fn area_light_over_plane_matches_analytic_irradiance() {
    // A 1x1 light at height 1, facing down.
    let s = floor_under_square_lamp(0.5, 1.0);
    let settings = RenderSettings {
        width: 8,
        height: 8,
        spp: 1024,
        max_bounces: 0,
        seed: 3,
        camera: ortho_camera([3.0, 0.6, 0.0], [0.0; 3], 0.002),
    };
    let img = quick(s, &settings);
    let got = mean(&img)[0];
    let want = 0.5 / std::f64::consts::PI * square_light_irradiance(3.0, 0.5, 1.0);
    eprintln!("radiance {got:.5}, analytic {want:.5}");
    assert!((got - want).abs() < 0.01 * want, "{got} vs {want}");
}

/// Irradiance at the origin (normal +Y) from a convex polygon of radiance `l` (vertices in
/// order): Lambert's formula, E = l / 2 * sum over edges of the angle the edge subtends times
/// the cosine of the plane it spans with the origin.
fn polygon_irradiance(l: f64, x: [f64; 3], verts: &[[f64; 3]]) -> f64 {
    let unit = |v: [f64; 3]| {
        let d = [v[0] - x[0], v[1] - x[1], v[2] - x[2]];
        let n = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
        [d[0] / n, d[1] / n, d[2] / n]
    };
    let mut sum = 0.0;
    for i in 0..verts.len() {
        let (a, b) = (unit(verts[i]), unit(verts[(i + 1) % verts.len()]));
        let c = [
            a[1] * b[2] - a[2] * b[1],
            a[2] * b[0] - a[0] * b[2],
            a[0] * b[1] - a[1] * b[0],
        ];
        let cn = (c[0] * c[0] + c[1] * c[1] + c[2] * c[2]).sqrt();
        let theta = (a[0] * b[0] + a[1] * b[1] + a[2] * b[2])
            .clamp(-1.0, 1.0)
            .acos();
        sum += theta * c[1] / cn;
    }
    l / 2.0 * sum.abs()
}

/// A floor point beside a low lamp sees it at a grazing angle. Its shadow rays start a little
/// off the floor, towards the lamp's plane; aimed along the direction from the floor point
/// itself, they crossed that plane before their end and the lamp shadowed itself (session 18:
/// points two lamp-widths away lost most of their direct light). The shadow ray now runs from
/// its own origin to the sampled point.
#[test]
fn a_low_lamp_lights_the_floor_beside_it_as_lambert_says() {
    // A 2x2 lamp 0.3 above the floor, facing down.
    let s = floor_under_square_lamp(1.0, 0.3);
    let lamp = [
        [-1.0, 0.3, -1.0],
        [1.0, 0.3, -1.0],
        [1.0, 0.3, 1.0],
        [-1.0, 0.3, 1.0],
    ];
    let rs = rayfarm_render::RenderScene::new(s);
    for x in [1.5f32, 2.0, 3.0] {
        let settings = RenderSettings {
            width: 4,
            height: 4,
            spp: 1024,
            max_bounces: 0,
            seed: 5,
            camera: ortho_camera([x + 3.0, 0.6, 0.0], [x, 0.0, 0.0], 0.002),
        };
        let got = mean(&render(&rs, &settings, 2, 4, 256))[0];
        let want =
            0.5 / std::f64::consts::PI * polygon_irradiance(3.0, [x as f64, 0.0, 0.0], &lamp);
        eprintln!("x {x}: radiance {got:.5}, analytic {want:.5}");
        assert!((got - want).abs() < 0.01 * want, "x {x}: {got} vs {want}");
    }
}

/// A point light of I candela over a white plane: E = I cos / r^2.
#[test]
fn point_light_over_plane() {
    let mut s = CompiledScene::default();
    let floor = s.add_material(Material {
        base_color: [1.0, 1.0, 1.0, 1.0],
        metallic: 0.0,
        specular: 0.0,
        double_sided: true,
        ..Default::default()
    });
    s.add_quad(
        "floor",
        Vec3::new(-10.0, 0.0, 10.0),
        Vec3::new(20.0, 0.0, 0.0),
        Vec3::new(0.0, 0.0, -20.0),
        floor,
    );
    s.lights.push(rayfarm_scene::Light {
        name: "p".into(),
        kind: rayfarm_scene::LightKind::Point,
        color: [1.0; 3],
        intensity: 10.0,
        position: [1.0, 2.0, 0.0],
        direction: [0.0, -1.0, 0.0],
    });
    let settings = RenderSettings {
        width: 4,
        height: 4,
        spp: 16,
        max_bounces: 0,
        seed: 3,
        camera: ortho_camera([-3.0, 0.6, 0.0], [0.0; 3], 0.001),
    };
    let img = quick(s, &settings);
    let r2 = 1.0f64 + 4.0;
    let cos = 2.0 / r2.sqrt();
    let want = 1.0 / std::f64::consts::PI * 10.0 * cos / r2;
    let got = mean(&img)[0];
    assert!((got - want).abs() < 0.01 * want, "{got} vs {want}");
}
