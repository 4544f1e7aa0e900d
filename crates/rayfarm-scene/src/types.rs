//! The flattened, render-ready scene: what the network ships and the renderer consumes.
//!
//! Everything is in world space. Triangles index into shared vertex arrays; every per-vertex
//! array is either empty or exactly as long as `positions` (checked by [`CompiledScene::validate`]).
//! Colour values are linear; emissive values already include any strength multiplier.

/// The flattened scene. Built by the glTF and OBJ importers, serialized by [`crate::blob`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompiledScene {
    /// Named groups of consecutive triangles (a glTF mesh instance, an OBJ object or group).
    pub meshes: Vec<Mesh>,
    /// World-space vertex positions.
    pub positions: Vec<[f32; 3]>,
    /// World-space unit vertex normals; same length as `positions`.
    pub normals: Vec<[f32; 3]>,
    /// World-space tangents with handedness in `w`; empty or same length as `positions`.
    pub tangents: Vec<[f32; 4]>,
    /// First texture coordinate set; empty or same length as `positions`.
    pub uv0: Vec<[f32; 2]>,
    /// Second texture coordinate set (the usual lightmap set); empty or same length as `positions`.
    pub uv1: Vec<[f32; 2]>,
    /// Triangle vertex indices.
    pub triangles: Vec<[u32; 3]>,
    /// Material index of each triangle; same length as `triangles`.
    pub triangle_materials: Vec<u32>,
    pub materials: Vec<Material>,
    pub textures: Vec<Texture>,
    pub images: Vec<Image>,
    pub lights: Vec<Light>,
    pub cameras: Vec<Camera>,
    pub environment: Environment,
    /// Output resolution the scene file asks for, if any.
    pub resolution: Option<[u32; 2]>,
}

/// A named run of triangles `first_triangle .. first_triangle + triangle_count`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mesh {
    pub name: String,
    pub first_triangle: u32,
    pub triangle_count: u32,
    /// Whether the source had TEXCOORD_0 / TEXCOORD_1 for this mesh (otherwise zeros were stored).
    pub has_uv: [bool; 2],
}

/// How a texture reference maps UVs: which set, and a 2x3 affine transform (KHR_texture_transform).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TextureRef {
    pub texture: u32,
    pub uv_set: u8,
    /// Row-major 2x3 matrix: `u' = m[0]*u + m[1]*v + m[2]`, `v' = m[3]*u + m[4]*v + m[5]`.
    pub transform: [f32; 6],
}

