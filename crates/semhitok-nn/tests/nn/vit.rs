//! ViT pixel encoder / decoder: golden vs timm blocks (scripts/fixtures/vit.py), shapes, bad input.

use crate::teach_util::{assert_close, assert_no_spills, fixture, get, load_fixture, rtol};
use semhitok_nn::test_device;
use semhitok_nn::vit::{VitConfig, VitDecoderConfig, VitEncoderConfig};
use semhitok_nn::weights::{load_strict, LoadOptions};
use semhitok_nn::Error;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn enc_cfg() -> VitEncoderConfig {
    VitEncoderConfig {
        image_size: 8,
        patch_size: 4,
        in_channels: 3,
        vit: VitConfig::custom(8, 2, 2),
        out_dim: 3,
    }
}

fn dec_cfg(groups: i64) -> VitDecoderConfig {
    VitDecoderConfig {
        image_size: 8,
        patch_size: 4,
        out_channels: 3,
        vit: VitConfig::custom(8, 2, 2),
        in_dim: 5,
        groups,
    }
}

fn load(vs: &mut VarStore, prefix: &str) -> anyhow::Result<()> {
    let opts = LoadOptions {
        strip_prefix: Some(prefix),
        allow_unexpected: true,
    };
    load_strict(vs, &fixture("vit.safetensors"), &opts)?;
    Ok(())
}

fn encoder_matches_timm(dev: Device) -> anyhow::Result<()> {
    let fx = load_fixture("vit.safetensors", dev)?;
    let mut vs = VarStore::new(dev);
    let enc = enc_cfg().init(&vs.root())?;
    load(&mut vs, "enc.w.")?;
    let x = get(&fx, "enc.in")?;
    let y = tch::no_grad(|| enc.forward(x))?;
    assert_eq!(y.size(), [2, 4, 3]);
    // The patchify conv runs in TF32 on CUDA (cuDNN default): see `rtol`.
    let tol = rtol(dev, 1e-5);
    assert_close("encoder output", &y, get(&fx, "enc.out")?, tol, tol)
}
test_device!(
    encoder_matches_timm,
    encoder_matches_timm_cpu,
    encoder_matches_timm_cuda
);

fn decoder_matches_timm(dev: Device) -> anyhow::Result<()> {
    let fx = load_fixture("vit.safetensors", dev)?;
    for (name, groups) in [("dec", 1), ("dec2", 2)] {
        let mut vs = VarStore::new(dev);
        let dec = dec_cfg(groups).init(&vs.root())?;
        load(&mut vs, &format!("{name}.w."))?;
        let x = get(&fx, &format!("{name}.in"))?;
        let y = tch::no_grad(|| dec.forward(x))?;
        assert_eq!(y.size(), [2, 3, 8, 8]);
        let tol = rtol(dev, 1e-5);
        assert_close(name, &y, get(&fx, &format!("{name}.out"))?, tol, tol)?;
    }
    Ok(())
}
test_device!(
    decoder_matches_timm,
    decoder_matches_timm_cpu,
    decoder_matches_timm_cuda
);

#[test]
fn weight_names_are_timm_names() -> anyhow::Result<()> {
    let vs = VarStore::new(Device::Cpu);
    let _enc = enc_cfg().init(&vs.root())?;
    let vars = vs.variables();
    for k in [
        "patch_embed.proj.weight",
        "pos_embed",
        "blocks.1.attn.qkv.weight",
        "blocks.0.mlp.fc2.bias",
        "norm.weight",
        "proj.weight",
    ] {
        anyhow::ensure!(vars.contains_key(k), "missing {k}");
    }
    assert_eq!(vars.len(), 3 + 12 * 2 + 2 + 2);
    Ok(())
}

