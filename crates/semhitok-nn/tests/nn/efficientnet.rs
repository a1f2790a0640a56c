//! EfficientNet-Lite0 with the real ImageNet weights vs timm 1.0.31 `efficientnet_lite0` on the skimage
//! chelsea photo (scripts/fixtures/efficientnet.py): stride-8 / stride-16 features and logits.

use crate::teach_util::{assert_close, asset, get, load_fixture, rtol};
use semhitok_nn::efficientnet::{EffNetFeatures, EfficientNetTeacher, EFFICIENTNET_LITE0_ASSET};
use semhitok_nn::teacher::Teacher;
use semhitok_nn::{test_device, Error};
use tch::Tensor;

fn efficientnet_matches_timm(dev: tch::Device) -> anyhow::Result<()> {
    let w = asset(EFFICIENTNET_LITE0_ASSET)?;
    let fx = load_fixture("efficientnet.safetensors", dev)?;
    let image = get(&fx, "image")?; // [1, 3, 160, 224]
    let t16 = EfficientNetTeacher::load(&w, dev, EffNetFeatures::Stride16)?;
    let t8 = EfficientNetTeacher::load(&w, dev, EffNetFeatures::Stride8)?;
    assert_close(
        "stride16",
        &t16.feature_map(image)?,
        get(&fx, "stride16")?,
        rtol(dev, 1e-5),
        1e-6,
    )?;
    assert_close(
        "stride8",
        &t8.feature_map(image)?,
        get(&fx, "stride8")?,
        rtol(dev, 1e-5),
        1e-6,
    )?;
    let logits = t16.logits(image)?;
    assert_close(
        "logits",
        &logits,
        get(&fx, "logits")?,
        rtol(dev, 1e-5),
        1e-6,
    )?;
    // The real weights see the cat: ImageNet class 285 (Egyptian cat), as timm.
    assert_eq!(logits.argmax(-1, false).int64_value(&[0]), 285);
    // Teacher tokens: row-major [B, gh * gw, C].
    assert_eq!((t16.dim(), t16.grid(160, 224)), (112, (10, 14)));
    assert_eq!((t8.dim(), t8.grid(160, 224)), (40, (20, 28)));
    let tok = t16.features(image)?;
    assert_eq!(tok.size(), vec![1, 140, 112]);
    let map = get(&fx, "stride16")?;
    assert_close(
        "token (row 3, col 5)",
        &tok.get(0).get(3 * 14 + 5),
        &map.get(0).select(1, 3).select(1, 5),
        rtol(dev, 1e-5),
        1e-6,
    )?;
    assert_eq!(
        t16.grid(255, 17),
        (16, 2),
        "odd sizes round up at each stride-2 conv"
    );
    Ok(())
}
test_device!(
    efficientnet_matches_timm,
    efficientnet_matches_timm_cpu,
    efficientnet_matches_timm_cuda
);

#[test]
fn efficientnet_rejects_bad_images_and_checkpoints() -> anyhow::Result<()> {
    let w = asset(EFFICIENTNET_LITE0_ASSET)?;
    let t = EfficientNetTeacher::load(&w, tch::Device::Cpu, EffNetFeatures::Stride16)?;
    let e = t
        .features(&Tensor::zeros(
            [2, 4, 32, 32],
            (tch::Kind::Float, tch::Device::Cpu),
        ))
        .unwrap_err();
    assert!(e.to_string().contains("expected shape [B, 3, H, W]"), "{e}");
    let e = t
        .features(&Tensor::zeros(
            [3, 32, 32],
            (tch::Kind::Float, tch::Device::Cpu),
        ))
        .unwrap_err();
    assert!(e.to_string().contains("[3, 32, 32]"), "{e}");
    // A checkpoint without the classifier bias and with a mis-shaped stem.
    let dir = tempfile::tempdir()?;
    let edited: Vec<(String, Tensor)> = Tensor::read_safetensors(&w)?
        .into_iter()
        .filter(|(k, _)| k != "_fc.bias")
        .map(|(k, t)| {
            if k == "_conv_stem.weight" {
                (k, t.narrow(0, 0, 16))
            } else {
                (k, t)
            }
        })
        .collect();
    let bad = dir.path().join("bad.safetensors");
    Tensor::write_safetensors(&edited, &bad)?;
    match EfficientNetTeacher::load(&bad, tch::Device::Cpu, EffNetFeatures::Stride16) {
        Err(Error::Checkpoint {
            missing,
            mismatched,
            unexpected,
            ..
        }) => {
            assert_eq!(missing, vec!["_fc.bias".to_string()]);
            assert!(unexpected.is_empty());
            assert_eq!(
                mismatched,
                vec![
                    "_conv_stem.weight: checkpoint [16, 3, 3, 3] vs model [32, 3, 3, 3]"
                        .to_string()
                ]
            );
        }
        other => anyhow::bail!("expected a checkpoint error, got {other:?}"),
    }
    Ok(())
}

