//! SGHC: golden forward / gradients / EMA step vs a plain PyTorch reference
//! (scripts/fixtures/quantizers.py), cross-check vs semhitok-quant's `sghc_nearest`, bad input.

use crate::spc::{to_array2, to_ids};
use crate::teach_util::{assert_close, get, load_fixture};
use ndarray::Array3;
use semhitok_nn::quantizer::EmaSettings;
use semhitok_nn::sghc::{CodebookUpdate, Sghc, SghcConfig};
use semhitok_nn::test_device;
use semhitok_nn::Error;
use semhitok_quant::{sghc_nearest, Metric};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn cfg(l2: bool, ema: bool) -> SghcConfig {
    SghcConfig {
        k_sem: 5,
        m: 3,
        dim: 4,
        beta: 0.25,
        l2_norm: l2,
        update: if ema {
            CodebookUpdate::Ema(EmaSettings::vqkd())
        } else {
            CodebookUpdate::Loss
        },
    }
}

fn set(vs: &VarStore, name: &str, t: &Tensor) {
    let v = vs.variables()[name].shallow_clone();
    tch::no_grad(|| v.shallow_clone().copy_(t));
}

fn sghc_matches_torch(dev: Device) -> anyhow::Result<()> {
    let fx = load_fixture("quantizers.safetensors", dev)?;
    let sem = get(&fx, "sghc.sem_ids")?;
    let w = get(&fx, "sghc.w")?;
    for (case, l2, ema) in [
        ("l2", true, false),
        ("raw", false, false),
        ("ema", true, true),
    ] {
        let p = |k: &str| format!("sghc.{case}.{k}");
        let vs = VarStore::new(dev);
        let q: Sghc = cfg(l2, ema).init(&vs.root())?;
        set(&vs, "embedding", get(&fx, &p("embedding"))?);
        if ema {
            set(&vs, "cluster_size", get(&fx, &p("cluster_size"))?);
            set(&vs, "embed_avg", get(&fx, &p("embed_avg"))?);
        }
        let z = get(&fx, &p("z"))?.copy().set_requires_grad(true);
        let out = q.forward_t(&z, sem, true)?;
        assert!(
            out.sub_ids.equal(get(&fx, &p("sub_ids"))?),
            "{case}: sub ids differ"
        );
        assert!(
            out.unified.equal(get(&fx, &p("unified"))?),
            "{case}: unified ids differ"
        );
        assert_close(
            &p("quantized"),
            &out.quantized,
            get(&fx, &p("quantized"))?,
            1e-5,
            1e-6,
        )?;
        assert_close(
            &p("loss_codebook"),
            &out.loss_codebook,
            get(&fx, &p("loss_codebook"))?,
            1e-5,
            1e-7,
        )?;
        assert_close(
            &p("loss_commit"),
            &out.loss_commit,
            get(&fx, &p("loss_commit"))?,
            1e-5,
            1e-7,
        )?;
        let total = &out.loss_codebook + &out.loss_commit + (&out.quantized * w).sum(Kind::Float);
        total.backward();
        assert_close(&p("grad_z"), &z.grad(), get(&fx, &p("grad_z"))?, 1e-5, 1e-6)?;
        if ema {
            assert!(!q.codebook().requires_grad());
            let stats = out.stats.as_ref().expect("EMA stats");
            assert_close(
                &p("counts"),
                &stats.counts,
                get(&fx, &p("counts"))?,
                0.0,
                0.0,
            )?;
            assert_close(&p("sums"), &stats.sums, get(&fx, &p("sums"))?, 1e-6, 1e-6)?;
            q.ema_update(stats)?;
            let vars = vs.variables();
            assert_close(
                &p("ema cluster_size"),
                &vars["cluster_size"],
                get(&fx, &p("ema_cluster_size"))?,
                1e-6,
                1e-6,
            )?;
            assert_close(
                &p("ema embed_avg"),
                &vars["embed_avg"],
                get(&fx, &p("ema_embed_avg"))?,
                1e-6,
                1e-6,
            )?;
            assert_close(
                &p("ema codebook"),
                q.codebook(),
                get(&fx, &p("ema_codebook"))?,
                1e-5,
                1e-6,
            )?;
        } else {
            assert!(out.stats.is_none());
            assert_close(
                &p("grad_codebook"),
                &q.codebook().grad(),
                get(&fx, &p("grad_codebook"))?,
                1e-5,
                1e-6,
            )?;
            assert!(q
                .ema_update(&semhitok_nn::quantizer::CodeStats {
                    counts: Tensor::zeros([15], (Kind::Float, dev)),
                    sums: Tensor::zeros([15, 4], (Kind::Float, dev)),
                })
                .is_err());
        }
    }
    Ok(())
}
test_device!(
    sghc_matches_torch,
    sghc_matches_torch_cpu,
    sghc_matches_torch_cuda
);

