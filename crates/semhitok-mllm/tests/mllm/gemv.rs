//! The batch-1 decode GEMV on CUDA (`llm::gemv`): it compiles with the wheel's NVRTC (CPU), it is
//! within bf16 rounding of an fp32 reference, it declines what is not its case, and the
//! CUDA-graph decode of a bf16 model (whose every product goes through it) gives the dynamic
//! path's tokens.

use semhitok_mllm::generate::{generate, DecodeMode, GenerationConfig};
use semhitok_mllm::llm::gemv::{compile, gemv_row};
use semhitok_mllm::llm::{LlamaConfig, LlamaModel, Weights};
use semhitok_nn::test_device;
use tch::{Device, Kind, Tensor};

type R = Result<(), Box<dyn std::error::Error>>;

#[test]
fn gemv_compiles_without_spills() {
    crate::assert_compiled_without_spills(compile(90));
}

/// Within bf16 output rounding (half an ulp, 2^-8 relative) plus the fp32 sum's error of an
/// fp32 reference of the same bf16 operands; `None` for CPU tensors, k % 8 != 0 and misaligned x.
fn gemv(dev: Device) -> R {
    let _rng = crate::rng_lock(); // draws from LibTorch's global generator
    tch::manual_seed(5);
    let x = Tensor::randn([1, 1, 64], (Kind::BFloat16, dev));
    let w = Tensor::randn([16, 64], (Kind::BFloat16, dev));
    if !dev.is_cuda() {
        assert!(gemv_row(&x, &w, None)?.is_none());
        return Ok(());
    }
    for (n, k, bias) in [
        (1000, 4096, false),
        (77, 8, true),
        (300, 1032, true),
        (4096, 11008, false),
    ] {
        let x = Tensor::randn([1, 1, k], (Kind::BFloat16, dev));
        let w = (Tensor::randn([n, k], (Kind::BFloat16, dev)) * 0.05).to_kind(Kind::BFloat16);
        let b = bias.then(|| Tensor::randn([n], (Kind::BFloat16, dev)));
        let y = gemv_row(&x, &w, b.as_ref())?.expect("the kernel's case");
        assert_eq!(y.size(), vec![1, 1, n]);
        let (xf, wf) = (x.to_kind(Kind::Double), w.to_kind(Kind::Double));
        let mut r = xf.matmul(&wf.tr());
        if let Some(b) = &b {
            r = r + b.to_kind(Kind::Double);
        }
        let mag = xf.abs().matmul(&wf.abs().tr());
        let err = (y.to_kind(Kind::Double) - &r).abs();
        let bound = r.abs() * f64::powi(2.0, -8) + mag * (k as f64 * f64::powi(2.0, -23)) + 1e-30;
        let worst = (err / bound).max().double_value(&[]);
        assert!(worst <= 1.0, "n {n} k {k}: error {worst} of the bound");
    }
    // Not its case: k % 8 != 0, a misaligned view, two rows.
    let w12 = Tensor::randn([4, 12], (Kind::BFloat16, dev));
    assert!(gemv_row(&Tensor::randn([1, 12], (Kind::BFloat16, dev)), &w12, None)?.is_none());
    // A view 2 bytes into its storage: contiguous but not 16-byte aligned: declined; a copy runs.
    let xs = Tensor::randn([1, 72], (Kind::BFloat16, dev)).narrow(1, 1, 64);
    let w64 = Tensor::randn([4, 64], (Kind::BFloat16, dev));
    assert!(gemv_row(&xs, &w64, None)?.is_none());
    assert!(gemv_row(&xs.copy(), &w64, None)?.is_some());
    assert!(gemv_row(&Tensor::randn([2, 64], (Kind::BFloat16, dev)), &w64, None)?.is_none());
    Ok(())
}
test_device!(gemv, gemv_cpu, gemv_cuda);

/// A random bf16 model: the CUDA-graph decode (products through the GEMV, launched on the
/// capture stream) gives the dynamic path's greedy tokens.
fn graph_bf16(dev: Device) -> R {
    let _rng = crate::rng_lock(); // draws from LibTorch's global generator
    if !dev.is_cuda() {
        return Ok(());
    }
    let cfg = LlamaConfig::tiny(96);
    let m = LlamaModel::new(&cfg, &Weights::random(0.5, 3, Kind::BFloat16, dev))?;
    let prompt = vec![vec![1u32, 5, 9, 33, 7]];
    let run = |decode| {
        let c = GenerationConfig {
            max_new_tokens: 12,
            decode,
            ..Default::default()
        };
        generate(&m, &prompt, 0, &c, None, &mut |_, _| true).map(|o| o.tokens)
    };
    assert_eq!(run(DecodeMode::CudaGraph)?, run(DecodeMode::Dynamic)?);
    Ok(())
}
test_device!(graph_bf16, graph_bf16_cpu, graph_bf16_cuda);
