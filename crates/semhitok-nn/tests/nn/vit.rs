//! ViT pixel encoder / decoder: golden vs timm blocks (scripts/fixtures/vit.py), shapes, bad input.

use crate::teach_util::{assert_close, fixture, get, load_fixture, rtol};
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
