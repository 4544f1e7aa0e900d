//! EXT_texture_avif: AVIF images decoded to RGBA8 at import. The container is read by
//! `avif-parse`, the AV1 still image (and its alpha image, if any) decoded by `rav1d`, the
//! memory-safety project's Rust port of dav1d, built without its assembly so no assembler is
//! needed; YUV is converted to RGB here. What we do not apply: the container's crop (`clap`),
//! rotation (`irot`) and mirror (`imir`) properties, and ICC profiles (glTF images are sRGB).

use rav1d::include::dav1d::data::Dav1dData;
use rav1d::include::dav1d::dav1d::{Dav1dContext, Dav1dSettings};
use rav1d::include::dav1d::headers::*;
use rav1d::include::dav1d::picture::Dav1dPicture;
use rav1d::src::lib::{
    dav1d_close, dav1d_data_create, dav1d_data_unref, dav1d_default_settings, dav1d_get_picture,
    dav1d_open, dav1d_picture_unref, dav1d_send_data,
};
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use super::ktx2::{MAX_SIDE_PX, MAX_TEXELS};

/// Whether `bytes` look like an AVIF file: an ISO-BMFF `ftyp` box naming the `avif` or `avis`
/// brand (as major or compatible brand).
pub(super) fn is_avif(bytes: &[u8]) -> bool {
    if bytes.len() < 16 || &bytes[4..8] != b"ftyp" {
        return false;
    }
    let size = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let ftyp = &bytes[8..size.clamp(8, bytes.len())];
    // Major brand, minor version, then compatible brands.
    ftyp.chunks_exact(4)
        .enumerate()
        .any(|(i, b)| i != 1 && (b == b"avif" || b == b"avis"))
}

/// A decoded image: width, height and `width * height * 4` RGBA bytes (straight alpha).
pub(super) struct Decoded {
    pub width: u32,
    pub height: u32,
    pub rgba8: Vec<u8>,
}

/// Decodes an AVIF file. Errors are lower-case sentences for the importer to prefix with the
/// file and image.
/// A decoder of AVIF bytes to (width, height, RGBA8) that runs where an abort cannot take the
/// importer down with it; see [`set_isolated_decoder`].
pub type IsolatedDecoder = fn(&[u8]) -> Result<(u32, u32, Vec<u8>), String>;

static ISOLATED: std::sync::OnceLock<IsolatedDecoder> = std::sync::OnceLock::new();

/// Makes the importer decode AVIF images with `f` (the `rayfarm` binary installs one that
/// runs itself as a child process: rav1d aborts the process on some corrupt data, see
/// [`decode`]). Without it, images are decoded in this process.
pub fn set_isolated_decoder(f: IsolatedDecoder) {
    let _ = ISOLATED.set(f);
}

/// Decodes with the isolated decoder when one is installed, else in this process; the size
/// the isolated decoder reports is checked against its bytes and the limits.
pub(super) fn decode_for_import(bytes: &[u8]) -> Result<Decoded, String> {
    let Some(f) = ISOLATED.get() else {
        return decode(bytes);
    };
    let (width, height, rgba8) = f(bytes)?;
    if width > MAX_SIDE_PX
        || height > MAX_SIDE_PX
        || width as u64 * height as u64 > MAX_TEXELS
        || rgba8.len() as u64 != width as u64 * height as u64 * 4
    {
        return Err(format!(
            "the AVIF decoder returned {} bytes for {width} x {height} texels",
            rgba8.len()
        ));
    }
    Ok(Decoded {
        width,
        height,
        rgba8,
    })
}

pub(super) fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    // A panic in the container parser or in our conversion must be one error line, not a
    // crash of the importer; the decoder's context and pictures are leaked, not released,
    // while a panic unwinds (see their `Drop`). Known limit: rav1d 1.1 itself panics on some
    // corrupt AV1 streams (the `avif_decode` fuzz target finds `try_write().unwrap()` in its
    // error path within a minute), and since its API is `extern "C"`, such a panic aborts the
    // process instead of unwinding to here; that is why the binary decodes in a child process
    // (`set_isolated_decoder`). Truncated files and broken containers are caught before rav1d
    // sees them.
    std::panic::catch_unwind(|| decode_unguarded(bytes)).unwrap_or_else(|_| {
        Err("the AV1 decoder failed on this data (corrupt or unsupported)".into())
    })
}

