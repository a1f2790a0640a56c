//! SigLIP vision tower vs HF transformers 5.24 `SiglipVisionModel` (scripts/fixtures/siglip.py): a tiny
//! random config, last and penultimate hidden states and the pooled output, on a square batch of 3 at
//! the configured 32 px and on a non-square batch of 2 at 40 x 24 (HF `interpolate_pos_encoding=True`).

use crate::teach_util::{assert_close, fixture, get, load_fixture, rtol};
use semhitok_nn::siglip::{load_siglip_weights, SiglipLayer, SiglipTeacher, SiglipVisionConfig};
use semhitok_nn::teacher::Teacher;
use semhitok_nn::{test_device, Error};
use tch::nn::VarStore;
use tch::Tensor;

fn tiny_config() -> anyhow::Result<SiglipVisionConfig> {
    Ok(SiglipVisionConfig::from_json_file(&fixture(
        "siglip_config.json",
    ))?)
}

fn siglip_matches_hf(dev: tch::Device) -> anyhow::Result<()> {
    let cfg = tiny_config()?;
    assert_eq!(
        (cfg.hidden_size, cfg.num_hidden_layers, cfg.patch_size),
        (32, 3, 8)
    );
    let mut vs = VarStore::new(dev);
    let mut model = cfg.init(vs.root())?;
    // The fixture is a full checkpoint: `vision_model.` prefix plus a text-tower tensor to ignore.
    load_siglip_weights(&mut vs, &fixture("siglip.safetensors"))?;
    let fx = load_fixture("siglip.safetensors", dev)?;
    // Separate q/k/v projections as HF, then the stacked one-GEMM form the frozen teacher uses.
    for (fused, key) in [
        (false, "square"),
        (false, "nonsquare"),
        (true, "square"),
        (true, "nonsquare"),
    ] {
        if fused && key == "square" {
            model.fuse_qkv()?;
        }
        let case = format!("{key}{}", if fused { " (fused qkv)" } else { "" });
        let x = get(&fx, &format!("golden.{key}.input"))?;
        let out = tch::no_grad(|| model.forward(x))?;
        let tol = rtol(dev, 1e-5);
        assert_close(
            &format!("{case} last"),
            &out.last_hidden_state,
            get(&fx, &format!("golden.{key}.last"))?,
            tol,
            1e-6,
        )?;
        assert_close(
            &format!("{case} penultimate"),
            &out.penultimate,
            get(&fx, &format!("golden.{key}.penultimate"))?,
            tol,
            1e-6,
        )?;
        let pooled = out
            .pooler_output
            .ok_or_else(|| anyhow::anyhow!("config has the head"))?;
        assert_close(
            &format!("{case} pooled"),
            &pooled,
            get(&fx, &format!("golden.{key}.pooled"))?,
            tol,
            1e-6,
        )?;
        // The single-output path computes the same thing.
        let pen = tch::no_grad(|| model.hidden_state(x, SiglipLayer::Penultimate))?;
        assert_close(
            &format!("{case} hidden_state(penultimate)"),
            &pen,
            &out.penultimate,
            0.0,
            0.0,
        )?;
    }
    Ok(())
}
test_device!(
    siglip_matches_hf,
    siglip_matches_hf_cpu,
    siglip_matches_hf_cuda
);

fn siglip_teacher_tokens(dev: tch::Device) -> anyhow::Result<()> {
    let cfg = tiny_config()?;
    let t = SiglipTeacher::load(
        &cfg,
        &fixture("siglip.safetensors"),
        dev,
        SiglipLayer::Last,
        None,
    )?;
    let fx = load_fixture("siglip.safetensors", dev)?;
    let x = get(&fx, "golden.nonsquare.input")?;
    let f = t.features(x)?;
    assert_eq!(t.grid(40, 24), (5, 3));
    assert_eq!(f.size(), vec![2, 15, t.dim()]);
    assert!(!f.requires_grad(), "teacher output must be frozen");
    assert_close(
        "teacher last",
        &f,
        get(&fx, "golden.nonsquare.last")?,
        rtol(dev, 1e-5),
        1e-6,
    )?;
    let dyn_t: Box<dyn Teacher> = Box::new(t);
    assert_eq!(dyn_t.name(), "siglip");
    // Wrong channel count / non-multiple of the patch: errors naming the expected shape.
    let bad = Tensor::zeros([1, 1, 32, 32], (tch::Kind::Float, dev));
    let e = dyn_t.features(&bad).unwrap_err().to_string();
    assert!(e.contains("[B, 3, H, W]"), "{e}");
    let bad = Tensor::zeros([1, 3, 30, 32], (tch::Kind::Float, dev));
    let e = dyn_t.features(&bad).unwrap_err().to_string();
    assert!(e.contains("multiples of 8"), "{e}");
    Ok(())
}
test_device!(
    siglip_teacher_tokens,
    siglip_teacher_tokens_cpu,
    siglip_teacher_tokens_cuda
);

