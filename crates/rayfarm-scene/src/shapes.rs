//! Procedural shapes for analytic test scenes and benchmarks (spheres, quads).

use crate::types::{CompiledScene, Material, Mesh};
use glam::Vec3;

impl CompiledScene {
    /// Adds a material and returns its index.
    pub fn add_material(&mut self, m: Material) -> u32 {
        self.materials.push(m);
        (self.materials.len() - 1) as u32
    }

    fn push_mesh(
        &mut self,
        name: &str,
        verts: &[(Vec3, Vec3, [f32; 2])],
        tris: &[[u32; 3]],
        material: u32,
    ) {
        let base = self.positions.len() as u32;
        let first = self.triangles.len() as u32;
        let need_uv = !self.uv0.is_empty() || self.positions.is_empty();
        if !need_uv {
            self.uv0.resize(self.positions.len(), [0.0; 2]);
        }
        for (p, n, uv) in verts {
            self.positions.push(p.to_array());
            self.normals.push(n.to_array());
            self.uv0.push(*uv);
        }
        if !self.uv1.is_empty() {
            self.uv1.resize(self.positions.len(), [0.0; 2]);
        }
        if !self.tangents.is_empty() {
            self.tangents
                .resize(self.positions.len(), [1.0, 0.0, 0.0, 1.0]);
        }
        for t in tris {
            self.triangles.push(t.map(|i| i + base));
            self.triangle_materials.push(material);
        }
        self.meshes.push(Mesh {
            name: name.to_string(),
            first_triangle: first,
            triangle_count: tris.len() as u32,
            has_uv: [true, false],
        });
    }

    /// Adds a UV sphere with smooth normals; `rings` >= 2, `segments` >= 3.
    pub fn add_sphere(
        &mut self,
        name: &str,
        center: Vec3,
        radius: f32,
        rings: u32,
        segments: u32,
        material: u32,
    ) {
        let mut verts = Vec::new();
        for r in 0..=rings {
            let v = r as f32 / rings as f32;
            let theta = v * std::f32::consts::PI;
            for s in 0..=segments {
                let u = s as f32 / segments as f32;
                let phi = u * 2.0 * std::f32::consts::PI;
                let n = Vec3::new(
                    theta.sin() * phi.cos(),
                    theta.cos(),
                    -theta.sin() * phi.sin(),
                );
                verts.push((center + n * radius, n, [u, v]));
            }
        }
        let mut tris = Vec::new();
        let row = segments + 1;
        for r in 0..rings {
            for s in 0..segments {
                let a = r * row + s;
                let b = a + row;
                if r != 0 {
                    tris.push([a, b, a + 1]);
                }
                if r != rings - 1 {
                    tris.push([a + 1, b, b + 1]);
                }
            }
        }
        self.push_mesh(name, &verts, &tris, material);
    }

    /// Adds a parallelogram with corner `origin` spanned by `edge_u` and `edge_v`; its front
    /// face (counter-clockwise) faces `edge_u x edge_v`. UVs run 0..1 along the edges.
    pub fn add_quad(
        &mut self,
        name: &str,
        origin: Vec3,
        edge_u: Vec3,
        edge_v: Vec3,
        material: u32,
    ) {
        let n = edge_u.cross(edge_v).normalize();
        let verts = [
            (origin, n, [0.0, 0.0]),
            (origin + edge_u, n, [1.0, 0.0]),
            (origin + edge_u + edge_v, n, [1.0, 1.0]),
            (origin + edge_v, n, [0.0, 1.0]),
        ];
        self.push_mesh(name, &verts, &[[0, 1, 2], [0, 2, 3]], material);
    }
}