fn decode_unguarded(bytes: &[u8]) -> Result<Decoded, String> {
    let avif = avif_parse::read_avif(&mut &bytes[..])
        .map_err(|e| format!("not a valid AVIF file: {e}"))?;
    let meta = avif
        .primary_item_metadata()
        .map_err(|e| format!("not a valid AV1 image: {e}"))?;
    let (w, h) = (meta.max_frame_width.get(), meta.max_frame_height.get());
    if w > MAX_SIDE_PX || h > MAX_SIDE_PX || w as u64 * h as u64 > MAX_TEXELS {
        return Err(format!(
            "{w} x {h} texels is larger than rayfarm accepts (at most {MAX_SIDE_PX} per side and {MAX_TEXELS} texels)"
        ));
    }
    let mut decoder = Decoder::new()?;
    let colour = decoder.decode(&avif.primary_item)?;
    let (width, height) = (colour.width(), colour.height());
    let mut rgba8 = colour.to_rgba8()?;
    drop(colour);
    if let Some(alpha) = &avif.alpha_item {
        let alpha = decoder.decode(alpha)?;
        if alpha.width() != width || alpha.height() != height {
            return Err(format!(
                "the alpha image is {} x {} but the colour image {width} x {height}",
                alpha.width(),
                alpha.height()
            ));
        }
        alpha.write_alpha(&mut rgba8)?;
        if avif.premultiplied_alpha {
            for px in rgba8.chunks_exact_mut(4) {
                let a = px[3] as u32;
                for c in &mut px[..3] {
                    *c = (*c as u32 * 255 + a / 2)
                        .checked_div(a)
                        .map_or(0, |v| v.min(255) as u8);
                }
            }
        }
    }
    Ok(Decoded {
        width,
        height,
        rgba8,
    })
}

/// One rav1d decoder, closed on drop.
struct Decoder {
    ctx: Option<Dav1dContext>,
}

fn rav1d_error(what: &str, res: rav1d::Dav1dResult) -> String {
    format!("the AV1 decoder failed to {what} (error {})", res.0)
}

impl Decoder {
    fn new() -> Result<Decoder, String> {
        let mut settings = MaybeUninit::<Dav1dSettings>::uninit();
        let mut ctx = None;
        // SAFETY: `dav1d_default_settings` initialises every field of the settings it is given;
        // `dav1d_open` reads them and writes a context (or None) into `ctx`.
        let res = unsafe {
            dav1d_default_settings(NonNull::from(&mut settings).cast());
            let s = settings.assume_init_mut();
            // Textures are small next to a render: one thread, and a still image has nothing
            // to pipeline.
            s.n_threads = 1;
            s.max_frame_delay = 1;
            s.apply_grain = 1;
            s.frame_size_limit = MAX_TEXELS as _;
            dav1d_open(Some(NonNull::from(&mut ctx)), Some(NonNull::from(s)))
        };
        if res.0 != 0 {
            return Err(rav1d_error("start", res));
        }
        Ok(Decoder { ctx })
    }

    /// Decodes one AV1 item (one temporal unit) and returns its last picture.
    fn decode(&mut self, av1: &[u8]) -> Result<Picture, String> {
        let ctx = self.ctx.ok_or("the AV1 decoder is closed")?;
        let mut data = Dav1dData::default();
        let mut last: Option<Picture> = None;
        // SAFETY: `data` owns a buffer of `av1.len()` bytes from `dav1d_data_create`, which we
        // fill before handing it to the decoder and release with `dav1d_data_unref` (which also
        // works once the decoder took it). Pictures are released by `Picture`'s drop.
        unsafe {
            let buf = dav1d_data_create(Some(NonNull::from(&mut data)), av1.len());
            let Some(buf) = NonNull::new(buf) else {
                return Err("out of memory for the AV1 data".into());
            };
            std::ptr::copy_nonoverlapping(av1.as_ptr(), buf.as_ptr(), av1.len());
            let sent = loop {
                let res = dav1d_send_data(Some(ctx), Some(NonNull::from(&mut data)));
                if res.0 == 0 {
                    break Ok(());
                }
                // The decoder holds a picture back: take it and send the rest.
                let mut pic = Picture(Dav1dPicture::default());
                if dav1d_get_picture(Some(ctx), Some(NonNull::from(&mut pic.0))).0 != 0 {
                    break Err(rav1d_error("decode the image", res));
                }
                last = Some(pic);
            };
            dav1d_data_unref(Some(NonNull::from(&mut data)));
            sent?;
            loop {
                let mut pic = Picture(Dav1dPicture::default());
                let res = dav1d_get_picture(Some(ctx), Some(NonNull::from(&mut pic.0)));
                if res.0 != 0 {
                    return last.ok_or_else(|| rav1d_error("decode the image", res));
                }
                last = Some(pic);
            }
        }
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // After a panic inside rav1d the context may be inconsistent, and closing it could
        // panic again while unwinding (an abort): leak it instead.
        if std::thread::panicking() {
            return;
        }
        // SAFETY: `ctx` came from `dav1d_open`; closing sets it to None.
        unsafe { dav1d_close(Some(NonNull::from(&mut self.ctx))) };
    }
}