/// The folded inference form (batch norms folded into the convolutions, NCHW or channels-last)
/// gives the unfolded network's block outputs and input gradients up to rounding.
fn folded_matches_unfolded(dev: tch::Device) -> anyhow::Result<()> {
    let fx = load_fixture("efficientnet.safetensors", dev)?;
    let image = get(&fx, "image")?; // [1, 3, 160, 224]
    let t = EfficientNetTeacher::load(
        &asset(EFFICIENTNET_LITE0_ASSET)?,
        dev,
        EffNetFeatures::Stride16,
    )?;
    let net = t.net();
    // A batch of 2 with a different second image, so channels-last strides are not trivial.
    let z = Tensor::cat(&[image.shallow_clone(), image.flip([3]) * 0.5], 0);
    // Block outputs and the gradient of a fixed linear functional of them w.r.t. the input.
    let probe = |f: &dyn Fn(&Tensor) -> semhitok_nn::Result<Vec<Tensor>>| -> anyhow::Result<(Vec<Tensor>, Tensor)> {
        let x = z.detach().set_requires_grad(true);
        let outs = f(&x)?;
        let loss = outs
            .iter()
            .map(|o| {
                let r = (Tensor::arange(o.numel() as i64, (tch::Kind::Float, dev)) * 0.37)
                    .sin()
                    .view(o.size().as_slice());
                (o * r).sum(tch::Kind::Float)
            })
            .fold(Tensor::zeros([], (tch::Kind::Float, dev)), |a, b| a + b);
        loss.backward();
        Ok((outs.iter().map(|o| o.detach()).collect(), x.grad()))
    };
    // Gradients pass ReLU6 masks: a pre-activation within rounding of 0 or 6 flips its mask, and a
    // flip deep in the network changes the input gradient over its whole receptive field. So the
    // gradient is compared tightly through the stem and first block (few activations, no flips
    // here; on CUDA, TF32 convolutions: `rtol`) and in relative L2 norm through all 16 blocks
    // (measured: ~2e-3 on the CPU from a few flips; 4.8e-2 on an H200, where TF32 convolutions
    // leave ~1.5e-3 relative error in every block output and so flip many more masks).
    let all: Vec<usize> = (0..net.num_blocks()).collect();
    let deep_tol = if dev.is_cuda() { 1e-1 } else { 1e-2 };
    for (taps, grad_tol) in [(&all[..1], rtol(dev, 1e-5)), (&all[..], deep_tol)] {
        let (want, want_grad) = probe(&|x| net.block_outputs(x, taps))?;
        for channels_last in [false, true] {
            let folded = net.fold(channels_last)?;
            let (got, got_grad) = probe(&|x| folded.block_outputs(x, taps))?;
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                let what = format!("block {i} (channels_last {channels_last})");
                assert_close(&what, g, w, rtol(dev, 1e-4), 1e-4)?;
            }
            let rel = (&got_grad - &want_grad).norm().double_value(&[])
                / want_grad.norm().double_value(&[]);
            eprintln!(
                "input gradient, {} blocks (channels_last {channels_last}): relative L2 error {rel:.2e}",
                taps.len()
            );
            anyhow::ensure!(rel < grad_tol, "input gradient through {} blocks (channels_last {channels_last}): relative L2 error {rel:e} >= {grad_tol:e}", taps.len());
        }
    }
    Ok(())
}
test_device!(
    folded_matches_unfolded,
    folded_matches_unfolded_cpu,
    folded_matches_unfolded_cuda
);
