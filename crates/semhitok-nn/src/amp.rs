//! CUDA autocast regions without LibTorch's deprecation warnings.
//!
//! `tch::autocast` calls `at::autocast::is_enabled()` / `set_enabled()`, which PyTorch 2.4+
//! deprecates: every call prints `at::autocast::is_enabled() is deprecated` (hundreds of lines
//! per training run, issue 21). [`autocast`] does the same with the device-typed functions
//! `at::autocast::is_autocast_enabled(c10::DeviceType)` / `set_autocast_enabled(c10::DeviceType,
//! bool)` of `libtorch_cpu.so` (C++ free functions; `c10::DeviceType` is an `int8_t` enum,
//! CUDA = 1 in c10/core/DeviceType.h of PyTorch 2.11), and the nesting / cache calls tch uses.

#[link(name = "torch_cpu")]
extern "C" {
    #[link_name = "_ZN2at8autocast19is_autocast_enabledEN3c1010DeviceTypeE"]
    fn is_autocast_enabled(device_type: i8) -> bool;
    #[link_name = "_ZN2at8autocast20set_autocast_enabledEN3c1010DeviceTypeEb"]
    fn set_autocast_enabled(device_type: i8, enabled: bool);
    #[link_name = "_ZN2at8autocast17increment_nestingEv"]
    fn increment_nesting() -> i32;
    #[link_name = "_ZN2at8autocast17decrement_nestingEv"]
    fn decrement_nesting() -> i32;
    #[link_name = "_ZN2at8autocast11clear_cacheEv"]
    fn clear_cache();
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn set_autocast_dtype(device_type: i8, dtype: i8);
}

const DEVICE_CUDA: i8 = 1;
/// `c10::ScalarType::BFloat16` (c10/core/ScalarType.h of PyTorch 2.11; an `int8_t` enum).
const SCALAR_BFLOAT16: i8 = 15;

/// Make CUDA autocast regions compute in bf16 (idempotent, process-wide). tch exposes no
/// autocast dtype and LibTorch defaults to fp16 on CUDA; the paper-size runs use bf16 (as
/// LlamaGen and UniTok do).
pub fn set_cuda_autocast_bf16() {
    // SAFETY: a plain setter of a thread-local dtype in LibTorch; arguments are valid enum values.
    unsafe { set_autocast_dtype(DEVICE_CUDA, SCALAR_BFLOAT16) }
}

/// Runs `f` with CUDA autocast `enabled` (as `tch::autocast`: a no-op without CUDA; the
/// previous state is restored after, the cast cache cleared when the outermost region ends).
pub fn autocast<T>(enabled: bool, f: impl FnOnce() -> T) -> T {
    if !tch::Cuda::is_available() {
        return f();
    }
    // SAFETY: plain getters / setters of LibTorch's thread-local autocast state, with a valid
    // DeviceType value; no pointers.
    let prev = unsafe { is_autocast_enabled(DEVICE_CUDA) };
    unsafe {
        set_autocast_enabled(DEVICE_CUDA, enabled);
        increment_nesting();
    }
    let out = f();
    unsafe {
        if decrement_nesting() == 0 {
            clear_cache();
        }
        set_autocast_enabled(DEVICE_CUDA, prev);
    }
    out
}

/// Whether CUDA autocast is on in this thread.
pub fn is_cuda_autocast_enabled() -> bool {
    // SAFETY: as in [`autocast`].
    unsafe { is_autocast_enabled(DEVICE_CUDA) }
}
