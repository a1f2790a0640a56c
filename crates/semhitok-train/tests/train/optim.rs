//! Golden test of the optimizer machinery against PyTorch (fixture: scripts/fixtures/adamw.py):
//! `AdamW` + `clip_grad_norm` + `lr_at` + `Ema` reproduce `torch.optim.AdamW` (foreach=False),
//! `torch.nn.utils.clip_grad_norm_` and a weight EMA, step for step. Run `a` (every parameter has a
//! gradient every step) goes through the flat-buffer path; run `b` (one parameter without a
//! gradient for two steps, so torch skips it and counts its steps separately) through the
//! per-tensor path.

use super::common::{serial, tiny_config};
use semhitok_nn::layers::{Conv2d, LayerNorm, Linear, LinearInit};
use semhitok_train::optim::{lr_at, AdamW, Ema, Param, Role};
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

const NAMES: [&str; 4] = ["a.weight", "b.weight", "c.bias", "d.norm.weight"];
/// f32 arithmetic in a different order than torch's kernels: a few ulps per step.
const TOL: f64 = 2e-6;

fn fixture() -> BTreeMap<String, Tensor> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/adamw.safetensors");
    Tensor::read_safetensors(&p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .into_iter()
        .collect()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).abs().max().double_value(&[]);
    d / b.abs().max().double_value(&[]).max(1e-3)
}

