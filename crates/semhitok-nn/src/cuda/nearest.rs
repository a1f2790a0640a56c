//! The fused nearest-code search on CUDA: `ids[i] = argmin_k |c_k|^2 - 2 z_i . c_k` (ties to the
//! lowest `k`, as `torch.argmin`), computed tile by tile in registers without writing the
//! `M x K` score matrix. Five kernels, selectable at run time ([`Kernel`],
//! `SEMHITOK_SEARCH_KERNEL=v2|v3|tc|tc256|tc1`):
//!
//! * `v2` (`nearest.cu`, `nearest_l2_f32`): fp32 FMA, score `cc - 2 z.c`, argmin.
//! * `v3` (`nearest.cu`, `nearest_v3`): fp32 FMA, score `F = -cc/2 + z.c` (the FMA chain starts
//!   at `-cc/2`, d ascending), argmax with a max-first per-tile fold.
//! * `tc` (`nearest_tc.cu`): a TF32 tensor-core score pass, then `F` recomputed exactly for every
//!   code within a proven bound of the row's best: returns exactly `v3`'s ids (`D <= 32`,
//!   sm_80+); `tc256` the same with blocks of 256 rows (512 threads: half the code-tile
//!   traffic per row).
//! * `tc1` (`nearest_tc.cu`, the default where it applies): `tc`'s scores and re-check in one
//!   walk over a codebook packed once per call into the mma fragment order, with a running
//!   threshold per row: also exactly `v3`'s ids, 2.4x faster than `v3` at the SPC's shapes.
//!
//! Each fp32 score's rounding error is at most `gamma_{D+1} (|c|^2 + 2 sum_d |z_d c_d|)` in the
//! units of `cc - 2 z.c` (`gamma_n = n u / (1 - n u)`, `u = 2^-24`; `|c|^2` itself rounded by at
//! most `gamma_D |c|^2`), so ids can differ from another fp32 summation order (cuBLAS's, the
//! CPU's) or from an fp64 argmin only between codes whose exact scores are within twice that;
//! the tests check against fp64 with `4 gamma_{D+1} (cc_max + z_max c1_max) + 8 u (..)`.
//!
//! The search is the argmin of `|z - c|^2` for any codebook; for an l2-normalized codebook
//! (the SPC's EMA codebook: `|c|^2 = 1` up to rounding) it is the argmax of `z . c`, which
//! `-cc/2` then only shifts by the rounding of `|c|^2`: the kernels keep `cc` for every codebook.

use super::driver::{driver, nvrtc, CudaError, Function};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;
use tch::{Device, Kind, Tensor};

const SOURCE: &str = include_str!("nearest.cu");
const SOURCE_TC: &str = include_str!("nearest_tc.cu");
/// Static shared memory of v2 / v3 is `2 * D * 128 * 4 + 512` bytes; 48 KiB allows D <= 47.
pub const MAX_DIM: i64 = 44;
/// The tensor-core kernel's tiles (`2 * 136 * 4 * ceil(D / 8) * 8` bytes + 10 KiB) fit up to 32.
pub const MAX_DIM_TC: i64 = 32;

/// The fused search kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// fp32, `cc - 2 z.c`, argmin (kernel v2 of 2026-12-02).
    V2,
    /// fp32, `-cc/2 + z.c` as one FMA chain, argmax, max-first fold.
    V3,
    /// TF32 tensor-core scores + exact fp32 re-check of the candidates: `V3`'s ids.
    Tc,
    /// [`Kernel::Tc`] with blocks of 256 rows.
    Tc256,
    /// [`Kernel::Tc`]'s scores and re-check in one walk over a codebook packed once per call
    /// into the tensor cores' fragment order: `V3`'s ids.
    Tc1,
}

impl Kernel {
    /// Every kernel, for benchmarks and tests.
    pub const ALL: [Kernel; 5] = [
        Kernel::V2,
        Kernel::V3,
        Kernel::Tc,
        Kernel::Tc256,
        Kernel::Tc1,
    ];

