//! Fuzzes `rayfarm_scene::gltf_import::decode_ktx2` (KHR_texture_basisu's KTX2 decoder: the
//! header checks, the `basisu` transcoder for ETC1S and UASTC, Zstandard levels): any bytes must
//! give an image of the size the header states or an error, never a panic or an allocation the
//! file does not justify.
//!
//! Run from the repository root: `RUSTC_BOOTSTRAP=1 cargo fuzz run -O ktx2_decode
//! fuzz/corpus/ktx2_decode fuzz/seeds/ktx2_decode` (add `-s none` where the address sanitizer
//! is unavailable). `-O` builds without overflow checks, as rayfarm builds basisu everywhere
//! (see the workspace Cargo.toml): the transcoder's arithmetic wraps like the C++ it ports, and
//! with overflow checks a corrupt ETC1S stream aborts the fuzzer in `decode_slice_indices`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((width, height, texels)) = rayfarm_scene::gltf_import::decode_ktx2(data) {
        assert_eq!(texels.len(), width as usize * height as usize * 4);
    }
});
