//! Wavefront OBJ + MTL importer (hand-written; OBJ is untrusted input and this parser is fuzzed).
//!
//! Supported OBJ statements: `v` (extra `w` / vertex colour values are ignored), `vt`, `vn`, `f`
//! (`v`, `v/vt`, `v//vn`, `v/vt/vn`, negative = relative indices, polygons fan-triangulated),
//! `o`, `g`, `usemtl`, `mtllib` (several files per statement), `s` (ignored), `l` / `p`
//! (ignored with one warning). Lines ending in a backslash continue on the next line; `#` starts
//! a comment. Any other statement is ignored with one warning listing them.
//!
//! Every `o` and every `g` starts a new [`Mesh`] named after it (`"object/group"` when both are
//! in effect); `usemtl` does not split meshes, materials are per triangle. Meshes without faces
//! are dropped. Within a mesh, vertices are shared by their `(v, vt, vn)` index triple. Corners
//! without a (usable) `vn` get the geometric normal of their triangle, so faces without normals
//! are flat shaded.
//!
//! OBJ texture coordinates have `v = 0` at the bottom of the image; rayfarm follows glTF
//! (`v = 0` is the top row), so `uv = (u, 1 - v)` is stored.
//!
//! MTL materials are mapped to the glTF metallic-roughness [`Material`] as documented on
//! [`MtlBuilder::finish`].

use crate::types::*;
use crate::{SceneError, Warnings};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// Callback reading a referenced (MTL or texture) file, given its resolved path.
type ReadFile<'a> = &'a dyn Fn(&Path) -> std::io::Result<Vec<u8>>;

/// How many names a "ignored statements" / "unknown materials" warning lists before "...".
const MAX_LISTED: usize = 10;

/// Reads and parses an `.obj` file from disk; MTL files and textures are read relative to it.
pub fn load(path: &Path) -> Result<(CompiledScene, Warnings), SceneError> {
    load_with(path, &crate::LoadOptions::default())
}

/// [`load`] with `opts.texture_memory` as the textures' budget (OBJ files have neither
/// animations nor variants: the caller refuses a variant).
pub fn load_with(
    path: &Path,
    opts: &crate::LoadOptions,
) -> Result<(CompiledScene, Warnings), SceneError> {
    let bytes = crate::read_regular_file(path).map_err(|e| SceneError::io(path, e))?;
    let src = String::from_utf8_lossy(&bytes);
    let budget = opts
        .texture_memory
        .unwrap_or_else(crate::default_texture_memory);
    parse_with_budget(&src, path, &|p: &Path| crate::read_regular_file(p), budget)
}

/// Parses OBJ source text. `path` names the file in messages and its parent directory is where
/// `mtllib` files are looked up (textures are looked up next to the MTL file that names them);
/// `read_file` is called with those resolved paths.
pub fn parse(
    src: &str,
    path: &Path,
    read_file: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
) -> Result<(CompiledScene, Warnings), SceneError> {
    parse_with_budget(src, path, read_file, crate::default_texture_memory())
}

/// [`parse`] with the most bytes the textures may take decoded, together.
pub fn parse_with_budget(
    src: &str,
    path: &Path,
    read_file: &dyn Fn(&Path) -> std::io::Result<Vec<u8>>,
    texture_budget: u64,
) -> Result<(CompiledScene, Warnings), SceneError> {
    let mut parser = ObjParser::new(path, read_file);
    parser.library.texture_budget = texture_budget;
    for (line, text) in LogicalLines::new(src) {
        parser.statement(line, &text)?;
    }
    parser.finish()
}

// ---------------------------------------------------------------------------------------------
// Lexing shared by OBJ and MTL
// ---------------------------------------------------------------------------------------------

/// Iterates over logical lines: comments (`#` to end of line) removed, lines ending in a
/// backslash joined with the next one. Yields the 1-based number of the first physical line.
struct LogicalLines<'a> {
    lines: std::iter::Enumerate<std::str::Lines<'a>>,
}

impl<'a> LogicalLines<'a> {
    fn new(src: &'a str) -> Self {
        LogicalLines {
            lines: src.lines().enumerate(),
        }
    }
}

fn strip_comment(line: &str) -> &str {
    match line.find('#') {
        Some(i) => &line[..i],
        None => line,
    }
}

impl<'a> Iterator for LogicalLines<'a> {
    type Item = (usize, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        let (index, first) = self.lines.next()?;
        let number = index.saturating_add(1);
        let first = strip_comment(first).trim_end();
        let Some(head) = first.strip_suffix('\\') else {
            return Some((number, Cow::Borrowed(first)));
        };
        let mut joined = head.to_string();
        for (_, next) in self.lines.by_ref() {
            let next = strip_comment(next).trim_end();
            joined.push(' ');
            match next.strip_suffix('\\') {
                Some(h) => joined.push_str(h),
                None => {
                    joined.push_str(next);
                    break;
                }
            }
        }
        Some((number, Cow::Owned(joined)))
    }
}

/// Splits a logical line into its keyword and the (trimmed) rest.
fn split_keyword(text: &str) -> Option<(&str, &str)> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    match text.find(char::is_whitespace) {
        Some(i) => Some((&text[..i], text[i..].trim())),
        None => Some((text, "")),
    }
}

/// Parses a finite `f32`, or explains which token was bad.
fn number(line: usize, token: &str, what: &str) -> Result<f32, String> {
    match token.parse::<f32>() {
        Ok(x) if x.is_finite() => Ok(x),
        _ => Err(format!("line {line}: bad number '{token}' in {what}")),
    }
}

/// Reads exactly `N` leading numbers of a statement (extra values are ignored).
fn numbers<const N: usize>(
    line: usize,
    rest: &str,
    what: &str,
    needs: &str,
) -> Result<[f32; N], String> {
    let mut out = [0.0; N];
    let mut tokens = rest.split_whitespace();
    for slot in out.iter_mut() {
        let token = tokens
            .next()
            .ok_or_else(|| format!("line {line}: {what} needs {needs}"))?;
        *slot = number(line, token, what)?;
    }
    Ok(out)
}

/// Turns a file name as written in an OBJ/MTL file into a path next to `dir`. Windows-style
/// separators are common in exported files and are turned into `/`.
fn resolve(dir: &Path, name: &str) -> PathBuf {
    dir.join(name.replace('\\', "/"))
}