impl TextureRef {
    pub const IDENTITY: [f32; 6] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0];
    pub fn new(texture: u32, uv_set: u8) -> Self {
        TextureRef {
            texture,
            uv_set,
            transform: Self::IDENTITY,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlphaMode {
    Opaque,
    Mask,
    Blend,
}

/// The glTF metallic-roughness material with the extensions rayfarm honours.
#[derive(Clone, Debug, PartialEq)]
pub struct Material {
    pub name: String,
    /// Linear RGBA base colour factor.
    pub base_color: [f32; 4],
    pub base_color_texture: Option<TextureRef>,
    pub metallic: f32,
    pub roughness: f32,
    /// Roughness in G, metallic in B (glTF layout).
    pub metallic_roughness_texture: Option<TextureRef>,
    pub normal_texture: Option<TextureRef>,
    pub normal_scale: f32,
    /// Linear emitted radiance factor, already multiplied by KHR_materials_emissive_strength.
    pub emissive: [f32; 3],
    pub emissive_texture: Option<TextureRef>,
    /// KHR_materials_specular `specularFactor` (1 when absent).
    pub specular: f32,
    /// Specular strength in the alpha channel.
    pub specular_texture: Option<TextureRef>,
    /// KHR_materials_specular `specularColorFactor` (white when absent).
    pub specular_color: [f32; 3],
    pub specular_color_texture: Option<TextureRef>,
    /// KHR_materials_transmission factor (0 when absent); rendered as thin glass.
    pub transmission: f32,
    /// Transmission in the red channel.
    pub transmission_texture: Option<TextureRef>,
    /// Index of refraction (KHR_materials_ior, 1.5 when absent).
    pub ior: f32,
    /// KHR_materials_sheen `sheenColorFactor` (linear; black, i.e. no sheen, when absent).
    pub sheen_color: [f32; 3],
    /// Sheen colour in RGB (sRGB-encoded).
    pub sheen_color_texture: Option<TextureRef>,
    /// KHR_materials_sheen `sheenRoughnessFactor` (0 when absent).
    pub sheen_roughness: f32,
    /// Sheen roughness in the alpha channel.
    pub sheen_roughness_texture: Option<TextureRef>,
    /// KHR_materials_clearcoat `clearcoatFactor` (0, no coat, when absent).
    pub clearcoat: f32,
    /// Clearcoat strength in the red channel.
    pub clearcoat_texture: Option<TextureRef>,
    /// KHR_materials_clearcoat `clearcoatRoughnessFactor` (0 when absent).
    pub clearcoat_roughness: f32,
    /// Clearcoat roughness in the green channel.
    pub clearcoat_roughness_texture: Option<TextureRef>,
    /// The coat's own normal map; without it the coat follows the mesh normal, not the base's
    /// normal map (as the extension says).
    pub clearcoat_normal_texture: Option<TextureRef>,
    pub clearcoat_normal_scale: f32,
    /// KHR_materials_volume `thicknessFactor`: 0 (also when absent) means thin-walled, so
    /// transmission is thin glass; above 0 the mesh is a closed volume and transmission
    /// refracts. The path tracer measures the real distance inside, so the thickness texture
    /// (a rasteriser's hint) is not kept.
    pub thickness: f32,
    /// KHR_materials_volume `attenuationColor` (linear, white when absent).
    pub attenuation_color: [f32; 3],
    /// KHR_materials_volume `attenuationDistance` in scene units; infinite (no absorption)
    /// when absent.
    pub attenuation_distance: f32,
    /// KHR_materials_iridescence `iridescenceFactor` (0, no thin film, when absent).
    pub iridescence: f32,
    /// Iridescence strength in the red channel.
    pub iridescence_texture: Option<TextureRef>,
    /// KHR_materials_iridescence `iridescenceIor`: the thin film's index of refraction (1.3).
    pub iridescence_ior: f32,
    /// Thin-film thickness in nanometres where the thickness texture's green channel is 0 (100).
    pub iridescence_thickness_min: f32,
    /// Thin-film thickness in nanometres where it is 1, and everywhere without a texture (400).
    pub iridescence_thickness_max: f32,
    /// Thickness blend in the green channel.
    pub iridescence_thickness_texture: Option<TextureRef>,
    /// KHR_materials_anisotropy `anisotropyStrength` in `[0, 1]` (0, isotropic, when absent).
    pub anisotropy_strength: f32,
    /// KHR_materials_anisotropy `anisotropyRotation`: radians, counter-clockwise from the
    /// tangent, in tangent space.
    pub anisotropy_rotation: f32,
    /// Direction in red and green (mapped from `[0, 1]` to `[-1, 1]`), strength in blue.
    pub anisotropy_texture: Option<TextureRef>,
    /// KHR_materials_dispersion `dispersion`: `20 / Abbe number` (0, none, when absent).
    /// Only refraction into a volume disperses.
    pub dispersion: f32,
    /// KHR_materials_diffuse_transmission `diffuseTransmissionFactor` (0 when absent).
    pub diffuse_transmission: f32,
    /// Diffuse transmission in the alpha channel.
    pub diffuse_transmission_texture: Option<TextureRef>,
    /// `diffuseTransmissionColorFactor` (linear, white when absent).
    pub diffuse_transmission_color: [f32; 3],
    /// Diffuse transmission colour in RGB (sRGB-encoded).
    pub diffuse_transmission_color_texture: Option<TextureRef>,
    pub alpha_mode: AlphaMode,
    pub alpha_cutoff: f32,
    pub double_sided: bool,
}

impl Default for Material {
    fn default() -> Self {
        Material {
            name: "default".into(),
            base_color: [1.0; 4],
            base_color_texture: None,
            metallic: 1.0,
            roughness: 1.0,
            metallic_roughness_texture: None,
            normal_texture: None,
            normal_scale: 1.0,
            emissive: [0.0; 3],
            emissive_texture: None,
            specular: 1.0,
            specular_texture: None,
            specular_color: [1.0; 3],
            specular_color_texture: None,
            transmission: 0.0,
            transmission_texture: None,
            ior: 1.5,
            sheen_color: [0.0; 3],
            sheen_color_texture: None,
            sheen_roughness: 0.0,
            sheen_roughness_texture: None,
            clearcoat: 0.0,
            clearcoat_texture: None,
            clearcoat_roughness: 0.0,
            clearcoat_roughness_texture: None,
            clearcoat_normal_texture: None,
            clearcoat_normal_scale: 1.0,
            thickness: 0.0,
            attenuation_color: [1.0; 3],
            attenuation_distance: f32::INFINITY,
            iridescence: 0.0,
            iridescence_texture: None,
            iridescence_ior: 1.3,
            iridescence_thickness_min: 100.0,
            iridescence_thickness_max: 400.0,
            iridescence_thickness_texture: None,
            anisotropy_strength: 0.0,
            anisotropy_rotation: 0.0,
            anisotropy_texture: None,
            dispersion: 0.0,
            diffuse_transmission: 0.0,
            diffuse_transmission_texture: None,
            diffuse_transmission_color: [1.0; 3],
            diffuse_transmission_color_texture: None,
            alpha_mode: AlphaMode::Opaque,
            alpha_cutoff: 0.5,
            double_sided: false,
        }
    }
}

impl Material {
    /// Whether any part of this material emits light.
    pub fn is_emissive(&self) -> bool {
        self.emissive.iter().any(|&c| c > 0.0)
    }

    /// Whether the material has a KHR_materials_sheen layer.
    pub fn has_sheen(&self) -> bool {
        self.sheen_color.iter().any(|&c| c > 0.0)
    }

    /// Whether transmission refracts into a closed volume (KHR_materials_volume with a thickness).
    pub fn has_volume(&self) -> bool {
        self.thickness > 0.0 && self.transmission > 0.0
    }

    /// Beer-Lambert absorption coefficient per scene unit inside the volume:
    /// `-ln(attenuationColor) / attenuationDistance` (zero without absorption).
    pub fn absorption(&self) -> [f32; 3] {
        self.attenuation_color.map(|c| {
            if self.attenuation_distance.is_finite() && c < 1.0 {
                -c.max(1e-30).ln() / self.attenuation_distance
            } else {
                0.0
            }
        })
    }

    /// Whether the material has a KHR_materials_clearcoat layer.
    pub fn has_clearcoat(&self) -> bool {
        self.clearcoat > 0.0
    }

    /// Whether the specular reflection goes through a KHR_materials_iridescence thin film.
    pub fn has_iridescence(&self) -> bool {
        self.iridescence > 0.0
    }

    /// Whether the specular lobe is anisotropic (KHR_materials_anisotropy). A texture can only
    /// scale the strength down, so a zero factor means isotropic everywhere.
    pub fn has_anisotropy(&self) -> bool {
        self.anisotropy_strength > 0.0
    }

    /// Whether refraction into the volume disperses light (KHR_materials_dispersion; only
    /// volumes refract, so thin-walled materials never disperse).
    pub fn has_dispersion(&self) -> bool {
        self.dispersion > 0.0 && self.has_volume()
    }

    /// Whether light diffusely passes through the surface (KHR_materials_diffuse_transmission).
    pub fn has_diffuse_transmission(&self) -> bool {
        self.diffuse_transmission > 0.0
    }

    /// Whether shading needs per-vertex tangents: a normal map (the base's or the coat's) or
    /// an anisotropy direction, both defined in tangent space. Importers generate them
    /// (MikkTSpace) when a mesh with such a material has none.
    pub fn needs_tangents(&self) -> bool {
        self.normal_texture.is_some()
            || self.clearcoat_normal_texture.is_some()
            || self.has_anisotropy()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrapMode {
    Repeat,
    ClampToEdge,
    MirroredRepeat,
}

/// A texture: an image plus how to sample it.
#[derive(Clone, Debug, PartialEq)]
pub struct Texture {
    pub image: u32,
    pub wrap_s: WrapMode,
    pub wrap_t: WrapMode,
    /// Nearest-neighbour magnification instead of bilinear.
    pub nearest: bool,
}

/// A decoded 8-bit RGBA image. Colour space is decided by the material slot that samples it.
#[derive(Clone, Debug, PartialEq)]
pub struct Image {
    pub name: String,
    pub width: u32,
    pub height: u32,
    /// `width * height * 4` bytes, rows top to bottom.
    pub rgba8: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LightKind {
    Point,
    /// Cone angles in radians from the light's axis.
    Spot {
        inner_cone: f32,
        outer_cone: f32,
    },
    Directional,
}

/// A KHR_lights_punctual light in world space.
///
/// Units: `intensity` is candela for point and spot lights and lux for directional lights, as in
/// glTF. rayfarm renders in the same photometric scale as emissive surfaces (an emissive factor of
/// 1 is a radiance of 1 unit, i.e. 1 nit), so a point light of `I` candela has a radiant intensity
/// of `I` units. See ARCHITECTURE.md "Units".
#[derive(Clone, Debug, PartialEq)]
pub struct Light {
    pub name: String,
    pub kind: LightKind,
    /// Linear RGB colour.
    pub color: [f32; 3],
    pub intensity: f32,
    pub position: [f32; 3],
    /// Unit direction the light travels (the node's -Z axis).
    pub direction: [f32; 3],
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Projection {
    /// Vertical field of view in radians, optional aspect ratio (width / height).
    Perspective { yfov: f32, aspect: Option<f32> },
    /// Half extents of the view in world units.
    Orthographic { xmag: f32, ymag: f32 },
}

/// A camera: projection plus an orthonormal camera-to-world frame (looks down -Z, +Y up).
#[derive(Clone, Debug, PartialEq)]
pub struct Camera {
    pub name: String,
    pub projection: Projection,
    pub position: [f32; 3],
    /// Unit vectors of the camera frame in world space.
    pub right: [f32; 3],
    pub up: [f32; 3],
    pub forward: [f32; 3],
}

/// Light arriving from infinitely far away.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum Environment {
    #[default]
    Black,
    /// Uniform radiance.
    Color([f32; 3]),
    /// Equirectangular map, linear RGB radiance, rows from +Y (top) to -Y.
    Map {
        width: u32,
        height: u32,
        texels: Vec<[f32; 3]>,
    },
}

impl CompiledScene {
    /// Axis-aligned bounds of all vertices, or `None` for a scene without triangles.
    pub fn bounds(&self) -> Option<([f32; 3], [f32; 3])> {
        if self.triangles.is_empty() {
            return None;
        }
        let mut lo = [f32::INFINITY; 3];
        let mut hi = [f32::NEG_INFINITY; 3];
        for t in &self.triangles {
            for &i in t {
                let p = self.positions[i as usize];
                for k in 0..3 {
                    lo[k] = lo[k].min(p[k]);
                    hi[k] = hi[k].max(p[k]);
                }
            }
        }
        Some((lo, hi))
    }

    /// Index of the mesh whose name is `name`.
    pub fn mesh_by_name(&self, name: &str) -> Option<usize> {
        self.meshes.iter().position(|m| m.name == name)
    }
}
