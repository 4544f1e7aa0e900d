//! glTF animations: posing the animated nodes of a file at one time.
//!
//! This module owns reading animation channels and samplers, checking their keyframes and
//! interpolating them (STEP, LINEAR with slerp for rotations, CUBICSPLINE) into the local
//! translation, rotation and scale of each animated node. It never touches the rest-pose import:
//! without a time the importer does not call it. Keyframes are untrusted input like any
//! accessor: every failure is an error naming the animation and channel, never a panic, and
//! the keyframe data read for one file is bounded.

use super::Builder;
use crate::SceneError;
use glam::{DVec4, Mat4, Quat, Vec3, Vec4};
use gltf::accessor::Dimensions;
use gltf::json::animation::{Animation, Channel, Interpolation, Property};
use gltf::json::validation::Checked;
use std::collections::HashMap;
use std::rc::Rc;

/// Upper bound on the keyframe components (times plus output values) read for the animations
/// of one file: 64M, e.g. 300 animated properties of 18,000 keyframes (ten minutes at 30 frames
/// per second) take a third of it. Each accessor is read once however many channels share it;
/// the bound keeps a little hostile JSON (many accessors over one large buffer view) from
/// costing gigabytes.
const MAX_ANIMATION_COMPONENTS: usize = 1 << 26;

/// The animated parts of one node's local transform at the requested time; the parts no
/// channel animates are None and keep the node's own value.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Pose {
    translation: Option<Vec3>,
    rotation: Option<Quat>,
    scale: Option<Vec3>,
}

impl Pose {
    pub(super) fn is_animated(&self) -> bool {
        self.translation.is_some() || self.rotation.is_some() || self.scale.is_some()
    }

    /// The node's local matrix with the animated parts replaced.
    pub(super) fn local_matrix(&self, node: &gltf::Node) -> Mat4 {
        // glTF forbids animating a node given by `matrix`; if a file does anyway, its
        // decomposition (which drops any shear) stands in for the parts not animated.
        let (t, r, s) = node.transform().decomposed();
        let rest = Quat::from_array(r);
        let translation = self.translation.unwrap_or(Vec3::from(t));
        let rotation = self
            .rotation
            .unwrap_or_else(|| unit_quat(Vec4::from(rest)).unwrap_or(rest));
        let scale = self.scale.unwrap_or(Vec3::from(s));
        Mat4::from_scale_rotation_translation(scale, rotation, translation)
    }
}

/// The local pose of every node (by node index) at `time_s`, from all animations at once.
/// When two channels target the same node and property, the first in file order wins.
pub(super) fn pose_nodes(b: &mut Builder, time_s: f32) -> Result<Vec<Pose>, SceneError> {
    let root = b.doc.as_json();
    let node_count = root.nodes.len();
    let mut poses = vec![Pose::default(); node_count];
    // Warnings are gathered here and pushed once `reader` no longer borrows the builder.
    let mut duplicates = 0usize;
    let mut first_duplicate = None;
    let mut morph_channels = 0usize;
    let mut unknown_paths = 0usize;
    let mut animated = false;
    {
        let mut reader = KeyframeReader::new(b);
        for (a, anim) in root.animations.iter().enumerate() {
            for (c, channel) in anim.channels.iter().enumerate() {
                let ctx = channel_context(a, anim, c);
                let node = channel.target.node.value();
                if node >= node_count {
                    return Err(b.err(format!(
                        "{ctx} targets node {node} but there are {node_count} nodes"
                    )));
                }
                let property = match channel.target.path {
                    Checked::Valid(Property::MorphTargetWeights) => {
                        morph_channels += 1;
                        continue;
                    }
                    Checked::Valid(p) => p,
                    Checked::Invalid => {
                        unknown_paths += 1;
                        continue;
                    }
                };
                // Every channel is read and checked, also one that an earlier channel overrides.
                let track = reader.track(anim, channel, property, &ctx)?;
                animated = true;
                let pose = &mut poses[node];
                let taken = match property {
                    Property::Translation => pose.translation.is_some(),
                    Property::Rotation => pose.rotation.is_some(),
                    _ => pose.scale.is_some(),
                };
                if taken {
                    duplicates += 1;
                    first_duplicate.get_or_insert_with(|| {
                        format!("{ctx} (node {node} {})", property_name(property))
                    });
                    continue;
                }
                let value = track.sample(time_s, property == Property::Rotation);
                let bad = |what: &str| {
                    b.err(format!(
                        "{ctx}: the {} of node {node} at {time_s} s is {what}",
                        property_name(property)
                    ))
                };
                match property {
                    Property::Rotation => {
                        pose.rotation = Some(unit_quat(value).ok_or_else(|| {
                            bad("not a rotation (a zero or non-finite quaternion)")
                        })?)
                    }
                    _ => {
                        let v = value.truncate();
                        if !v.is_finite() {
                            return Err(bad("not finite"));
                        }
                        if property == Property::Translation {
                            pose.translation = Some(v);
                        } else {
                            pose.scale = Some(v);
                        }
                    }
                }
            }
        }
    }
    let file = b.path.display().to_string();
    if let Some(first) = first_duplicate {
        b.warnings.push(format!(
            "{file}: {duplicates} animation channel(s) target a node property that an earlier \
             channel already animates, e.g. {first}; the first channel in file order wins"
        ));
    }
    if morph_channels > 0 {
        b.warnings.push(format!(
            "{file}: morph-target (weights) animation is not supported; ignoring {morph_channels} channel(s)"
        ));
    }
    if unknown_paths > 0 {
        b.warnings.push(format!(
            "{file}: ignoring {unknown_paths} animation channel(s) whose target path is not \
             translation, rotation, scale or weights"
        ));
    }
    if animated && !root.skins.is_empty() {
        b.warnings.push(format!(
            "{file}: skinning is not supported: skinned meshes keep their bind pose while \
             their joints are animated"
        ));
    }
    Ok(poses)
}