/// Formats a list of `(name, first line)` pairs for a warning, capped at [`MAX_LISTED`].
fn list_names(items: &[(String, usize)]) -> String {
    let mut parts: Vec<String> = items
        .iter()
        .take(MAX_LISTED)
        .map(|(name, line)| format!("'{name}' (line {line})"))
        .collect();
    if items.len() > MAX_LISTED {
        parts.push(format!("and {} more", items.len() - MAX_LISTED));
    }
    parts.join(", ")
}

fn note_first(list: &mut Vec<(String, usize)>, name: &str, line: usize) {
    if !list.iter().any(|(n, _)| n == name) {
        list.push((name.to_string(), line));
    }
}

// ---------------------------------------------------------------------------------------------
// Geometry helpers (f64 so that huge but finite coordinates cannot overflow to inf/NaN)
// ---------------------------------------------------------------------------------------------

/// Normalizes `v`, or `None` if it has no usable direction.
fn normalize(v: [f64; 3]) -> Option<[f32; 3]> {
    let len = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    if !(len.is_finite() && len > 0.0) {
        return None;
    }
    let n = [
        (v[0] / len) as f32,
        (v[1] / len) as f32,
        (v[2] / len) as f32,
    ];
    let len32 = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
    (len32.is_finite() && len32 > 0.5).then_some(n)
}

fn widen(p: [f32; 3]) -> [f64; 3] {
    [p[0] as f64, p[1] as f64, p[2] as f64]
}

/// Unit geometric normal of a counter-clockwise triangle, `None` if it has zero area.
fn triangle_normal(a: [f32; 3], b: [f32; 3], c: [f32; 3]) -> Option<[f32; 3]> {
    let (a, b, c) = (widen(a), widen(b), widen(c));
    let e1 = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    let e2 = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
    normalize([
        e1[1] * e2[2] - e1[2] * e2[1],
        e1[2] * e2[0] - e1[0] * e2[2],
        e1[0] * e2[1] - e1[1] * e2[0],
    ])
}

/// Newell's normal of a polygon (robust for non-planar polygons), `None` if degenerate.
fn polygon_normal(corners: &[Corner]) -> Option<[f32; 3]> {
    let mut n = [0.0f64; 3];
    for (i, c) in corners.iter().enumerate() {
        let p = widen(c.position);
        let q = widen(corners[(i + 1) % corners.len()].position);
        n[0] += (p[1] - q[1]) * (p[2] + q[2]);
        n[1] += (p[2] - q[2]) * (p[0] + q[0]);
        n[2] += (p[0] - q[0]) * (p[1] + q[1]);
    }
    normalize(n)
}

// ---------------------------------------------------------------------------------------------
// OBJ
// ---------------------------------------------------------------------------------------------

/// One resolved face corner: the indices (for de-duplication) and the values they refer to.
#[derive(Clone, Copy)]
struct Corner {
    v: usize,
    vt: Option<usize>,
    vn: Option<usize>,
    position: [f32; 3],
    uv: Option<[f32; 2]>,
    /// The normalized `vn`, `None` if absent or of zero length.
    normal: Option<[f32; 3]>,
}

/// Where a de-duplicated vertex's normal comes from.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum NormalKey {
    /// A `vn` index.
    Index(usize),
    /// A generated face normal (its bit pattern).
    Face([u32; 3]),
}

type VertexKey = (usize, Option<usize>, NormalKey);

/// The mesh currently receiving faces.
struct MeshBuilder {
    name: String,
    first_triangle: usize,
    has_uv: bool,
    /// Only looked up, never iterated, so its hash (foldhash: SipHash took a sixth of a 2.5M
    /// triangle file's parse) cannot change the output.
    vertices: foldhash::HashMap<VertexKey, u32>,
}

struct ObjParser<'a> {
    path: &'a Path,
    dir: PathBuf,
    read_file: ReadFile<'a>,
    v: Vec<[f32; 3]>,
    vt: Vec<[f32; 2]>,
    vn: Vec<[f32; 3]>,
    scene: CompiledScene,
    warnings: Warnings,
    object: Option<String>,
    group: Option<String>,
    mesh: MeshBuilder,
    /// `usemtl` names in order of first use, with the line of that use.
    used_materials: Vec<(String, usize)>,
    used_material_ids: HashMap<String, u32>,
    /// Index into `used_materials` of the current `usemtl`, `None` for the default material.
    current_material: Option<u32>,
    /// Per triangle: index into `used_materials`, or `None` for the default material.
    triangle_material_names: Vec<Option<u32>>,
    library: MaterialLibrary,
    loaded_mtl_files: HashSet<PathBuf>,
    /// Unknown statements with the line of their first occurrence.
    unknown: Vec<(String, usize)>,
    /// Number of `l` / `p` statements and the first line with one.
    line_point_elements: Option<(usize, usize)>,
    corners: Vec<Corner>,
}

impl<'a> ObjParser<'a> {
    fn new(path: &'a Path, read_file: ReadFile<'a>) -> Self {
        ObjParser {
            path,
            dir: path.parent().unwrap_or(Path::new("")).to_path_buf(),
            read_file,
            v: Vec::new(),
            vt: Vec::new(),
            vn: Vec::new(),
            scene: CompiledScene::default(),
            warnings: Vec::new(),
            object: None,
            group: None,
            mesh: MeshBuilder {
                name: "default".into(),
                first_triangle: 0,
                has_uv: false,
                vertices: foldhash::HashMap::default(),
            },
            used_materials: Vec::new(),
            used_material_ids: HashMap::new(),
            current_material: None,
            triangle_material_names: Vec::new(),
            library: MaterialLibrary::default(),
            loaded_mtl_files: HashSet::new(),
            unknown: Vec::new(),
            line_point_elements: None,
            corners: Vec::new(),
        }
    }

    fn invalid(&self, what: String) -> SceneError {
        SceneError::invalid(self.path, what)
    }

