//! PatchGAN + GAN losses vs a plain PyTorch re-implementation of taming's NLayerDiscriminator
//! (scripts/fixtures/discriminator.py; ndf 8 to keep the fixture small).

use crate::teach_util::{assert_close, fixture, get, load_fixture, rtol};
use semhitok_nn::discriminator::{adaptive_weight, GanLoss, LeCam, PatchGanConfig};
use semhitok_nn::test_device;
use semhitok_nn::weights::{load_strict, LoadOptions};
use tch::nn::VarStore;
use tch::{Kind, Tensor};

fn small() -> PatchGanConfig {
    PatchGanConfig {
        ndf: 8,
        ..PatchGanConfig::taming()
    }
}

fn patchgan_matches_torch(dev: tch::Device) -> anyhow::Result<()> {
    let fx = load_fixture("discriminator.safetensors", dev)?;
    let dir = tempfile::tempdir()?;
    let weights: Vec<(String, Tensor)> = fx
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("disc.")
                .map(|k| (k.to_string(), v.to_device(tch::Device::Cpu)))
        })
        .collect();
    let path = dir.path().join("d.safetensors");
    Tensor::write_safetensors(&weights, &path)?;
    let mut vs = VarStore::new(dev);
    let d = small().init(vs.root())?;
    load_strict(&mut vs, &path, &LoadOptions::default())?; // names main.N.* incl. num_batches_tracked
    let x = get(&fx, "input")?;
    assert_eq!(d.out_size(32, 40), Some((2, 3)));
    let y = tch::no_grad(|| d.forward_t(x, false))?;
    assert_close(
        "eval output",
        &y,
        get(&fx, "out_eval")?,
        rtol(dev, 1e-5),
        1e-6,
    )?;
    let y = tch::no_grad(|| d.forward_t(x, true))?;
    assert_close(
        "train output",
        &y,
        get(&fx, "out_train")?,
        rtol(dev, 1e-5),
        1e-6,
    )?;
    let vars = vs.variables();
    for (k, v) in fx.iter().filter(|(k, _)| k.starts_with("after.")) {
        let name = k.trim_start_matches("after.");
        let got = vars
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("no variable {name}"))?;
        assert_close(
            &format!("{name} after one train step"),
            got,
            v,
            rtol(dev, 1e-5),
            1e-7,
        )?;
    }
    // Bad input names the expected shape.
    let e = d
        .forward_t(&Tensor::zeros([1, 3, 16, 64], (Kind::Float, dev)), false)
        .unwrap_err();
    assert!(
        e.to_string().contains("[B, 3, H, W]") && e.to_string().contains(">= 24"),
        "{e}"
    );
    Ok(())
}
test_device!(
    patchgan_matches_torch,
    patchgan_matches_torch_cpu,
    patchgan_matches_torch_cuda
);

fn gan_losses_match_torch(dev: tch::Device) -> anyhow::Result<()> {
    let fx = load_fixture("discriminator.safetensors", dev)?;
    let (real, fake) = (get(&fx, "real")?, get(&fx, "fake")?);
    let mut lecam = LeCam::new(0.999);
    assert_eq!(lecam.loss(real, fake)?.double_value(&[]), 0.0);
    lecam.ema_real = Some(0.3);
    lecam.ema_fake = Some(-0.2);
    let got = Tensor::stack(
        &[
            GanLoss::Hinge.d_loss(real, fake)?,
            GanLoss::NonSaturating.d_loss(real, fake)?,
            GanLoss::Hinge.g_loss(fake)?,
            GanLoss::NonSaturating.g_loss(fake)?,
            lecam.loss(real, fake)?,
        ],
        0,
    );
    assert_close(
        "hinge d, ns d, hinge g, ns g, lecam",
        &got,
        get(&fx, "losses")?,
        1e-6,
        1e-7,
    )?;
    // EMA update: e <- d e + (1 - d) mean.
    lecam.update(real, fake)?;
    let mr = real.mean(Kind::Float).double_value(&[]);
    assert!((lecam.ema_real.unwrap() - (0.999 * 0.3 + 0.001 * mr)).abs() < 1e-12);

    // Adaptive weight on the toy decoder, against torch.autograd.
    let w = get(&fx, "toy.w")?.set_requires_grad(true);
    let y = get(&fx, "toy.h")?.matmul(&w.tr());
    let nll = (&y - get(&fx, "toy.target")?).abs().mean(Kind::Float);
    let g = -y.sin().mean(Kind::Float);
    let a = adaptive_weight(&nll, &g, &w)?;
    assert_close(
        "adaptive weight",
        &a.reshape([1]),
        get(&fx, "adaptive")?,
        1e-5,
        0.0,
    )?;
    assert!(!a.requires_grad());
    // The graphs survive: the caller can still backpropagate the total loss.
    (nll + a * g).backward();
    assert!(w.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0);
    Ok(())
}
test_device!(
    gan_losses_match_torch,
    gan_losses_match_torch_cpu,
    gan_losses_match_torch_cuda
);

#[test]
fn patchgan_taming_size_and_serde_names() -> anyhow::Result<()> {
    let vs = VarStore::new(tch::Device::Cpu);
    let _d = PatchGanConfig::taming().init(vs.root())?;
    let n: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    assert_eq!(
        n, 2_765_633,
        "taming NLayerDiscriminator(ndf=64, n_layers=3) parameter count"
    );
    let keys: Vec<String> = vs.variables().into_keys().collect();
    assert!(
        keys.contains(&"main.11.bias".to_string())
            && keys.contains(&"main.9.running_var".to_string())
    );
    let l: GanLoss = serde_json::from_str("\"vanilla\"")?;
    assert_eq!(l, GanLoss::NonSaturating);
    let _ = fixture("discriminator.safetensors");
    Ok(())
}
