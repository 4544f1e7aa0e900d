//! The automatic camera for scenes that carry none.

use crate::types::{Camera, CompiledScene, Projection};
use glam::Vec3;

/// Vertical field of view of the automatic camera, in degrees.
pub const AUTO_CAMERA_YFOV_DEG: f32 = 40.0;

/// A perspective camera that frames the whole scene: it looks at the centre of the bounds from
/// the front (+Z, glTF's forward-facing side), a little from the right and above, far enough
/// back that the bounding sphere fits the narrower field of view of an image of `aspect`.
pub fn auto_camera(scene: &CompiledScene, aspect: f32) -> Camera {
    let (lo, hi) = scene.bounds().unwrap_or(([-1.0; 3], [1.0; 3]));
    let (lo, hi) = (Vec3::from(lo), Vec3::from(hi));
    let center = (lo + hi) * 0.5;
    let radius = ((hi - lo).length() * 0.5).max(1e-3);
    let yfov = AUTO_CAMERA_YFOV_DEG.to_radians();
    let xfov = 2.0 * ((yfov * 0.5).tan() * aspect.max(1e-3)).atan();
    let half = 0.5 * yfov.min(xfov);
    let distance = radius / half.sin() * 1.02;
    let dir = Vec3::new(0.35, 0.3, 1.0).normalize();
    let mut position = center + dir * distance;
    if !position.is_finite() {
        // The squares in the diagonal's length overflow f32 from coordinates of about 1e19
        // on, and an infinite radius put the camera at infinity (every ray NaN). Again in
        // f64; scenes that fit f32 keep their camera to the bit.
        let (lo, hi) = (lo.as_dvec3(), hi.as_dvec3());
        let radius = ((hi - lo).length() * 0.5).max(1e-3);
        let distance = radius / f64::from(half.sin()) * 1.02;
        position = ((lo + hi) * 0.5 + dir.as_dvec3() * distance).as_vec3();
    }
    let forward = -dir;
    let right = forward.cross(Vec3::Y).normalize();
    let up = right.cross(forward);
    Camera {
        name: "auto".into(),
        projection: Projection::Perspective { yfov, aspect: None },
        position: position.to_array(),
        right: right.to_array(),
        up: up.to_array(),
        forward: forward.to_array(),
    }
}
