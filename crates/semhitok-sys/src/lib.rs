//! semhitok-sys: the project's door into LibTorch APIs that tch 0.24 does not bind, through a
//! small C++ shim compiled against the headers of the project's LibTorch (`.libtorch/`).
//!
//! Today it binds PyTorch's distributed engine, c10d: a [`ProcessGroup`] (Gloo on CPU, NCCL on
//! CUDA) that rendezvous through a `TCPStore` with torchrun's environment ([`DistEnv`]) and runs
//! `all_reduce`, `broadcast`, `all_gather` and `barrier` in place on tch tensors, each bounded by a
//! timeout whose expiry is an [`Error::Collective`] naming the collective, the rank and the step;
//! and a [`GradReducer`]: a flat gradient buffer all-reduced in buckets, each launched from an
//! autograd post-accumulate-grad hook as soon as the backward pass has produced its gradients
//! (the overlap DDP's Reducer gives PyTorch users; tch 0.24 has no autograd hooks).
//! It also binds CUDA graphs: [`CudaGraph`] captures the tch ops a closure issues (on a pool
//! stream made current for the capture) and replays them with one launch (semhitok-mllm's
//! CUDA-graph decode step), and [`pin_memory`] without the deprecated device argument, [`parallel_for`]: LibTorch's
//! intra-op thread pool for Rust loops, [`set_grad`] (`param.grad = g`), and
//! [`apply_custom`]: an autograd node with a Rust forward and backward ([`CustomFunction`]). The same door is meant for run-time-compiled CUDA kernels (NVRTC).
//!
//! Safety model: every C++ exception is caught inside the shim and comes back as a message; the
//! tensors passed in are borrowed for the duration of the call only.

mod autograd;
mod cuda_graph;
mod custom_fn;
mod env;
mod error;
mod ffi;
mod grad_reducer;
mod host_memory;
mod parallel;
mod process_group;

pub use autograd::set_grad;
pub use cuda_graph::{current_cuda_stream, CudaGraph};
pub use custom_fn::{apply_custom, CustomFunction};
pub use env::{Backend, DistEnv};
pub use error::{Error, Result};
pub use grad_reducer::{bucket_starts, GradReducer};
pub use host_memory::pin_memory;
pub use parallel::parallel_for;
pub use process_group::{ProcessGroup, ReduceOp, DEFAULT_TIMEOUT};

/// Print the native stack to stderr when the process dies of SIGSEGV, SIGBUS, SIGFPE, SIGILL or
/// SIGABRT (glibc's `backtrace_symbols_fd`: the dynamic symbol names of LibTorch, NCCL and the
/// shim), then let the signal take its usual course (Rust's stack-overflow report, the core dump,
/// the exit status). A crash inside LibTorch or NCCL otherwise ends a run with only
/// "Segmentation fault", and GPU hosts often have no debugger. Idempotent; [`ProcessGroup`]
/// installs it, and a binary may call it first thing in `main`.
pub fn install_crash_handler() {
    // SAFETY: installs signal handlers through sigaction; no Rust state is touched.
    unsafe {
        ffi::shk_install_crash_handler();
    }
}

/// Dereference NULL inside the shim: the crash handler's own test (a child process calls it).
#[doc(hidden)]
pub fn crash_for_test() -> ! {
    // SAFETY: deliberately not safe: it kills the process.
    unsafe { ffi::shk_crash_for_test() };
    std::process::abort()
}