/// The earliest first and latest last keyframe time over every channel of every animation,
/// or None when there are no channels.
pub(super) fn span(b: &Builder) -> Result<Option<(f32, f32)>, SceneError> {
    let root = b.doc.as_json();
    let mut reader = KeyframeReader::new(b);
    let mut span: Option<(f32, f32)> = None;
    for (a, anim) in root.animations.iter().enumerate() {
        for (c, channel) in anim.channels.iter().enumerate() {
            let ctx = channel_context(a, anim, c);
            let sampler = sampler(b, anim, channel, &ctx)?;
            let times = reader.times(sampler.input.value(), &ctx)?;
            // `times` is non-empty and sorted.
            let (first, last) = (times[0], times[times.len() - 1]);
            span = Some(match span {
                None => (first, last),
                Some((s, e)) => (s.min(first), e.max(last)),
            });
        }
    }
    Ok(span)
}

/// "animation 2 ('Walk') channel 5", for messages.
fn channel_context(a: usize, anim: &Animation, c: usize) -> String {
    match &anim.name {
        Some(name) => format!("animation {a} ('{name}') channel {c}"),
        None => format!("animation {a} channel {c}"),
    }
}

fn property_name(p: Property) -> &'static str {
    match p {
        Property::Translation => "translation",
        Property::Rotation => "rotation",
        Property::Scale => "scale",
        Property::MorphTargetWeights => "weights",
    }
}

fn sampler<'j>(
    b: &Builder,
    anim: &'j Animation,
    channel: &Channel,
    ctx: &str,
) -> Result<&'j gltf::json::animation::Sampler, SceneError> {
    // The gltf crate validates this index; checking again costs nothing and cannot panic.
    let s = channel.sampler.value();
    anim.samplers.get(s).ok_or_else(|| {
        b.err(format!(
            "{ctx} uses sampler {s} but the animation has {} samplers",
            anim.samplers.len()
        ))
    })
}

/// Reads and checks keyframe accessors, each once, within [`MAX_ANIMATION_COMPONENTS`].
struct KeyframeReader<'b, 'a> {
    b: &'b Builder<'a>,
    times: HashMap<usize, Rc<[f32]>>,
    values: HashMap<usize, Rc<[[f32; 4]]>>,
    components_left: usize,
}

impl<'b, 'a> KeyframeReader<'b, 'a> {
    fn new(b: &'b Builder<'a>) -> Self {
        KeyframeReader {
            b,
            times: HashMap::new(),
            values: HashMap::new(),
            components_left: MAX_ANIMATION_COMPONENTS,
        }
    }