fn check(run: &str, flat_from_step: Option<i64>) {
    let fx = fixture();
    let get = |k: &str| {
        fx.get(k)
            .unwrap_or_else(|| panic!("fixture key {k} missing"))
            .shallow_clone()
    };
    let params: Vec<Param> = NAMES
        .iter()
        .map(|n| Param {
            name: n.to_string(),
            var: get(&format!("{run}.init.{n}"))
                .copy()
                .set_requires_grad(true),
            // a and b decay (matrices), c and d do not (no bf16 copy here: the roles only set decay).
            role: if n.ends_with("a.weight") || n.ends_with("b.weight") {
                Role::Matrix
            } else {
                Role::Plain
            },
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config(tmp.path(), 6, 6, &[]).optim;
    cfg.betas = [0.9, 0.95];
    cfg.eps = 1e-8;
    cfg.weight_decay = 0.05;
    let mut opt = AdamW::new(params, &cfg);
    let mut ema = Ema::for_optimizer(0.9, &opt);
    let lrs = Vec::<f64>::try_from(get(&format!("{run}.lr"))).unwrap();
    let norms = Vec::<f64>::try_from(get(&format!("{run}.norm"))).unwrap();
    for k in 0..6i64 {
        let lr = lr_at(k as u64, 1e-2, 2, 6, 0.1);
        assert!((lr - lrs[k as usize]).abs() < 1e-12, "lr at {k}: {lr}");
        opt.zero_grad();
        // sum_n <p_n, g_n> has gradient g_n; parameters without a fixture gradient get none.
        let mut loss = Tensor::zeros([], (Kind::Float, Device::Cpu));
        for p in opt.params() {
            if let Some(g) = fx.get(&format!("{run}.grad.{k}.{}", p.name)) {
                loss += (&p.var * g).sum(Kind::Float);
            }
        }
        loss.backward();
        let norm = opt.clip_grad_norm(1.0);
        assert!(
            (norm - norms[k as usize]).abs() < 1e-5 * norms[k as usize],
            "{run} step {k}: grad norm {norm} vs torch {}",
            norms[k as usize]
        );
        opt.step(lr);
        ema.update();
        if let Some(f) = flat_from_step {
            assert_eq!(opt.flat_active(), k >= f, "{run} step {k}: flat path");
        }
        let state: BTreeMap<String, Tensor> = opt.state_tensors("o").into_iter().collect();
        let shadows: BTreeMap<String, Tensor> = ema.state_tensors().into_iter().collect();
        for n in NAMES {
            let p = &opt.params().iter().find(|p| p.name == n).unwrap().var;
            let want = |w: &str| get(&format!("{run}.{w}.{k}.{n}"));
            let e = max_rel(p, &want("param"));
            assert!(e < TOL, "{run} step {k} {n}: param rel err {e}");
            let e = max_rel(&shadows[&format!("ema.{n}")], &want("ema"));
            assert!(e < TOL, "{run} step {k} {n}: ema rel err {e}");
            if fx.contains_key(&format!("{run}.m.{k}.{n}")) {
                for w in ["m", "v"] {
                    let e = max_rel(&state[&format!("o.{w}.{n}")], &want(w));
                    assert!(e < TOL, "{run} step {k} {n}: {w} rel err {e}");
                }
            } else {
                let m = &state[&format!("o.m.{n}")];
                assert_eq!(m.abs().sum(Kind::Float).double_value(&[]), 0.0);
            }
        }
    }
}

#[test]
fn adamw_clip_ema_match_torch_flat_path() {
    check("a", Some(0));
}

#[test]
fn adamw_skips_parameters_without_gradient_like_torch() {
    // c.bias has no gradient at steps 0 and 1: skipped, and its bias correction counts from
    // its own first update (per-tensor path throughout: the step counts differ).
    check("b", Some(i64::MAX));
}

/// With the flat buffers, autograd accumulates into the flat gradient (micro-batch
/// accumulation), and the modules see the updated weights (they hold the same tensors).
#[test]
fn flat_buffers_accumulate_gradients_and_update_the_modules_weights() {
    let _g = super::common::serial(); // random init: LibTorch's global generator
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let lin = tch::nn::linear(vs.root() / "lin", 3, 2, Default::default());
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let params = named
        .into_iter()
        .map(|(name, var)| Param {
            // The weight decays, the bias does not (tch's own layer: roles declared here).
            role: if name.ends_with("weight") {
                Role::Matrix
            } else {
                Role::Plain
            },
            name,
            var,
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(tmp.path(), 1, 1, &[]).optim;
    let mut opt = AdamW::new(params, &cfg);
    let x = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 0.3, 0.1, -0.7]).view([2, 3]);
    let loss = |l: &tch::nn::Linear| tch::nn::Module::forward(l, &x).square().sum(Kind::Float);
    for _ in 0..2 {
        opt.zero_grad();
        loss(&lin).backward();
        opt.step(1e-2);
    }
    assert!(opt.flat_active());
    // One backward into the bound gradients, then a second one accumulated on top.
    opt.zero_grad();
    loss(&lin).backward();
    let once: Vec<Tensor> = opt.params().iter().map(|p| p.var.grad().copy()).collect();
    loss(&lin).backward();
    for (p, g1) in opt.params().iter().zip(&once) {
        let e = max_rel(&p.var.grad(), &(g1 * 2.0));
        assert!(e < 1e-6, "{}: accumulated grad rel err {e}", p.name);
    }
    // The layer's own weight tensor is the optimizer's parameter: a step changes the layer.
    let before = lin.ws.copy();
    opt.step(1e-2);
    assert!(opt.flat_active());
    assert!(
        max_rel(&lin.ws, &before) > 1e-4,
        "the linear layer did not see the update"
    );
    assert_eq!(opt.flat_params().unwrap().size(), [3 * 2 + 2]);
}

/// The bf16 working copy (`AdamW::with_bf16_copy`) gives exactly what casting each weight at its
/// use gives (autocast's way), step for step: the same gradients and the same f32 masters. On CPU
/// with explicit casts standing in for CUDA autocast: `to_kind(BFloat16)` casts an f32 weight and
/// is a no-op on the bf16 copy. The linear layer is the module: it must see the copy while entered
/// and its f32 master after `exit_bf16`; the 1-D norm scale is no member and stays f32. Both
/// gradient routes (bf16 buffer + one add, or autograd's per-tensor mixed add) and two
/// micro-batches per step give the same gradients.
#[test]
fn bf16_copy_equals_casting_at_use() {
    // Both builds seed LibTorch's global generator: hold the lock every training test holds, or a
    // trainer re-seeding it in parallel makes the two initial weights differ.
    let _g = serial();
    let x = Tensor::from_slice(&[1.0f32, -2.0, 0.5, 0.3, 0.1, -0.7, 0.9, 0.2, -0.4]).view([3, 3]);
    let build = |copy: bool| {
        let vs = tch::nn::VarStore::new(Device::Cpu);
        tch::manual_seed(7);
        // semhitok-nn's Linear (tch's default init, bias drawn first as `nn::linear`) declares
        // its roles; the raw norm scale has none, so it is plain.
        let lin = Linear::new(vs.root() / "lin", 3, 4, true, LinearInit::Default);
        let norm = (vs.root() / "norm").var("weight", &[3], tch::nn::Init::Const(1.5));
        let params: Vec<Param> = semhitok_nn::role::trainable(&vs)
            .into_iter()
            .map(|(name, var, role)| Param { name, var, role })
            .collect();
        let tmp = tempfile::tempdir().unwrap();
        let cfg = tiny_config(tmp.path(), 1, 1, &[]).optim;
        let opt = if copy {
            AdamW::with_bf16_copy(params, &cfg)
        } else {
            AdamW::new(params, &cfg)
        };
        (vs, lin, norm, opt)
    };
    let loss = |lin: &Linear, norm: &Tensor| {
        let h = (&x * norm).to_kind(Kind::BFloat16);
        let bs = lin.bs.as_ref().unwrap().to_kind(Kind::BFloat16);
        h.linear(&lin.ws.to_kind(Kind::BFloat16), Some(&bs))
            .to_kind(Kind::Float)
            .square()
            .sum(Kind::Float)
    };
    let (_vs_r, lin_r, norm_r, mut opt_r) = build(false);
    let (_vs_c, mut lin_c, mut norm_c, mut opt_c) = build(true);
    // The same initial values in both, whatever another test drew from the global generator
    // between the two seeded builds (this failed once in the merged suite: a test that does not
    // hold the lock initialised a model in between). Copied into the variables, as the flat
    // buffer requires.
    tch::no_grad(|| {
        lin_c.ws.copy_(&lin_r.ws);
        lin_c.bs.as_mut().unwrap().copy_(lin_r.bs.as_ref().unwrap());
        norm_c.copy_(&norm_r);
    });
    assert_eq!(opt_c.bf16_members(), 2, "lin.weight and lin.bias");
    assert_eq!(opt_r.bf16_members(), 0);
    for k in 0..5 {
        opt_r.zero_grad();
        opt_c.zero_grad();
        // From the first step on (it gives the parameters zero gradients to bind first).
        assert!(opt_c.enter_bf16().unwrap(), "step {k}: not entered");
        assert_eq!(
            lin_c.ws.kind(),
            Kind::BFloat16,
            "step {k}: the layer's weight"
        );
        assert_eq!(lin_c.bs.as_ref().unwrap().kind(), Kind::BFloat16);
        assert_eq!(norm_c.kind(), Kind::Float, "the norm scale is no member");
        // Steps 0-2 route the members' gradients through the flat bf16 buffer (the default),
        // steps 3-4 let autograd add them into the f32 views; odd steps run two micro-batches.
        let via_bf16 = k < 3;
        assert_eq!(
            lin_c.ws.grad().kind(),
            if via_bf16 {
                Kind::BFloat16
            } else {
                Kind::Float
            },
            "step {k}: the member's gradient while entered"
        );
        loss(&lin_r, &norm_r).backward();
        loss(&lin_c, &norm_c).backward();
        if k % 2 == 1 {
            opt_c.exit_bf16().unwrap();
            assert!(opt_c.enter_bf16().unwrap());
            loss(&lin_r, &norm_r).backward();
            loss(&lin_c, &norm_c).backward();
        }
        opt_c.exit_bf16().unwrap();
        opt_c.set_bf16_grads(k + 1 < 3);
        assert_eq!(
            lin_c.ws.kind(),
            Kind::Float,
            "step {k}: back on the f32 master"
        );
        for (pr, pc) in opt_r.params().iter().zip(opt_c.params()) {
            assert_eq!(pr.name, pc.name);
            assert_eq!(pc.var.grad().kind(), Kind::Float, "{}: grad kind", pc.name);
            assert!(
                pr.var.grad().equal(&pc.var.grad()),
                "step {k}: {} gradient differs",
                pc.name
            );
        }
        opt_r.clip_grad_norm(1.0);
        opt_c.clip_grad_norm(1.0);
        opt_r.step(1e-2);
        opt_c.step(1e-2);
        assert!(opt_c.flat_active());
        for (pr, pc) in opt_r.params().iter().zip(opt_c.params()) {
            assert!(pr.var.equal(&pc.var), "step {k}: {} differs", pc.name);
        }
    }
    // The layer's weight is the optimizer's f32 master again (a view into the flat buffer).
    let flat = opt_c.flat_params().unwrap();
    let base = flat.data_ptr() as usize;
    let end = base + flat.numel() * 4;
    let at = lin_c.ws.data_ptr() as usize;
    assert!(
        at >= base && at < end,
        "lin.weight is not in the flat buffer"
    );
    assert!(lin_c.ws.requires_grad());
}

/// Which parameters get the bf16 copy: the matrices and conv kernels autocast casts and the biases
/// of those layers; never norms, position embeddings or codebooks.
#[test]
fn bf16_members_are_the_matrices_and_their_biases() {
    let spec: [(&str, &[i64], bool); 8] = [
        ("enc.fc.bias", &[8], true),
        ("enc.fc.weight", &[8, 8], true),
        ("enc.norm.bias", &[8], false),
        ("enc.norm.weight", &[8], false),
        ("enc.patch_embed.proj.bias", &[8], true),
        ("enc.patch_embed.proj.weight", &[8, 3, 2, 2], true),
        ("enc.pos_embed", &[1, 4, 8], false),
        ("quantize.codebook", &[16, 8], false),
    ];
    // Each made by the layer that owns it (roles declared there); the position embedding and the
    // codebook as raw variables (no declaration: plain).
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let enc = vs.root() / "enc";
    let _fc = Linear::new(&enc / "fc", 8, 8, true, LinearInit::Vit);
    let _norm = LayerNorm::new(&enc / "norm", 8, 1e-6);
    let conv = tch::nn::ConvConfig {
        stride: 2,
        ..Default::default()
    };
    let _proj = Conv2d::new(&enc / "patch_embed" / "proj", 3, 8, 2, conv);
    let _pos = enc.zeros("pos_embed", &[1, 4, 8]);
    let _cb = (vs.root() / "quantize").zeros("codebook", &[16, 8]);
    let params: Vec<Param> = semhitok_nn::role::trainable(&vs)
        .into_iter()
        .map(|(name, var, role)| Param { name, var, role })
        .collect();
    let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
    let want_names: Vec<&str> = spec.iter().map(|s| s.0).collect();
    assert_eq!(names, want_names);
    for ((name, shape, _), p) in spec.iter().zip(&params) {
        assert_eq!(p.var.size(), shape.to_vec(), "{name}");
    }
    let got = semhitok_train::optim::bf16_members(&params);
    for ((name, _, want), got) in spec.iter().zip(got) {
        assert_eq!(got, *want, "{name}");
    }
}

/// The bf16-gradient kernel (`optim/grad16.cu`) compiles with the wheel's NVRTC (no GPU needed)
/// without register spills.
#[test]
fn bf16_gradient_kernel_compiles_with_the_wheels_nvrtc() {
    let (cubin, log) =
        semhitok_train::optim::grad16::compile(90).unwrap_or_else(|e| panic!("{}", e.0));
    assert_eq!(&cubin[..4], b"\x7fELF", "not a cubin");
    eprintln!("grad16.cu sm_90: {log}");
    assert!(
        semhitok_nn::cuda::kernel::no_report_spills(&log),
        "spills:\n{log}"
    );
}

/// The one-kernel AdamW step (`optim/adamw_fused.cu`) compiles with the wheel's NVRTC without
/// register spills.
#[test]
fn fused_adamw_kernel_compiles_with_the_wheels_nvrtc() {
    let (cubin, log) =
        semhitok_train::optim::adamw_fused::compile(90).unwrap_or_else(|e| panic!("{}", e.0));
    assert_eq!(&cubin[..4], b"\x7fELF", "not a cubin");
    eprintln!("adamw_fused.cu sm_90: {log}");
    assert!(
        semhitok_nn::cuda::kernel::no_report_spills(&log),
        "spills:\n{log}"
    );
}

/// On CUDA: the fused AdamW step (with the clip folded in) leaves the parameters and both
/// moments bit-equal to LibTorch's op-by-op step, over steps with and without clipping and with
/// decayed and undecayed parameters.
#[test]
fn fused_adamw_equals_libtorch_ops_on_cuda() {
    use semhitok_train::optim::adamw_fused;
    if !tch::Cuda::is_available() {
        eprintln!("fused_adamw_equals_libtorch_ops_on_cuda: no CUDA device, skipped");
        return;
    }
    let _g = serial();
    let dev = Device::Cuda(0);
    let build = || {
        let vs = tch::nn::VarStore::new(dev);
        tch::manual_seed(11);
        let lin = Linear::new(vs.root() / "lin", 96, 80, true, LinearInit::Default);
        let norm = LayerNorm::new(vs.root() / "norm", 96, 1e-6);
        let params: Vec<Param> = semhitok_nn::role::trainable(&vs)
            .into_iter()
            .map(|(name, var, role)| Param { name, var, role })
            .collect();
        let tmp = tempfile::tempdir().unwrap();
        let mut cfg = tiny_config(tmp.path(), 1, 1, &[]).optim;
        cfg.weight_decay = 0.05;
        (vs, lin, norm, AdamW::new(params, &cfg))
    };
    let (_va, lin_a, norm_a, mut opt_a) = build();
    let (_vb, lin_b, norm_b, mut opt_b) = build();
    tch::no_grad(|| {
        for (pa, pb) in opt_a.params().iter().zip(opt_b.params()) {
            pb.var.shallow_clone().copy_(&pa.var);
        }
    });
    for k in 0..6 {
        let x = Tensor::randn([7, 96], (Kind::Float, dev)) * (1.0 + k as f64);
        let run = |lin: &Linear, norm: &LayerNorm, opt: &mut AdamW, fused: bool| {
            adamw_fused::set_enabled(fused);
            opt.zero_grad();
            lin.forward(&norm.forward(&x).unwrap())
                .unwrap()
                .square()
                .sum(Kind::Float)
                .backward();
            // Steps 1, 3, 5 clip (a bound below the norm), 0, 2, 4 do not.
            let max = if k % 2 == 1 { 1e-3 } else { 1e9 };
            opt.clip_grad_norm(max);
            opt.step(1e-2 * (1.0 + k as f64));
            adamw_fused::set_enabled(true);
        };
        let launched = adamw_fused::launches();
        run(&lin_a, &norm_a, &mut opt_a, true);
        assert!(
            adamw_fused::launches() > launched,
            "step {k}: the kernel did not run"
        );
        run(&lin_b, &norm_b, &mut opt_b, false);
        for (pa, pb) in opt_a.params().iter().zip(opt_b.params()) {
            assert!(pa.var.equal(&pb.var), "step {k}: {} differs", pa.name);
        }
        let (sa, sb) = (opt_a.state_tensors("o"), opt_b.state_tensors("o"));
        for ((na, ta), (_, tb)) in sa.iter().zip(&sb) {
            assert!(ta.equal(tb), "step {k}: {na} differs");
        }
    }
}

/// The squared-norm kernels (`optim/sumsq.cu`) compile with the wheel's NVRTC without register
/// spills.
#[test]
fn fused_norm_kernels_compile_with_the_wheels_nvrtc() {
    let (cubin, log) =
        semhitok_train::optim::sumsq::compile(90).unwrap_or_else(|e| panic!("{}", e.0));
    assert_eq!(&cubin[..4], b"\x7fELF", "not a cubin");
    assert!(
        semhitok_nn::cuda::kernel::no_report_spills(&log),
        "spills:\n{log}"
    );
}

/// Off the kernels' case (the CPU) `sum_sq_f64` is LibTorch's `square().sum(kDouble)`, bit for bit.
#[test]
fn fused_norms_are_libtorchs_on_cpu() {
    let _g = serial(); // the switch is process-wide
    tch::manual_seed(21);
    let x = Tensor::randn([1003], (Kind::Float, tch::Device::Cpu)) * 3.0;
    semhitok_train::optim::sumsq::set_enabled(true);
    let got = semhitok_train::optim::sumsq::sum_sq_f64(&x);
    assert_eq!(got.kind(), Kind::Double);
    assert!(got.equal(&x.square().sum(Kind::Double)));
}

/// On CUDA: the kernels against LibTorch's `square().sum(kDouble)` (the same fp32 squares summed in
/// fp64 in another order: within 1e-12 relative) at lengths with and without a tail of n % 4,
/// from one element to a ViT-B-sized buffer. Skipped without CUDA.
#[test]
fn fused_norms_match_libtorch_on_cuda() {
    if !tch::Cuda::is_available() {
        eprintln!("fused_norms_match_libtorch_on_cuda: no CUDA device, skipped");
        return;
    }
    use semhitok_train::optim::sumsq;
    let _g = serial(); // the switch is process-wide
    tch::manual_seed(22);
    for n in [1i64, 3, 4, 1027, 262_147, 86_000_001] {
        let x = Tensor::randn([n], (Kind::Float, tch::Device::Cuda(0))) * 0.02;
        sumsq::set_enabled(true);
        let got = sumsq::sum_sq_f64(&x).double_value(&[]);
        let again = sumsq::sum_sq_f64(&x).double_value(&[]);
        sumsq::set_enabled(false);
        let want = x.square().sum(Kind::Double).double_value(&[]);
        sumsq::set_enabled(true); // the default
        eprintln!("sumsq n {n}: {got:e} vs {want:e}");
        assert_eq!(got.to_bits(), again.to_bits(), "n {n}: not deterministic");
        assert!(
            (got - want).abs() <= 1e-12 * want.abs(),
            "n {n}: {got} vs LibTorch {want}"
        );
    }
}
