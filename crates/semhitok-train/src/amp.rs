//! bf16 autocast on CUDA.
//!
//! tch exposes `autocast(enabled, f)` but not the autocast dtype, which LibTorch defaults to
//! fp16 on CUDA. The paper-size runs use bf16 (as LlamaGen and UniTok do), so we call
//! `at::autocast::set_autocast_dtype(c10::DeviceType::CUDA, c10::ScalarType::BFloat16)` from
//! `libtorch_cpu.so` directly. Both enums are `int8_t`-backed; CUDA = 1, BFloat16 = 15
//! (c10/core/DeviceType.h, c10/core/ScalarType.h of PyTorch 2.11).

#[link(name = "torch_cpu")]
extern "C" {
    #[link_name = "_ZN2at8autocast18set_autocast_dtypeEN3c1010DeviceTypeENS1_10ScalarTypeE"]
    fn at_autocast_set_autocast_dtype(device_type: i8, dtype: i8);
}

const DEVICE_CUDA: i8 = 1;
const SCALAR_BFLOAT16: i8 = 15;

/// Make CUDA autocast regions compute in bf16 (idempotent, process-wide).
pub fn set_cuda_autocast_bf16() {
    // SAFETY: a plain setter of a thread-local dtype in LibTorch; arguments are valid enum values.
    unsafe { at_autocast_set_autocast_dtype(DEVICE_CUDA, SCALAR_BFLOAT16) }
}
