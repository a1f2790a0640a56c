//! [`parallel_for`]: LibTorch's intra-op thread pool (`at::parallel_for`, OpenMP in the PyPI
//! build) for Rust loops that run between LibTorch ops.

use crate::error::{Error, Result};
use std::ffi::{c_char, c_void};

extern "C" {
    fn shk_parallel_for(
        begin: i64,
        end: i64,
        grain: i64,
        f: extern "C" fn(*mut c_void, i64, i64),
        ctx: *mut c_void,
    ) -> *mut c_char;
}

/// The closure behind the callback's context pointer.
type Body<'a> = &'a (dyn Fn(i64, i64) + Sync);

extern "C" fn trampoline(ctx: *mut c_void, b: i64, e: i64) {
    // SAFETY: `ctx` is the `&Body` that `parallel_for` passed, alive for the whole call.
    let body: &Body<'_> = unsafe { &*(ctx as *const Body<'_>) };
    // A panic must not unwind into C++ (an `extern "C"` function aborts the process then):
    // report it and abort explicitly, naming the cause.
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(b, e))).is_err() {
        eprintln!("semhitok_sys::parallel_for: the loop body panicked on [{b}, {e}); aborting");
        std::process::abort();
    }
}

/// Runs `f(b, e)` over chunks `[b, e)` covering `[begin, end)` on LibTorch's intra-op threads
/// (`tch::get_num_threads()` of them; chunks of at least `grain`, serial when the range is one
/// grain or when called from inside another parallel region). Returns when every chunk is done.
/// Using LibTorch's own threads matters on small machines: a second thread pool competes with
/// OpenMP's spinning workers for the cores (a 2-core decode ran 6x slower that way).
pub fn parallel_for(begin: i64, end: i64, grain: i64, f: &(dyn Fn(i64, i64) + Sync)) -> Result<()> {
    let body: Body<'_> = f;
    // SAFETY: the shim calls `trampoline` with `ctx` only during this call; `body` outlives it.
    let err = unsafe {
        shk_parallel_for(
            begin,
            end,
            grain.max(1),
            trampoline,
            &body as *const Body<'_> as *mut c_void,
        )
    };
    match crate::ffi::take_error(err) {
        None => Ok(()),
        Some(msg) => Err(Error::Parallel(msg)),
    }
}
