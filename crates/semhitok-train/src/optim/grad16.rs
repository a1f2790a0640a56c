//! Moving one backward pass's bf16 weight gradients into the f32 flat gradient buffer: one NVRTC
//! kernel (`grad16.cu`) on CUDA, LibTorch's add and zero elsewhere; the same f32 sums either way.

use semhitok_nn::cuda::kernel::{arg, cuda_case, launch, Latch, Switch};
use std::ffi::c_void;
use tch::{Kind, Tensor};

const SOURCE: &str = include_str!("grad16.cu");

/// Compile the kernel for `sm_{arch}` (no GPU needed): cubin and ptxas's report.
pub fn compile(arch: u32) -> Result<(Vec<u8>, String), semhitok_nn::cuda::driver::CudaError> {
    semhitok_nn::cuda::kernel::compile(SOURCE, "grad16.cu", arch)
}

/// Set once the kernel failed to compile or launch.
static BROKEN: Latch = Latch::new();
/// `SEMHITOK_BF16_GRADS=0` keeps the members' gradients on their f32 views.
static SWITCH: Switch = Switch::new("SEMHITOK_BF16_GRADS", true);

/// Whether the bf16 gradient buffer is switched on (`SEMHITOK_BF16_GRADS=0` turns it off).
pub fn enabled() -> bool {
    SWITCH.enabled()
}

/// `g += g16; g16 = 0` for g [n] f32 and g16 [n] bf16 (contiguous, one device).
pub(super) fn add_and_clear(g: &Tensor, g16: &Tensor) -> Result<(), tch::TchError> {
    let _ng = tch::no_grad_guard();
    let n = g16.numel() as i64;
    if n == 0 {
        return Ok(());
    }
    let case = cuda_case(&[g16], Kind::BFloat16).filter(|&o| {
        g.is_contiguous()
            && g.numel() as i64 == n
            && g.kind() == Kind::Float
            && g.device() == tch::Device::Cuda(o as usize)
            && !BROKEN.tripped()
    });
    if let Some(o) = case {
        let (mut pg, mut p16, mut len) = (g.data_ptr(), g16.data_ptr(), n);
        let mut args: [*mut c_void; 3] = [arg(&mut pg), arg(&mut p16), arg(&mut len)];
        let blocks = ((n + 1023) / 1024) as u32;
        // SAFETY: (float* g, unsigned short* g16, long long n) as add_bf16_grads declares; g [n]
        // contiguous f32 and g16 [n] contiguous bf16 on device `o` (checked), alive for the
        // launch (stream-ordered allocator).
        let r = unsafe {
            launch(
                o,
                SOURCE,
                "grad16.cu",
                "add_bf16_grads",
                blocks,
                256,
                &mut args,
            )
        };
        match r {
            Ok(()) => return Ok(()),
            Err(e) => BROKEN.trip("grad16.cu", &e),
        }
    }
    let _ = g.shallow_clone().f_add_(g16)?;
    let _ = g16.shallow_clone().f_zero_()?;
    Ok(())
}
