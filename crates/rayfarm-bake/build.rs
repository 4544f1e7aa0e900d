fn main() {
    // This crate is compiled with the profile in pgo/ (pgo/rustc-wrapper): rebuild it when
    // benches/pgo.sh writes a new one, or when RAYFARM_PGO turns profiling on or off.
    println!("cargo:rerun-if-changed=../../pgo/rayfarm.profdata");
    println!("cargo:rerun-if-changed=../../pgo/LLVM_VERSION");
    println!("cargo:rerun-if-env-changed=RAYFARM_PGO");
}
