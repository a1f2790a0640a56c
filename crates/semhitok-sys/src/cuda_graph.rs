//! CUDA graphs ([`CudaGraph`]): capture the tch ops a closure issues, replay them with one launch.
//!
//! Wraps `at::cuda::CUDAGraph` (`csrc/cuda_graph.cpp`). While the closure runs, a side stream
//! from LibTorch's pool is the current CUDA stream, so every tch op the closure issues is
//! recorded instead of executed; its allocations come from the graph's private memory pool and
//! keep their addresses for as long as the graph lives. Replay re-runs exactly those kernels on
//! the same memory: inputs change only by writing into tensors the graph reads (`copy_`), and
//! outputs are read from tensors it wrote. Shapes, host-side control flow and host scalars are
//! frozen at capture. Like PyTorch's `torch.cuda.graph`, the caller should run the closure once
//! uncaptured first (warm-up: cuBLAS handles, lazy kernels), and no op may synchronise with the
//! host during capture (`.item()`, a device-to-host copy): that is an error from CUDA.

use crate::error::{Error, Result};
use std::ffi::{c_char, c_int};

#[repr(C)]
struct ShkGraph {
    _private: [u8; 0],
}

extern "C" {
    fn shk_graph_available() -> c_int;
    fn shk_graph_new(device: c_int, out: *mut *mut ShkGraph) -> *mut c_char;
    fn shk_graph_capture_begin(g: *mut ShkGraph) -> *mut c_char;
    fn shk_graph_capture_end(g: *mut ShkGraph) -> *mut c_char;
    fn shk_graph_replay(g: *mut ShkGraph) -> *mut c_char;
    fn shk_graph_free(g: *mut ShkGraph);
    fn shk_current_stream(device: c_int) -> *mut std::ffi::c_void;
}

/// LibTorch's current CUDA stream on `device` as a raw `cudaStream_t` (null: the legacy default
/// stream, or a build without CUDA). Kernels launched through the CUDA driver on it are ordered
/// with LibTorch's work and are captured when a [`CudaGraph`] capture is running.
pub fn current_cuda_stream(device: i32) -> *mut std::ffi::c_void {
    // SAFETY: reads LibTorch's thread-local current stream; no Rust state is touched.
    unsafe { shk_current_stream(device as c_int) }
}

fn check(op: &'static str, p: *mut c_char) -> Result<()> {
    match crate::ffi::take_error(p) {
        None => Ok(()),
        Some(msg) => Err(Error::Graph { op, msg }),
    }
}

/// A captured CUDA graph and its private memory pool (freed on drop).
#[derive(Debug)]
pub struct CudaGraph {
    ptr: *mut ShkGraph,
}

impl CudaGraph {
    /// Whether this build has CUDA graphs (the shim was compiled with the CUDA headers).
    pub fn available() -> bool {
        // SAFETY: no arguments, reads a constant.
        unsafe { shk_graph_available() != 0 }
    }

    /// Capture the ops `f` issues on CUDA device `device`; returns the graph and `f`'s value
    /// (typically the output tensors, which live in the graph's pool). An error from `f` ends
    /// the capture and is returned as is (`E: From<Error>` carries the shim's errors).
    pub fn capture<R, E: From<Error>>(
        device: usize,
        f: impl FnOnce() -> std::result::Result<R, E>,
    ) -> std::result::Result<(Self, R), E> {
        let mut ptr = std::ptr::null_mut();
        // SAFETY: `ptr` is a valid out-pointer; the shim sets it or returns an error.
        check("create", unsafe {
            shk_graph_new(device as c_int, &mut ptr)
        })?;
        let g = Self { ptr };
        // SAFETY: `g.ptr` is a live graph from shk_graph_new.
        check("capture_begin", unsafe { shk_graph_capture_begin(g.ptr) })?;
        let r = f();
        // Always end the capture (restores the current stream), even when `f` failed.
        // SAFETY: as above; capture was begun on this graph.
        let end = check("capture_end", unsafe { shk_graph_capture_end(g.ptr) });
        let r = r?;
        end?;
        Ok((g, r))
    }

    /// Launch the captured work on the current stream (asynchronous, like any CUDA op).
    pub fn replay(&self) -> Result<()> {
        // SAFETY: `self.ptr` is a live, captured graph.
        check("replay", unsafe { shk_graph_replay(self.ptr) })
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: `self.ptr` came from shk_graph_new and is freed once.
        unsafe { shk_graph_free(self.ptr) }
    }
}
