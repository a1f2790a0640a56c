//! Devices: CPU always, CUDA when present, and the macro that runs one test body on both.

use tch::{Device, Tensor};

/// `t` ([N, C, H, W]) with channels-last strides (same shape and values; NHWC in memory): what
/// PyTorch's `memory_format=torch.channels_last` gives, which tch does not expose. A convolution
/// whose input is laid out so runs channels-last (on CPU, markedly faster for the small convs here).
pub(crate) fn to_channels_last(t: &Tensor) -> crate::Result<Tensor> {
    Ok(t.f_permute([0, 2, 3, 1])?
        .f_contiguous()?
        .f_permute([0, 3, 1, 2])?)
}

/// CUDA device 0 when LibTorch sees a GPU, otherwise `None`.
///
/// Binaries must link `libtorch_cuda.so` for this to ever be `Some` (see
/// `build/link_torch_cuda.rs`): without it PyTorch never registers its CUDA backend.
pub fn cuda_if_available() -> Option<Device> {
    tch::Cuda::is_available().then_some(Device::Cuda(0))
}

/// Expand one test body `fn name(dev: tch::Device) -> R` into `name_cpu` (always run) and
/// `name_cuda` (runs on CUDA when a GPU is present, otherwise prints that it skipped), in the
/// manner of candle's `test_device!`, so the GPU host runs the same suite.
///
/// ```ignore
/// fn add(dev: tch::Device) -> anyhow::Result<()> { /* ... */ Ok(()) }
/// semhitok_nn::test_device!(add, add_cpu, add_cuda);
/// ```
#[macro_export]
macro_rules! test_device {
    ($fn_name:ident, $cpu:ident, $cuda:ident) => {
        #[test]
        fn $cpu() {
            let r = $fn_name(::tch::Device::Cpu);
            #[allow(clippy::unit_arg)]
            $crate::device::assert_ok(r);
        }
        #[test]
        fn $cuda() {
            match $crate::device::cuda_if_available() {
                Some(dev) => {
                    let _one_at_a_time = $crate::device::cuda_test_lock();
                    $crate::device::assert_ok($fn_name(dev))
                }
                None => eprintln!("{}: no CUDA device, skipped", stringify!($cuda)),
            }
        }
    };
}

/// The lock every CUDA test of [`test_device!`] holds: the CUDA tests of one test binary run one
/// at a time. A test that captures a CUDA graph makes the device refuse other threads'
/// synchronizing calls while it captures (and a refused call invalidates the capture): three
/// static-decode tests failed that way when libtest ran them in parallel on the H200.
#[doc(hidden)]
pub fn cuda_test_lock() -> std::sync::MutexGuard<'static, ()> {
    static L: std::sync::Mutex<()> = std::sync::Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

/// Turn a test body's result into a panic with the error's message (used by [`test_device!`]).
#[doc(hidden)]
pub fn assert_ok<T, E: std::fmt::Debug>(r: Result<T, E>) {
    if let Err(e) = r {
        panic!("{e:?}");
    }
}
