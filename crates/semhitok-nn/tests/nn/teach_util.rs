//! Helpers shared by the teacher / loss / metric golden tests.

use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

/// The workspace root (for `.assets/`).
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `crates/semhitok-nn/tests/fixtures/<name>`.
pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `.assets/<rel>`, or an error telling how to get it.
pub fn asset(rel: &str) -> anyhow::Result<PathBuf> {
    let p = workspace().join(".assets").join(rel);
    anyhow::ensure!(
        p.exists(),
        "{} is missing: run `cargo xtask assets`",
        p.display()
    );
    Ok(p)
}

/// Every tensor of a safetensors fixture, by name, on `dev`.
pub fn load_fixture(name: &str, dev: Device) -> anyhow::Result<HashMap<String, Tensor>> {
    let path = fixture(name);
    let v = Tensor::read_safetensors(&path).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (regenerate with scripts/fixtures/)",
            path.display()
        )
    })?;
    Ok(v.into_iter().map(|(k, t)| (k, t.to_device(dev))).collect())
}

/// Fetch `key` from a fixture map.
pub fn get<'a>(m: &'a HashMap<String, Tensor>, key: &str) -> anyhow::Result<&'a Tensor> {
    m.get(key)
        .ok_or_else(|| anyhow::anyhow!("fixture has no tensor {key}"))
}

/// Max |a - b| <= atol + rtol * max|b|, with shapes equal; the error names `what` and the gap.
pub fn assert_close(
    what: &str,
    a: &Tensor,
    b: &Tensor,
    rtol: f64,
    atol: f64,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.size() == b.size(),
        "{what}: shape {:?} vs expected {:?}",
        a.size(),
        b.size()
    );
    let a = a.to_kind(Kind::Double).to_device(Device::Cpu);
    let b = b.to_kind(Kind::Double).to_device(Device::Cpu);
    let diff = (&a - &b).abs().max().double_value(&[]);
    let scale = b.abs().max().double_value(&[]);
    let tol = atol + rtol * scale;
    eprintln!(
        "{what}: max abs diff {diff:.3e}, rel {:.3e} (tol {tol:.1e})",
        diff / scale.max(f64::MIN_POSITIVE)
    );
    anyhow::ensure!(
        diff <= tol,
        "{what}: max abs diff {diff:e} > tol {tol:e} (max |ref| {scale:e})"
    );
    Ok(())
}

/// Relative tolerance for a golden comparison on `dev`: `cpu` on the CPU. On CUDA, cuDNN convolutions
/// run in TF32 by default (PyTorch's `torch.backends.cudnn.allow_tf32 = True`, which tch cannot switch
/// off), so conv-heavy goldens made on the CPU need 5e-3 there; with `NVIDIA_TF32_OVERRIDE=0` in the
/// environment the CUDA run is held to 1e-4.
pub fn rtol(dev: Device, cpu: f64) -> f64 {
    if !dev.is_cuda() {
        return cpu;
    }
    let strict = std::env::var("NVIDIA_TF32_OVERRIDE").is_ok_and(|v| v == "0");
    cpu.max(if strict { 1e-4 } else { 5e-3 })
}

/// `compiled` (a kernel file's `compile(90)`: cubin and ptxas's report) is a cubin whose entries
/// `entries` do not spill registers; an entry without a report (some NVRTC builds return none) is
/// noted, not failed.
pub fn assert_no_spills(
    file: &str,
    compiled: Result<(Vec<u8>, String), semhitok_nn::cuda::driver::CudaError>,
    entries: &[&str],
) -> anyhow::Result<()> {
    let (cubin, log) = compiled.map_err(|e| anyhow::anyhow!("{file}: {}", e.0))?;
    assert_eq!(&cubin[..4], b"\x7fELF", "{file}: not a cubin");
    eprintln!("{file} sm_90: {log}");
    for entry in entries {
        match semhitok_nn::cuda::kernel::spills(&log, entry) {
            Some(spill) => assert!(!spill, "{entry} spills registers:\n{log}"),
            None => eprintln!("{entry}: NVRTC gave no ptxas report; spill check skipped"),
        }
    }
    Ok(())
}