#[test]
fn presets() -> anyhow::Result<()> {
    let e = VitEncoderConfig::base_256(8);
    e.validate()?;
    assert_eq!(e.grid(), 16);
    assert_eq!(
        (e.vit.hidden_size, e.vit.depth, e.vit.num_heads),
        (768, 12, 12)
    );
    let l = VitDecoderConfig::large_256(40);
    l.validate()?;
    assert_eq!(
        (l.vit.hidden_size, l.vit.depth, l.vit.num_heads),
        (1024, 24, 16)
    );
    assert_eq!(VitConfig::tiny().hidden_size, 192);
    assert_eq!(VitConfig::small().num_heads, 6);
    // Bad configs are errors, not panics.
    assert!(VitConfig::custom(10, 1, 3).validate("x").is_err());
    let mut bad = e.clone();
    bad.image_size = 250;
    assert!(matches!(bad.validate(), Err(Error::Config(_))));
    let json = serde_json::to_string(&e)?;
    assert_eq!(serde_json::from_str::<VitEncoderConfig>(&json)?, e);
    Ok(())
}

#[test]
fn wrong_input_names_expected_shape() -> anyhow::Result<()> {
    let vs = VarStore::new(Device::Cpu);
    let enc = enc_cfg().init(&vs.root())?;
    let err = enc
        .forward(&Tensor::zeros([1, 3, 8, 12], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    assert!(err.to_string().contains("[B, 3, 8, 8]"), "{err}");
    let err = enc
        .forward(&Tensor::zeros([1, 1, 8, 8], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    assert!(err.to_string().contains("[B, 3, 8, 8]"), "{err}");
    let dec = dec_cfg(1).init(&(vs.root() / "d"))?;
    let err = dec
        .forward(&Tensor::zeros([1, 4, 6], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    assert!(err.to_string().contains("[B, 4, 5]"), "{err}");
    Ok(())
}

#[test]
fn encoder_gradients_reach_patch_embed() -> anyhow::Result<()> {
    tch::manual_seed(1);
    let vs = VarStore::new(Device::Cpu);
    let enc = enc_cfg().init(&vs.root())?;
    let y = enc.forward(&Tensor::rand([2, 3, 8, 8], (Kind::Float, Device::Cpu)))?;
    y.pow_tensor_scalar(2).sum(Kind::Float).backward();
    let g = vs.variables()["patch_embed.proj.weight"].grad();
    assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    Ok(())
}

/// The trained ViTs' fused layer norm (`cuda/vit_norm.cu`) compiles with the wheel's NVRTC without
/// register spills.
#[test]
fn vit_norm_kernels_compile_with_the_wheels_nvrtc() -> anyhow::Result<()> {
    assert_no_spills(
        "vit_norm.cu",
        semhitok_nn::cuda::vit_norm::compile(90),
        &["ln_fwd_f32_bf16", "ln_bwd_dx", "ln_bwd_partial", "colsum2"],
    )
}

/// `x`, gamma, beta leaves, the bf16 layer norm (fused node or LibTorch's norm + cast) and the
/// gradients of a loss over it.
fn norm_and_grads(
    x0: &Tensor,
    g0: &Tensor,
    b0: &Tensor,
    w: &Tensor,
    fused: bool,
) -> anyhow::Result<(Tensor, [Tensor; 3])> {
    let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
    let (x, g, b) = (leaf(x0), leaf(g0), leaf(b0));
    let h = g0.size()[0];
    let y = if fused {
        semhitok_nn::cuda::vit_norm::layer_norm_bf16(&x, &g, &b, 1e-6)?
    } else {
        x.layer_norm([h], Some(&g), Some(&b), 1e-6, true)
            .to_kind(tch::Kind::BFloat16)
    };
    assert_eq!(y.kind(), tch::Kind::BFloat16);
    (y.to_kind(tch::Kind::Float) * w)
        .sum(tch::Kind::Float)
        .backward();
    Ok((y, [x.grad(), g.grad(), b.grad()]))
}

/// The fused norm's autograd node on the CPU (LibTorch's kernels inside): the same bf16 output and
/// the same gradients as LibTorch's layer norm followed by a bf16 cast.
#[test]
fn vit_norm_node_equals_libtorch_on_cpu() -> anyhow::Result<()> {
    tch::manual_seed(5);
    let f = (tch::Kind::Float, tch::Device::Cpu);
    let x = Tensor::randn([3, 5, 16], f) * 2.0 + 0.5;
    let g = Tensor::randn([16], f) * 0.2 + 1.0;
    let b = Tensor::randn([16], f) * 0.1;
    let w = Tensor::randn([3, 5, 16], f);
    let (y, grads) = norm_and_grads(&x, &g, &b, &w, true)?;
    let (y_ref, grads_ref) = norm_and_grads(&x, &g, &b, &w, false)?;
    assert!(y.equal(&y_ref), "forward differs");
    for (name, a, r) in [
        ("x", &grads[0], &grads_ref[0]),
        ("gamma", &grads[1], &grads_ref[1]),
        ("beta", &grads[2], &grads_ref[2]),
    ] {
        assert!(a.allclose(r, 1e-6, 1e-7, false), "{name}: {a:?} vs {r:?}");
    }
    Ok(())
}

/// On CUDA: the fused norm's kernels against LibTorch's fp32 layer norm + bf16 cast at a ViT-B
/// shape (forward within one bf16 ulp but for a few values near zero; gradients within 1e-3 of
/// the largest, the fp32 sums run in another order), and the kernels did run.
#[test]
fn vit_norm_matches_libtorch_on_cuda() -> anyhow::Result<()> {
    if !tch::Cuda::is_available() {
        eprintln!("vit_norm_matches_libtorch_on_cuda: no CUDA device, skipped");
        return Ok(());
    }
    let f = (tch::Kind::Float, tch::Device::Cuda(0));
    tch::manual_seed(9);
    let x = Tensor::randn([4, 256, 768], f) * 2.0 + 0.5;
    let g = Tensor::randn([768], f) * 0.2 + 1.0;
    let b = Tensor::randn([768], f) * 0.1;
    let w = Tensor::randn([4, 256, 768], f);
    let before = semhitok_nn::cuda::vit_norm::launches();
    let (y, grads) = norm_and_grads(&x, &g, &b, &w, true)?;
    assert!(
        semhitok_nn::cuda::vit_norm::launches() - before >= 3,
        "the kernels did not run"
    );
    let (y_ref, grads_ref) = norm_and_grads(&x, &g, &b, &w, false)?;
    let d = (y.to_kind(tch::Kind::Float) - y_ref.to_kind(tch::Kind::Float)).abs();
    let same = d
        .eq(0.0)
        .to_kind(tch::Kind::Float)
        .mean(tch::Kind::Float)
        .double_value(&[]);
    let max = d.max().double_value(&[]);
    eprintln!("vit_norm forward: {same:.5} bit-equal, max |diff| {max:.2e}");
    assert!(
        same > 0.98 && max < 2e-2,
        "forward: {same} equal, max {max}"
    );
    for (name, a, r) in [
        ("x", &grads[0], &grads_ref[0]),
        ("gamma", &grads[1], &grads_ref[1]),
        ("beta", &grads[2], &grads_ref[2]),
    ] {
        let scale = r.abs().max().double_value(&[]);
        let err = (a - r).abs().max().double_value(&[]) / scale;
        eprintln!("vit_norm grad {name}: max |diff| {err:.2e} of the largest");
        assert!(err < 1e-3, "{name}: {err}");
    }
    Ok(())
}

/// `x` (f32), `d` (`dkind`), gamma, beta leaves; `s = x + d` and the bf16 norm of `s` (fused node
/// or LibTorch's add, norm and cast); the gradients of a loss over both outputs.
fn add_norm_and_grads(
    x0: &Tensor,
    d0: &Tensor,
    g0: &Tensor,
    b0: &Tensor,
    w: &Tensor,
    fused: bool,
) -> anyhow::Result<((Tensor, Tensor), [Tensor; 4])> {
    let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
    let (x, d, g, b) = (leaf(x0), leaf(d0), leaf(g0), leaf(b0));
    let h = g0.size()[0];
    let (s, y) = if fused {
        semhitok_nn::cuda::vit_norm::add_layer_norm_bf16(&x, &d, &g, &b, 1e-6)?
    } else {
        let s = &x + &d;
        let y = s
            .layer_norm([h], Some(&g), Some(&b), 1e-6, true)
            .to_kind(tch::Kind::BFloat16);
        (s, y)
    };
    assert_eq!(y.kind(), tch::Kind::BFloat16);
    assert_eq!(s.kind(), tch::Kind::Float);
    // Both outputs carry gradient, as in a block (s goes on to the next residual add).
    ((y.to_kind(tch::Kind::Float) * w).sum(tch::Kind::Float)
        + (&s * w * 0.5).sum(tch::Kind::Float))
    .backward();
    Ok(((s, y), [x.grad(), d.grad(), g.grad(), b.grad()]))
}

/// The fused residual add + norm node on the CPU (LibTorch's kernels inside): the same sum, the
/// same bf16 norm and the same gradients (the addend's in its own kind, bf16) as LibTorch's add,
/// layer norm and cast.
#[test]
fn vit_add_norm_node_equals_libtorch_on_cpu() -> anyhow::Result<()> {
    tch::manual_seed(6);
    let f = (tch::Kind::Float, tch::Device::Cpu);
    let x = Tensor::randn([3, 5, 16], f) * 2.0 + 0.5;
    let d = Tensor::randn([3, 5, 16], f).to_kind(tch::Kind::BFloat16);
    let g = Tensor::randn([16], f) * 0.2 + 1.0;
    let b = Tensor::randn([16], f) * 0.1;
    let w = Tensor::randn([3, 5, 16], f);
    let ((s, y), grads) = add_norm_and_grads(&x, &d, &g, &b, &w, true)?;
    let ((s_ref, y_ref), grads_ref) = add_norm_and_grads(&x, &d, &g, &b, &w, false)?;
    assert!(s.equal(&s_ref), "sum differs");
    assert!(y.equal(&y_ref), "norm differs");
    assert_eq!(
        grads[1].kind(),
        tch::Kind::BFloat16,
        "the addend's gradient kind"
    );
    for (name, a, r) in [
        ("x", &grads[0], &grads_ref[0]),
        ("d", &grads[1], &grads_ref[1]),
        ("gamma", &grads[2], &grads_ref[2]),
        ("beta", &grads[3], &grads_ref[3]),
    ] {
        let (a, r) = (a.to_kind(tch::Kind::Float), r.to_kind(tch::Kind::Float));
        assert!(a.allclose(&r, 1e-6, 1e-7, false), "{name}: {a:?} vs {r:?}");
    }
    Ok(())
}

/// On CUDA, at a ViT-B shape: the fused residual add + norm's kernels against LibTorch's add,
/// fp32 layer norm and bf16 cast: the sum bit-equal, the norm within one bf16 ulp but for a few
/// values near zero, gradients within 1e-3 of the largest (the addend's bf16 gradient within its
/// rounding), and the kernels ran (forward, dx, partials, column sums).
#[test]
fn vit_add_norm_matches_libtorch_on_cuda() -> anyhow::Result<()> {
    if !tch::Cuda::is_available() {
        eprintln!("vit_add_norm_matches_libtorch_on_cuda: no CUDA device, skipped");
        return Ok(());
    }
    let f = (tch::Kind::Float, tch::Device::Cuda(0));
    tch::manual_seed(10);
    let x = Tensor::randn([4, 256, 768], f) * 2.0 + 0.5;
    let d = Tensor::randn([4, 256, 768], f).to_kind(tch::Kind::BFloat16);
    let g = Tensor::randn([768], f) * 0.2 + 1.0;
    let b = Tensor::randn([768], f) * 0.1;
    let w = Tensor::randn([4, 256, 768], f);
    let before = semhitok_nn::cuda::vit_norm::launches();
    let ((s, y), grads) = add_norm_and_grads(&x, &d, &g, &b, &w, true)?;
    assert!(
        semhitok_nn::cuda::vit_norm::launches() - before >= 4,
        "the kernels did not run"
    );
    let ((s_ref, y_ref), grads_ref) = add_norm_and_grads(&x, &d, &g, &b, &w, false)?;
    assert!(s.equal(&s_ref), "the sum is not LibTorch's add");
    let dy = (y.to_kind(tch::Kind::Float) - y_ref.to_kind(tch::Kind::Float)).abs();
    let same = dy
        .eq(0.0)
        .to_kind(tch::Kind::Float)
        .mean(tch::Kind::Float)
        .double_value(&[]);
    let max = dy.max().double_value(&[]);
    eprintln!("vit_add_norm forward: {same:.5} bit-equal, max |diff| {max:.2e}");
    assert!(
        same > 0.98 && max < 2e-2,
        "forward: {same} equal, max {max}"
    );
    for (name, a, r, tol) in [
        ("x", &grads[0], &grads_ref[0], 1e-3),
        ("d", &grads[1], &grads_ref[1], 1e-2),
        ("gamma", &grads[2], &grads_ref[2], 1e-3),
        ("beta", &grads[3], &grads_ref[3], 1e-3),
    ] {
        let (a, r) = (a.to_kind(tch::Kind::Float), r.to_kind(tch::Kind::Float));
        let scale = r.abs().max().double_value(&[]);
        let err = (&a - &r).abs().max().double_value(&[]) / scale;
        eprintln!("vit_add_norm grad {name}: max |diff| {err:.2e} of the largest");
        assert!(err < tol, "{name}: {err}");
    }
    Ok(())
}

/// The fused linear node's kernels (`cuda/linear.cu`) compile with the wheel's NVRTC without
/// register spills.
#[test]
fn fused_linear_kernels_compile_with_the_wheels_nvrtc() -> anyhow::Result<()> {
    assert_no_spills(
        "linear.cu",
        semhitok_nn::cuda::linear::compile(90),
        &["bias_partial", "bias_finish", "gelu_bwd_partial"],
    )
}

/// bf16 leaves x, w, b with zero bf16 gradients defined (as semhitok-train's gradient buffer
/// gives them), a linear layer (the fused node or LibTorch's linear) and a loss over it twice
/// (the second pass accumulates into the first's gradients): output and gradients.
fn linear_and_grads(
    x0: &Tensor,
    w0: &Tensor,
    b0: &Tensor,
    r: &Tensor,
    fused: bool,
) -> anyhow::Result<(Tensor, [Tensor; 3])> {
    let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
    let (x, w, b) = (leaf(x0), leaf(w0), leaf(b0));
    for t in [&x, &w, &b] {
        (t.sum(tch::Kind::Float) * 0.0).backward();
        assert_eq!(t.grad().kind(), tch::Kind::BFloat16);
    }
    let mut y = Tensor::new();
    for _ in 0..2 {
        y = if fused {
            semhitok_nn::cuda::linear::linear(&x, &w, Some(&b))?
        } else {
            x.linear(&w, Some(&b))
        };
        (y.to_kind(tch::Kind::Float) * r)
            .sum(tch::Kind::Float)
            .backward();
    }
    Ok((y, [x.grad(), w.grad(), b.grad()]))
}

/// The checks that count [`semhitok_nn::cuda::linear::direct_writes`] (a process-wide counter)
/// hold this while they count: the test harness runs tests on parallel threads.
static DIRECT_COUNT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The largest |a - b| over the largest |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (a.to_kind(tch::Kind::Float), b.to_kind(tch::Kind::Float));
    (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]).max(1e-30)
}

/// Against LibTorch's linear: the same output, and gradients within the bf16 rounding of the
/// accumulation (the node rounds each accumulated gradient once, autograd twice).
fn check_fused_linear(device: tch::Device, shape: [i64; 3], direct: u64) -> anyhow::Result<()> {
    let f = (tch::Kind::Float, device);
    let [b_, n, c] = shape;
    tch::manual_seed(12);
    let bf = tch::Kind::BFloat16;
    let x = Tensor::randn([b_, n, c], f).to_kind(bf);
    let w = (Tensor::randn([3 * c, c], f) * 0.05).to_kind(bf);
    let b = (Tensor::randn([3 * c], f) * 0.1).to_kind(bf);
    let r = Tensor::randn([b_, n, 3 * c], f);
    let _count = DIRECT_COUNT.lock().unwrap_or_else(|e| e.into_inner());
    let before = semhitok_nn::cuda::linear::direct_writes();
    let (y, g) = linear_and_grads(&x, &w, &b, &r, true)?;
    let writes = semhitok_nn::cuda::linear::direct_writes() - before;
    let (y_ref, g_ref) = linear_and_grads(&x, &w, &b, &r, false)?;
    assert!(y.equal(&y_ref), "forward differs from LibTorch's linear");
    assert_eq!(writes, direct, "gradients written into .grad");
    for (name, a, r) in [
        ("x", &g[0], &g_ref[0]),
        ("w", &g[1], &g_ref[1]),
        ("b", &g[2], &g_ref[2]),
    ] {
        let e = rel_err(a, r);
        eprintln!("fused linear {device:?} grad {name}: max |diff| {e:.2e} of the largest");
        assert!(e < 1e-2, "{name}: {e}");
    }
    Ok(())
}

/// On the CPU the node writes the weight gradient into `.grad` (the bias's goes back to
/// autograd: its kernel is CUDA-only).
#[test]
fn fused_linear_node_matches_libtorch_on_cpu() -> anyhow::Result<()> {
    check_fused_linear(tch::Device::Cpu, [2, 6, 16], 2)
}

/// On CUDA at a ViT-B shape both gradients go straight into `.grad`.
#[test]
fn fused_linear_matches_libtorch_on_cuda() -> anyhow::Result<()> {
    if !tch::Cuda::is_available() {
        eprintln!("fused_linear_matches_libtorch_on_cuda: no CUDA device, skipped");
        return Ok(());
    }
    check_fused_linear(tch::Device::Cuda(0), [4, 256, 768], 4)?;
    // Rows not a multiple of the chunk, columns not of the block's 256.
    check_fused_linear(tch::Device::Cuda(0), [3, 77, 40], 4)
}

/// As [`linear_and_grads`] for `fc1` + exact GELU: the fused node
/// ([`semhitok_nn::cuda::linear_gelu`]) or LibTorch's linear then GELU.
fn linear_gelu_and_grads(
    x0: &Tensor,
    w0: &Tensor,
    b0: &Tensor,
    r: &Tensor,
    fused: bool,
) -> anyhow::Result<(Tensor, [Tensor; 3])> {
    let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
    let (x, w, b) = (leaf(x0), leaf(w0), leaf(b0));
    for t in [&x, &w, &b] {
        (t.sum(tch::Kind::Float) * 0.0).backward();
    }
    let mut y = Tensor::new();
    for _ in 0..2 {
        y = if fused {
            semhitok_nn::cuda::linear_gelu::linear_gelu(&x, &w, &b)?
        } else {
            x.linear(&w, Some(&b)).gelu("none")
        };
        (y.to_kind(tch::Kind::Float) * r)
            .sum(tch::Kind::Float)
            .backward();
    }
    Ok((y, [x.grad(), w.grad(), b.grad()]))
}

/// The fc1 + GELU node against LibTorch's linear and GELU: the same output; gradients within the
/// bf16 rounding of the accumulation (as the linear node's). `direct`: gradients written into
/// `.grad` over the two passes.
fn check_linear_gelu(device: tch::Device, shape: [i64; 3], direct: u64) -> anyhow::Result<()> {
    let f = (tch::Kind::Float, device);
    let [b_, n, c] = shape;
    tch::manual_seed(14);
    let bf = tch::Kind::BFloat16;
    let x = Tensor::randn([b_, n, c], f).to_kind(bf);
    let w = (Tensor::randn([4 * c, c], f) * (1.0 / (c as f64).sqrt())).to_kind(bf);
    let b = (Tensor::randn([4 * c], f) * 0.5).to_kind(bf);
    let r = Tensor::randn([b_, n, 4 * c], f);
    let _count = DIRECT_COUNT.lock().unwrap_or_else(|e| e.into_inner());
    let before = semhitok_nn::cuda::linear::direct_writes();
    let (y, g) = linear_gelu_and_grads(&x, &w, &b, &r, true)?;
    let writes = semhitok_nn::cuda::linear::direct_writes() - before;
    let (y_ref, g_ref) = linear_gelu_and_grads(&x, &w, &b, &r, false)?;
    assert!(
        y.equal(&y_ref),
        "forward differs from LibTorch's linear + GELU"
    );
    assert_eq!(writes, direct, "gradients written into .grad");
    for (name, a, r) in [
        ("x", &g[0], &g_ref[0]),
        ("w", &g[1], &g_ref[1]),
        ("b", &g[2], &g_ref[2]),
    ] {
        let e = rel_err(a, r);
        eprintln!("fused linear + GELU {device:?} grad {name}: max |diff| {e:.2e} of the largest");
        assert!(e < 1e-2, "{name}: {e}");
    }
    Ok(())
}

/// The GELU-backward kernel alone (one pass, zero `.grad`s): the bias gradient is a bf16 sum of
/// the kernel's dh, LibTorch's of its own GELU backward; and dh itself, seen through dx with an
/// identity weight, against LibTorch's `gelu_backward`: bit-equal but for one-ulp exceptions.
fn check_gelu_backward_exact(device: tch::Device) -> anyhow::Result<()> {
    let f = (tch::Kind::Float, device);
    let bf = tch::Kind::BFloat16;
    tch::manual_seed(15);
    let (rows, c) = (1000, 256);
    // w = I: h = x + b, dx = dh.
    let eye = Tensor::eye(c, f).to_kind(bf);
    let x = (Tensor::randn([rows, c], f) * 2.0).to_kind(bf);
    let b = Tensor::zeros([c], f).to_kind(bf);
    let dg = Tensor::randn([rows, c], f).to_kind(bf);
    let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
    let (xl, wl, bl) = (leaf(&x), leaf(&eye), leaf(&b));
    let y = semhitok_nn::cuda::linear_gelu::linear_gelu(&xl, &wl, &bl)?;
    (y.to_kind(tch::Kind::Float) * dg.to_kind(tch::Kind::Float))
        .sum(tch::Kind::Float)
        .backward();
    let dh = xl.grad();
    let want = x.gelu_backward(&dg, "none");
    let same = dh
        .eq_tensor(&want)
        .to_kind(tch::Kind::Float)
        .mean(tch::Kind::Float)
        .double_value(&[]);
    let err = rel_err(&dh, &want);
    eprintln!("gelu backward {device:?}: {same:.6} bit-equal to LibTorch's, max |diff| {err:.2e} of the largest");
    assert!(same > 0.999 && err < 1e-2, "dh: {same} bit-equal, {err}");
    Ok(())
}

/// On the CPU the node falls back to LibTorch's GELU backward and writes the weight gradient into
/// `.grad` (the bias's goes back to autograd).
#[test]
fn fused_linear_gelu_node_matches_libtorch_on_cpu() -> anyhow::Result<()> {
    check_linear_gelu(tch::Device::Cpu, [2, 6, 16], 2)
}

/// On CUDA at ViT-B's fc1 shape both gradients go straight into `.grad`; the GELU backward
/// kernel against LibTorch's.
#[test]
fn fused_linear_gelu_matches_libtorch_on_cuda() -> anyhow::Result<()> {
    if !tch::Cuda::is_available() {
        eprintln!("fused_linear_gelu_matches_libtorch_on_cuda: no CUDA device, skipped");
        return Ok(());
    }
    check_linear_gelu(tch::Device::Cuda(0), [4, 256, 768], 4)?;
    check_linear_gelu(tch::Device::Cuda(0), [3, 77, 40], 4)?;
    check_gelu_backward_exact(tch::Device::Cuda(0))
}

/// Blocks chained with their last residual add pending (`Block::forward_pending`, what the trunk
/// does so that each add meets the next norm) give exactly `Block::forward` applied in turn.
#[test]
fn pending_residual_chain_equals_blocks_in_turn() -> anyhow::Result<()> {
    tch::manual_seed(13);
    let vs = VarStore::new(Device::Cpu);
    let cfg = VitConfig::custom(16, 3, 4);
    let blocks: Vec<_> = (0..3)
        .map(|i| semhitok_nn::vit::Block::new(vs.root() / "blocks" / i, &cfg))
        .collect();
    let x = Tensor::randn([2, 5, 16], (Kind::Float, Device::Cpu));
    let mut in_turn = x.shallow_clone();
    for b in &blocks {
        in_turn = b.forward(&in_turn)?;
    }
    let (mut s, mut m) = blocks[0].forward_pending(&x, None)?;
    for b in &blocks[1..] {
        (s, m) = b.forward_pending(&s, Some(&m))?;
    }
    assert!((s + m).equal(&in_turn), "the pending chain differs");
    Ok(())
}
