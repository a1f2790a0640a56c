//! [`apply_custom`]: a custom autograd node with a Rust forward and backward (tch 0.24 binds no
//! custom autograd Function), for fused kernels that must take part in training.

use crate::error::{Error, Result};
use std::ffi::{c_char, c_void};
use std::sync::Mutex;
use tch::Tensor;

/// The two halves of a differentiable operation. `forward` runs with gradient mode off (LibTorch's
/// custom Function does that) and returns the outputs and the tensors `backward` needs;
/// `backward` gets those and one gradient per output, and returns one gradient per input (`None`:
/// none). Both run on whatever thread LibTorch's autograd engine uses (for CUDA tensors a device
/// thread with that device's current stream), so they must be `Send + Sync`. Errors are messages.
pub trait CustomFunction: Send + Sync {
    /// A name for error messages.
    fn name(&self) -> &str;
    /// (outputs, saved for backward).
    fn forward(&self, inputs: &[Tensor])
        -> std::result::Result<(Vec<Tensor>, Vec<Tensor>), String>;
    /// One gradient per input.
    fn backward(
        &self,
        saved: &[Tensor],
        grads: &[Tensor],
    ) -> std::result::Result<Vec<Option<Tensor>>, String>;
}

extern "C" {
    fn shk_custom_apply(
        op: i64,
        fwd: *mut c_void,
        bwd: *mut c_void,
        inputs: *mut *mut c_void,
        n_in: i64,
        outputs: *mut *mut c_void,
        n_out: i64,
        n_saved: i64,
    ) -> *mut c_char;
}

/// The functions in use, by index (the node carries the index, not a pointer to a fat pointer).
static REGISTRY: Mutex<Vec<&'static dyn CustomFunction>> = Mutex::new(Vec::new());

fn index_of(f: &'static dyn CustomFunction) -> i64 {
    let mut reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    let addr = f as *const dyn CustomFunction as *const () as usize;
    if let Some(i) = reg
        .iter()
        .position(|g| *g as *const dyn CustomFunction as *const () as usize == addr)
    {
        return i as i64;
    }
    reg.push(f);
    reg.len() as i64 - 1
}

fn lookup(op: i64) -> Option<&'static dyn CustomFunction> {
    let reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    reg.get(op as usize).copied()
}

/// Hands `t`'s heap handle to C++ (which deletes it).
fn give(t: Tensor) -> *mut c_void {
    let mut t = t;
    let p = t.as_mut_ptr() as *mut c_void;
    std::mem::forget(t);
    p
}

/// Takes ownership of the heap handles C++ `new`ed.
///
/// # Safety
/// Each pointer is a live `at::Tensor*` from `new`, not used by the caller afterwards.
unsafe fn take_all(ps: *mut *mut c_void, n: i64) -> Vec<Tensor> {
    (0..n as usize)
        // SAFETY: the caller's contract; tch's Tensor owns (and frees) such a handle.
        .map(|i| unsafe { Tensor::from_ptr(*ps.add(i) as *mut _) })
        .collect()
}

fn message(s: String) -> *mut c_char {
    let c = std::ffi::CString::new(s.replace('\0', " ")).unwrap_or_default();
    // The C++ side frees it with free(): copy into malloc'd memory.
    let bytes = c.as_bytes_with_nul();
    // SAFETY: malloc of the length we then fill; null checked.
    unsafe {
        let p = libc::malloc(bytes.len()) as *mut c_char;
        if !p.is_null() {
            std::ptr::copy_nonoverlapping(bytes.as_ptr() as *const c_char, p, bytes.len());
        }
        p
    }
}

fn guarded(name: &str, f: impl FnOnce() -> std::result::Result<(), String>) -> *mut c_char {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => std::ptr::null_mut(),
        Ok(Err(e)) => message(format!("{name}: {e}")),
        Err(_) => message(format!("{name}: panicked")),
    }
}

