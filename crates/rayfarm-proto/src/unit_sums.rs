//! The compact codec of one unit's sums on the wire (`Msg::UnitDone`, protocol 4).
//!
//! Each pixel's three fixed-point sums, minus the previous pixel's in the same channel
//! (wrapping, so exact), are zigzag-mapped and written as LEB128 varints: a sum of 16 samples
//! of radiance about 1 at 24 fractional bits needs about 4 bytes instead of the 16 of an
//! `i128`, and 19 bytes at most. The varints then go through zstd level 1 with a compression
//! and a decompression context kept per thread, so a master merging thousands of units a
//! second does not build a context per unit (the part files of the job folder keep the plain
//! `sums` codec).
//!
//! Decoding is bounded before anything is allocated: the output buffer holds at most the
//! largest varint stream `pixels` can need ([`max_varint_bytes`]); a frame that decompresses
//! to more fails, and the varints must end exactly with the last pixel.

use std::cell::RefCell;

/// zstd level of the compact sums: the fastest; the varints did most of the work.
pub const LEVEL: i32 = 1;
/// Longest LEB128 varint of a zigzag-mapped `i128`: ceil(128 / 7).
const MAX_VARINT: usize = 19;

/// Why compact sums could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum UnitSumsError {
    #[error("cannot decompress the sums: {0}")]
    Zstd(#[source] std::io::Error),
    #[error("the sums end before the {pixels} pixels expected")]
    Short { pixels: usize },
    #[error("the sums hold more than the {pixels} pixels expected")]
    Long { pixels: usize },
    #[error("a sum is longer than 128 bits")]
    Overlong,
}

/// Largest varint stream `pixels` pixels can need.
pub fn max_varint_bytes(pixels: usize) -> usize {
    pixels.saturating_mul(3 * MAX_VARINT)
}

/// Largest encoded sums of a unit of `pixels` pixels: zstd's bound for the longest varint
/// stream (incompressible input grows a little).
pub fn max_encoded_bytes(pixels: usize) -> usize {
    let raw = max_varint_bytes(pixels);
    raw.saturating_add(raw / 128).saturating_add(1 << 10)
}

#[inline]
fn zigzag(v: i128) -> u128 {
    ((v << 1) ^ (v >> 127)) as u128
}

#[inline]
fn unzigzag(u: u128) -> i128 {
    ((u >> 1) as i128) ^ -((u & 1) as i128)
}

thread_local! {
    static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Encodes one unit's sums (deltas to the previous pixel, zigzag LEB128 varints, then zstd
/// level [`LEVEL`]).
pub fn encode(sums: &[[i128; 3]]) -> Vec<u8> {
    SCRATCH.with(|scratch| {
        let mut raw = scratch.borrow_mut();
        raw.clear();
        raw.reserve(sums.len() * 12);
        let mut prev = [0i128; 3];
        for px in sums {
            for (k, &c) in px.iter().enumerate() {
                let mut u = zigzag(c.wrapping_sub(prev[k]));
                prev[k] = c;
                while u >= 0x80 {
                    raw.push((u as u8) | 0x80);
                    u >>= 7;
                }
                raw.push(u as u8);
            }
        }
        COMPRESSOR.with(|c| {
            let mut c = c.borrow_mut();
            let c = match c.as_mut() {
                Some(c) => c,
                None => c.insert(zstd::bulk::Compressor::new(LEVEL).expect("a zstd context")),
            };
            // Compressing into memory cannot fail but for allocation.
            c.compress(&raw).expect("zstd into memory")
        })
    })
}

/// Decodes exactly `pixels` pixels of compact sums.
pub fn decode(data: &[u8], pixels: usize) -> Result<Vec<[i128; 3]>, UnitSumsError> {
    let cap = max_varint_bytes(pixels);
    let raw = DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        let d = match d.as_mut() {
            Some(d) => d,
            None => d.insert(zstd::bulk::Decompressor::new().map_err(UnitSumsError::Zstd)?),
        };
        // Refuses a frame that would decompress to more than `cap` (no allocation beyond it).
        d.decompress(data, cap).map_err(UnitSumsError::Zstd)
    })?;
    let mut out = Vec::with_capacity(pixels);
    let mut pos = 0usize;
    let mut prev = [0i128; 3];
    for _ in 0..pixels {
        let mut px = [0i128; 3];
        for (k, c) in px.iter_mut().enumerate() {
            let u = read_varint(&raw, &mut pos).ok_or(UnitSumsError::Short { pixels })??;
            *c = prev[k].wrapping_add(unzigzag(u));
            prev[k] = *c;
        }
        out.push(px);
    }
    if pos != raw.len() {
        return Err(UnitSumsError::Long { pixels });
    }
    Ok(out)
}