/// Same ids as semhitok-quant's hierarchical search on a larger random case (paper's m = 12),
/// and with one semantic code (K_sem = 1: the flat-codebook path of the pixel-only VQ).
fn sghc_matches_semhitok_quant(dev: Device) -> anyhow::Result<()> {
    tch::manual_seed(7);
    for (k, m, l2) in [
        (64, 12, true),
        (64, 12, false),
        (1, 300, true),
        (1, 300, false),
    ] {
        let c = SghcConfig {
            k_sem: k,
            m,
            dim: 8,
            ..cfg(l2, false)
        };
        let vs = VarStore::new(dev);
        let q = c.init(&vs.root())?;
        set(
            &vs,
            "embedding",
            &Tensor::randn([k, m, 8], (Kind::Float, dev)),
        );
        let z = Tensor::randn([3, 100, 8], (Kind::Float, dev));
        let sem = Tensor::randint(k, [3, 100], (Kind::Int64, dev));
        let out = q.forward_t(&z, &sem, false)?;
        let cb = q.codebook().to_device(Device::Cpu);
        let v = Vec::<f32>::try_from(&cb.contiguous().view([-1]))?;
        let pix = Array3::from_shape_vec((k as usize, m as usize, 8), v)?;
        let zz = to_array2(&z.reshape([-1, 8]))?;
        // Cosine = argmin of the l2 distance between normalized vectors.
        let metric = if l2 {
            Metric::Cosine
        } else {
            Metric::SquaredL2
        };
        let r = sghc_nearest(zz.view(), &to_ids(&sem)?, pix.view(), metric)?;
        assert_eq!(to_ids(&out.sub_ids)?, r.sub_ids, "K {k}, m {m}, l2 = {l2}");
        assert_eq!(to_ids(&out.unified)?, r.unified, "K {k}, m {m}, l2 = {l2}");
        // Lookup of unified ids gives the quantized vectors back.
        let back = q.lookup_unified(&out.unified)?;
        assert_close("lookup_unified", &back, &out.quantized, 1e-6, 1e-6)?;
    }
    Ok(())
}
test_device!(
    sghc_matches_semhitok_quant,
    sghc_matches_semhitok_quant_cpu,
    sghc_matches_semhitok_quant_cuda
);

/// bf16 inputs (as under autocast) quantize like their fp32 copy: the distance math is fp32.
fn sghc_bf16_input_uses_fp32_math(dev: Device) -> anyhow::Result<()> {
    tch::manual_seed(8);
    let vs = VarStore::new(dev);
    let q = SghcConfig {
        k_sem: 16,
        m: 12,
        dim: 8,
        ..cfg(true, false)
    }
    .init(&vs.root())?;
    let z = Tensor::randn([2, 50, 8], (Kind::Float, dev)).to_kind(Kind::BFloat16);
    let sem = Tensor::randint(16, [2, 50], (Kind::Int64, dev));
    let a = tch::autocast(true, || q.forward_t(&z, &sem, false))?;
    let b = q.forward_t(&z.to_kind(Kind::Float), &sem, false)?;
    assert_eq!(a.quantized.kind(), Kind::Float);
    assert!(a.unified.equal(&b.unified));
    Ok(())
}
test_device!(
    sghc_bf16_input_uses_fp32_math,
    sghc_bf16_cpu,
    sghc_bf16_cuda
);

#[test]
fn sghc_bad_input() -> anyhow::Result<()> {
    let vs = VarStore::new(Device::Cpu);
    let q = cfg(true, false).init(&vs.root())?;
    let z = Tensor::randn([1, 4, 4], (Kind::Float, Device::Cpu));
    let err = q
        .forward_t(
            &z,
            &Tensor::from_slice(&[0i64, 1, 5, 2]).view([1, 4]),
            false,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::OutOfRange {
                value: 5,
                bound: 5,
                ..
            }
        ),
        "{err}"
    );
    let err = q
        .forward_t(
            &z,
            &Tensor::zeros([1, 3], (Kind::Int64, Device::Cpu)),
            false,
        )
        .unwrap_err();
    assert!(err.to_string().contains("[1, 4]"), "{err}");
    let err = q
        .forward_t(
            &Tensor::randn([1, 4, 3], (Kind::Float, Device::Cpu)),
            &Tensor::zeros([1, 4], (Kind::Int64, Device::Cpu)),
            false,
        )
        .unwrap_err();
    assert!(err.to_string().contains("[B, N, 4]"), "{err}");
    let zn = z.copy();
    let _ = zn.get(0).get(1).fill_(f64::INFINITY);
    let err = q
        .forward_t(
            &zn,
            &Tensor::zeros([1, 4], (Kind::Int64, Device::Cpu)),
            false,
        )
        .unwrap_err();
    assert!(matches!(err, Error::NonFinite { count: 4, .. }), "{err}");
    let err = q.lookup_unified(&Tensor::from_slice(&[15i64])).unwrap_err();
    assert!(
        matches!(
            err,
            Error::OutOfRange {
                value: 15,
                bound: 15,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(SghcConfig::paper().vocab_size(), 196_608);
    Ok(())
}
