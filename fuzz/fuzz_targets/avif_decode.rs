//! Fuzzes `rayfarm_scene::gltf_import::decode_avif` (EXT_texture_avif's decoder: the
//! `avif-parse` container reader, the `rav1d` AV1 decoder, our YUV to RGB conversion and size
//! limits): any bytes must give an image of the size it states or an error, never a panic.
//!
//! Run from the repository root: `RUSTC_BOOTSTRAP=1 cargo fuzz run avif_decode
//! fuzz/corpus/avif_decode fuzz/seeds/avif_decode` (add `-s none` where the address sanitizer
//! is unavailable).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((width, height, texels)) = rayfarm_scene::gltf_import::decode_avif(data) {
        assert_eq!(texels.len(), width as usize * height as usize * 4);
    }
});
