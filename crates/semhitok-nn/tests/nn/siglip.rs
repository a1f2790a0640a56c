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

/// The fused teacher kernel (`cuda/layernorm.cu`) compiles with the wheel's NVRTC (no GPU needed)
/// without register spills.
#[test]
fn teacher_layernorm_kernel_compiles_with_the_wheels_nvrtc() -> anyhow::Result<()> {
    crate::teach_util::assert_no_spills(
        "layernorm.cu",
        semhitok_nn::cuda::layernorm::compile(90),
        &["add_layernorm_bf16"],
    )
}

/// bf16 values one unit in the last place apart (or closer), elementwise, as a fraction.
fn within_one_ulp(a: &Tensor, b: &Tensor) -> (f64, f64) {
    let (a, b) = (a.to_kind(tch::Kind::Float), b.to_kind(tch::Kind::Float));
    let ulp = a.abs().maximum(&b.abs()).clamp_min(1e-30) * (2f64.powi(-7));
    let d = (&a - &b).abs();
    let same = d.eq(0.0).to_kind(tch::Kind::Float).mean(tch::Kind::Float);
    let near = d
        .le_tensor(&ulp)
        .to_kind(tch::Kind::Float)
        .mean(tch::Kind::Float);
    (same.double_value(&[]), near.double_value(&[]))
}

