//! SPC: golden forward / backward / EMA step vs a plain PyTorch reference
//! (scripts/fixtures/quantizers.py), cross-check vs semhitok-quant, k-means init, bad input.

use crate::teach_util::{assert_close, fixture, get, load_fixture};
use ndarray::{Array2, ArrayView2};
use semhitok_nn::quantizer::EmaSettings;
use semhitok_nn::spc::{Spc, SpcConfig};
use semhitok_nn::test_device;
use semhitok_nn::vit::VitConfig;
use semhitok_nn::weights::{load_strict, LoadOptions};
use semhitok_nn::Error;
use semhitok_quant::{CodeStats as QStats, EmaConfig, EmaState, Metric, PackedCodebook};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// The fixture's tiny SPC.
pub fn fixture_cfg() -> SpcConfig {
    SpcConfig {
        teacher_dim: 12,
        num_tokens: 6,
        head_hidden: 12,
        code_dim: 4,
        codebook_size: 16,
        decoder: VitConfig::custom(8, 1, 2),
        ema: EmaSettings::vqkd(),
        commit_beta: 1.0,
        kmeans_init: false,
        kmeans_vectors: 16,
        kmeans_iters: 10,
        kmeans_seed: 0,
    }
}

fn fixture_spc(dev: Device) -> anyhow::Result<(VarStore, Spc)> {
    let mut vs = VarStore::new(dev);
    let spc = fixture_cfg().init(&vs.root())?;
    let opts = LoadOptions {
        strip_prefix: Some("spc.w."),
        allow_unexpected: true,
    };
    load_strict(&mut vs, &fixture("quantizers.safetensors"), &opts)?;
    Ok((vs, spc))
}

pub fn to_array2(t: &Tensor) -> anyhow::Result<Array2<f32>> {
    let (r, c) = t.size2()?;
    let v = Vec::<f32>::try_from(
        &t.detach()
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .view([-1]),
    )?;
    Ok(Array2::from_shape_vec((r as usize, c as usize), v)?)
}

pub fn to_ids(t: &Tensor) -> anyhow::Result<Vec<u32>> {
    let v = Vec::<i64>::try_from(&t.to_device(Device::Cpu).reshape([-1]))?;
    Ok(v.into_iter().map(|x| x as u32).collect())
}

fn spc_forward_matches_torch(dev: Device) -> anyhow::Result<()> {
    let fx = load_fixture("quantizers.safetensors", dev)?;
    let (vs, spc) = fixture_spc(dev)?;
    let feats = get(&fx, "spc.in.feats")?;
    let out = spc.forward_t(feats, true)?;
    assert_eq!(out.ids.kind(), Kind::Int64);
    assert!(
        out.ids.equal(get(&fx, "spc.out.ids")?),
        "semantic ids differ"
    );
    assert_close("z", &out.z, get(&fx, "spc.out.z")?, 1e-5, 1e-6)?;
    assert_close(
        "quantized",
        &out.quantized,
        get(&fx, "spc.out.quantized")?,
        1e-5,
        1e-6,
    )?;
    assert_close("recon", &out.recon, get(&fx, "spc.out.recon")?, 1e-5, 1e-5)?;
    assert_close(
        "loss_cos",
        &out.loss_cos,
        get(&fx, "spc.out.loss_cos")?,
        1e-5,
        1e-7,
    )?;
    assert_close(
        "loss_commit",
        &out.loss_commit,
        get(&fx, "spc.out.loss_commit")?,
        1e-5,
        1e-7,
    )?;
    out.loss.backward();
    let g = vs.variables()["encode_task_layer.0.weight"].grad();
    assert_close(
        "grad encode_task_layer.0.weight",
        &g,
        get(&fx, "spc.out.grad_w0")?,
        1e-4,
        1e-6,
    )?;
    let stats = out.stats.as_ref().expect("training returns stats");
    assert_close(
        "counts",
        &stats.counts,
        get(&fx, "spc.out.counts")?,
        0.0,
        0.0,
    )?;
    assert_close("sums", &stats.sums, get(&fx, "spc.out.sums")?, 1e-6, 1e-6)?;
    spc.ema_update(stats)?;
    let (cs, ea) = spc.ema_buffers()?;
    assert_close(
        "EMA cluster_size",
        &cs,
        get(&fx, "spc.ema.cluster_size")?,
        1e-6,
        1e-6,
    )?;
    assert_close(
        "EMA embed_avg",
        &ea,
        get(&fx, "spc.ema.embed_avg")?,
        1e-6,
        1e-6,
    )?;
    assert_close(
        "EMA codebook",
        spc.codebook(),
        get(&fx, "spc.ema.codebook")?,
        1e-5,
        1e-6,
    )?;
    // The EMA codebook is a buffer, never a trainable variable.
    assert!(!spc.codebook().requires_grad());
    Ok(())
}
test_device!(
    spc_forward_matches_torch,
    spc_forward_matches_torch_cpu,
    spc_forward_matches_torch_cuda
);