/// A decoded picture, released on drop.
struct Picture(Dav1dPicture);

impl Drop for Picture {
    fn drop(&mut self) {
        // As for `Decoder`: nothing is released while a panic unwinds.
        if std::thread::panicking() {
            return;
        }
        // SAFETY: an empty (default) picture or one the decoder filled.
        unsafe { dav1d_picture_unref(Some(NonNull::from(&mut self.0))) };
    }
}

/// One plane's samples as integers, whatever the bit depth.
struct Plane<'a> {
    data: PlaneData<'a>,
    stride: usize,
    width: usize,
    height: usize,
}

enum PlaneData<'a> {
    U8(&'a [u8]),
    U16(&'a [u16]),
}

impl Plane<'_> {
    #[inline]
    fn at(&self, x: usize, y: usize) -> f32 {
        let (x, y) = (x.min(self.width - 1), y.min(self.height - 1));
        match self.data {
            PlaneData::U8(d) => d[y * self.stride + x] as f32,
            PlaneData::U16(d) => d[y * self.stride + x] as f32,
        }
    }
}

impl Picture {
    fn width(&self) -> u32 {
        self.0.p.w.max(0) as u32
    }

    fn height(&self) -> u32 {
        self.0.p.h.max(0) as u32
    }

    /// Horizontal and vertical chroma subsampling shifts, or None without chroma.
    fn subsampling(&self) -> Result<Option<(usize, usize)>, String> {
        Ok(match self.0.p.layout {
            DAV1D_PIXEL_LAYOUT_I400 => None,
            DAV1D_PIXEL_LAYOUT_I420 => Some((1, 1)),
            DAV1D_PIXEL_LAYOUT_I422 => Some((1, 0)),
            DAV1D_PIXEL_LAYOUT_I444 => Some((0, 0)),
            _ => return Err("unknown AV1 pixel layout".into()),
        })
    }