    fn statement(&mut self, line: usize, text: &str) -> Result<(), SceneError> {
        let Some((keyword, rest)) = split_keyword(text) else {
            return Ok(());
        };
        match keyword {
            "v" => {
                let p = numbers::<3>(line, rest, "vertex", "3 coordinates")
                    .map_err(|e| self.invalid(e))?;
                self.v.push(p);
            }
            "vt" => {
                let mut tokens = rest.split_whitespace();
                let u = tokens.next().ok_or_else(|| {
                    self.invalid(format!(
                        "line {line}: texture coordinate needs at least 1 value"
                    ))
                })?;
                let u = number(line, u, "texture coordinate").map_err(|e| self.invalid(e))?;
                let v = match tokens.next() {
                    Some(t) => {
                        number(line, t, "texture coordinate").map_err(|e| self.invalid(e))?
                    }
                    None => 0.0,
                };
                self.vt.push([u, 1.0 - v]);
            }
            "vn" => {
                let n = numbers::<3>(line, rest, "normal", "3 components")
                    .map_err(|e| self.invalid(e))?;
                self.vn.push(n);
            }
            "f" => self.face(line, rest)?,
            "o" => {
                self.object = (!rest.is_empty()).then(|| rest.to_string());
                self.group = None;
                self.start_mesh()?;
            }
            "g" => {
                self.group = (!rest.is_empty()).then(|| rest.to_string());
                self.start_mesh()?;
            }
            "usemtl" => {
                self.current_material = if rest.is_empty() {
                    None
                } else if let Some(&id) = self.used_material_ids.get(rest) {
                    Some(id)
                } else {
                    let id = u32::try_from(self.used_materials.len()).map_err(|_| {
                        self.invalid(format!("line {line}: too many material names"))
                    })?;
                    self.used_materials.push((rest.to_string(), line));
                    self.used_material_ids.insert(rest.to_string(), id);
                    Some(id)
                };
            }
            "mtllib" => self.mtllib(line, rest)?,
            "s" => {}
            "l" | "p" => {
                let (count, first) = self.line_point_elements.unwrap_or((0, line));
                self.line_point_elements = Some((count.saturating_add(1), first));
            }
            other => note_first(&mut self.unknown, other, line),
        }
        Ok(())
    }

    /// Finishes the current mesh (dropping it if empty) and starts one named after the
    /// current object / group.
    fn start_mesh(&mut self) -> Result<(), SceneError> {
        self.finish_mesh()?;
        self.mesh.name = match (&self.object, &self.group) {
            (Some(o), Some(g)) => format!("{o}/{g}"),
            (Some(o), None) => o.clone(),
            (None, Some(g)) => g.clone(),
            (None, None) => "default".into(),
        };
        self.mesh.first_triangle = self.scene.triangles.len();
        self.mesh.has_uv = false;
        self.mesh.vertices.clear();
        Ok(())
    }

    fn finish_mesh(&mut self) -> Result<(), SceneError> {
        let end = self.scene.triangles.len();
        let count = end.saturating_sub(self.mesh.first_triangle);
        if count == 0 {
            return Ok(());
        }
        let too_many = || self.invalid("more than 2^32 triangles".into());
        let first_triangle = u32::try_from(self.mesh.first_triangle).map_err(|_| too_many())?;
        let triangle_count = u32::try_from(count).map_err(|_| too_many())?;
        self.scene.meshes.push(Mesh {
            name: self.mesh.name.clone(),
            first_triangle,
            triangle_count,
            has_uv: [self.mesh.has_uv, false],
        });
        Ok(())
    }

    /// Resolves one `f` corner like `7`, `7/3`, `7//2`, `7/3/2` or `-1/-1/-1`.
    fn corner(&self, line: usize, token: &str) -> Result<Corner, SceneError> {
        let mut parts = token.split('/');
        let v_part = parts.next().unwrap_or("");
        let vt_part = parts.next().unwrap_or("");
        let vn_part = parts.next().unwrap_or("");
        if parts.next().is_some() || v_part.is_empty() {
            return Err(self.invalid(format!("line {line}: bad face vertex '{token}'")));
        }
        let v = self.index(line, v_part, self.v.len(), "vertex", "vertices")?;
        let vt = match vt_part {
            "" => None,
            s => Some(self.index(
                line,
                s,
                self.vt.len(),
                "texture coordinate",
                "texture coordinates",
            )?),
        };
        let vn = match vn_part {
            "" => None,
            s => Some(self.index(line, s, self.vn.len(), "normal", "normals")?),
        };
        let position = *self
            .v
            .get(v)
            .ok_or_else(|| self.invalid(format!("line {line}: bad face vertex '{token}'")))?;
        Ok(Corner {
            v,
            vt,
            vn,
            position,
            uv: vt.and_then(|i| self.vt.get(i).copied()),
            normal: vn
                .and_then(|i| self.vn.get(i))
                .and_then(|&n| normalize(widen(n))),
        })
    }

    /// Turns a 1-based (or negative, relative) OBJ index into a 0-based one below `count`.
    fn index(
        &self,
        line: usize,
        token: &str,
        count: usize,
        what: &str,
        plural: &str,
    ) -> Result<usize, SceneError> {
        let raw: i64 = token.parse().map_err(|_| {
            self.invalid(format!("line {line}: bad {what} index '{token}' in face"))
        })?;
        let resolved = if raw > 0 {
            usize::try_from(raw - 1).ok().filter(|&i| i < count)
        } else if raw < 0 {
            usize::try_from(raw.unsigned_abs())
                .ok()
                .and_then(|back| count.checked_sub(back))
        } else {
            return Err(self.invalid(format!(
                "line {line}: face refers to {what} 0, but OBJ indices start at 1"
            )));
        };
        resolved.ok_or_else(|| {
            self.invalid(format!(
                "line {line}: face refers to {what} {raw} but only {count} {plural} are defined"
            ))
        })
    }

    fn face(&mut self, line: usize, rest: &str) -> Result<(), SceneError> {
        let mut corners = std::mem::take(&mut self.corners);
        corners.clear();
        for token in rest.split_whitespace() {
            corners.push(self.corner(line, token)?);
        }
        if corners.len() < 3 {
            return Err(self.invalid(format!(
                "line {line}: face needs at least 3 vertices, found {}",
                corners.len()
            )));
        }
        let polygon = if corners.len() > 3 {
            polygon_normal(&corners)
        } else {
            None
        };
        let first = corners[0];
        for pair in corners[1..].windows(2) {
            let tri = [first, pair[0], pair[1]];
            let face_normal = triangle_normal(tri[0].position, tri[1].position, tri[2].position)
                .or(polygon)
                .unwrap_or([0.0, 1.0, 0.0]);
            let mut indices = [0u32; 3];
            for (slot, corner) in indices.iter_mut().zip(tri.iter()) {
                *slot = self.vertex(line, corner, face_normal)?;
            }
            if self.scene.triangles.len() >= u32::MAX as usize {
                return Err(self.invalid(format!("line {line}: more than 2^32 triangles")));
            }
            self.scene.triangles.push(indices);
            self.triangle_material_names.push(self.current_material);
        }
        self.corners = corners;
        Ok(())
    }

