//! The monitor's preview of a job: a bake's first output map (the complete pass when there is
//! one), or the latest frame of a render that has a part, as the parts written so far show
//! it; pixels of missing parts stay black. Read-only: it never writes into the job folder.

use crate::jobdesc::JobDesc;
use crate::renderjob::{AnyJobDesc, RenderJobDesc};
use std::path::Path;

/// Largest preview edge in texels (bigger maps are sampled down by whole steps).
pub const MAX_PREVIEW_PX: u32 = 512;

/// A PNG of the job's map so far, or `None` when the job folder has no readable part yet.
pub fn preview_png(job_dir: &Path) -> Option<Vec<u8>> {
    match AnyJobDesc::read(&job_dir.join(crate::jobdesc::FILE_NAME)).ok()? {
        AnyJobDesc::Bake(d) => bake_preview(job_dir, &d),
        AnyJobDesc::Render(d) => render_preview(job_dir, &d),
    }
}

/// Samples `px` (`w x h`) down to at most [`MAX_PREVIEW_PX`] by whole steps.
fn shrink(px: &[[f32; 3]], w: u32, h: u32) -> (u32, u32, Vec<[f32; 3]>) {
    let step = w.max(h).div_ceil(MAX_PREVIEW_PX).max(1);
    let (pw, ph) = (w.div_ceil(step), h.div_ceil(step));
    let mut small = Vec::with_capacity(pw as usize * ph as usize);
    for y in 0..ph {
        for x in 0..pw {
            small.push(px[((y * step).min(h - 1) * w + (x * step).min(w - 1)) as usize]);
        }
    }
    (pw, ph, small)
}

fn render_preview(job_dir: &Path, desc: &RenderJobDesc) -> Option<Vec<u8>> {
    let (w, h) = (desc.render.width, desc.render.height);
    for fi in (0..desc.frames.len()).rev() {
        let mut film = rayfarm_render::Film::new(w, h);
        let mut any = false;
        for pi in desc.parts_of_frame(fi) {
            let p = desc.part_desc(pi)?;
            if let Ok(part) = crate::parts::read_part(job_dir, &p, desc.render.spp) {
                any |= film.add_film(&part).is_ok();
            }
        }
        if any {
            let (pw, ph, small) = shrink(&film.to_rgb(desc.render.spp), w, h);
            let mut s = desc.image_settings();
            s.half = false;
            return crate::images::encode_image(
                crate::images::ImageFormat::Png,
                pw,
                ph,
                &small,
                &s,
            )
            .ok();
        }
    }
    None
}

fn bake_preview(job_dir: &Path, desc: &JobDesc) -> Option<Vec<u8>> {
    let output = desc
        .outputs
        .iter()
        .find(|o| o.pass == rayfarm_bake::Pass::Complete)
        .or(desc.outputs.first())?;
    let (w, h) = (output.width, output.height);
    let mut px = vec![[0.0f32; 3]; w as usize * h as usize];
    let mut any = false;
    for name in &output.parts {
        let Some(p) = desc.part(name) else { continue };
        let Some(spp) = desc.layer_spp(p.layer) else {
            continue;
        };
        let Ok(film) = crate::parts::read_part(job_dir, p, spp) else {
            continue;
        };
        any = true;
        let r = film.region;
        let rgb = film.to_rgb(spp);
        for y in r.y0..r.y1.min(h) {
            for x in r.x0..r.x1.min(w) {
                let v = rgb[((y - r.y0) * r.width() + (x - r.x0)) as usize];
                // In multi mode objects' regions may overlap: keep what is not black.
                if v != [0.0; 3] {
                    px[(y * w + x) as usize] = v;
                }
            }
        }
    }
    if !any {
        return None;
    }
    let (pw, ph, small) = shrink(&px, w, h);
    crate::maps::encode_map_png(pw, ph, &small, output.pass).ok()
}