#[test]
fn siglip_config_presets_and_hf_json() -> anyhow::Result<()> {
    let l = SiglipVisionConfig::siglip_large_patch16_256();
    assert_eq!(
        (
            l.hidden_size,
            l.num_hidden_layers,
            l.image_size / l.patch_size
        ),
        (1024, 24, 16)
    );
    let s = SiglipVisionConfig::siglip_so400m_patch14_384();
    assert_eq!(
        (
            s.hidden_size,
            s.intermediate_size,
            s.image_size / s.patch_size
        ),
        (1152, 4304, 27)
    );
    // A full SigLIP config.json (as on the hub): only the vision_config is read, HF defaults fill the rest.
    let full = r#"{"model_type": "siglip", "text_config": {"hidden_size": 1024},
        "vision_config": {"hidden_size": 1024, "image_size": 256, "intermediate_size": 4096,
        "model_type": "siglip_vision_model", "num_attention_heads": 16, "num_hidden_layers": 24,
        "patch_size": 16}}"#;
    assert_eq!(SiglipVisionConfig::from_json_str(full)?, l);
    assert!(SiglipVisionConfig::from_json_str(r#"{"hidden_act": "relu"}"#).is_err());
    Ok(())
}

#[test]
fn siglip_loads_unprefixed_vision_checkpoint() -> anyhow::Result<()> {
    // transformers 5.x saves a SiglipVisionModel without the `vision_model.` prefix.
    let dir = tempfile::tempdir()?;
    let plain: Vec<(String, Tensor)> = Tensor::read_safetensors(fixture("siglip.safetensors"))?
        .into_iter()
        .filter_map(|(k, t)| k.strip_prefix("vision_model.").map(|k| (k.to_string(), t)))
        .collect();
    let path = dir.path().join("model.safetensors");
    Tensor::write_safetensors(&plain, &path)?;
    let t = SiglipTeacher::load(
        &tiny_config()?,
        &path,
        tch::Device::Cpu,
        SiglipLayer::Penultimate,
        None,
    )?;
    let fx = load_fixture("siglip.safetensors", tch::Device::Cpu)?;
    let f = t.features(get(&fx, "golden.square.input")?)?;
    assert_close(
        "unprefixed penultimate",
        &f,
        get(&fx, "golden.square.penultimate")?,
        1e-5,
        1e-6,
    )?;
    fn is_send<T: Send>() {}
    is_send::<SiglipTeacher>();
    is_send::<semhitok_nn::efficientnet::EfficientNetTeacher>();
    Ok(())
}

#[test]
fn siglip_strict_loading_lists_bad_keys() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let src = tch::Tensor::read_safetensors(fixture("siglip.safetensors"))?;
    // Drop one tensor and mis-shape another.
    let edited: Vec<(String, Tensor)> = src
        .into_iter()
        .filter(|(k, _)| k != "vision_model.post_layernorm.bias")
        .map(|(k, t)| {
            if k == "vision_model.encoder.layers.1.mlp.fc1.weight" {
                (
                    k,
                    Tensor::zeros([3, 3], (tch::Kind::Float, tch::Device::Cpu)),
                )
            } else {
                (k, t)
            }
        })
        .collect();
    let path = dir.path().join("bad.safetensors");
    Tensor::write_safetensors(&edited, &path)?;
    let mut vs = VarStore::new(tch::Device::Cpu);
    let _m = tiny_config()?.init(vs.root())?;
    match load_siglip_weights(&mut vs, &path) {
        Err(Error::Checkpoint {
            missing,
            mismatched,
            ..
        }) => {
            assert_eq!(missing, vec!["post_layernorm.bias".to_string()]);
            assert_eq!(mismatched.len(), 1);
            assert!(
                mismatched[0].starts_with("encoder.layers.1.mlp.fc1.weight"),
                "{mismatched:?}"
            );
        }
        other => anyhow::bail!("expected a checkpoint error, got {other:?}"),
    }
    Ok(())
}
