//! SGHC's gathered sub-codebook search as one CUDA kernel (`sghc.cu`): token `i` searches the
//! `m` codes of its semantic id's sub-codebook, `j[i] = argmin_jj |z_i - c[sem_i * m + jj]|^2`
//! (ties to the lowest `jj`), without materializing the `[M, m, D]` candidates. fp32: each
//! distance has relative rounding error at most `gamma_{D+2}`, so ids can differ from another
//! fp32 order or from fp64 only between distances within `gamma_{D+2} (d1 + d2)` of each other.

use super::driver::{driver, CudaError};
use super::nearest::function;
use std::ffi::c_void;
use tch::{Device, Kind, Tensor};

const SOURCE: &str = include_str!("sghc.cu");
const NAME: &str = "sghc_nearest";
/// Pixel code dimensions the kernel is built for (a row of z lives in registers).
pub const MAX_DIM: i64 = 64;

/// Compile the kernel for pixel code dimension `dim` and `sm_{arch}` (no GPU needed).
pub fn compile(dim: i64, arch: u32) -> Result<(Vec<u8>, String), CudaError> {
    let defines = [format!("DIM={dim}")];
    super::driver::nvrtc()?.compile(SOURCE, "sghc.cu", arch, &defines, &["--ptxas-options=-v"])
}

/// z `[M, D]` fp32, codes `[K_sem * m, D]` fp32 (sub-codebook `s` = rows `s*m .. s*m + m`),
/// sem `[M]` int64 in `0..K_sem` (the caller checks the range), all on one CUDA device ->
/// sub-codebook ids `[M]` int64 in `0..m`. `Err` when it cannot run (the caller falls back).
pub fn sghc_nearest_fused(
    z: &Tensor,
    codes: &Tensor,
    sem: &Tensor,
    m: i64,
) -> Result<Tensor, CudaError> {
    let Device::Cuda(ordinal) = z.device() else {
        return Err(CudaError(
            "SGHC fused search: z is not on a CUDA device".into(),
        ));
    };
    let (mm, d) = z.size2().map_err(|e| CudaError(e.to_string()))?;
    let (kc, dc) = codes.size2().map_err(|e| CudaError(e.to_string()))?;
    if d != dc
        || !(1..=MAX_DIM).contains(&d)
        || m < 1
        || m > i32::MAX as i64
        || kc % m != 0
        || sem.size() != [mm]
        || codes.device() != z.device()
        || sem.device() != z.device()
    {
        return Err(CudaError(format!(
            "SGHC fused search: z [{mm}, {d}], codes [{kc}, {dc}], sem {:?}, m {m} not supported",
            sem.size()
        )));
    }
    let f = function(ordinal as i32, SOURCE, "sghc.cu", NAME, "", d)?;
    let torch = |e: tch::TchError| CudaError(format!("SGHC fused search operands: {e}"));
    let z = z
        .f_to_kind(Kind::Float)
        .and_then(|t| t.f_contiguous())
        .map_err(torch)?;
    let c = codes
        .f_to_kind(Kind::Float)
        .and_then(|t| t.f_contiguous())
        .map_err(torch)?;
    let s = sem
        .f_to_kind(Kind::Int64)
        .and_then(|t| t.f_contiguous())
        .map_err(torch)?;
    if d % 4 == 0 && (z.data_ptr() as usize % 16 != 0 || c.data_ptr() as usize % 16 != 0) {
        return Err(CudaError(
            "SGHC fused search: operands not 16-byte aligned (vector loads)".into(),
        ));
    }
    let j = Tensor::f_empty([mm], (Kind::Int64, z.device())).map_err(torch)?;
    if mm == 0 {
        return Ok(j);
    }
    let (mut pz, mut pc, mut ps, mut pj) = (z.data_ptr(), c.data_ptr(), s.data_ptr(), j.data_ptr());
    let (mut n, mut mi) = (mm, m as i32);
    let mut args: [*mut c_void; 6] = [
        &mut pz as *mut _ as *mut c_void,
        &mut pc as *mut _ as *mut c_void,
        &mut ps as *mut _ as *mut c_void,
        &mut pj as *mut _ as *mut c_void,
        &mut n as *mut _ as *mut c_void,
        &mut mi as *mut _ as *mut c_void,
    ];
    let blocks = ((mm + 255) / 256) as u32;
    // SAFETY: (const float* z, const float* codes, const long long* sem, long long* j,
    // long long M, int m) as sghc_nearest declares; z [M, d], codes [K_sem * m, d] contiguous
    // fp32 (256-byte aligned by the allocator, rows of d floats), sem int64 [M] with values
    // in 0..K_sem (checked by the caller), j int64 [M]; alive until the launch is queued on
    // LibTorch's stream.
    unsafe { driver()?.launch(f, (blocks, 1, 1), (256, 1, 1), &mut args)? };
    Ok(j)
}
