//! Golden test of the optimizer machinery against PyTorch (fixture: scripts/fixtures/adamw.py):
//! `AdamW` + `clip_grad_norm` + `lr_at` + `Ema` reproduce `torch.optim.AdamW` (foreach=False),
//! `torch.nn.utils.clip_grad_norm_` and a weight EMA, step for step. Run `a` (every parameter has a
//! gradient every step) goes through the flat-buffer path; run `b` (one parameter without a
//! gradient for two steps, so torch skips it and counts its steps separately) through the
//! per-tensor path.

use super::common::tiny_config;
use semhitok_train::optim::{lr_at, AdamW, Ema, Param};
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
            decay: n.ends_with("a.weight") || n.ends_with("b.weight"),
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
            decay: name.ends_with("weight"),
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
