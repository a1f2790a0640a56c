//! The fused bf16 CUDA steps (`llm::fused`) against LibTorch's unfused ops: they compile with the
//! wheel's NVRTC (CPU); on CUDA the residual add is bit-equal and the norm and SiLU x up are
//! within one bf16 ulp; CPU tensors are declined.

use semhitok_mllm::llm::fused::{add_rmsnorm, compile, silu_mul};
use semhitok_nn::test_device;
use tch::{Device, Kind, Tensor};

type R = Result<(), Box<dyn std::error::Error>>;

#[test]
fn fused_kernels_compile_without_spills() {
    crate::assert_compiled_without_spills(compile(90));
}

/// max |a - b| / (2^-7 max(|a|, |b|) + tiny): <= 1 means within one bf16 ulp everywhere.
fn ulps(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(Kind::Float), b.to_kind(Kind::Float));
    let scale = a.abs().maximum(&b.abs()) * f64::powi(2.0, -7) + 1e-30;
    ((a - b).abs() / scale).max().double_value(&[])
}

fn fused(dev: Device) -> R {
    let _rng = crate::rng_lock(); // draws from LibTorch's global generator
    tch::manual_seed(11);
    let x = Tensor::randn([3, 5, 64], (Kind::BFloat16, dev));
    let d = Tensor::randn([3, 5, 64], (Kind::BFloat16, dev));
    let w = Tensor::randn([64], (Kind::BFloat16, dev));
    if !dev.is_cuda() {
        assert!(add_rmsnorm(&x, &d, &w, 1e-5)?.is_none());
        assert!(silu_mul(&Tensor::cat(&[&x, &d], -1), 64)?.is_none());
        return Ok(());
    }
    for (rows, h) in [(1i64, 4096i64), (7, 576), (2048, 4096)] {
        let x = Tensor::randn([1, rows, h], (Kind::BFloat16, dev));
        let d = Tensor::randn([1, rows, h], (Kind::BFloat16, dev)) * 0.3;
        let d = d.to_kind(Kind::BFloat16);
        let w = Tensor::randn([h], (Kind::BFloat16, dev));
        let (xo, y) = add_rmsnorm(&x, &d, &w, 1e-5)?.expect("the kernel's case");
        let xr = &x + &d;
        assert!(
            xo.equal(&xr),
            "rows {rows} h {h}: the residual add is not bit-equal"
        );
        let yr = xr.rms_norm([h], Some(&w), 1e-5);
        let u = ulps(&y, &yr);
        assert!(u <= 1.0, "rows {rows} h {h}: norm {u} ulps from rms_norm");
        let gu = Tensor::randn([1, rows, 2 * h], (Kind::BFloat16, dev)) * 2.0;
        let gu = gu.to_kind(Kind::BFloat16);
        let o = silu_mul(&gu, h)?.expect("the kernel's case");
        let r = gu.narrow(-1, 0, h).silu() * gu.narrow(-1, h, h);
        let u = ulps(&o, &r);
        assert!(u <= 1.0, "rows {rows} h {h}: silu x up {u} ulps");
    }
    // Not their case: h % 8 != 0, mismatched shapes.
    let (a, b, w12) = (
        Tensor::randn([2, 12], (Kind::BFloat16, dev)),
        Tensor::randn([2, 12], (Kind::BFloat16, dev)),
        Tensor::randn([12], (Kind::BFloat16, dev)),
    );
    assert!(add_rmsnorm(&a, &b, &w12, 1e-5)?.is_none());
    assert!(silu_mul(&a, 6)?.is_none());
    Ok(())
}
test_device!(fused, fused_cpu, fused_cuda);
