//! Shared build script of the LibTorch-backed crates (`build = "../../build/link_torch_cuda.rs"`).
//!
//! PyTorch registers its CUDA backend from static initialisers inside `libtorch_cuda.so`. No Rust
//! symbol references that library, so with the default `--as-needed` the linker drops it and the
//! binary silently runs on CPU even on a GPU host. We therefore ask for it explicitly, without
//! `--as-needed`, for every binary, test and bench of the crate.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        return;
    };
    let lib = std::path::Path::new(&libtorch).join("lib");
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-search=native={}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
