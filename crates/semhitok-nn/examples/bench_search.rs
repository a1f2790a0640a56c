//! The SPC's nearest-code search and quantizer step on CUDA at the training shapes (N = 65,536
//! tokens = 256 images x 16 x 16, K = 16,384, D = 32, fp32), side by side in one process:
//!
//! * `fused`: `quantizer::nearest_l2` on CUDA (the default NVRTC kernel, no N x K matrix),
//! * `kernel_{v2,v3,tc}`: each kernel of `cuda::nearest` (with its ids' agreement with v3),
//! * `gemm`: `quantizer::nearest_l2_gemm` (addmm with the |c|^2 row, then argmin),
//! * `bare`: `z.matmul(c^T).argmax(-1)` (the floor a GEMM-based search cannot beat),
//! * `step_fused` / `step_gemm`: the whole quantizer step of the SPC (search, code lookup,
//!   straight-through, `CodeStats::from_assignments`, `EmaCodebook::update`).
//!
//! Each figure is the mean over `--iters` calls after `--warmup`, between two CUDA syncs;
//! `--rounds` repeats the set, alternating. Also reports the share of ids on which fused and
//! gemm agree. With `--sghc 1` also SGHC's sub-codebook search at the pixel stage's shapes
//! (`--sghc-n` 65,536 tokens = 256 images x 256, `--sghc-k` 16,384 semantic codes, `--sghc-m`
//! 12, `--sghc-d` 8): `sghc_fused` (the kernel + lookup) vs `sghc_gather` (the `[M, m, D]`
//! gather path). Prints JSON lines. PyTorch references: `scripts/bench_quant_gpu_torch.py`.
//!
//!   target/release/examples/bench_search --iters 50 --rounds 3 --sghc 1

use anyhow::{bail, Context};
use semhitok_nn::cuda::nearest::{nearest_l2_fused_with, Kernel};
use semhitok_nn::quantizer::{
    nearest_l2, nearest_l2_gemm, straight_through, CodeStats, EmaCodebook, EmaSettings,
};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

fn arg(name: &str, default: i64) -> anyhow::Result<i64> {
    let a: Vec<String> = std::env::args().collect();
    match a.iter().position(|x| x == name) {
        Some(i) => a
            .get(i + 1)
            .with_context(|| format!("{name} needs a value"))?
            .parse()
            .with_context(|| format!("{name}")),
        None => Ok(default),
    }
}

fn time_ms(dev: Device, iters: i64, warmup: i64, mut f: impl FnMut()) -> f64 {
    let Device::Cuda(o) = dev else { unreachable!() };
    for _ in 0..warmup {
        f();
    }
    tch::Cuda::synchronize(o as i64);
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    tch::Cuda::synchronize(o as i64);
    t.elapsed().as_secs_f64() * 1e3 / iters as f64
}

