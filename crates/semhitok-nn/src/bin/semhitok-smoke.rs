//! `semhitok-smoke`: is this host ready for semhitok-rs? Prints (as JSON) the LibTorch that was
//! loaded, whether CUDA and cuDNN are available, the GPU name, and a timed bf16 8192^3 matmul.
//!
//! Usage: `semhitok-smoke [--size N] [--iters N]` (defaults 8192, 20). On a CPU-only host the
//! matmul runs in fp32 at size 1024 so the command stays quick.

use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// The directory of the `libtorch_cpu.so` this process loaded (from /proc/self/maps).
fn loaded_libtorch_dir() -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| p.ends_with("/libtorch_cpu.so"))
        .and_then(|p| std::path::Path::new(p).parent().map(|d| d.to_path_buf()))
}

/// `__version__` from `<torch>/version.py` next to the loaded `lib/` (PyPI layout).
fn libtorch_version(lib: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(lib.parent()?.join("version.py")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("__version__ = "))
        .map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_string())
}

/// GPU model names from the NVIDIA driver's /proc files (no process spawned, no extra library).
fn gpu_names() -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/proc/driver/nvidia/gpus") else {
        return vec![];
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("information")).ok())
        .filter_map(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("Model:").map(|m| m.trim().to_string()))
        })
        .collect();
    names.sort();
    names
}

fn arg(args: &[String], name: &str) -> Option<i64> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    // Touch LibTorch first so its libraries are mapped before we look for them.
    let cuda = tch::Cuda::is_available();
    let lib = loaded_libtorch_dir();
    let version = lib.as_deref().and_then(libtorch_version);
    let (device, kind, default_n) = if cuda {
        (Device::Cuda(0), Kind::BFloat16, 8192)
    } else {
        (Device::Cpu, Kind::Float, 1024)
    };
    let n = arg(&args, "--size").unwrap_or(default_n);
    let iters = arg(&args, "--iters").unwrap_or(20);
    let a = Tensor::f_randn([n, n], (kind, device))?;
    let b = Tensor::f_randn([n, n], (kind, device))?;
    let sync = || {
        if cuda {
            tch::Cuda::synchronize(0)
        }
    };
    for _ in 0..3 {
        let _ = a.f_matmul(&b)?;
    }
    sync();
    let t0 = Instant::now();
    for _ in 0..iters {
        let _ = a.f_matmul(&b)?;
    }
    sync();
    let secs = t0.elapsed().as_secs_f64();
    let tflops = 2.0 * (n as f64).powi(3) * iters as f64 / secs / 1e12;
    let out = serde_json::json!({
        "libtorch_version": version,
        "libtorch_lib_dir": lib.map(|p| p.display().to_string()),
        "cuda_available": cuda,
        "cuda_device_count": tch::Cuda::device_count(),
        "cudnn_available": tch::Cuda::cudnn_is_available(),
        "cudnn_version": if cuda { Some(tch::utils::version_cudnn()) } else { None },
        "cudart_version": if cuda { Some(tch::utils::version_cudart()) } else { None },
        "gpu_names": gpu_names(),
        "matmul": { "device": format!("{device:?}"), "dtype": format!("{kind:?}"), "n": n, "iters": iters,
                    "seconds": secs, "tflops": tflops },
        "cpu_threads": tch::get_num_threads(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
