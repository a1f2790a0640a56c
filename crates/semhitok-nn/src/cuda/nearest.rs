//! The fused nearest-code search on CUDA: `ids[i] = argmin_k |c_k|^2 - 2 z_i . c_k` (ties to the
//! lowest `k`, as `torch.argmin`), computed tile by tile in registers without writing the
//! `M x K` score matrix (see `nearest.cu`). fp32 FMA: each dot product sums `d = 0 .. D-1` in
//! order, so its rounding error is at most `gamma_D * sum_d |z_d c_d|` (`gamma_D = D u / (1 - D
//! u)`, `u = 2^-24`); ids can differ from another fp32 summation order (cuBLAS's, the CPU's) only
//! where two codes' exact scores are within twice that bound plus the rounding of `|c|^2`.

use super::driver::{driver, nvrtc, CudaError, Function};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

const SOURCE: &str = include_str!("nearest.cu");
const NAME: &str = "nearest_l2_f32";
/// Static shared memory is `2 * D * 128 * 4 + 512` bytes; 48 KiB allows D <= 47.
pub const MAX_DIM: i64 = 44;
const ROWS_PER_BLOCK: i64 = 128;

/// Compile the kernel for code dimension `dim` and `sm_{arch}` (no GPU needed: used by the
/// CPU-side test that the source compiles). Returns the cubin and ptxas's resource report
/// (registers, spills).
pub fn compile(dim: i64, arch: u32) -> Result<(Vec<u8>, String), CudaError> {
    let defines = [format!("DIM={dim}")];
    nvrtc()?.compile(
        SOURCE,
        "nearest.cu",
        arch,
        &defines,
        &["--ptxas-options=-v"],
    )
}

fn function(ordinal: i32, dim: i64) -> Result<Function, CudaError> {
    static CACHE: Mutex<Option<HashMap<(i32, i64), Function>>> = Mutex::new(None);
    let mut g = CACHE
        .lock()
        .map_err(|_| CudaError("kernel cache poisoned".into()))?;
    let map = g.get_or_insert_with(HashMap::new);
    if let Some(f) = map.get(&(ordinal, dim)) {
        return Ok(*f);
    }
    let drv = driver()?;
    drv.ensure_context(ordinal)?;
    let arch = drv.compute_capability(ordinal)?;
    let (cubin, _) = compile(dim, arch)?;
    let f = drv.load(&cubin, NAME)?;
    map.insert((ordinal, dim), f);
    Ok(f)
}

/// Whether the fused search is switched on (`SEMHITOK_FUSED_SEARCH=0` turns it off, for
/// before/after comparisons).
pub fn enabled() -> bool {
    std::env::var("SEMHITOK_FUSED_SEARCH").map_or(true, |v| v != "0")
}

/// z `[M, D]`, codes `[K, D]`, both fp32 on the same CUDA device, `D <= MAX_DIM` -> ids `[M]`
/// int64. `Err` when the kernel cannot be compiled or launched (the caller falls back).
pub fn nearest_l2_fused(z: &Tensor, codes: &Tensor) -> Result<Tensor, CudaError> {
    let Device::Cuda(ordinal) = z.device() else {
        return Err(CudaError("fused search: z is not on a CUDA device".into()));
    };
    let (m, d) = z.size2().map_err(|e| CudaError(e.to_string()))?;
    let (k, dc) = codes.size2().map_err(|e| CudaError(e.to_string()))?;
    if d != dc || d > MAX_DIM || k == 0 || codes.device() != z.device() {
        return Err(CudaError(format!(
            "fused search: z [{m}, {d}] / codes [{k}, {dc}] on {:?}/{:?} not supported",
            z.device(),
            codes.device()
        )));
    }
    let f = function(ordinal as i32, d)?;
    if k > i32::MAX as i64 {
        return Err(CudaError(format!(
            "fused search: {k} codes (at most 2^31 - 1)"
        )));
    }
    let torch = |e: tch::TchError| CudaError(format!("fused search operands: {e}"));
    let c = codes.f_to_kind(Kind::Float).map_err(torch)?;
    let cc = c
        .f_square()
        .and_then(|t| t.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float))
        .and_then(|t| t.f_contiguous())
        .map_err(torch)?;
    // Dimension-major copies (8 MiB for 65,536 x 32): coalesced, conflict-free tile loads.
    let z = z
        .f_to_kind(Kind::Float)
        .and_then(|t| t.f_tr())
        .and_then(|t| t.f_contiguous())
        .map_err(torch)?;
    let c = c.f_tr().and_then(|t| t.f_contiguous()).map_err(torch)?;
    let ids = Tensor::f_empty([m], (Kind::Int64, z.device())).map_err(torch)?;
    if m == 0 {
        return Ok(ids);
    }
    let (mut pz, mut pc, mut pcc, mut pids) =
        (z.data_ptr(), c.data_ptr(), cc.data_ptr(), ids.data_ptr());
    let (mut n, mut kk) = (m, k as i32);
    let mut args: [*mut c_void; 6] = [
        &mut pz as *mut _ as *mut c_void,
        &mut pc as *mut _ as *mut c_void,
        &mut pcc as *mut _ as *mut c_void,
        &mut pids as *mut _ as *mut c_void,
        &mut n as *mut _ as *mut c_void,
        &mut kk as *mut _ as *mut c_void,
    ];
    let blocks = ((m + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK) as u32;
    // SAFETY: the six arguments are (const float*, const float*, const float*, long long*,
    // long long, int) as the kernel declares; z, c, cc are contiguous fp32 of [d, m],
    // [d, k], [k] and ids int64 [m] on the device, all alive until the launch has been queued
    // on the stream that also runs LibTorch's kernels (later uses of them are ordered after).
    unsafe { driver()?.launch(f, (blocks, 1, 1), (16, 16, 1), &mut args)? };
    Ok(ids)
}