    /// Accessor `index`, which must exist and hold `dims` elements.
    fn accessor(
        &self,
        index: usize,
        role: &str,
        dims: Dimensions,
        ctx: &str,
    ) -> Result<gltf::Accessor<'a>, SceneError> {
        let acc = self.b.doc.accessors().nth(index).ok_or_else(|| {
            self.b
                .err(format!("{ctx}: the {role} accessor {index} does not exist"))
        })?;
        if acc.dimensions() != dims {
            return Err(self.b.err(format!(
                "{ctx}: the {role} accessor {index} must be of type {}, not {}",
                dims_name(dims),
                dims_name(acc.dimensions())
            )));
        }
        Ok(acc)
    }

    /// Counts an accessor about to be read against [`MAX_ANIMATION_COMPONENTS`].
    fn charge(&mut self, acc: &gltf::Accessor, ctx: &str) -> Result<(), SceneError> {
        let components = acc.count().saturating_mul(acc.dimensions().multiplicity());
        match self.components_left.checked_sub(components) {
            Some(left) => {
                self.components_left = left;
                Ok(())
            }
            None => Err(self.b.err(format!(
                "{ctx}: accessor {} takes the animations past {MAX_ANIMATION_COMPONENTS} \
                 keyframe components, more than rayfarm accepts",
                acc.index()
            ))),
        }
    }

    /// The keyframe times in input accessor `index`: at least one, finite, non-decreasing.
    fn times(&mut self, index: usize, ctx: &str) -> Result<Rc<[f32]>, SceneError> {
        if let Some(t) = self.times.get(&index) {
            return Ok(t.clone());
        }
        let acc = self.accessor(index, "input", Dimensions::Scalar, ctx)?;
        if acc.count() == 0 {
            return Err(self.b.err(format!(
                "{ctx}: the input accessor {index} holds no keyframe times"
            )));
        }
        self.charge(&acc, ctx)?;
        let times: Rc<[f32]> = self
            .b
            .read_floats::<1>(&acc, ctx)?
            .into_iter()
            .map(|[t]| t)
            .collect();
        if let Some(k) = times.windows(2).position(|w| w[1] < w[0]) {
            return Err(self.b.err(format!(
                "{ctx}: keyframe times must not decrease, but time {} ({} s) of input accessor \
                 {index} is earlier than time {k} ({} s)",
                k + 1,
                times[k + 1],
                times[k]
            )));
        }
        self.times.insert(index, times.clone());
        Ok(times)
    }

    /// The checked keyframes of one channel.
    fn track(
        &mut self,
        anim: &Animation,
        channel: &Channel,
        property: Property,
        ctx: &str,
    ) -> Result<Track, SceneError> {
        let s = sampler(self.b, anim, channel, ctx)?;
        let interpolation = match s.interpolation {
            Checked::Valid(i) => i,
            Checked::Invalid => {
                return Err(self.b.err(format!(
                    "{ctx}: sampler {} has an unknown interpolation",
                    channel.sampler.value()
                )))
            }
        };
        let times = self.times(s.input.value(), ctx)?;
        let index = s.output.value();
        let dims = if property == Property::Rotation {
            Dimensions::Vec4
        } else {
            Dimensions::Vec3
        };
        let acc = self.accessor(index, "output", dims, ctx)?;
        let per_key = if interpolation == Interpolation::CubicSpline {
            3
        } else {
            1
        };
        // `times` is at most MAX_ANIMATION_COMPONENTS long, so this cannot overflow.
        let needed = times.len() * per_key;
        if acc.count() != needed {
            return Err(self.b.err(format!(
                "{ctx}: the output accessor {index} holds {} values but {} keyframe time(s) \
                 with {} interpolation need {needed}",
                acc.count(),
                times.len(),
                interpolation_name(interpolation),
            )));
        }
        let values = match self.values.get(&index) {
            Some(v) => v.clone(),
            None => {
                self.charge(&acc, ctx)?;
                let v: Rc<[[f32; 4]]> = self.b.read_floats::<4>(&acc, ctx)?.into();
                self.values.insert(index, v.clone());
                v
            }
        };
        // Equal to `acc.count()`; checked again because `Track::sample` indexes by it.
        if values.len() != needed {
            return Err(self.b.err(format!(
                "{ctx}: the output accessor {index} yields {} values, not {needed}",
                values.len()
            )));
        }
        Ok(Track {
            times,
            values,
            interpolation,
        })
    }
}

fn dims_name(d: Dimensions) -> &'static str {
    match d {
        Dimensions::Scalar => "SCALAR",
        Dimensions::Vec2 => "VEC2",
        Dimensions::Vec3 => "VEC3",
        Dimensions::Vec4 => "VEC4",
        Dimensions::Mat2 => "MAT2",
        Dimensions::Mat3 => "MAT3",
        Dimensions::Mat4 => "MAT4",
    }
}

