//! Device helpers of the training loop: bf16 autocast, CUDA synchronisation, the CUDA
//! profiler range of `semhitok bench`.

use crate::error::{Error, Result};
use tch::Device;

/// bf16 autocast on CUDA (tch's `autocast` uses LibTorch's default fp16 dtype; this sets the
/// CUDA autocast dtype to bf16 first). Runs `f` unchanged on CPU or when `enabled` is false.
pub fn with_autocast<T>(device: Device, enabled: bool, f: impl FnOnce() -> T) -> T {
    if !enabled || !device.is_cuda() {
        return f();
    }
    crate::amp::set_cuda_autocast_bf16();
    semhitok_nn::amp::autocast(true, f)
}

/// Wait for the work queued on `device` (no-op on CPU).
pub(crate) fn cuda_sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Call the CUDA runtime's `cudaProfilerStart` / `cudaProfilerStop` (looked up in the process:
/// LibTorch's CUDA library loads the runtime), so `ncu --profile-from-start off` profiles a range.
pub(super) fn cuda_profiler(sym: &str) -> Result<()> {
    let name = std::ffi::CString::new(sym).map_err(|e| Error::Input(e.to_string()))?;
    // SAFETY: dlsym on the global scope with a valid C string; the symbol, when found, is the
    // CUDA runtime's `cudaError_t f(void)`, called with no arguments.
    unsafe {
        let f = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
        if f.is_null() {
            return Err(Error::Input(format!(
                "{sym} not found: the CUDA runtime is not loaded in this process"
            )));
        }
        let f: extern "C" fn() -> i32 = std::mem::transmute(f);
        let rc = f();
        if rc != 0 {
            return Err(Error::Input(format!("{sym} returned CUDA error {rc}")));
        }
    }
    Ok(())
}
