//! The one codec of sample sums, used on the wire (`Msg::UnitDone`) and in the job folder's part
//! files: each texel or pixel is three `i128` (fixed-point sums of its samples' R, G, B) in
//! little-endian order, 48 bytes, row after row, compressed with zstd.
//!
//! Encoding streams row by row (only the compressed bytes are held); decoding is told how many
//! texels to expect, refuses short and trailing data alike, never reads more than one byte past
//! the expected size and caps zstd's window, so a small hostile input cannot expand into a large
//! allocation.

use std::io::{Read, Write};

/// Bytes of one texel's sums.
pub const TEXEL_BYTES: usize = 48;
/// Largest zstd window the decoder accepts (2^27 = 128 MiB, zstd's own default limit), stated
/// so a hostile frame cannot make us reserve more.
pub const WINDOW_LOG_MAX: u32 = 27;

/// Why sums could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum SumsError {
    #[error("cannot decompress the sums: {0}")]
    Zstd(#[source] std::io::Error),
    #[error("the sums end before the {texels} texels expected")]
    Short { texels: usize },
    #[error("the sums hold more than the {texels} texels expected")]
    Long { texels: usize },
}

/// Streams rows of sums into `out` through zstd at `level`.
pub struct SumsEncoder<W: Write> {
    enc: zstd::stream::write::Encoder<'static, W>,
    row: Vec<u8>,
}

impl<W: Write> SumsEncoder<W> {
    pub fn new(out: W, level: i32) -> std::io::Result<SumsEncoder<W>> {
        Ok(SumsEncoder {
            enc: zstd::stream::write::Encoder::new(out, level)?,
            row: Vec::new(),
        })
    }

    /// Appends a row (or any run) of texels.
    pub fn push(&mut self, texels: &[[i128; 3]]) -> std::io::Result<()> {
        self.row.clear();
        for t in texels {
            for c in t {
                self.row.extend_from_slice(&c.to_le_bytes());
            }
        }
        self.enc.write_all(&self.row)
    }

    /// Ends the zstd frame; the writer back.
    pub fn finish(self) -> std::io::Result<W> {
        self.enc.finish()
    }
}

/// Encodes `sums` in one go (zstd `level`).
pub fn encode(sums: &[[i128; 3]], level: i32) -> Vec<u8> {
    let mut e = SumsEncoder::new(Vec::new(), level).expect("zstd encoder in memory");
    // Writing to memory cannot fail.
    for chunk in sums.chunks(4096) {
        e.push(chunk).expect("zstd into memory");
    }
    e.finish().expect("zstd into memory")
}

/// Decodes exactly `texels` texels of sums.
pub fn decode(compressed: &[u8], texels: usize) -> Result<Vec<[i128; 3]>, SumsError> {
    let mut dec = zstd::stream::read::Decoder::with_buffer(compressed).map_err(SumsError::Zstd)?;
    dec.window_log_max(WINDOW_LOG_MAX)
        .map_err(SumsError::Zstd)?;
    let mut sums = Vec::with_capacity(texels);
    // Runs of up to 4096 texels at a time keep the staging buffer small.
    let mut buf = vec![0u8; 4096 * TEXEL_BYTES];
    let mut left = texels;
    while left > 0 {
        let n = left.min(4096);
        let chunk = &mut buf[..n * TEXEL_BYTES];
        dec.read_exact(chunk).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                SumsError::Short { texels }
            } else {
                SumsError::Zstd(e)
            }
        })?;
        for t in chunk.chunks_exact(TEXEL_BYTES) {
            let c = |k: usize| {
                i128::from_le_bytes(t[k * 16..k * 16 + 16].try_into().expect("16 bytes"))
            };
            sums.push([c(0), c(1), c(2)]);
        }
        left -= n;
    }
    let mut extra = [0u8; 1];
    match dec.read(&mut extra) {
        Ok(0) => Ok(sums),
        Ok(_) => Err(SumsError::Long { texels }),
        Err(e) => Err(SumsError::Zstd(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_exact_length() {
        let sums: Vec<[i128; 3]> = (0..10_000i128)
            .map(|i| [i * 1_000_000_007, -i, i128::MAX - i])
            .collect();
        let enc = encode(&sums, 3);
        assert_eq!(decode(&enc, sums.len()).unwrap(), sums);
        assert!(matches!(
            decode(&enc, sums.len() + 1),
            Err(SumsError::Short { .. })
        ));
        assert!(matches!(
            decode(&enc, sums.len() - 1),
            Err(SumsError::Long { .. })
        ));
        assert!(matches!(decode(b"not zstd", 4), Err(SumsError::Zstd(_))));
    }

    #[test]
    fn a_small_bomb_is_refused_without_a_large_allocation() {
        // 64 MiB of zeros compresses to a few KiB; asking for 1 texel reads 49 bytes of it.
        let zeros = vec![0u8; 64 << 20];
        let bomb = zstd::bulk::compress(&zeros, 19).unwrap();
        assert!(bomb.len() < 64 << 10);
        assert!(matches!(
            decode(&bomb, 1),
            Err(SumsError::Long { texels: 1 })
        ));
    }
}