/// The same quantizer results from semhitok-quant on the CPU: nearest code (cosine) and the EMA step.
#[test]
fn spc_matches_semhitok_quant() -> anyhow::Result<()> {
    let fx = load_fixture("quantizers.safetensors", Device::Cpu)?;
    let (_vs, spc) = fixture_spc(Device::Cpu)?;
    let codebook0 = to_array2(spc.codebook())?;
    let (cs0, ea0) = spc.ema_buffers()?;
    let out = spc.forward_t(get(&fx, "spc.in.feats")?, true)?;
    let z = to_array2(&out.z.reshape([-1, 4]))?;
    let packed = PackedCodebook::new(codebook0.view(), Metric::Cosine)?;
    let found = packed.nearest(z.view())?;
    assert_eq!(found.ids, to_ids(&out.ids)?);

    let mut state = EmaState {
        cluster_size: Vec::<f32>::try_from(&cs0.copy())?,
        embed_avg: to_array2(&ea0.copy())?,
    };
    let qstats = QStats::from_batch(16, z.view(), &found.ids)?;
    let mut cb = codebook0.clone();
    state.update(&EmaConfig::vqkd(), &qstats, cb.view_mut())?;
    let stats = out.stats.as_ref().expect("stats");
    let counts: Vec<f32> = Vec::<f32>::try_from(&stats.counts)?;
    assert_eq!(
        counts,
        qstats.counts.iter().map(|&c| c as f32).collect::<Vec<_>>()
    );
    spc.ema_update(stats)?;
    let ours = to_array2(spc.codebook())?;
    let gap = (&ours - &cb).mapv(f32::abs).fold(0f32, |a, &b| a.max(b));
    anyhow::ensure!(gap < 1e-5, "EMA codebook vs semhitok-quant: max gap {gap}");
    Ok(())
}

