//! Planning a job: its id, how its work is cut into parts (one task each) and what the parts
//! and scene files are called. The client (`rayfarm render/bake --farm`) and the manager's
//! store use these, so a job's layout has one definition.

use crate::renderjob::RenderPartDesc;
use rayfarm_render::film::Region;

/// Edge of the square tiles a still render or a single-mode bake is cut into, in pixels.
pub const DEFAULT_TILE_PX: u32 = 256;

/// A new random job id: `j` and 12 hex digits (48 random bits).
pub fn new_job_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes)?;
    let mut id = String::with_capacity(13);
    id.push('j');
    for b in bytes {
        id.push_str(&format!("{b:02x}"));
    }
    Ok(id)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it), for `created_unix_ms`.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The file name of a compiled scene in a render job's folder, from its BLAKE3 hex: frames
/// whose compiled scene is identical share one file.
pub fn scene_file_name(hash_hex: &str) -> String {
    format!("scene-{}.rfscene", &hash_hex[..16.min(hash_hex.len())])
}

/// How a render job is cut into tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenderSplit {
    /// One task per frame.
    Frame,
    /// Each frame cut into square tiles of this edge (pixels).
    Tile(u32),
}

/// The parts of a render job of `frames` frames of `width x height`: frame by frame, tiles in
/// the renderer's tile order, named `f<frame>-t<tile>`.
pub fn render_parts(
    frames: usize,
    width: u32,
    height: u32,
    split: RenderSplit,
) -> Vec<RenderPartDesc> {
    let full = Region::full(width, height);
    let tiles: Vec<[u32; 4]> = match split {
        RenderSplit::Frame => vec![[0, 0, width, height]],
        RenderSplit::Tile(edge) => rayfarm_render::film::plan_region(0, full, 1, edge.max(1), 1)
            .into_iter()
            .map(|u| [u.x0, u.y0, u.x1, u.y1])
            .collect(),
    };
    let mut parts = Vec::with_capacity(frames * tiles.len());
    for fi in 0..frames {
        for (ti, region) in tiles.iter().enumerate() {
            parts.push(RenderPartDesc {
                name: format!("f{fi:06}-t{ti:05}"),
                frame: fi,
                region: *region,
            });
        }
    }
    parts
}

/// The regions a bake layer's `region` is cut into: the whole region for a per-object
/// (multi-mode) task, else tiles of `tile_px`.
pub fn bake_regions(region: Region, whole: bool, tile_px: u32) -> Vec<Region> {
    if whole {
        return vec![region];
    }
    rayfarm_render::film::plan_region(0, region, 1, tile_px.max(1), 1)
        .into_iter()
        .map(|u| Region {
            x0: u.x0,
            y0: u.y0,
            x1: u.x1,
            y1: u.y1,
        })
        .collect()
}

/// The name of a bake job's `index`-th part.
pub fn bake_part_name(index: usize) -> String {
    format!("p{index:06}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_pass_the_job_id_rule_and_differ() {
        let a = new_job_id().unwrap();
        let b = new_job_id().unwrap();
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), 13);
            crate::jobdesc::check_job_id(id).unwrap();
        }
    }

    #[test]
    fn render_parts_tile_every_frame_exactly_once() {
        let parts = render_parts(3, 600, 300, RenderSplit::Tile(256));
        // 600x300 in 256-pixel tiles: 3 x 2 per frame.
        assert_eq!(parts.len(), 18);
        for f in 0..3 {
            let area: u64 = parts
                .iter()
                .filter(|p| p.frame == f)
                .map(|p| (p.region[2] - p.region[0]) as u64 * (p.region[3] - p.region[1]) as u64)
                .sum();
            assert_eq!(area, 600 * 300);
        }
        assert_eq!(parts[7].name, "f000001-t00001");
        for p in &parts {
            crate::jobdesc::check_file_name(&p.name).unwrap();
        }
        let whole = render_parts(2, 64, 32, RenderSplit::Frame);
        assert_eq!(whole.len(), 2);
        assert_eq!(whole[1].region, [0, 0, 64, 32]);
    }

    #[test]
    fn bake_regions_cover_the_region() {
        let r = Region {
            x0: 0,
            y0: 0,
            x1: 300,
            y1: 100,
        };
        assert_eq!(bake_regions(r, true, 64), vec![r]);
        let tiles = bake_regions(r, false, 64);
        let area: u64 = tiles.iter().map(|t| t.pixels() as u64).sum();
        assert_eq!(area, 300 * 100);
        assert_eq!(bake_part_name(12), "p000012");
        assert_eq!(
            scene_file_name("0123456789abcdef0123"),
            "scene-0123456789abcdef.rfscene"
        );
    }
}