    /// Index of the shared vertex for `corner` in the current mesh, adding it if new.
    fn vertex(
        &mut self,
        line: usize,
        corner: &Corner,
        face_normal: [f32; 3],
    ) -> Result<u32, SceneError> {
        let (key, normal) = match (corner.vn, corner.normal) {
            (Some(i), Some(n)) => (NormalKey::Index(i), n),
            _ => (NormalKey::Face(face_normal.map(f32::to_bits)), face_normal),
        };
        if corner.uv.is_some() {
            self.mesh.has_uv = true;
        }
        let key = (corner.v, corner.vt, key);
        if let Some(&index) = self.mesh.vertices.get(&key) {
            return Ok(index);
        }
        let index = u32::try_from(self.scene.positions.len())
            .ok()
            .filter(|&i| i < u32::MAX)
            .ok_or_else(|| self.invalid(format!("line {line}: more than 2^32 vertices")))?;
        self.scene.positions.push(corner.position);
        self.scene.normals.push(normal);
        self.scene.uv0.push(corner.uv.unwrap_or([0.0, 0.0]));
        self.mesh.vertices.insert(key, index);
        Ok(index)
    }

    fn mtllib(&mut self, line: usize, rest: &str) -> Result<(), SceneError> {
        if rest.is_empty() {
            return Err(self.invalid(format!("line {line}: mtllib needs a file name")));
        }
        // Several files may be listed; but a single name with spaces ("my scene.mtl") is
        // common too: if the tokens are not all `.mtl` names but the whole rest is, take it whole.
        let is_mtl = |s: &str| s.to_ascii_lowercase().ends_with(".mtl");
        let tokens: Vec<&str> = rest.split_whitespace().collect();
        let names: Vec<&str> = if !tokens.iter().all(|t| is_mtl(t)) && is_mtl(rest) {
            vec![rest]
        } else {
            tokens
        };
        for name in names {
            let file = resolve(&self.dir, name);
            if !self.loaded_mtl_files.insert(file.clone()) {
                continue;
            }
            let bytes = (self.read_file)(&file).map_err(|e| {
                let problem = if e.kind() == std::io::ErrorKind::NotFound {
                    "not found"
                } else {
                    "could not be read"
                };
                self.invalid(format!(
                    "line {line}: material library '{name}' {problem}: {}: {e}",
                    file.display()
                ))
            })?;
            let text = String::from_utf8_lossy(&bytes);
            self.library.parse(
                &text,
                &file,
                self.read_file,
                &mut self.scene,
                &mut self.warnings,
            )?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(CompiledScene, Warnings), SceneError> {
        self.finish_mesh()?;
        let path = self.path.display().to_string();

        // Resolve `usemtl` names now, so that an `mtllib` after the `usemtl` still works.
        let resolved: Vec<Option<u32>> = self
            .used_materials
            .iter()
            .map(|(name, _)| self.library.by_name.get(name).copied())
            .collect();
        let mut default_material: Option<u32> = None;
        let mut unknown_used: Vec<(String, usize)> = Vec::new();
        let mut triangle_materials = Vec::with_capacity(self.triangle_material_names.len());
        for named in &self.triangle_material_names {
            let material = match named.and_then(|id| resolved.get(id as usize).copied()) {
                Some(Some(m)) => m,
                other => {
                    if let (Some(id), Some(None)) = (named, other) {
                        if let Some((name, line)) = self.used_materials.get(*id as usize) {
                            note_first(&mut unknown_used, name, *line);
                        }
                    }
                    match default_material {
                        Some(m) => m,
                        None => {
                            let m = u32::try_from(self.scene.materials.len())
                                .map_err(|_| self.invalid("too many materials".into()))?;
                            self.scene.materials.push(obj_material("default".into()));
                            default_material = Some(m);
                            m
                        }
                    }
                }
            };
            triangle_materials.push(material);
        }
        self.scene.triangle_materials = triangle_materials;

        if !unknown_used.is_empty() {
            self.warnings.push(format!(
                "{path}: usemtl names a material no material library defines: {}; a default \
                 material is used instead.",
                list_names(&unknown_used)
            ));
        }
        if let Some((count, first)) = self.line_point_elements {
            self.warnings.push(format!(
                "{path}: {count} line/point element(s) (l, p; first on line {first}) were \
                 ignored; only faces are rendered."
            ));
        }
        if !self.unknown.is_empty() {
            self.warnings.push(format!(
                "{path}: ignored unsupported statements: {}.",
                list_names(&self.unknown)
            ));
        }
        if self.scene.triangles.is_empty() {
            self.warnings
                .push(format!("{path}: the file contains no faces."));
        }
        Ok((self.scene, self.warnings))
    }
}

// ---------------------------------------------------------------------------------------------
// MTL
// ---------------------------------------------------------------------------------------------

/// A material with everything an OBJ material does not specify: not metallic, no specular
/// (pure Lambert, as with an absent or zero `Ks`), double-sided.
fn obj_material(name: String) -> Material {
    Material {
        name,
        metallic: 0.0,
        specular: 0.0,
        double_sided: true,
        ..Material::default()
    }
}

/// The materials of all loaded MTL files, by name, plus the textures they loaded.
#[derive(Default)]
struct MaterialLibrary {
    by_name: HashMap<String, u32>,
    textures_by_file: HashMap<PathBuf, u32>,
    /// The most bytes the textures may take decoded, together (set by `parse_with_budget`).
    texture_budget: u64,
}

/// A material being read from an MTL file.
struct MtlBuilder {
    material: Material,
    ks: Option<[f32; 3]>,
    ns: Option<f32>,
    d: Option<f32>,
    tr: Option<f32>,
}

impl MtlBuilder {
    fn new(name: String) -> Self {
        MtlBuilder {
            material: obj_material(name),
            ks: None,
            ns: None,
            d: None,
            tr: None,
        }
    }

    /// Maps the collected MTL values onto the glTF metallic-roughness material:
    ///
    /// - `Kd` is the base colour (already set), `Ke` the emission (already set); `metallic = 0`.
    /// - Opacity is `d`, else `1 - Tr`; below 1 it becomes the base colour alpha with
    ///   [`AlphaMode::Blend`].
    /// - Roughness from the Phong exponent `Ns`: the usual Blinn-Phong to microfacet mapping is
    ///   `alpha = sqrt(2 / (Ns + 2))`, and glTF's GGX uses `alpha = roughness^2`, so
    ///   `roughness = sqrt(alpha) = (2 / (Ns + 2))^(1/4)` (`Ns` absent or 0 gives roughness 1).
    /// - Specular: an absent or all-zero `Ks` gives `specular = 0` (pure Lambert, as the classic
    ///   Cornell box MTL intends); otherwise `specular = 1` and `specular_color` is `Ks` scaled
    ///   so that its largest channel is 1 (only the tint of `Ks` is kept, not its strength).
    /// - OBJ has no two-sidedness flag and research scenes rely on seeing both sides, so every
    ///   material is double-sided except emissive ones, which emit from their front only.
    fn finish(self) -> Material {
        let mut m = self.material;
        if let Some(ns) = self.ns {
            let alpha = (2.0 / (ns.max(0.0) + 2.0)).sqrt();
            m.roughness = alpha.sqrt().clamp(0.0, 1.0);
        }
        let ks = self.ks.unwrap_or([0.0; 3]).map(|c| c.max(0.0));
        let max = ks[0].max(ks[1]).max(ks[2]);
        if max > 0.0 {
            m.specular = 1.0;
            m.specular_color = ks.map(|c| (c / max).clamp(0.0, 1.0));
        } else {
            m.specular = 0.0;
        }
        let opacity = self
            .d
            .or(self.tr.map(|tr| 1.0 - tr))
            .unwrap_or(1.0)
            .clamp(0.0, 1.0);
        m.base_color[3] = opacity;
        if opacity < 1.0 {
            m.alpha_mode = AlphaMode::Blend;
        }
        m.double_sided = !m.is_emissive();
        m
    }
}

/// Reads an MTL colour: `r [g b]` (g and b default to r). `None` for the unsupported
/// `spectral` / `xyz` forms.
fn mtl_color(line: usize, rest: &str, what: &str) -> Result<Option<[f32; 3]>, String> {
    let mut tokens = rest.split_whitespace();
    let Some(first) = tokens.next() else {
        return Err(format!("line {line}: {what} needs a colour"));
    };
    if first.eq_ignore_ascii_case("spectral") || first.eq_ignore_ascii_case("xyz") {
        return Ok(None);
    }
    let r = number(line, first, what)?;
    let g = tokens.next().map(|t| number(line, t, what)).transpose()?;
    let b = tokens.next().map(|t| number(line, t, what)).transpose()?;
    Ok(Some([r, g.unwrap_or(r), b.unwrap_or(r)]))
}

/// Reads one MTL number (`Ns`, `d`, `Tr`), skipping a leading `-halo` option of `d`.
fn mtl_number(line: usize, rest: &str, what: &str) -> Result<f32, String> {
    let token = rest
        .split_whitespace()
        .find(|t| !t.eq_ignore_ascii_case("-halo"))
        .ok_or_else(|| format!("line {line}: {what} needs a value"))?;
    number(line, token, what)
}

/// The file name of a `map_*` statement: options like `-s u v w`, `-o u`, `-bm x`,
/// `-clamp on` are skipped, the remaining tokens (joined by spaces) name the file.
fn texture_file_name(rest: &str) -> Option<String> {
    let tokens: Vec<&str> = rest.split_whitespace().collect();
    let mut i = 0;
    while let Some(option) = tokens.get(i).filter(|t| t.len() > 1 && t.starts_with('-')) {
        i += 1;
        match option.to_ascii_lowercase().as_str() {
            // One to three numbers.
            "-o" | "-s" | "-t" => {
                let mut taken = 0;
                while taken < 3 && tokens.get(i).is_some_and(|t| t.parse::<f32>().is_ok()) {
                    i += 1;
                    taken += 1;
                }
            }
            "-mm" => i += 2,
            // -blendu on, -blendv on, -boost x, -texres x, -clamp on, -bm x, -imfchan c,
            // -cc on, -type sphere, and anything unknown: one argument.
            _ => i += 1,
        }
    }
    let name = tokens.get(i..).map(|t| t.join(" ")).unwrap_or_default();
    (!name.is_empty()).then_some(name)
}

impl MaterialLibrary {
    /// Parses one MTL file, appending its materials (and textures) to `scene`.
    fn parse(
        &mut self,
        src: &str,
        path: &Path,
        read_file: ReadFile<'_>,
        scene: &mut CompiledScene,
        warnings: &mut Warnings,
    ) -> Result<(), SceneError> {
        let dir = path.parent().unwrap_or(Path::new("")).to_path_buf();
        let invalid = |what: String| SceneError::invalid(path, what);
        let mut current: Option<MtlBuilder> = None;
        let mut ignored: Vec<(String, usize)> = Vec::new();
        let mut orphan_line: Option<usize> = None;
        for (line, text) in LogicalLines::new(src) {
            let Some((keyword, rest)) = split_keyword(&text) else {
                continue;
            };
            let original = keyword;
            let keyword = keyword.to_ascii_lowercase();
            if keyword == "newmtl" {
                if let Some(done) = current.take() {
                    self.add(done.finish(), scene, warnings, path)?;
                }
                current = Some(MtlBuilder::new(rest.to_string()));
                continue;
            }
            let Some(m) = current.as_mut() else {
                orphan_line.get_or_insert(line);
                continue;
            };
            match keyword.as_str() {
                "kd" => match mtl_color(line, rest, "Kd").map_err(invalid)? {
                    Some(c) => {
                        let c = c.map(|x| x.clamp(0.0, 1.0));
                        m.material.base_color = [c[0], c[1], c[2], 1.0];
                    }
                    None => note_first(&mut ignored, "Kd spectral/xyz", line),
                },
                "ks" => match mtl_color(line, rest, "Ks").map_err(invalid)? {
                    Some(c) => m.ks = Some(c),
                    None => note_first(&mut ignored, "Ks spectral/xyz", line),
                },
                "ke" => match mtl_color(line, rest, "Ke").map_err(invalid)? {
                    Some(c) => m.material.emissive = c.map(|x| x.max(0.0)),
                    None => note_first(&mut ignored, "Ke spectral/xyz", line),
                },
                "ns" => m.ns = Some(mtl_number(line, rest, "Ns").map_err(invalid)?),
                "d" => m.d = Some(mtl_number(line, rest, "d").map_err(invalid)?),
                "tr" => m.tr = Some(mtl_number(line, rest, "Tr").map_err(invalid)?),
                "map_kd" => {
                    let Some(name) = texture_file_name(rest) else {
                        return Err(invalid(format!("line {line}: map_Kd needs a file name")));
                    };
                    if let Some(texture) =
                        self.texture(line, &name, &dir, path, read_file, scene, warnings)?
                    {
                        m.material.base_color_texture = Some(TextureRef::new(texture, 0));
                    }
                }
                "ka" | "illum" | "ni" | "tf" | "sharpness" => {}
                _ => note_first(&mut ignored, original, line),
            }
        }
        if let Some(done) = current.take() {
            self.add(done.finish(), scene, warnings, path)?;
        }
        let name = path.display();
        if let Some(line) = orphan_line {
            warnings.push(format!(
                "{name}: statements before the first newmtl (line {line}) were ignored."
            ));
        }
        if !ignored.is_empty() {
            warnings.push(format!(
                "{name}: ignored unsupported statements: {}.",
                list_names(&ignored)
            ));
        }
        Ok(())
    }

    fn add(
        &mut self,
        material: Material,
        scene: &mut CompiledScene,
        warnings: &mut Warnings,
        path: &Path,
    ) -> Result<(), SceneError> {
        if let Some(&existing) = self.by_name.get(&material.name) {
            warnings.push(format!(
                "{}: material '{}' is defined more than once; the last definition is used.",
                path.display(),
                material.name
            ));
            if let Some(slot) = scene.materials.get_mut(existing as usize) {
                *slot = material;
            }
            return Ok(());
        }
        let index = u32::try_from(scene.materials.len())
            .map_err(|_| SceneError::invalid(path, "too many materials"))?;
        self.by_name.insert(material.name.clone(), index);
        scene.materials.push(material);
        Ok(())
    }

    /// Loads (once per file) the texture `name` referenced on `line` of the MTL file `mtl`.
    /// A missing file is an error; an undecodable one a warning (`None`).
    #[allow(clippy::too_many_arguments)]
    fn texture(
        &mut self,
        line: usize,
        name: &str,
        dir: &Path,
        mtl: &Path,
        read_file: ReadFile<'_>,
        scene: &mut CompiledScene,
        warnings: &mut Warnings,
    ) -> Result<Option<u32>, SceneError> {
        let file = resolve(dir, name);
        if let Some(&t) = self.textures_by_file.get(&file) {
            return Ok(Some(t));
        }
        let bytes = read_file(&file).map_err(|e| {
            let problem = if e.kind() == std::io::ErrorKind::NotFound {
                "not found"
            } else {
                "could not be read"
            };
            SceneError::invalid(
                mtl,
                format!(
                    "line {line}: texture '{name}' {problem}: {}: {e}",
                    file.display()
                ),
            )
        })?;
        // The glTF importer's decoder: the same formats, and the same size limit checked from
        // the header before the texels are allocated.
        let rgba = match crate::gltf_import::decode_image(&bytes) {
            Ok(img) => img,
            Err(e) => {
                warnings.push(format!(
                    "{}: line {line}: texture '{name}' ({}) could not be decoded ({e}); the \
                     material uses its base colour only.",
                    mtl.display(),
                    file.display()
                ));
                return Ok(None);
            }
        };
        let too_many = || SceneError::invalid(mtl, "too many textures");
        let image = u32::try_from(scene.images.len()).map_err(|_| too_many())?;
        let texture = u32::try_from(scene.textures.len()).map_err(|_| too_many())?;
        let total: u64 = scene
            .images
            .iter()
            .map(|i| i.rgba8.len() as u64)
            .sum::<u64>()
            + rgba.rgba8.len() as u64;
        if let Some(problem) = crate::texture_budget_problem(
            total,
            self.texture_budget,
            &format!("line {line}: texture '{name}' ({})", file.display()),
        ) {
            return Err(SceneError::invalid(mtl, problem));
        }
        scene.images.push(Image {
            name: name.to_string(),
            width: rgba.width,
            height: rgba.height,
            rgba8: rgba.rgba8,
        });
        scene.textures.push(Texture {
            image,
            wrap_s: WrapMode::Repeat,
            wrap_t: WrapMode::Repeat,
            nearest: false,
        });
        self.textures_by_file.insert(file, texture);
        Ok(Some(texture))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Files = HashMap<PathBuf, Vec<u8>>;

    fn run(obj: &str, files: &Files) -> Result<(CompiledScene, Warnings), SceneError> {
        let reader = |p: &Path| -> std::io::Result<Vec<u8>> {
            files
                .get(p)
                .cloned()
                .ok_or_else(|| std::io::ErrorKind::NotFound.into())
        };
        parse(obj, Path::new("scenes/test.obj"), &reader)
    }

    fn error_text(obj: &str, files: &Files) -> String {
        match run(obj, files) {
            Ok(_) => panic!("expected an error for:\n{obj}"),
            Err(e) => e.to_string(),
        }
    }

    fn png_2x1() -> Vec<u8> {
        let img = image::RgbaImage::from_raw(2, 1, vec![255, 0, 0, 255, 0, 0, 255, 128]).unwrap();
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    const MTL: &str = "\
# materials
newmtl Red
Kd 0.8 0.1 0.1
Ks 0 0 0
Ns 98
illum 2

newmtl Light
Kd 0 0 0
Ke 17 12 4

newmtl Glass
Kd 1 1 1
Ks 0.5 0.25 0
d 0.25
";

    const MTL2: &str = "\
newmtl TexA
map_Kd -s 1 1 1 -clamp on -bm 0.5 tex\\a b.png
Tr 0.75
newmtl TexB
map_Kd tex/a b.png
map_Bump bump.png
";

    const OBJ: &str = "\
# a test scene
mtllib a.mtl b.mtl
v 0 0 0
v 1 0 0
v 1 1 0
v 0 1 0 1.0 0.5 0.5 0.5
vt 0 0
vt 1 0
vt 1 1
vt 0 0.25
vn 0 0 2
o Quad
usemtl Red
f 1/1 2/2 3/3 4/4
o Tri
g part
usemtl Light
f -4//-1 -3//-1 -2//-1
usemtl Glass
s off
f 1 2 \\
  4
g empty
g solo
usemtl Nope
f 1/1/1 2/2/1 3/3/1
l 1 2
p 3
curv 0 1 1 2
o Last
usemtl TexA
f 1/4/1 2/4/1 3/4/1
usemtl TexB
f 1/4/1 3/4/1 4/4/1
";

    fn files() -> Files {
        let mut f = Files::new();
        f.insert("scenes/a.mtl".into(), MTL.as_bytes().to_vec());
        f.insert("scenes/b.mtl".into(), MTL2.as_bytes().to_vec());
        f.insert("scenes/tex/a b.png".into(), png_2x1());
        f
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() < 1e-5
    }

    #[test]
    fn parses_geometry_groups_and_materials() {
        let (scene, warnings) = run(OBJ, &files()).unwrap();
        let names: Vec<&str> = scene.meshes.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["Quad", "Tri/part", "Tri/solo", "Last"]);
        let counts: Vec<u32> = scene.meshes.iter().map(|m| m.triangle_count).collect();
        assert_eq!(counts, [2, 2, 1, 2]);
        let firsts: Vec<u32> = scene.meshes.iter().map(|m| m.first_triangle).collect();
        assert_eq!(firsts, [0, 2, 4, 5]);
        let has_uv: Vec<[bool; 2]> = scene.meshes.iter().map(|m| m.has_uv).collect();
        assert_eq!(
            has_uv,
            [[true, false], [false, false], [true, false], [true, false]]
        );
        assert_eq!(scene.triangles.len(), 7);
        assert_eq!(scene.triangle_materials.len(), 7);
        assert_eq!(scene.positions.len(), scene.normals.len());
        assert_eq!(scene.positions.len(), scene.uv0.len());
        assert!(scene.uv1.is_empty() && scene.tangents.is_empty());
        assert!(scene.cameras.is_empty() && scene.lights.is_empty());
        assert_eq!(scene.environment, Environment::Black);
        assert_eq!(scene.resolution, None);

        // Quad without normals: fan of 2 triangles sharing 4 vertices, flat +Z normals, v flipped.
        assert_eq!(scene.triangles[0], [0, 1, 2]);
        assert_eq!(scene.triangles[1], [0, 2, 3]);
        assert_eq!(scene.uv0[3], [0.0, 0.75]);
        assert_eq!(scene.uv0[0], [0.0, 1.0]);
        // Tri/part: negative indices with vn (normalized), then a continued line without normals
        // that must not share vertices with the vn corners.
        let p = &scene.meshes[1];
        let tris = &scene.triangles[p.first_triangle as usize..][..2];
        assert_eq!(tris[0], [4, 5, 6]);
        assert_eq!(tris[1], [7, 8, 9]);
        // Vertex per (v, vt, vn) within a mesh: 4 + 3 + 3 + 3 + 4.
        assert_eq!(scene.positions.len(), 17);
        for n in &scene.normals {
            assert!(
                close(n[0], 0.0) && close(n[1], 0.0) && close(n[2], 1.0),
                "{n:?}"
            );
        }
        assert_eq!(scene.positions[9], [0.0, 1.0, 0.0]);

        // Materials: a.mtl (3), b.mtl (2), then the default for the unknown name.
        let mat_names: Vec<&str> = scene.materials.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            mat_names,
            ["Red", "Light", "Glass", "TexA", "TexB", "default"]
        );
        assert_eq!(scene.triangle_materials, [0, 0, 1, 2, 5, 3, 4]);
        let red = &scene.materials[0];
        assert_eq!(red.base_color, [0.8, 0.1, 0.1, 1.0]);
        assert_eq!(red.metallic, 0.0);
        assert_eq!(red.specular, 0.0);
        assert!(close(red.roughness, 0.02f32.powf(0.25)));
        assert!(red.double_sided);
        assert_eq!(red.alpha_mode, AlphaMode::Opaque);
        let light = &scene.materials[1];
        assert_eq!(light.emissive, [17.0, 12.0, 4.0]);
        assert!(!light.double_sided);
        assert_eq!(light.roughness, 1.0);
        let glass = &scene.materials[2];
        assert_eq!(glass.base_color, [1.0, 1.0, 1.0, 0.25]);
        assert_eq!(glass.alpha_mode, AlphaMode::Blend);
        assert_eq!(glass.specular, 1.0);
        assert_eq!(glass.specular_color, [1.0, 0.5, 0.0]);
        assert!(glass.double_sided);
        // Textures: same file (one with Windows separators) loaded once.
        assert_eq!(scene.images.len(), 1);
        assert_eq!(scene.textures.len(), 1);
        assert_eq!((scene.images[0].width, scene.images[0].height), (2, 1));
        assert_eq!(scene.images[0].rgba8, [255, 0, 0, 255, 0, 0, 255, 128]);
        assert_eq!(
            scene.textures[0],
            Texture {
                image: 0,
                wrap_s: WrapMode::Repeat,
                wrap_t: WrapMode::Repeat,
                nearest: false
            }
        );
        let (ta, tb) = (&scene.materials[3], &scene.materials[4]);
        assert_eq!(ta.base_color_texture, Some(TextureRef::new(0, 0)));
        assert_eq!(tb.base_color_texture, Some(TextureRef::new(0, 0)));
        assert!(close(ta.base_color[3], 0.25)); // Tr 0.75
        assert_eq!(ta.alpha_mode, AlphaMode::Blend);
        assert_eq!(tb.base_color[3], 1.0);
        let default = &scene.materials[5];
        assert_eq!((default.metallic, default.specular), (0.0, 0.0));
        assert!(default.double_sided);

        let all = warnings.join("\n");
        assert_eq!(warnings.len(), 4, "{all}");
        assert!(all.contains("'Nope' (line 25)"), "{all}");
        assert!(all.contains("2 line/point element(s)"), "{all}");
        assert!(all.contains("'curv' (line 29)"), "{all}");
        assert!(all.contains("'map_Bump' (line 6)"), "{all}");
    }

    #[test]
    fn without_any_material_uses_default() {
        let (scene, warnings) = run("v 0 0 0\nv 1 0 0\nv 0 0 1\nf 1 2 3\n", &Files::new()).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(scene.meshes.len(), 1);
        assert_eq!(scene.meshes[0].name, "default");
        assert_eq!(scene.materials.len(), 1);
        assert_eq!(scene.triangle_materials, [0]);
        // Counter-clockwise seen from +Y... (0,0,0),(1,0,0),(0,0,1): normal is -Y.
        assert_eq!(scene.normals[0], [0.0, -1.0, 0.0]);
    }

    #[test]
    fn degenerate_faces_and_normals() {
        let src =
            "v 0 0 0\nv 1 0 0\nv 2 0 0\nv 0 1 0\nvn 0 0 0\nf 1//1 2//1 3//1\nf 1//1 2//1 4//1\n";
        let (scene, _) = run(src, &Files::new()).unwrap();
        assert_eq!(scene.triangles.len(), 2);
        // Zero-area triangle: +Y; zero-length vn: the face normal (+Z).
        assert_eq!(scene.normals[0], [0.0, 1.0, 0.0]);
        assert_eq!(scene.normals[3], [0.0, 0.0, 1.0]);
    }

    #[test]
    fn errors_name_the_line() {
        let f = Files::new();
        let e = error_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n\nf 1 2 17\n", &f);
        assert!(
            e.contains("line 5: face refers to vertex 17 but only 3 vertices are defined"),
            "{e}"
        );
        assert!(e.starts_with("scenes/test.obj: "), "{e}");
        let e = error_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 -4\n", &f);
        assert!(
            e.contains("line 4: face refers to vertex -4 but only 3"),
            "{e}"
        );
        let e = error_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1/1 2/1 3/1\n", &f);
        assert!(
            e.contains("line 4: face refers to texture coordinate 1 but only 0"),
            "{e}"
        );
        let e = error_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1//2 2 3\n", &f);
        assert!(
            e.contains("line 4: face refers to normal 2 but only 0"),
            "{e}"
        );
        let e = error_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n", &f);
        assert!(e.contains("line 4: face refers to vertex 0"), "{e}");
        let e = error_text("# x\nv 0 0 0\nv 1 abc 0\n", &f);
        assert!(e.contains("line 3: bad number 'abc' in vertex"), "{e}");
        let e = error_text("v 0 0 nan\n", &f);
        assert!(e.contains("line 1: bad number 'nan' in vertex"), "{e}");
        let e = error_text("v 0 0\n", &f);
        assert!(e.contains("line 1: vertex needs 3 coordinates"), "{e}");
        let e = error_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n\\\n\nf 1 2\n", &f);
        assert!(e.contains("line 6: face needs at least 3 vertices"), "{e}");
        let e = error_text("v 0 0 0\nf 1/x/1 1 1\n", &f);
        assert!(
            e.contains("line 2: bad texture coordinate index 'x' in face"),
            "{e}"
        );
        let e = error_text("v 0 0 0\nf 1/1/1/1 1 1\n", &f);
        assert!(e.contains("line 2: bad face vertex '1/1/1/1'"), "{e}");
    }

    #[test]
    fn missing_files_are_errors() {
        let e = error_text("# lib\n\nmtllib x.mtl\n", &Files::new());
        assert!(
            e.contains("line 3: material library 'x.mtl' not found: scenes/x.mtl"),
            "{e}"
        );
        let mut f = Files::new();
        f.insert(
            "scenes/x.mtl".into(),
            b"newmtl A\nKd 1 1 1\nmap_Kd missing.png\n".to_vec(),
        );
        let e = error_text("mtllib x.mtl\n", &f);
        assert!(
            e.starts_with("scenes/x.mtl: line 3: texture 'missing.png' not found"),
            "{e}"
        );
        assert!(e.contains("scenes/missing.png"), "{e}");
        f.insert("scenes/x.mtl".into(), b"newmtl A\nKd 1 q 1\n".to_vec());
        let e = error_text("mtllib x.mtl\n", &f);
        assert!(
            e.contains("scenes/x.mtl: line 2: bad number 'q' in Kd"),
            "{e}"
        );
    }

    #[test]
    fn texture_option_parsing() {
        assert_eq!(texture_file_name("a.png").as_deref(), Some("a.png"));
        assert_eq!(
            texture_file_name("-s 1 2 3 -o 0.5 -clamp on -bm 2 dir/my tex.png").as_deref(),
            Some("dir/my tex.png")
        );
        assert_eq!(texture_file_name("-mm 0 1 x.jpg").as_deref(), Some("x.jpg"));
        assert_eq!(texture_file_name("-clamp on"), None);
        assert_eq!(texture_file_name(""), None);
    }

    /// Cheap in-process fuzzing: mutated variants of the test scene must never panic.
    #[test]
    fn mutations_do_not_panic() {
        let files = files();
        let base: Vec<u8> = OBJ.bytes().collect();
        let alphabet = b" /\\-#\n0123456789.efvtnlpogsu";
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..3000 {
            let mut data = base.clone();
            for _ in 0..(next() % 8 + 1) {
                if data.is_empty() {
                    break;
                }
                let pos = (next() as usize) % data.len().max(1);
                match next() % 3 {
                    0 => data[pos] = alphabet[(next() as usize) % alphabet.len()],
                    1 => {
                        data.remove(pos);
                    }
                    _ => data.insert(pos, alphabet[(next() as usize) % alphabet.len()]),
                }
            }
            let text = String::from_utf8_lossy(&data);
            if let Ok((scene, _)) = run(&text, &files) {
                let n = scene.positions.len();
                assert!(scene.triangles.iter().flatten().all(|&i| (i as usize) < n));
                assert_eq!(scene.triangles.len(), scene.triangle_materials.len());
                let m = scene.materials.len();
                assert!(scene.triangle_materials.iter().all(|&i| (i as usize) < m));
            }
        }
        for src in [
            "f",
            "f 1 2 3",
            "v 1e39 0 0",
            "\\",
            "f -9223372036854775808 1 1",
        ] {
            let _ = run(src, &files);
        }
    }

    fn shared(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/scenes")
            .join(rel)
    }

    #[test]
    fn cornell_box_obj() {
        let path = shared("cornell-box/converted/cornell_box.obj");
        if !path.exists() {
            if std::env::var("RAYFARM_REQUIRE_SHARED").as_deref() == Ok("1") {
                panic!("{} is missing and RAYFARM_REQUIRE_SHARED=1", path.display());
            }
            eprintln!("skipping: shared scenes not found");
            return;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let face_lines = text.lines().filter(|l| l.starts_with("f ")).count();
        let (scene, warnings) = load(&path).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(scene.meshes.len(), 8);
        assert_eq!(scene.triangles.len(), face_lines);
        assert_eq!(scene.triangles.len(), 36);
        let light = scene.materials.iter().find(|m| m.name == "Light").unwrap();
        assert_eq!(light.emissive, [17.0, 12.0, 4.0]);
        assert!(!light.double_sided);
        let floor = scene.materials.iter().find(|m| m.name == "Floor").unwrap();
        assert_eq!(floor.specular, 0.0);
        assert!(floor.double_sided);
        assert!(scene.mesh_by_name("Floor").is_some());
    }

    #[test]
    fn sponza_obj_if_present() {
        let path = shared("sponza-dabrovic-geometry/sponza.obj");
        if !path.exists() {
            // Not shipped everywhere (see its ORIGIN.md); never required.
            return;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let triangles: usize = text
            .lines()
            .filter(|l| l.starts_with("f "))
            .map(|l| l.split_whitespace().count() - 3)
            .sum();
        let (scene, _) = load(&path).unwrap();
        assert_eq!(scene.triangles.len(), triangles);
        assert!(scene.meshes.iter().all(|m| m.triangle_count > 0));
        let sum: u32 = scene.meshes.iter().map(|m| m.triangle_count).sum();
        assert_eq!(sum as usize, triangles);
        for n in &scene.normals {
            let len = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt();
            assert!((len - 1.0).abs() < 1e-3, "{n:?}");
        }
        assert_eq!(scene.materials.len(), 1);
    }
}
