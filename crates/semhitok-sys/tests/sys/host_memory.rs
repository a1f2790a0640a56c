//! `pin_memory`: a pinned, equal copy with CUDA; a clear error (never a crash) without it.

use tch::{Device, Kind, Tensor};

#[test]
fn pin_memory_copies_into_pinned_memory_or_says_why_not() {
    let src = Tensor::arange(24, (Kind::Uint8, Device::Cpu)).view([2, 3, 4]);
    match semhitok_sys::pin_memory(&src) {
        Ok(p) => {
            assert!(tch::Cuda::is_available(), "pinned without CUDA?");
            assert!(p.is_pinned(Device::Cuda(0)) || p.is_pinned(Device::Cpu));
            assert_eq!(p.size(), [2, 3, 4]);
            assert!(p.equal(&src));
            // the source is untouched and unpinned
            assert!(src.equal(&Tensor::arange(24, (Kind::Uint8, Device::Cpu)).view([2, 3, 4])));
            let d = p.to_device_(Device::Cuda(0), Kind::Uint8, true, false);
            assert!(d.to_device(Device::Cpu).equal(&src));
        }
        Err(e) => {
            assert!(
                !tch::Cuda::is_available(),
                "pin_memory failed with CUDA present: {e}"
            );
            assert!(e.to_string().starts_with("pin_memory: "), "{e}");
        }
    }
}
