//! `apply_custom`: an autograd node with a Rust forward and backward gives autograd's own
//! gradients, passes gradients only where the inputs need them, and turns errors of either half
//! into messages naming the function.

use semhitok_sys::{apply_custom, CustomFunction};
use tch::{Kind, Tensor};

/// y = x * w + b (broadcast over rows), s = sum(x): two outputs, three inputs, hand-written
/// backward.
struct Affine;

impl CustomFunction for Affine {
    fn name(&self) -> &str {
        "affine"
    }
    fn forward(&self, i: &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>), String> {
        let (x, w, b) = (&i[0], &i[1], &i[2]);
        let y = x * w + b;
        let s = x.sum(Kind::Float);
        Ok((vec![y, s], vec![x.shallow_clone(), w.shallow_clone()]))
    }
    fn backward(&self, saved: &[Tensor], g: &[Tensor]) -> Result<Vec<Option<Tensor>>, String> {
        let (x, w) = (&saved[0], &saved[1]);
        let (gy, gs) = (&g[0], &g[1]);
        let gx = gy * w + gs.expand_as(x);
        let gw = (gy * x).sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
        let gb = gy.sum_dim_intlist([0i64].as_slice(), false, Kind::Float);
        Ok(vec![Some(gx), Some(gw), Some(gb)])
    }
}
static AFFINE: Affine = Affine;

struct Failing {
    in_backward: bool,
}

impl CustomFunction for Failing {
    fn name(&self) -> &str {
        "failing"
    }
    fn forward(&self, i: &[Tensor]) -> Result<(Vec<Tensor>, Vec<Tensor>), String> {
        if self.in_backward {
            Ok((vec![&i[0] * 2.0], vec![]))
        } else {
            Err("no forward today".into())
        }
    }
    fn backward(&self, _: &[Tensor], _: &[Tensor]) -> Result<Vec<Option<Tensor>>, String> {
        Err("no backward today".into())
    }
}
static FAIL_FORWARD: Failing = Failing { in_backward: false };
static FAIL_BACKWARD: Failing = Failing { in_backward: true };

#[test]
fn custom_function_gives_autograds_gradients() {
    tch::manual_seed(3);
    let x0 = Tensor::randn([5, 4], (Kind::Float, tch::Device::Cpu));
    let w0 = Tensor::randn([4], (Kind::Float, tch::Device::Cpu));
    let b0 = Tensor::randn([4], (Kind::Float, tch::Device::Cpu));
    let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
    let (x, w, b) = (leaf(&x0), leaf(&w0), leaf(&b0));
    let out = apply_custom(&AFFINE, &[&x, &w, &b], 2, 2).unwrap();
    let (xr, wr, br) = (leaf(&x0), leaf(&w0), leaf(&b0));
    let yr = &xr * &wr + &br;
    let sr = xr.sum(Kind::Float);
    assert!(out[0].allclose(&yr, 0.0, 0.0, false), "forward output");
    assert!(out[1].allclose(&sr, 0.0, 0.0, false));
    assert!(out[0].requires_grad(), "the output carries the node");
    // A loss that uses both outputs, twice through the node's graph.
    let loss = |y: &Tensor, s: &Tensor| (y * y).sum(Kind::Float) + s * 3.0;
    loss(&out[0], &out[1]).backward();
    loss(&yr, &sr).backward();
    for (name, a, r) in [("x", &x, &xr), ("w", &w, &wr), ("b", &b, &br)] {
        assert!(
            a.grad().allclose(&r.grad(), 1e-6, 1e-6, false),
            "{name}: {:?} vs {:?}",
            a.grad(),
            r.grad()
        );
    }
    // Without any input needing a gradient, no node: the output does not require grad.
    let plain = apply_custom(&AFFINE, &[&x0, &w0, &b0], 2, 2).unwrap();
    assert!(!plain[0].requires_grad());
    // A wrong count of saved tensors is an error naming the function, not a crash.
    let e = apply_custom(&AFFINE, &[&x, &w, &b], 2, 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("affine") && e.contains("saved"), "{e}");
}

#[test]
fn custom_function_errors_name_the_function() {
    let x = Tensor::ones([3], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    let e = apply_custom(&FAIL_FORWARD, &[&x], 1, 0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("failing") && e.contains("no forward today"),
        "{e}"
    );
    let y = apply_custom(&FAIL_BACKWARD, &[&x], 1, 0).unwrap();
    let e = y[0].sum(Kind::Float).f_backward().unwrap_err().to_string();
    assert!(
        e.contains("failing") && e.contains("no backward today"),
        "{e}"
    );
}
