//! Fuzzes `rayfarm_scene::obj::parse`: any text must give a scene or an error, never a panic.
//! Referenced MTL / texture files are reported missing, so only the OBJ parser is exercised.
//!
//! Run from the repository root: `RUSTC_BOOTSTRAP=1 cargo fuzz run obj_parse -s none`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = rayfarm_scene::obj::parse(
        &String::from_utf8_lossy(data),
        Path::new("fuzz.obj"),
        &|_| Err(std::io::ErrorKind::NotFound.into()),
    );
});