#[test]
fn kmeans_init_after_enough_vectors() -> anyhow::Result<()> {
    tch::manual_seed(3);
    let cfg = SpcConfig {
        kmeans_init: true,
        kmeans_vectors: 20,
        ..fixture_cfg()
    };
    let vs = VarStore::new(Device::Cpu);
    let spc = cfg.init(&vs.root())?;
    assert!(!spc.initialized());
    let f1 = Tensor::randn([2, 6, 12], (Kind::Float, Device::Cpu));
    let f2 = Tensor::randn([2, 6, 12], (Kind::Float, Device::Cpu));
    let before = spc.codebook().copy();
    let o1 = spc.forward_t(&f1, true)?;
    assert!(!spc.initialized(), "12 < 20 vectors: not yet");
    assert!(spc.codebook().equal(&before));
    spc.ema_update(o1.stats.as_ref().unwrap())?; // no-op before init
    assert!(spc.codebook().equal(&before));
    let o2 = spc.forward_t(&f2, true)?;
    assert!(spc.initialized());
    let all = Tensor::cat(&[o1.z.reshape([-1, 4]), o2.z.reshape([-1, 4])], 0);
    let data = to_array2(&all)?;
    let want = semhitok_quant::spherical_kmeans(
        data.view(),
        &semhitok_quant::KMeansConfig {
            k: 16,
            iters: 10,
            seed: 0,
        },
    )?;
    let got = to_array2(spc.codebook())?;
    let gap = (&got - &want).mapv(f32::abs).fold(0f32, |a, &b| a.max(b));
    anyhow::ensure!(gap < 1e-6, "k-means codebook differs by {gap}");
    let (cs, ea) = spc.ema_buffers()?;
    assert_eq!(cs.abs().sum(Kind::Float).double_value(&[]), 0.0);
    assert!(ea.equal(spc.codebook()));
    // Inference never collects.
    let cfg2 = SpcConfig {
        kmeans_init: true,
        kmeans_vectors: 16,
        ..fixture_cfg()
    };
    let vs2 = VarStore::new(Device::Cpu);
    let spc2 = cfg2.init(&vs2.root())?;
    spc2.forward_t(
        &Tensor::randn([4, 6, 12], (Kind::Float, Device::Cpu)),
        false,
    )?;
    assert!(!spc2.initialized());
    // Too few vectors for an explicit init is an error naming the shape.
    let err = spc2
        .init_codebook_kmeans(&Tensor::randn([8, 4], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    assert!(err.to_string().contains("[M >= 16, 4]"), "{err}");
    let _ = ArrayView2::<f32>::from_shape((0, 0), &[]);
    Ok(())
}

#[test]
fn spc_bad_input() -> anyhow::Result<()> {
    let (_vs, spc) = fixture_spc(Device::Cpu)?;
    let err = spc
        .forward_t(
            &Tensor::zeros([2, 5, 12], (Kind::Float, Device::Cpu)),
            false,
        )
        .unwrap_err();
    assert!(err.to_string().contains("[B, 6, 12]"), "{err}");
    let f = Tensor::randn([1, 6, 12], (Kind::Float, Device::Cpu));
    let _ = f.get(0).get(2).get(3).fill_(f64::NAN);
    let err = spc.forward_t(&f, true).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    let err = spc.lookup(&Tensor::from_slice(&[0i64, 16])).unwrap_err();
    assert!(
        matches!(
            err,
            Error::OutOfRange {
                value: 16,
                bound: 16,
                ..
            }
        ),
        "{err}"
    );
    let mut bad = fixture_cfg();
    bad.kmeans_init = true;
    bad.kmeans_vectors = 3;
    assert!(matches!(bad.validate(), Err(Error::Config(_))));
    Ok(())
}

/// Stage 1 learns: a few Adam steps on fixed teacher features lower the cosine loss; at lr 1e-10 it stays.
#[test]
fn spc_training_lowers_loss() -> anyhow::Result<()> {
    use tch::nn::OptimizerConfig;
    for (lr, must_drop) in [(3e-3, true), (1e-10, false)] {
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let spc = fixture_cfg().init(&vs.root())?;
        let feats = Tensor::randn([4, 6, 12], (Kind::Float, Device::Cpu));
        let mut opt = tch::nn::Adam::default().build(&vs, lr)?;
        let first = spc.forward_t(&feats, true)?.loss_cos.double_value(&[]);
        let mut last = first;
        for _ in 0..60 {
            let out = spc.forward_t(&feats, true)?;
            opt.backward_step(&out.loss);
            if must_drop {
                spc.ema_update(out.stats.as_ref().unwrap())?;
            }
            last = out.loss_cos.double_value(&[]);
        }
        if must_drop {
            anyhow::ensure!(last < 0.7 * first, "loss {first} -> {last} did not drop");
        } else {
            anyhow::ensure!(
                (last - first).abs() < 1e-6,
                "lr 1e-10 moved the loss: {first} -> {last}"
            );
        }
    }
    Ok(())
}
