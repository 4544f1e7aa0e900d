fn main() {
    // This crate and rayfarm-bake are compiled with the profile in pgo/ (pgo/rustc-wrapper):
    // rebuild this one, and so rayfarm-bake, which depends on it, when benches/pgo.sh writes a
    // new profile or RAYFARM_PGO turns profiling on or off.
    println!("cargo:rerun-if-changed=../../pgo/rayfarm.profdata");
    println!("cargo:rerun-if-changed=../../pgo/LLVM_VERSION");
    println!("cargo:rerun-if-env-changed=RAYFARM_PGO");
}