fn main() -> anyhow::Result<()> {
    let (n, k, d) = (arg("--n", 65536)?, arg("--k", 16384)?, arg("--d", 32)?);
    let (iters, warmup, rounds) = (
        arg("--iters", 50)?,
        arg("--warmup", 5)?,
        arg("--rounds", 3)?,
    );
    if !tch::Cuda::is_available() {
        bail!("bench_search needs a CUDA device");
    }
    let dev = Device::Cuda(0);
    tch::manual_seed(0);
    let unit = |t: Tensor| {
        let nrm = t
            .square()
            .sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)
            .sqrt();
        t / nrm
    };
    let z = unit(Tensor::randn([n, d], (Kind::Float, dev)));
    let codebook = unit(Tensor::randn([k, d], (Kind::Float, dev)));
    let vs = nn::VarStore::new(dev);
    let settings = EmaSettings {
        decay: 0.99,
        eps: 1e-5,
    };
    let mut ema = EmaCodebook::new(&(vs.root() / "q"), &codebook, settings, true)?;
    let zg = z.copy().set_requires_grad(true);

    let a = nearest_l2(&z, &codebook)?;
    let b = nearest_l2_gemm(&z, &codebook)?;
    let agree = a
        .eq_tensor(&b)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    println!(
        "{}",
        serde_json::json!({"check": "fused_vs_gemm_ids", "n": n, "k": k, "d": d, "agree": agree})
    );
    let arch = semhitok_nn::cuda::nearest::compute_capability(0)?;
    let kernels: Vec<Kernel> = Kernel::ALL
        .into_iter()
        .filter(|kk| kk.supports(d, arch))
        .collect();
    let v3 = nearest_l2_fused_with(&z, &codebook, Kernel::V3, false)?;
    for kk in &kernels {
        let ids = nearest_l2_fused_with(&z, &codebook, *kk, false)?;
        let agree = |o: &Tensor| {
            ids.eq_tensor(o)
                .to_kind(Kind::Double)
                .mean(Kind::Double)
                .double_value(&[])
        };
        println!(
            "{}",
            serde_json::json!({"check": "kernel_ids", "kernel": kk.name(), "n": n, "k": k, "d": d,
                "agree_v3": agree(&v3), "agree_gemm": agree(&b),
                "rows_differing_from_v3": ids.ne_tensor(&v3).sum(Kind::Int64).int64_value(&[])})
        );
    }
    let sghc = arg("--sghc", 0)? != 0;
    for round in 0..rounds {
        let mut rec = serde_json::json!({"impl": "tch", "round": round, "n": n, "k": k, "d": d,
            "default_kernel": Kernel::from_env()?.name()});
        for kk in &kernels {
            rec[format!("kernel_{}_ms", kk.name())] = time_ms(dev, iters, warmup, || {
                let _ = nearest_l2_fused_with(&z, &codebook, *kk, false).unwrap();
            })
            .into();
        }
        rec["fused_ms"] = time_ms(dev, iters, warmup, || {
            let _ = nearest_l2(&z, &codebook).unwrap();
        })
        .into();
        rec["gemm_ms"] = time_ms(dev, iters, warmup, || {
            let _ = nearest_l2_gemm(&z, &codebook).unwrap();
        })
        .into();
        rec["bare_ms"] = time_ms(dev, iters, warmup, || {
            let _ = z.matmul(&codebook.tr()).argmax(-1, false);
        })
        .into();
        for (key, fused) in [("step_fused_ms", true), ("step_gemm_ms", false)] {
            // The EMA writes the codebook in place: time it on a copy, so both variants search
            // the same codes.
            let cb = codebook.copy();
            rec[key] = time_ms(dev, iters, warmup, || {
                let ids = if fused {
                    nearest_l2(&zg, &cb).unwrap()
                } else {
                    nearest_l2_gemm(&zg, &cb).unwrap()
                };
                let zq = cb.index_select(0, &ids);
                let _st = straight_through(&zg, &zq).unwrap();
                let stats = CodeStats::from_assignments(k, &zg.detach(), &ids).unwrap();
                ema.update(&stats, &cb).unwrap();
            })
            .into();
        }
        println!("{rec}");
        if sghc {
            println!("{}", bench_sghc(dev, iters, warmup, round)?);
        }
    }
    Ok(())
}

/// SGHC's sub-codebook search at the pixel stage's shapes: fused kernel vs gather path (the
/// search and the chosen codes `zq`, as `Sghc::forward_t` uses them), and their agreement.
fn bench_sghc(
    dev: Device,
    iters: i64,
    warmup: i64,
    round: i64,
) -> anyhow::Result<serde_json::Value> {
    use semhitok_nn::sghc::{search_fused, search_gather};
    let (n, ks, m, d) = (
        arg("--sghc-n", 65536)?,
        arg("--sghc-k", 16384)?,
        arg("--sghc-m", 12)?,
        arg("--sghc-d", 8)?,
    );
    tch::manual_seed(1);
    let unit = |t: Tensor| {
        let nrm = t
            .square()
            .sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)
            .sqrt();
        t / nrm
    };
    let z = unit(Tensor::randn([n, d], (Kind::Float, dev)));
    let codes = unit(Tensor::randn([ks, m, d], (Kind::Float, dev)));
    let sem = Tensor::randint(ks, [n], (Kind::Int64, dev));
    let (jf, _) = search_fused(&z, &codes, &sem)?;
    let (jg, _) = search_gather(&z, &codes, &sem)?;
    let agree = jf
        .eq_tensor(&jg)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    let mut rec = serde_json::json!({"impl": "tch", "bench": "sghc", "round": round, "n": n,
        "k_sem": ks, "m": m, "d": d, "agree_fused_gather": agree});
    rec["sghc_fused_ms"] = time_ms(dev, iters, warmup, || {
        let _ = search_fused(&z, &codes, &sem).unwrap();
    })
    .into();
    rec["sghc_gather_ms"] = time_ms(dev, iters, warmup, || {
        let _ = search_gather(&z, &codes, &sem).unwrap();
    })
    .into();
    Ok(rec)
}
