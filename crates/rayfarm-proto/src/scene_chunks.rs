//! A compiled scene cut into chunks for distribution, each with its BLAKE3 hash.
//!
//! The master sends the chunk hashes over its authenticated channel; a worker checks every
//! chunk against them as it arrives, whoever sent it, before keeping or relaying it. A relay
//! that sends a wrong byte is therefore caught at the first chunk, not after the whole scene.

use crate::SCENE_CHUNK_BYTES_RANGE;

/// Why a scene's chunk list was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    #[error("chunk size {0} is outside {min}..={max} bytes", min = SCENE_CHUNK_BYTES_RANGE.start(), max = SCENE_CHUNK_BYTES_RANGE.end())]
    ChunkSize(u32),
    #[error("{got} chunk hashes for a scene of {scene_bytes} bytes in chunks of {chunk_bytes} (expected {expected})")]
    Count {
        got: usize,
        expected: u64,
        scene_bytes: u64,
        chunk_bytes: u32,
    },
    #[error("chunk {index} does not match its hash (a corrupt or forged relay)")]
    Mismatch { index: u32 },
    #[error("chunk {index} has {got} bytes, expected {expected}")]
    Length {
        index: u32,
        got: usize,
        expected: usize,
    },
}

/// The chunk layout of one scene: sizes and hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkList {
    pub scene_bytes: u64,
    pub chunk_bytes: u32,
    pub hashes: Vec<[u8; 32]>,
}

impl ChunkList {
    /// Cuts `blob` into chunks of `chunk_bytes` and hashes each.
    pub fn of(blob: &[u8], chunk_bytes: u32) -> ChunkList {
        let hashes = blob
            .chunks(chunk_bytes.max(1) as usize)
            .map(|c| *blake3::hash(c).as_bytes())
            .collect();
        ChunkList {
            scene_bytes: blob.len() as u64,
            chunk_bytes,
            hashes,
        }
    }

    /// Checks a list received from a master against the scene size it announced.
    pub fn new(
        scene_bytes: u64,
        chunk_bytes: u32,
        hashes: Vec<[u8; 32]>,
    ) -> Result<ChunkList, ChunkError> {
        if !SCENE_CHUNK_BYTES_RANGE.contains(&chunk_bytes) {
            return Err(ChunkError::ChunkSize(chunk_bytes));
        }
        let expected = scene_bytes.div_ceil(u64::from(chunk_bytes));
        if hashes.len() as u64 != expected {
            return Err(ChunkError::Count {
                got: hashes.len(),
                expected,
                scene_bytes,
                chunk_bytes,
            });
        }
        Ok(ChunkList {
            scene_bytes,
            chunk_bytes,
            hashes,
        })
    }

    pub fn count(&self) -> u32 {
        self.hashes.len() as u32
    }

    /// Byte offset of chunk `index`.
    pub fn offset(&self, index: u32) -> u64 {
        u64::from(index) * u64::from(self.chunk_bytes)
    }

    /// Length of chunk `index`.
    pub fn len_of(&self, index: u32) -> usize {
        let start = self.offset(index);
        (self.scene_bytes.saturating_sub(start)).min(u64::from(self.chunk_bytes)) as usize
    }

    /// The chunk that starts at byte `offset`, if one does.
    pub fn index_at(&self, offset: u64) -> Option<u32> {
        let i = offset / u64::from(self.chunk_bytes);
        (offset.is_multiple_of(u64::from(self.chunk_bytes)) && i < self.hashes.len() as u64)
            .then_some(i as u32)
    }

    /// Checks chunk `index`'s bytes.
    pub fn verify(&self, index: u32, data: &[u8]) -> Result<(), ChunkError> {
        let expected = self.len_of(index);
        if data.len() != expected || index >= self.count() {
            return Err(ChunkError::Length {
                index,
                got: data.len(),
                expected,
            });
        }
        if blake3::hash(data).as_bytes() != &self.hashes[index as usize] {
            return Err(ChunkError::Mismatch { index });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_blob_and_verify() {
        let blob: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let l = ChunkList::of(&blob, 65536);
        assert_eq!(l.count(), 4);
        assert_eq!(l.len_of(3), 200_000 - 3 * 65536);
        let checked = ChunkList::new(blob.len() as u64, 65536, l.hashes.clone()).unwrap();
        for i in 0..4 {
            let o = l.offset(i) as usize;
            checked.verify(i, &blob[o..o + l.len_of(i)]).unwrap();
            assert_eq!(checked.index_at(o as u64), Some(i));
        }
        assert_eq!(checked.index_at(5), None);
        assert_eq!(checked.index_at(4 * 65536), None);
    }

    #[test]
    fn a_forged_chunk_or_list_is_refused() {
        let blob = vec![7u8; 100_000];
        let l = ChunkList::of(&blob, 65536);
        let mut bad = blob[..65536].to_vec();
        bad[100] ^= 1;
        assert_eq!(l.verify(0, &bad), Err(ChunkError::Mismatch { index: 0 }));
        assert!(matches!(
            l.verify(1, &blob[..10]),
            Err(ChunkError::Length { .. })
        ));
        assert!(matches!(
            l.verify(9, &blob[..10]),
            Err(ChunkError::Length { .. })
        ));
        assert!(matches!(
            ChunkList::new(100_000, 65536, vec![[0; 32]; 3]),
            Err(ChunkError::Count { .. })
        ));
        assert_eq!(
            ChunkList::new(100_000, 1, vec![]),
            Err(ChunkError::ChunkSize(1))
        );
    }

    #[test]
    fn byte_strings_keep_the_wire_format_of_byte_sequences() {
        // `SceneChunk::data` and `UnitDone::sums` are serialized as byte strings (fast); the
        // bytes on the wire must be those of the plain `Vec<u8>` sequence they replaced.
        #[derive(serde::Serialize)]
        enum Plain {
            #[allow(dead_code)]
            Pad0,
            #[allow(dead_code)]
            Pad1,
            #[allow(dead_code)]
            Pad2,
            #[allow(dead_code)]
            Pad3,
            #[allow(dead_code)]
            Pad4,
            #[allow(dead_code)]
            Pad5,
            #[allow(dead_code)]
            Pad6,
            #[allow(dead_code)]
            Pad7,
            #[allow(dead_code)]
            Pad8,
            #[allow(dead_code)]
            Pad9,
            #[allow(dead_code)]
            Pad10,
            #[allow(dead_code)]
            Pad11,
            #[allow(dead_code)]
            Pad12,
            #[allow(dead_code)]
            Pad13,
            #[allow(dead_code)]
            Pad14,
            SceneChunk {
                offset: u64,
                data: Vec<u8>,
            },
        }
        let data: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
        let ours = postcard::to_stdvec(&crate::Msg::SceneChunk {
            offset: 7,
            data: data.clone(),
        })
        .unwrap();
        let plain = postcard::to_stdvec(&Plain::SceneChunk { offset: 7, data }).unwrap();
        assert_eq!(ours, plain);
    }
}