/// On CUDA: the fused residual add + layer norm against LibTorch's bf16 add, fp32 layer norm and
/// bf16 cast (the sum bit-equal; the normed values equal or one bf16 ulp apart, as the fp32
/// statistics are summed in another order), and the whole fused teacher against the unfused one
/// under bf16 autocast (as the trainer runs it).
#[test]
fn fused_teacher_steps_match_libtorch_on_cuda() -> anyhow::Result<()> {
    use semhitok_nn::cuda::layernorm;
    if !tch::Cuda::is_available() {
        eprintln!("fused_teacher_steps_match_libtorch_on_cuda: no CUDA device, skipped");
        return Ok(());
    }
    let dev = tch::Device::Cuda(0);
    tch::manual_seed(7);
    let bf = (tch::Kind::BFloat16, dev);
    for h in [1024i64, 1152, 64] {
        let x = Tensor::randn([3, 37, h], bf);
        let d = Tensor::randn([3, 37, h], bf) * 0.5;
        let g = Tensor::randn([h], (tch::Kind::Float, dev)) * 0.2 + 1.0;
        let b = Tensor::randn([h], (tch::Kind::Float, dev)) * 0.1;
        let (s, y) = tch::no_grad(|| layernorm::add_layer_norm(&x, Some(&d), &g, &b, 1e-6, true))
            .map_err(|e| anyhow::anyhow!(e.0))?
            .ok_or_else(|| anyhow::anyhow!("H = {h}: not the kernel's case"))?;
        let s_ref = &x + &d;
        let s = s.ok_or_else(|| anyhow::anyhow!("sum not kept"))?;
        assert!(
            s.equal(&s_ref),
            "H = {h}: the residual sum differs from the bf16 add"
        );
        let y_ref = s_ref
            .to_kind(tch::Kind::Float)
            .layer_norm([h], Some(&g), Some(&b), 1e-6, false)
            .to_kind(tch::Kind::BFloat16);
        let (same, near) = within_one_ulp(&y, &y_ref);
        let max = (y.to_kind(tch::Kind::Float) - y_ref.to_kind(tch::Kind::Float))
            .abs()
            .max()
            .double_value(&[]);
        eprintln!(
            "add_layer_norm H = {h}: {same:.5} bit-equal, {near:.6} within one bf16 ulp, max |diff| {max:.2e}"
        );
        // Values near zero (x close to the mean) can differ by more than one of their own ulps:
        // the fp32 statistics' last-bit difference, scaled by rstd, is absolute.
        assert!(
            near > 0.9999 && same > 0.98 && max < 2e-2,
            "H = {h}: {same} equal, {near} within one ulp, max {max}"
        );
        // Without the residual: the norm alone.
        let (none, y0) = tch::no_grad(|| layernorm::add_layer_norm(&x, None, &g, &b, 1e-6, true))
            .map_err(|e| anyhow::anyhow!(e.0))?
            .ok_or_else(|| anyhow::anyhow!("H = {h}: not the kernel's case"))?;
        assert!(none.is_none());
        let y0_ref = x
            .to_kind(tch::Kind::Float)
            .layer_norm([h], Some(&g), Some(&b), 1e-6, false)
            .to_kind(tch::Kind::BFloat16);
        let near0 = within_one_ulp(&y0, &y0_ref).1;
        assert!(
            near0 > 0.9999,
            "H = {h}: norm alone, {near0} within one ulp"
        );
    }
    // Not the kernel's case: fp32 input, a gradient, H % 8 != 0.
    let g = Tensor::ones([12], (tch::Kind::Float, dev));
    let x32 = Tensor::randn([2, 12], (tch::Kind::Float, dev));
    assert!(layernorm::add_layer_norm(&x32, None, &g, &g, 1e-6, false)
        .map_err(|e| anyhow::anyhow!(e.0))?
        .is_none());
    let g8 = Tensor::ones([16], (tch::Kind::Float, dev));
    let xg = Tensor::randn([2, 16], bf).set_requires_grad(true);
    assert!(layernorm::add_layer_norm(&xg, None, &g8, &g8, 1e-6, false)
        .map_err(|e| anyhow::anyhow!(e.0))?
        .is_none());

    // The whole teacher, bf16 weights under bf16 autocast, fused vs LibTorch's ops.
    let cfg = SiglipVisionConfig {
        hidden_size: 128,
        intermediate_size: 512,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        image_size: 64,
        patch_size: 16,
        ..SiglipVisionConfig::default()
    };
    let mut t = SiglipTeacher::random_init(&cfg, dev, SiglipLayer::Last, None)?;
    t.bf16_weights()?;
    let img = Tensor::rand([4, 3, 64, 64], (tch::Kind::Float, dev)) * 2.0 - 1.0;
    semhitok_nn::amp::set_cuda_autocast_bf16();
    let run = |on: bool| {
        layernorm::set_enabled(on);
        let r = semhitok_nn::amp::autocast(true, || t.features(&img));
        layernorm::set_enabled(true);
        r
    };
    let before = layernorm::launches();
    let fused = run(true)?;
    // 4 layers: the first norm, then two fused adds + norms per layer but the last (one); at
    // least (another test may launch it meanwhile).
    assert!(
        layernorm::launches() - before >= 8,
        "the fused tower did not run the kernel"
    );
    let plain = run(false)?;
    assert_eq!(
        fused.kind(),
        plain.kind(),
        "the post-layernorm keeps autocast's fp32 output"
    );
    let diff = (fused.to_kind(tch::Kind::Float) - plain.to_kind(tch::Kind::Float)).abs();
    let scale = plain
        .to_kind(tch::Kind::Float)
        .abs()
        .mean(tch::Kind::Float)
        .double_value(&[]);
    let max = diff.max().double_value(&[]) / scale;
    let mean = diff.mean(tch::Kind::Float).double_value(&[]) / scale;
    eprintln!("fused teacher vs LibTorch ops: max |diff| {max:.4}, mean {mean:.5} (of mean |x|)");
    assert!(
        max < 0.1 && mean < 0.01,
        "fused teacher: max {max}, mean {mean}"
    );
    // What the semantic ids see: the nearest of 512 random unit codes to each l2-normalized
    // token (as SPC quantizes), from both towers' features.
    let unit = |t: &Tensor| {
        let t = t.to_kind(tch::Kind::Float).reshape([-1, 128]);
        let n = t.norm_scalaropt_dim(2.0, [-1i64].as_slice(), true);
        t / n
    };
    let codes = unit(&Tensor::randn([512, 128], (tch::Kind::Float, dev)));
    let ids_f = semhitok_nn::quantizer::nearest_l2(&unit(&fused), &codes)?;
    let ids_p = semhitok_nn::quantizer::nearest_l2(&unit(&plain), &codes)?;
    let agree = ids_f
        .eq_tensor(&ids_p)
        .to_kind(tch::Kind::Float)
        .mean(tch::Kind::Float)
        .double_value(&[]);
    eprintln!(
        "fused teacher: {agree:.4} of {} ids unchanged",
        ids_f.numel()
    );
    assert!(
        agree >= 0.98,
        "fused teacher changes {:.2}% of the ids",
        100.0 * (1.0 - agree)
    );
    Ok(())
}