fn interpolation_name(i: Interpolation) -> &'static str {
    match i {
        Interpolation::Linear => "LINEAR",
        Interpolation::Step => "STEP",
        Interpolation::CubicSpline => "CUBICSPLINE",
    }
}

/// One channel's checked keyframes: at least one time, sorted, and one value per time (three,
/// in-tangent, value, out-tangent, for CUBICSPLINE).
struct Track {
    times: Rc<[f32]>,
    values: Rc<[[f32; 4]]>,
    interpolation: Interpolation,
}

impl Track {
    /// The value at `t` as glTF 2.0 (appendix C) defines it, clamped to the first and last
    /// keyframe. For 3-vectors the fourth component is meaningless. Rotations are slerped
    /// (LINEAR) or interpolated component-wise (CUBICSPLINE) but not normalized here.
    fn sample(&self, t: f32, rotation: bool) -> Vec4 {
        let cubic = self.interpolation == Interpolation::CubicSpline;
        let value =
            |k: usize| -> Vec4 { Vec4::from_array(self.values[if cubic { 3 * k + 1 } else { k }]) };
        let n = self.times.len();
        // Keyframes at or before t. With equal times (a jump), the last of them is taken, so
        // the interval found below always has a positive length.
        let at_or_before = self.times.partition_point(|&x| x <= t);
        if at_or_before == 0 {
            return value(0);
        }
        let k = at_or_before - 1;
        if k + 1 == n {
            return value(n - 1);
        }
        let (t0, t1) = (self.times[k], self.times[k + 1]);
        let dt = t1 - t0;
        let u = ((t - t0) / dt).clamp(0.0, 1.0);
        match self.interpolation {
            Interpolation::Step => value(k),
            Interpolation::Linear if rotation => slerp(value(k), value(k + 1), u),
            Interpolation::Linear => value(k) + (value(k + 1) - value(k)) * u,
            Interpolation::CubicSpline => {
                let out_tangent = Vec4::from_array(self.values[3 * k + 2]);
                let in_tangent = Vec4::from_array(self.values[3 * (k + 1)]);
                hermite(value(k), out_tangent, value(k + 1), in_tangent, dt, u)
            }
        }
    }
}

/// The cubic Hermite spline of glTF's CUBICSPLINE between `v0` (out-tangent `b0`) and `v1`
/// (in-tangent `a1`) at `u` in [0, 1]; the tangents are per second, so they are scaled by the
/// keyframe interval `dt`.
fn hermite(v0: Vec4, b0: Vec4, v1: Vec4, a1: Vec4, dt: f32, u: f32) -> Vec4 {
    let u2 = u * u;
    let u3 = u2 * u;
    v0 * (2.0 * u3 - 3.0 * u2 + 1.0)
        + b0 * (dt * (u3 - 2.0 * u2 + u))
        + v1 * (-2.0 * u3 + 3.0 * u2)
        + a1 * (dt * (u3 - u2))
}

/// Spherical linear interpolation along the shorter arc between two rotation quaternions,
/// in f64 so that nearly equal keyframes do not lose the small angle between them. The ends are
/// normalized first; the result is normalized by the caller.
fn slerp(a: Vec4, b: Vec4, u: f32) -> Vec4 {
    let (a, b) = (a.as_dvec4(), b.as_dvec4());
    let (a, b) = (normalize_or_keep(a), normalize_or_keep(b));
    let u = f64::from(u);
    let mut d = a.dot(b);
    // q and -q are the same rotation; going to -b when the ends are more than 180 degrees
    // apart in quaternion space takes the shorter way.
    let b = if d < 0.0 {
        d = -d;
        -b
    } else {
        b
    };
    let (wa, wb) = if d > 1.0 - 1e-9 {
        // Nearly equal: sin(theta) ~ 0, and a linear blend is exact to rounding.
        (1.0 - u, u)
    } else {
        let theta = d.min(1.0).acos();
        let sin = theta.sin();
        (((1.0 - u) * theta).sin() / sin, (u * theta).sin() / sin)
    };
    (a * wa + b * wb).as_vec4()
}

fn normalize_or_keep(q: DVec4) -> DVec4 {
    let len = q.length();
    if len > 0.0 && len.is_finite() {
        q / len
    } else {
        q
    }
}

