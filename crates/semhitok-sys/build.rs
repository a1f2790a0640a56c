//! Compiles the c10d shim (`csrc/c10d_shim.cpp`) against the project's LibTorch headers.
//!
//! Inputs (all installed by `cargo xtask setup`):
//! - `LIBTORCH` (set by `.cargo/config.toml`): `.libtorch/torch`, with `include/` and `lib/`.
//! - `.libtorch/c10d/gloo/include`: Gloo headers (Debian libgloo-dev). Required: the Gloo
//!   backend is always built.
//! - `.libtorch/c10d/cuda/include` (PyPI nvidia-cuda-crt + nvidia-cuda-cccl) together with
//!   `.libtorch/nvidia/{cu13,nccl}/include` (torch's own dependencies) and `libtorch_cuda.so`:
//!   when all are present the NCCL backend is built too (`cfg(semhitok_nccl)`).
//!
//! `SEMHITOK_C10D_HEADERS` overrides the `.libtorch/c10d` folder.
//! The link also names libtorch_cuda with `--no-as-needed`, as `build/link_torch_cuda.rs` does
//! for the other tch crates (PyTorch's CUDA backend registers itself from static initialisers).
use std::path::{Path, PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=SEMHITOK_C10D_HEADERS");
    println!("cargo:rerun-if-changed=csrc/c10d_shim.cpp");
    println!("cargo:rerun-if-changed=csrc/c10d_shim.h");
    println!("cargo:rerun-if-changed=csrc/grad_reducer.cpp");
    println!("cargo:rerun-if-changed=csrc/shim_internal.h");
    println!("cargo:rerun-if-changed=csrc/cuda_graph.cpp");
    println!("cargo:rerun-if-changed=csrc/host_memory.cpp");
    println!("cargo:rerun-if-changed=csrc/parallel.cpp");
    println!("cargo:rerun-if-changed=csrc/autograd.cpp");
    println!("cargo:rerun-if-changed=csrc/custom_fn.cpp");
    println!("cargo::rustc-check-cfg=cfg(semhitok_nccl)");
    let Ok(libtorch) = std::env::var("LIBTORCH") else {
        panic!(
            "semhitok-sys: LIBTORCH is not set; run `cargo xtask setup` (it installs LibTorch into \
             .libtorch/ and .cargo/config.toml points LIBTORCH there)"
        );
    };
    let torch = PathBuf::from(libtorch);
    let site = torch.parent().map(Path::to_path_buf).unwrap_or_default();
    let headers = std::env::var("SEMHITOK_C10D_HEADERS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| site.join("c10d"));
    println!("cargo:rerun-if-changed={}", headers.display());
    let gloo = headers.join("gloo/include");
    if !gloo.join("gloo/algorithm.h").exists() {
        panic!(
            "semhitok-sys: no Gloo headers in {}: run `cargo xtask setup` (it installs Debian's \
             libgloo-dev headers there)",
            gloo.display()
        );
    }
    let lib = torch.join("lib");
    let cuda = [
        headers.join("cuda/include"),
        site.join("nvidia/cu13/include"),
        site.join("nvidia/nccl/include"),
    ];
    let nccl = cuda[0].join("crt/host_config.h").exists()
        && cuda[0].join("nv/target").exists()
        && cuda[1].join("cuda_runtime_api.h").exists()
        && cuda[2].join("nccl.h").exists()
        && lib.join("libtorch_cuda.so").exists();

    let mut b = cc::Build::new();
    b.cpp(true)
        .file("csrc/c10d_shim.cpp")
        .file("csrc/grad_reducer.cpp")
        .file("csrc/cuda_graph.cpp") // CUDA graphs (USE_CUDA with the CUDA headers, else stubs)
        .file("csrc/host_memory.cpp") // pinned host copies
        .file("csrc/autograd.cpp") // param.grad = g
        .file("csrc/custom_fn.cpp") // autograd nodes with a Rust forward / backward
        .include("csrc")
        .include(torch.join("include"))
        .include(torch.join("include/torch/csrc/api/include"))
        .include(&gloo)
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .define("USE_C10D_GLOO", None)
        .warnings(false)
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations");
    if nccl {
        b.define("USE_C10D_NCCL", None).define("USE_CUDA", None);
        for d in &cuda {
            b.include(d);
        }
        println!("cargo:rustc-cfg=semhitok_nccl");
    } else {
        println!(
            "cargo:warning=semhitok-sys: CUDA/NCCL headers not found under {} and {}: building the Gloo backend only (run `cargo xtask setup`)",
            headers.display(),
            site.join("nvidia").display()
        );
    }
    b.compile("semhitok_c10d");

    // at::parallel_for (csrc/parallel.cpp) is inline OpenMP in this build (AT_PARALLEL_OPENMP):
    // without -fopenmp its pragmas vanish and it runs serially. Only this file is compiled with
    // it, so the c10d shim's code is exactly what it was.
    cc::Build::new()
        .cpp(true)
        .file("csrc/parallel.cpp")
        .include("csrc")
        .include(torch.join("include"))
        .include(torch.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .warnings(false)
        .flag("-fopenmp")
        .compile("semhitok_parallel");

    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
    // The OpenMP runtime LibTorch itself loads (torch/lib/libgomp.so.1, by path: one runtime
    // and one thread pool in the process, shared with LibTorch's kernels).
    let gomp = lib.join("libgomp.so.1");
    if gomp.exists() {
        println!("cargo:rustc-link-arg={}", gomp.display());
    } else {
        println!("cargo:rustc-link-lib=dylib=gomp");
    }
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    if nccl {
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
}