/// Reads the LEB128 varint at `raw[*pos..]` and moves `pos` past it; `None` if `raw` ends
/// first. The first 9 bytes (63 bits, more than any sum of real samples needs) are gathered
/// in a `u64`, which takes about half the time of shifting every byte into a `u128`.
#[inline(always)]
fn read_varint(raw: &[u8], pos: &mut usize) -> Option<Result<u128, UnitSumsError>> {
    let mut i = *pos;
    let mut low: u64 = 0;
    for k in 0..9 {
        let b = *raw.get(i)?;
        i += 1;
        low |= u64::from(b & 0x7f) << (7 * k);
        if b & 0x80 == 0 {
            *pos = i;
            return Some(Ok(u128::from(low)));
        }
    }
    let mut u = u128::from(low);
    let mut shift = 63u32;
    loop {
        let b = *raw.get(i)?;
        i += 1;
        if shift >= 128 || (shift == 126 && b > 0x03) {
            return Some(Err(UnitSumsError::Overlong));
        }
        u |= u128::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            *pos = i;
            return Some(Ok(u));
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_extremes_and_typical_sums() {
        let mut sums: Vec<[i128; 3]> = vec![
            [0, -1, 1],
            [i128::MAX, i128::MIN, i128::MIN + 1],
            [i128::MAX - 1, 1 << 100, -(1 << 100)],
        ];
        for i in 0..2000i128 {
            sums.push([i * 16_777_216 * 3, -i, i * i * 1_000_003]);
        }
        // Around the 63 bits the decoder gathers in a u64 before it goes on in a u128.
        for e in 55..=72 {
            let v = 1i128 << e;
            sums.push([v, v - 1, -v]);
            sums.push([-(v - 1), v + 1, 0]);
        }
        let enc = encode(&sums);
        assert_eq!(decode(&enc, sums.len()).unwrap(), sums);
        // Typical radiance sums (16 samples of about 1 at 24 fractional bits) take about a
        // quarter of the plain codec's 48 bytes per pixel before zstd.
        let typical: Vec<[i128; 3]> = (0..1024)
            .map(|i| {
                [
                    (16 << 24) + i * 977,
                    (15 << 24) - i * 131,
                    (9 << 24) + i * 7,
                ]
            })
            .collect();
        assert!(
            encode(&typical).len() < 1024 * 13,
            "{}",
            encode(&typical).len()
        );
    }

    #[test]
    fn refuses_short_long_overlong_and_bombs() {
        let sums = vec![[5i128, 6, 7]; 10];
        let enc = encode(&sums);
        assert!(matches!(decode(&enc, 11), Err(UnitSumsError::Short { .. })));
        assert!(matches!(decode(&enc, 9), Err(UnitSumsError::Long { .. })));
        assert!(decode(b"not zstd at all", 10).is_err());
        // 20 continuation bytes: longer than any i128.
        let overlong = zstd::bulk::compress(&[0xffu8; 40], 1).unwrap();
        assert!(matches!(decode(&overlong, 1), Err(UnitSumsError::Overlong)));
        // A frame that expands far beyond what one pixel can need is refused, not inflated.
        let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 19).unwrap();
        assert!(bomb.len() < 10_000);
        assert!(matches!(decode(&bomb, 1), Err(UnitSumsError::Zstd(_))));
    }
}