    /// The name used by `SEMHITOK_SEARCH_KERNEL` and the benchmark.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::V2 => "v2",
            Kernel::V3 => "v3",
            Kernel::Tc => "tc",
            Kernel::Tc256 => "tc256",
            Kernel::Tc1 => "tc1",
        }
    }

    /// Parses a [`Kernel::name`].
    pub fn parse(s: &str) -> Result<Kernel, CudaError> {
        Kernel::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                CudaError(format!(
                    "unknown search kernel {s:?} (SEMHITOK_SEARCH_KERNEL: v2, v3, tc, tc256 or tc1)"
                ))
            })
    }

    /// The default: `SEMHITOK_SEARCH_KERNEL` when set, else the fastest kernel measured exact
    /// on the H200: tc1 (0.81 ms at 65,536 x 16,384 x 32; v3 1.91, tc 1.98, tc256 2.04, v2 2.10;
    /// docs/benchmarks/quant-gpu.md). Where tc1 does not apply (`D > 32`, before sm_80)
    /// [`nearest_l2_fused`] falls back to v3.
    pub fn from_env() -> Result<Kernel, CudaError> {
        match std::env::var("SEMHITOK_SEARCH_KERNEL") {
            Ok(s) => Kernel::parse(&s),
            Err(_) => Ok(Kernel::Tc1),
        }
    }

    /// (source, file name, entry, extra define, rows per block, threads per block).
    fn entry(
        self,
    ) -> (
        &'static str,
        &'static str,
        &'static str,
        &'static str,
        i64,
        u32,
    ) {
        match self {
            Kernel::V2 => (SOURCE, "nearest.cu", "nearest_l2_f32", "", 128, 256),
            Kernel::V3 => (SOURCE, "nearest.cu", "nearest_v3", "", 128, 256),
            Kernel::Tc => (
                SOURCE_TC,
                "nearest_tc.cu",
                "nearest_tc",
                "TC_BM=128",
                128,
                256,
            ),
            Kernel::Tc256 => (
                SOURCE_TC,
                "nearest_tc.cu",
                "nearest_tc256",
                "TC_BM=256",
                256,
                512,
            ),
            Kernel::Tc1 => (
                SOURCE_TC,
                "nearest_tc.cu",
                "nearest_tc1",
                "TC_BM=128",
                256,
                128,
            ),
        }
    }

    /// Whether this kernel handles code dimension `d` on `sm_{arch}`.
    pub fn supports(self, d: i64, arch: u32) -> bool {
        match self {
            Kernel::V2 | Kernel::V3 => (1..=MAX_DIM).contains(&d),
            Kernel::Tc | Kernel::Tc256 | Kernel::Tc1 => (1..=MAX_DIM_TC).contains(&d) && arch >= 80,
        }
    }
}

/// Compile `kernel` for code dimension `dim` and `sm_{arch}` (no GPU needed: used by the
/// CPU-side test that the sources compile). Returns the cubin and ptxas's resource report
/// (registers, spills).
pub fn compile(kernel: Kernel, dim: i64, arch: u32) -> Result<(Vec<u8>, String), CudaError> {
    let (src, file, _, def, _, _) = kernel.entry();
    let mut defines = vec![format!("DIM={dim}")];
    if !def.is_empty() {
        defines.push(def.to_string());
    }
    nvrtc()?.compile(src, file, arch, &defines, &["--ptxas-options=-v"])
}

