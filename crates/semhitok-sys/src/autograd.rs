//! [`set_grad`]: assign a variable's `.grad` (PyTorch's `param.grad = g`).

use crate::error::{Error, Result};
use std::ffi::{c_char, c_void};
use tch::Tensor;

extern "C" {
    fn shk_set_grad(var: *mut c_void, grad: *mut c_void) -> *mut c_char;
}

/// Make `grad` the gradient of `var` (`None`: no gradient), sharing its storage: autograd then
/// accumulates into it in place. Its dtype, device and shape must match `var`'s data (else an
/// error naming both).
pub fn set_grad(var: &Tensor, grad: Option<&Tensor>) -> Result<()> {
    let g = grad.map_or(std::ptr::null_mut(), |g| g.as_ptr() as *mut c_void);
    // SAFETY: `var` and `grad` are live tch tensor handles (at::Tensor objects) for the call;
    // the shim assigns the gradient slot of `var`'s autograd metadata, catching every exception.
    let err = unsafe { shk_set_grad(var.as_ptr() as *mut c_void, g) };
    match crate::ffi::take_error(err) {
        None => Ok(()),
        Some(msg) => Err(Error::Grad(msg)),
    }
}