    fn plane(&self, n: usize) -> Result<Plane<'_>, String> {
        let p = &self.0;
        let (sx, sy) = if n == 0 {
            (0, 0)
        } else {
            self.subsampling()?
                .ok_or("the image has no chroma planes")?
        };
        let width = (self.width() as usize + sx) >> sx;
        let height = (self.height() as usize + sy) >> sy;
        let bytes_per_sample = if p.p.bpc <= 8 { 1 } else { 2 };
        let stride_bytes = p.stride[(n != 0) as usize];
        let data = p.data[n].ok_or("the decoder returned no pixels")?;
        if width == 0 || height == 0 || stride_bytes <= 0 {
            return Err("the decoder returned an empty image".into());
        }
        let stride = stride_bytes as usize / bytes_per_sample;
        if stride < width {
            return Err("the decoder returned a bad stride".into());
        }
        // SAFETY: rav1d allocates whole rows, `stride * height` samples per plane, aligned for
        // its sample type; the slice lives as long as the picture borrowed here.
        let data = unsafe {
            if bytes_per_sample == 1 {
                PlaneData::U8(std::slice::from_raw_parts(
                    data.as_ptr().cast::<u8>(),
                    stride * height,
                ))
            } else {
                PlaneData::U16(std::slice::from_raw_parts(
                    data.as_ptr().cast::<u16>(),
                    stride * height,
                ))
            }
        };
        Ok(Plane {
            data,
            stride,
            width,
            height,
        })
    }

    fn seq_hdr(&self) -> Option<&Dav1dSequenceHeader> {
        // SAFETY: the header lives as long as the picture.
        self.0.seq_hdr.map(|h| unsafe { h.as_ref() })
    }

    fn full_range(&self) -> bool {
        self.seq_hdr().is_some_and(|h| h.color_range != 0)
    }

    /// Sample value to [0, 1] (luma and alpha) for this picture's depth and range.
    fn luma_scale(&self) -> (f32, f32) {
        let s = (1u32 << (self.0.p.bpc.clamp(8, 16) - 8)) as f32;
        if self.full_range() {
            (0.0, 255.0 * s + (s - 1.0))
        } else {
            (16.0 * s, 219.0 * s)
        }
    }

    /// RGBA8 with opaque alpha, converted from YUV with the sequence header's matrix.
    fn to_rgba8(&self) -> Result<Vec<u8>, String> {
        let (w, h) = (self.width() as usize, self.height() as usize);
        let bpc = self.0.p.bpc.clamp(8, 16);
        let s = (1u32 << (bpc - 8)) as f32;
        let max = ((1u32 << bpc) - 1) as f32;
        let (y_off, y_range) = self.luma_scale();
        let (c_off, c_range) = if self.full_range() {
            ((1u32 << (bpc - 1)) as f32, max)
        } else {
            (128.0 * s, 224.0 * s)
        };
        let mtrx = self.seq_hdr().map_or(DAV1D_MC_UNKNOWN, |h| h.mtrx);
        // (Kr, Kb); None for identity (GBR).
        let k = match mtrx {
            DAV1D_MC_IDENTITY => None,
            DAV1D_MC_BT709 => Some((0.2126, 0.0722)),
            DAV1D_MC_FCC => Some((0.30, 0.11)),
            DAV1D_MC_SMPTE240 => Some((0.212, 0.087)),
            DAV1D_MC_BT2020_NCL | DAV1D_MC_BT2020_CL => Some((0.2627, 0.0593)),
            // BT.601 (and unspecified, as libavif reads it).
            DAV1D_MC_BT470BG | DAV1D_MC_BT601 | DAV1D_MC_UNKNOWN => Some((0.299, 0.114)),
            other => return Err(format!("unsupported AV1 matrix coefficients {other}")),
        };
        let to_byte = |v: f32| (v.clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
        let luma = self.plane(0)?;
        let mut out = Vec::with_capacity(w * h * 4);
        let Some((sx, sy)) = self.subsampling()? else {
            for y in 0..h {
                for x in 0..w {
                    let v = to_byte((luma.at(x, y) - y_off) / y_range);
                    out.extend_from_slice(&[v, v, v, 255]);
                }
            }
            return Ok(out);
        };
        let (u, v) = (self.plane(1)?, self.plane(2)?);
        for y in 0..h {
            for x in 0..w {
                let (cx, cy) = (x >> sx, y >> sy);
                let (yy, cb, cr) = (luma.at(x, y), u.at(cx, cy), v.at(cx, cy));
                let rgb = match k {
                    // GBR: Y is green, U blue, V red, all full-range-like luma values.
                    None => [cr, yy, cb].map(|c| (c - y_off) / y_range),
                    Some((kr, kb)) => {
                        let yn = (yy - y_off) / y_range;
                        let (pb, pr) = ((cb - c_off) / c_range, (cr - c_off) / c_range);
                        let r = yn + 2.0 * (1.0 - kr) * pr;
                        let b = yn + 2.0 * (1.0 - kb) * pb;
                        let g = (yn - kr * r - kb * b) / (1.0 - kr - kb);
                        [r, g, b]
                    }
                };
                out.extend_from_slice(&[to_byte(rgb[0]), to_byte(rgb[1]), to_byte(rgb[2]), 255]);
            }
        }
        Ok(out)
    }

    /// Writes this (alpha) picture's luma into the alpha bytes of `rgba8`.
    fn write_alpha(&self, rgba8: &mut [u8]) -> Result<(), String> {
        let w = self.width() as usize;
        let (off, range) = self.luma_scale();
        let luma = self.plane(0)?;
        for (i, px) in rgba8.chunks_exact_mut(4).enumerate() {
            let a = (luma.at(i % w, i / w) - off) / range;
            px[3] = (a.clamp(0.0, 1.0) * 255.0 + 0.5) as u8;
        }
        Ok(())
    }
}