/// A compiled kernel of `source` (entry `name`, `-DDIM=dim` and `define` unless empty) for
/// device `ordinal`, cached for the process (entry names are unique per define). Also used by
/// other crates' NVRTC kernels (semhitok-mllm's decode GEMV), whose sources ignore `DIM`.
pub fn function(
    ordinal: i32,
    source: &'static str,
    file: &'static str,
    name: &'static str,
    define: &'static str,
    dim: i64,
) -> Result<Function, CudaError> {
    type Cache = HashMap<(i32, &'static str, i64), Function>;
    static CACHE: Mutex<Option<Cache>> = Mutex::new(None);
    let mut g = CACHE
        .lock()
        .map_err(|_| CudaError("kernel cache poisoned".into()))?;
    let map = g.get_or_insert_with(HashMap::new);
    if let Some(f) = map.get(&(ordinal, name, dim)) {
        return Ok(*f);
    }
    let drv = driver()?;
    drv.ensure_context(ordinal)?;
    let arch = drv.compute_capability(ordinal)?;
    let mut defines = vec![format!("DIM={dim}")];
    if !define.is_empty() {
        defines.push(define.to_string());
    }
    let (cubin, _) = nvrtc()?.compile(source, file, arch, &defines, &[])?;
    let f = drv.load(&cubin, name)?;
    map.insert((ordinal, name, dim), f);
    Ok(f)
}

/// The compute capability of device `ordinal` (`10 * major + minor`).
pub fn compute_capability(ordinal: i32) -> Result<u32, CudaError> {
    driver()?.compute_capability(ordinal)
}

/// Whether the fused search is switched on (`SEMHITOK_FUSED_SEARCH=0` turns it off, for
/// before/after comparisons).
pub fn enabled() -> bool {
    std::env::var("SEMHITOK_FUSED_SEARCH").map_or(true, |v| v != "0")
}

/// z `[M, D]`, codes `[K, D]`, both fp32 on the same CUDA device, `D <= MAX_DIM` -> ids `[M]`
/// int64, with the kernel of [`Kernel::from_env`] (`tc`, `tc256` and `tc1` fall back to `v3`
/// where they do not apply: `D > 32` or before sm_80). `Err` when the kernel cannot be compiled or launched (the
/// caller falls back to the GEMM path).
pub fn nearest_l2_fused(z: &Tensor, codes: &Tensor) -> Result<Tensor, CudaError> {
    let kernel = Kernel::from_env()?;
    nearest_l2_fused_with(z, codes, kernel, true)
}

/// [`nearest_l2_fused`] with an explicit kernel. `fallback`: use `v3` where `kernel` does not
/// apply (else that is an error).
pub fn nearest_l2_fused_with(
    z: &Tensor,
    codes: &Tensor,
    kernel: Kernel,
    fallback: bool,
) -> Result<Tensor, CudaError> {
    let Device::Cuda(ordinal) = z.device() else {
        return Err(CudaError("fused search: z is not on a CUDA device".into()));
    };
    let (m, d) = z.size2().map_err(|e| CudaError(e.to_string()))?;
    let (k, dc) = codes.size2().map_err(|e| CudaError(e.to_string()))?;
    if d != dc || d > MAX_DIM || d < 1 || k == 0 || codes.device() != z.device() {
        return Err(CudaError(format!(
            "fused search: z [{m}, {d}] / codes [{k}, {dc}] on {:?}/{:?} not supported",
            z.device(),
            codes.device()
        )));
    }
    if k > i32::MAX as i64 {
        return Err(CudaError(format!(
            "fused search: {k} codes (at most 2^31 - 1)"
        )));
    }
    let arch = compute_capability(ordinal as i32)?;
    let kernel = if kernel.supports(d, arch) {
        kernel
    } else if fallback {
        Kernel::V3
    } else {
        return Err(CudaError(format!(
            "fused search: kernel {} does not support D = {d} on sm_{arch}",
            kernel.name()
        )));
    };
    let (src, file, name, def, rows_per_block, threads) = kernel.entry();
    let f = function(ordinal as i32, src, file, name, def, d)?;
    let torch = |e: tch::TchError| CudaError(format!("fused search operands: {e}"));
    let c = codes
        .f_to_kind(Kind::Float)
        .and_then(|t| t.f_contiguous())
        .map_err(torch)?;
    let zr = z
        .f_to_kind(Kind::Float)
        .and_then(|t| t.f_contiguous())
        .map_err(torch)?;
    let cc = c
        .f_square()
        .and_then(|t| t.f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float))
        .and_then(|t| t.f_contiguous())
        .map_err(torch)?;
    let ids = Tensor::f_empty([m], (Kind::Int64, z.device())).map_err(torch)?;
    if m == 0 {
        return Ok(ids);
    }
    let blocks = ((m + rows_per_block - 1) / rows_per_block) as u32;
    if kernel == Kernel::Tc1 {
        launch_tc1(ordinal as i32, f, &zr, &c, &cc, &ids, d, blocks, threads)?;
        return Ok(ids);
    }
    // Dimension-major copies (8 MiB for 65,536 x 32): coalesced, conflict-free tile loads.
    let zt = zr.f_tr().and_then(|t| t.f_contiguous()).map_err(torch)?;
    let ct = c.f_tr().and_then(|t| t.f_contiguous()).map_err(torch)?;
    let (mut pzt, mut pct, mut pcc, mut pids) =
        (zt.data_ptr(), ct.data_ptr(), cc.data_ptr(), ids.data_ptr());
    let (mut pz, mut pc) = (zr.data_ptr(), c.data_ptr());
    let (mut n, mut kk) = (m, k as i32);
    match kernel {
        Kernel::V2 | Kernel::V3 => {
            let mut args: [*mut c_void; 6] = [
                &mut pzt as *mut _ as *mut c_void,
                &mut pct as *mut _ as *mut c_void,
                &mut pcc as *mut _ as *mut c_void,
                &mut pids as *mut _ as *mut c_void,
                &mut n as *mut _ as *mut c_void,
                &mut kk as *mut _ as *mut c_void,
            ];
            // SAFETY: the six arguments are (const float*, const float*, const float*,
            // long long*, long long, int) as both kernels declare; zt, ct, cc are contiguous
            // fp32 of [d, m], [d, k], [k] and ids int64 [m] on the device, all alive until the
            // launch has been queued on the stream that also runs LibTorch's kernels (later
            // uses of them are ordered after).
            unsafe { driver()?.launch(f, (blocks, 1, 1), (16, 16, 1), &mut args)? };
        }
        Kernel::Tc | Kernel::Tc256 => {
            // max_k |c_k|^2 for the candidate window (nearest_tc.cu), on the device: no sync.
            let ccmax = cc.f_max().map_err(torch)?;
            let mut pmax = ccmax.data_ptr();
            let mut args: [*mut c_void; 9] = [
                &mut pzt as *mut _ as *mut c_void,
                &mut pct as *mut _ as *mut c_void,
                &mut pz as *mut _ as *mut c_void,
                &mut pc as *mut _ as *mut c_void,
                &mut pcc as *mut _ as *mut c_void,
                &mut pmax as *mut _ as *mut c_void,
                &mut pids as *mut _ as *mut c_void,
                &mut n as *mut _ as *mut c_void,
                &mut kk as *mut _ as *mut c_void,
            ];
            // SAFETY: (const float* zt, ct, z, c, cc, ccmax, long long* ids, long long n,
            // int k) as nearest_tc declares; zt [d, m], ct [d, k], z [m, d], c [k, d], cc [k],
            // ccmax [] contiguous fp32 and ids int64 [m] on the device, alive until the launch
            // is queued on LibTorch's stream.
            unsafe { driver()?.launch(f, (blocks, 1, 1), (threads, 1, 1), &mut args)? };
        }
        Kernel::Tc1 => unreachable!("launched above"),
    }
    Ok(ids)
}

