//! Fuzzes `rayfarm_scene::blob::decode`: it must never panic, and whatever it accepts must
//! re-encode to a blob with the same content hash that decodes again.
//!
//! Inputs whose first byte is odd are not blobs (a blob starts with `R`, which is even): the rest
//! is taken as an uncompressed body and given a correct header, so that the fuzzer can reach the
//! body parser and `validate` without having to forge zstd frames and BLAKE3 hashes.
//!
//! Run from the repository root: `RUSTC_BOOTSTRAP=1 cargo fuzz run blob_decode -s none
//! fuzz/corpus/blob_decode fuzz/seeds/blob_decode`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rayfarm_scene::blob;

/// Header + compressed body, laid out as documented in `rayfarm_scene::blob`.
fn wrap(body: &[u8]) -> Vec<u8> {
    let compressed = zstd::bulk::compress(body, 1).expect("zstd compression failed");
    let mut out = Vec::with_capacity(64 + compressed.len());
    out.extend_from_slice(&blob::BLOB_MAGIC);
    out.extend_from_slice(&blob::BLOB_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(&(compressed.len() as u64).to_le_bytes());
    out.extend_from_slice(blake3::hash(body).as_bytes());
    out.extend_from_slice(&compressed);
    out
}

fuzz_target!(|data: &[u8]| {
    let wrapped;
    let input = match data.split_first() {
        Some((&first, body)) if first & 1 == 1 => {
            wrapped = wrap(body);
            &wrapped[..]
        }
        _ => data,
    };
    let Ok(scene) = blob::decode(input) else {
        return;
    };
    // The encoding is canonical, so the re-encoded body is the accepted body: same hash.
    let again = blob::encode(&scene);
    assert_eq!(
        blob::content_hash(&again).unwrap(),
        blob::content_hash(input).unwrap()
    );
    let scene2 = blob::decode(&again).expect("a re-encoded scene must decode");
    // Compare encodings rather than scenes: unchecked floats (normals, UVs) may be NaN.
    assert_eq!(blob::encode(&scene2), again);
    if !has_nan(&scene) {
        assert_eq!(scene2, scene);
    }
});

fn has_nan(s: &rayfarm_scene::CompiledScene) -> bool {
    s.normals.iter().flatten().any(|x| x.is_nan())
        || s.tangents.iter().flatten().any(|x| x.is_nan())
        || s.uv0.iter().flatten().any(|x| x.is_nan())
        || s.uv1.iter().flatten().any(|x| x.is_nan())
}
