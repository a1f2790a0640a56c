//! [`pin_memory`]: a page-locked copy of a host tensor, for non-blocking uploads to a GPU.

use crate::error::{Error, Result};
use std::ffi::{c_char, c_void};
use tch::Tensor;

extern "C" {
    fn shk_pin_memory(src: *mut c_void, out: *mut c_void) -> *mut c_char;
}

/// `src.pin_memory()`: a copy of the CPU tensor `src` in pinned host memory (LibTorch's caching
/// host allocator), so that a `to_device(.., non_blocking = true)` from it does not block the
/// host. Unlike tch's `Tensor::pin_memory(device)`, it calls the overload without a device, which
/// PyTorch 2.11 does not warn about. Needs a CUDA build and device (else an error from LibTorch).
pub fn pin_memory(src: &Tensor) -> Result<Tensor> {
    let mut out = Tensor::new();
    // SAFETY: both pointers are live tch tensor handles (at::Tensor objects) for the duration of
    // the call; the shim reads `src` and assigns a new tensor to `out`, catching every exception.
    let err = unsafe { shk_pin_memory(src.as_ptr() as *mut c_void, out.as_mut_ptr().cast()) };
    match crate::ffi::take_error(err) {
        None => Ok(out),
        Some(msg) => Err(Error::Pin(msg)),
    }
}