/// The tc1 launch (`nearest_tc.cu`): `pack_codes_tc1` writes the codebook as TF32 mma B
/// fragments and `-cc/2` as C fragments (`ceil(k / 128) * 16` tiles of 8 codes), then
/// `nearest_tc1` walks them once. z `[m, d]`, c `[k, d]`, cc `[k]` contiguous fp32, ids `[m]`
/// int64, all on device `ordinal`.
#[allow(clippy::too_many_arguments)]
fn launch_tc1(
    ordinal: i32,
    f: Function,
    z: &Tensor,
    c: &Tensor,
    cc: &Tensor,
    ids: &Tensor,
    d: i64,
    blocks: u32,
    threads: u32,
) -> Result<(), CudaError> {
    let torch = |e: tch::TchError| CudaError(format!("fused search (tc1) operands: {e}"));
    let (m, k) = (z.size()[0], c.size()[0]);
    let pack = function(
        ordinal,
        SOURCE_TC,
        "nearest_tc.cu",
        "pack_codes_tc1",
        "TC_BM=128",
        d,
    )?;
    let ks = (d + 7) / 8;
    let nq = ((ks + 1) & !1) / 2;
    let ntiles = (k + 127) / 128 * 16;
    // uint4 per (tile, q, lane): 4 int32 each; float2 per (tile, t).
    let bp = Tensor::f_empty([ntiles * nq * 32 * 4], (Kind::Int, z.device())).map_err(torch)?;
    let hp = Tensor::f_empty([ntiles * 8], (Kind::Float, z.device())).map_err(torch)?;
    let ccmax = cc.f_max().map_err(torch)?;
    let (mut pc, mut pcc, mut pbp, mut php) =
        (c.data_ptr(), cc.data_ptr(), bp.data_ptr(), hp.data_ptr());
    let (mut kk, mut nt) = (k as i32, ntiles as i32);
    let mut args: [*mut c_void; 6] = [
        &mut pc as *mut _ as *mut c_void,
        &mut pcc as *mut _ as *mut c_void,
        &mut pbp as *mut _ as *mut c_void,
        &mut php as *mut _ as *mut c_void,
        &mut kk as *mut _ as *mut c_void,
        &mut nt as *mut _ as *mut c_void,
    ];
    let pack_blocks = ((ntiles * nq * 32 + 255) / 256) as u32;
    // SAFETY: (const float* c, const float* cc, uint4* bp, float2* hp, int k, int ntiles) as
    // pack_codes_tc1 declares; c [k, d] and cc [k] contiguous fp32, bp holds ntiles * nq * 32
    // uint4 and hp ntiles * 4 float2 (fresh allocations, 16-byte aligned), all alive until the
    // launch is queued on LibTorch's stream.
    unsafe { driver()?.launch(pack, (pack_blocks, 1, 1), (256, 1, 1), &mut args)? };
    let (mut pz, mut pmax, mut pids) = (z.data_ptr(), ccmax.data_ptr(), ids.data_ptr());
    let mut n = m;
    let mut args: [*mut c_void; 10] = [
        &mut pz as *mut _ as *mut c_void,
        &mut pc as *mut _ as *mut c_void,
        &mut pcc as *mut _ as *mut c_void,
        &mut pmax as *mut _ as *mut c_void,
        &mut pbp as *mut _ as *mut c_void,
        &mut php as *mut _ as *mut c_void,
        &mut pids as *mut _ as *mut c_void,
        &mut n as *mut _ as *mut c_void,
        &mut kk as *mut _ as *mut c_void,
        &mut nt as *mut _ as *mut c_void,
    ];
    // SAFETY: (const float* z, c, cc, ccmax, const uint4* bp, const float2* hp, long long* ids,
    // long long n, int k, int ntiles) as nearest_tc1 declares; z [m, d], c [k, d], cc [k],
    // ccmax [] contiguous fp32, bp / hp as packed above (the pack runs first on the same
    // stream), ids int64 [m]; all alive until the launch is queued.
    unsafe { driver()?.launch(f, (blocks, 1, 1), (threads, 1, 1), &mut args)? };
    Ok(())
}