/// `q` scaled to unit length, or None when it has no direction (zero, tiny or non-finite).
fn unit_quat(q: Vec4) -> Option<Quat> {
    let len = q.as_dvec4().length();
    (len.is_finite() && len > 1e-12).then(|| Quat::from_vec4((q.as_dvec4() / len).as_vec4()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(interpolation: Interpolation, times: &[f32], values: &[[f32; 4]]) -> Track {
        Track {
            times: times.into(),
            values: values.into(),
            interpolation,
        }
    }

    #[test]
    fn linear_clamps_and_interpolates() {
        let t = track(
            Interpolation::Linear,
            &[1.0, 3.0],
            &[[0.0, 0.0, 0.0, 0.0], [4.0, -2.0, 8.0, 0.0]],
        );
        assert_eq!(t.sample(-5.0, false), Vec4::new(0.0, 0.0, 0.0, 0.0));
        assert_eq!(t.sample(1.0, false), Vec4::new(0.0, 0.0, 0.0, 0.0));
        assert_eq!(t.sample(2.0, false), Vec4::new(2.0, -1.0, 4.0, 0.0));
        assert_eq!(t.sample(3.0, false), Vec4::new(4.0, -2.0, 8.0, 0.0));
        assert_eq!(t.sample(30.0, false), Vec4::new(4.0, -2.0, 8.0, 0.0));
    }

    #[test]
    fn equal_times_jump_without_dividing_by_zero() {
        let v = |x: f32| [x, 0.0, 0.0, 0.0];
        let t = track(
            Interpolation::Linear,
            &[0.0, 1.0, 1.0, 2.0],
            &[v(0.0), v(1.0), v(10.0), v(20.0)],
        );
        assert_eq!(t.sample(0.5, false).x, 0.5);
        assert_eq!(t.sample(1.0, false).x, 10.0);
        assert_eq!(t.sample(1.5, false).x, 15.0);
        // A single keyframe is a constant.
        let t = track(
            Interpolation::CubicSpline,
            &[2.0],
            &[v(9.0), v(1.0), v(9.0)],
        );
        for time in [0.0, 2.0, 5.0] {
            assert_eq!(t.sample(time, false).x, 1.0);
        }
    }

    #[test]
    fn cubic_spline_tangents_are_scaled_by_the_interval() {
        // v(u) = v0 + dt * b0 * (u^3 - 2u^2 + u) with v1 = v0 and a1 = 0: at u = 0.5 that is
        // v0 + dt * b0 / 8.
        let v = |x: f32| [x, 0.0, 0.0, 0.0];
        let t = track(
            Interpolation::CubicSpline,
            &[0.0, 4.0],
            &[v(0.0), v(1.0), v(2.0), v(0.0), v(1.0), v(0.0)],
        );
        assert_eq!(t.sample(2.0, false).x, 1.0 + 4.0 * 2.0 / 8.0);
        // Outside the keyframes the values (not the tangents) hold.
        assert_eq!(t.sample(-1.0, false).x, 1.0);
        assert_eq!(t.sample(9.0, false).x, 1.0);
    }

    #[test]
    fn slerp_takes_the_shorter_arc() {
        let h = std::f32::consts::FRAC_1_SQRT_2;
        let a = Vec4::new(0.0, 0.0, 0.0, 1.0);
        // 90 degrees about Y, written as its negative (the same rotation).
        let b = Vec4::new(0.0, -h, 0.0, -h);
        let q = unit_quat(slerp(a, b, 0.5)).unwrap();
        let expected = Quat::from_rotation_y(std::f32::consts::FRAC_PI_4);
        assert!(q.dot(expected).abs() > 1.0 - 1e-6, "{q:?}");
        assert!(q.w > 0.0, "{q:?} went the long way round");
        // Equal ends: no division by sin(0).
        assert_eq!(slerp(a, a, 0.3), a);
    }

    #[test]
    fn unit_quat_rejects_zero_and_non_finite() {
        assert!(unit_quat(Vec4::ZERO).is_none());
        assert!(unit_quat(Vec4::new(f32::NAN, 0.0, 0.0, 1.0)).is_none());
        assert!(unit_quat(Vec4::new(f32::MAX, f32::MAX, 0.0, 0.0)).is_some());
        assert_eq!(
            unit_quat(Vec4::new(0.0, 0.0, 0.0, 2.0)),
            Some(Quat::IDENTITY)
        );
    }
}