extern "C" fn forward_cb(
    op: i64,
    inputs: *mut *mut c_void,
    n_in: i64,
    outputs: *mut *mut c_void,
    n_out: i64,
    saved: *mut *mut c_void,
    n_saved: i64,
) -> *mut c_char {
    // SAFETY: the shim passes n_in `new`ed handles that we now own.
    let ins = unsafe { take_all(inputs, n_in) };
    let Some(f) = lookup(op) else {
        return message(format!("custom function {op}: not registered"));
    };
    guarded(f.name(), || {
        let (outs, keep) = f.forward(&ins)?;
        if outs.len() != n_out as usize || keep.len() != n_saved as usize {
            return Err(format!(
                "forward gave {} outputs and {} saved tensors, the node expects {n_out} and {n_saved}",
                outs.len(),
                keep.len()
            ));
        }
        for (i, t) in outs.into_iter().enumerate() {
            // SAFETY: `outputs` has n_out slots; the shim takes the handles over.
            unsafe { *outputs.add(i) = give(t) };
        }
        for (i, t) in keep.into_iter().enumerate() {
            // SAFETY: as above, n_saved slots.
            unsafe { *saved.add(i) = give(t) };
        }
        Ok(())
    })
}

extern "C" fn backward_cb(
    op: i64,
    saved: *mut *mut c_void,
    n_saved: i64,
    grads: *mut *mut c_void,
    n_grads: i64,
    grad_inputs: *mut *mut c_void,
    n_in: i64,
) -> *mut c_char {
    // SAFETY: the shim passes `new`ed handles that we now own.
    let (s, g) = unsafe { (take_all(saved, n_saved), take_all(grads, n_grads)) };
    let Some(f) = lookup(op) else {
        return message(format!("custom function {op}: not registered"));
    };
    guarded(f.name(), || {
        let gin = f.backward(&s, &g)?;
        if gin.len() != n_in as usize {
            return Err(format!(
                "backward gave {} gradients for {n_in} inputs",
                gin.len()
            ));
        }
        for (i, t) in gin.into_iter().enumerate() {
            if let Some(t) = t {
                // SAFETY: `grad_inputs` has n_in slots; the shim takes the handles over.
                unsafe { *grad_inputs.add(i) = give(t) };
            }
        }
        Ok(())
    })
}

/// `f` applied to `inputs` as one autograd node: `n_out` outputs, of which gradients flow back
/// through `f.backward` when an input requires grad and gradient mode is on. `n_saved` is how
/// many tensors `f.forward` saves.
pub fn apply_custom(
    f: &'static dyn CustomFunction,
    inputs: &[&Tensor],
    n_out: usize,
    n_saved: usize,
) -> Result<Vec<Tensor>> {
    let op = index_of(f);
    let mut ins: Vec<*mut c_void> = inputs.iter().map(|t| t.as_ptr() as *mut c_void).collect();
    let mut outs: Vec<Tensor> = (0..n_out).map(|_| Tensor::new()).collect();
    let mut out_ptrs: Vec<*mut c_void> = outs
        .iter_mut()
        .map(|t| t.as_mut_ptr() as *mut c_void)
        .collect();
    let fwd: extern "C" fn(
        i64,
        *mut *mut c_void,
        i64,
        *mut *mut c_void,
        i64,
        *mut *mut c_void,
        i64,
    ) -> *mut c_char = forward_cb;
    let bwd: extern "C" fn(
        i64,
        *mut *mut c_void,
        i64,
        *mut *mut c_void,
        i64,
        *mut *mut c_void,
        i64,
    ) -> *mut c_char = backward_cb;
    // SAFETY: every handle is live for the call; the shim copies the inputs and assigns the
    // outputs' tensors in place; the callbacks match the shim's typedefs.
    let err = unsafe {
        shk_custom_apply(
            op,
            fwd as *mut c_void,
            bwd as *mut c_void,
            ins.as_mut_ptr(),
            ins.len() as i64,
            out_ptrs.as_mut_ptr(),
            n_out as i64,
            n_saved as i64,
        )
    };
    match crate::ffi::take_error(err) {
        None => Ok(outs),
        Some(msg) => Err(Error::Custom(msg)),
    }
}
