//! What every elementwise NVRTC kernel of the workspace shares (this crate's fused teacher
//! steps and ViT norm, semhitok-train's gradient conversion and AdamW, semhitok-mllm's decode
//! GEMV and fused steps): the compile check and its spill report, the launch on LibTorch's
//! current stream and its argument array, the on/off switches, the failure latch, and the tensor
//! conditions of a case.

use super::driver::{driver, nvrtc, CudaError};
use super::nearest::function;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use tch::{Device, Kind, Tensor};

/// The bf16 helpers and block sum every elementwise kernel source starts with (`bf16.cuh`).
pub const BF16_CUH: &str = include_str!("bf16.cuh");

/// Compile `source` for `sm_{arch}` (no GPU needed): cubin and ptxas's report.
pub fn compile(source: &str, file: &str, arch: u32) -> Result<(Vec<u8>, String), CudaError> {
    nvrtc()
        .and_then(|n| n.compile(source, file, arch, &[], &["--ptxas-options=-v"]))
        .map_err(|e| CudaError(format!("{file}: {e}")))
}

/// Whether environment variable `var` leaves a kernel on (anything but `0`, or unset).
pub fn switched_on(var: &str) -> bool {
    std::env::var(var).map_or(true, |v| v != "0")
}

/// A kernel's on/off switch: environment variable `var` read at the first query (a kernel on by
/// default is turned off by `var=0`, one off by default turned on by `var=1`), then
/// [`Switch::set`] for before/after comparisons in one process.
#[derive(Debug)]
pub struct Switch {
    var: &'static str,
    on_by_default: bool,
    /// 0: not read yet, 1: on, 2: off.
    state: AtomicU8,
}

impl Switch {
    /// A switch read from `var`.
    pub const fn new(var: &'static str, on_by_default: bool) -> Self {
        Self {
            var,
            on_by_default,
            state: AtomicU8::new(0),
        }
    }

    /// Whether the kernel is on.
    pub fn enabled(&self) -> bool {
        match self.state.load(Ordering::Relaxed) {
            0 => {
                let on = match std::env::var(self.var) {
                    Ok(v) if self.on_by_default => v != "0",
                    Ok(v) => v == "1",
                    Err(_) => self.on_by_default,
                };
                self.set(on);
                on
            }
            s => s == 1,
        }
    }

    /// Switch the kernel on or off for the process.
    pub fn set(&self, on: bool) {
        self.state.store(if on { 1 } else { 2 }, Ordering::Relaxed);
    }
}

/// Set once a kernel failed to compile or launch: reported once, LibTorch's ops from then on.
#[derive(Debug, Default)]
pub struct Latch(AtomicBool);

impl Latch {
    /// A latch not tripped.
    pub const fn new() -> Self {
        Self(AtomicBool::new(false))
    }

    /// Whether a failure was reported.
    pub fn tripped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Record failure `e` of `file` (printed the first time only).
    pub fn trip(&self, file: &str, e: &CudaError) {
        if !self.0.swap(true, Ordering::Relaxed) {
            eprintln!("{file}: {}; using LibTorch's ops from now on", e.0);
        }
    }
}

/// A LibTorch error as the message an autograd node's half returns
/// ([`semhitok_sys::CustomFunction`]).
pub fn tch_err(e: tch::TchError) -> String {
    e.to_string()
}

/// `v` as one entry of a launch's argument array.
pub fn arg<T>(v: &mut T) -> *mut c_void {
    v as *mut T as *mut c_void
}

/// ptxas's spill report for `entry` in a compile log (`--ptxas-options=-v`, as [`compile`]
/// asks): `Some(true)` if it spills, `None` if the log has no report for it.
pub fn spills(log: &str, entry: &str) -> Option<bool> {
    let mut lines = log.lines();
    lines.find(|l| l.contains(&format!("Function properties for {entry}")))?;
    let report = lines.next()?;
    report
        .contains("spill stores")
        .then(|| !report.contains(" 0 bytes spill stores"))
}

/// Whether every spill report in a compile log says "0 bytes" (true for a log without reports).
pub fn no_report_spills(log: &str) -> bool {
    log.matches("bytes spill stores").count() == log.matches(" 0 bytes spill stores").count()
}

/// The CUDA device of `ts` when all are contiguous, 16-byte aligned tensors of `kind` there
/// (whether or not they require grad: inside an autograd node's forward, its inputs may).
pub fn dense_on_one_cuda(ts: &[&Tensor], kind: Kind) -> Option<i32> {
    let Device::Cuda(o) = ts.first()?.device() else {
        return None;
    };
    ts.iter()
        .all(|t| {
            t.device() == Device::Cuda(o)
                && t.kind() == kind
                && t.is_contiguous()
                && (t.data_ptr() as usize) % 16 == 0
        })
        .then_some(o as i32)
}

/// [`dense_on_one_cuda`] for tensors without gradient.
pub fn cuda_case(ts: &[&Tensor], kind: Kind) -> Option<i32> {
    dense_on_one_cuda(ts, kind).filter(|_| ts.iter().all(|t| !t.requires_grad()))
}

/// [`cuda_case`] for bf16 tensors.
pub fn bf16_cuda_case(ts: &[&Tensor]) -> Option<i32> {
    cuda_case(ts, Kind::BFloat16)
}

/// Launches entry `name` of `source` (compiled once per process and device) with `grid` blocks of
/// `block` threads on LibTorch's current stream of device `ordinal`: ordered with LibTorch's
/// work, and captured by a running CUDA-graph capture. The tensors behind `args` stay valid
/// until the kernel ran as long as they are alive at the call (the caching allocator reuses
/// memory only in stream order).
///
/// # Safety
/// `args` must point to values of exactly the kernel's parameter types, in order, and every
/// device pointer among them must be valid for what the kernel reads and writes.
pub unsafe fn launch(
    ordinal: i32,
    source: &'static str,
    file: &'static str,
    name: &'static str,
    grid: u32,
    block: u32,
    args: &mut [*mut c_void],
) -> Result<(), CudaError> {
    // SAFETY: the caller's contract.
    unsafe { launch_grid(ordinal, source, file, name, (grid, 1, 1), block, args) }
}

/// [`launch`] with a 3-d grid.
///
/// # Safety
/// As [`launch`].
pub unsafe fn launch_grid(
    ordinal: i32,
    source: &'static str,
    file: &'static str,
    name: &'static str,
    grid: (u32, u32, u32),
    block: u32,
    args: &mut [*mut c_void],
) -> Result<(), CudaError> {
    let cerr = |e: CudaError| CudaError(format!("{file}: {e}"));
    let f = function(ordinal, source, file, name, "", 0).map_err(cerr)?;
    let stream = semhitok_sys::current_cuda_stream(ordinal);
    // SAFETY: the caller's contract; `stream` is LibTorch's current stream on the device.
    unsafe {
        driver()
            .map_err(cerr)?
            .launch_on(f, grid, (block, 1, 1), args, stream)
            .map_err(cerr)
    }
}
