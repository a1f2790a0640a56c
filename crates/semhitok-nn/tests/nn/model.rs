//! The whole SemHiTok model: shapes, encode/decode consistency, the stage-2 invariant, fusions,
//! parts (freeze / save / load / decoder swap), bad input.

use crate::teach_util::assert_close;
use semhitok_nn::fusion::Fusion;
use semhitok_nn::losses::PixelLoss;
use semhitok_nn::model::{Part, SemHiTokConfig};
use semhitok_nn::test_device;
use semhitok_nn::vit::{VitConfig, VitDecoderConfig};
use semhitok_nn::Error;
use tch::{Device, Kind, Tensor};

const S: i64 = 16;
const P: i64 = 4;
const CT: i64 = 12;
const K: i64 = 32;
const M: i64 = 4;
const G: i64 = S / P;

fn tiny(fusion: Fusion) -> SemHiTokConfig {
    let mut c = SemHiTokConfig::tiny(S, P, CT, K, M).with_fusion(fusion);
    c.spc.kmeans_init = false;
    c
}

fn inputs(b: i64, dev: Device) -> (Tensor, Tensor) {
    let images = Tensor::rand([b, 3, S, S], (Kind::Float, dev)) * 2.0 - 1.0;
    let feats = Tensor::randn([b, G * G, CT], (Kind::Float, dev));
    (images, feats)
}

fn encode_decode_shapes(dev: Device) -> anyhow::Result<()> {
    tch::manual_seed(0);
    let model = tiny(Fusion::ChannelConcat).init(dev)?;
    let (images, feats) = inputs(2, dev);
    let enc = model.encode(&images, &feats)?;
    assert_eq!(enc.semantic_ids.size(), [2, G, G]);
    assert_eq!(enc.pixel_ids.size(), [2, G, G]);
    assert_eq!(enc.unified_ids.size(), [2, G, G]);
    assert_eq!(enc.features.size(), [2, G * G, 8 + 4]);
    let expect = &enc.semantic_ids * M + &enc.pixel_ids;
    assert!(enc.unified_ids.equal(&expect), "unified = k * m + j");
    assert!(enc.pixel_ids.max().int64_value(&[]) < M);
    // The features an MLLM consumes are recoverable from the unified ids alone.
    assert_close(
        "features_of",
        &model.features_of(&enc.unified_ids)?,
        &enc.features,
        1e-6,
        1e-6,
    )?;
    // decode(encode(x)) == reconstruct(x).
    let dec = model.decode(&enc.unified_ids)?;
    assert_eq!(dec.size(), [2, 3, S, S]);
    let rec = model.reconstruct(&images, &feats)?;
    assert_close("decode vs reconstruct", &dec, &rec, 1e-5, 1e-5)?;
    Ok(())
}
test_device!(
    encode_decode_shapes,
    encode_decode_shapes_cpu,
    encode_decode_shapes_cuda
);

/// Stage 2 cannot change the semantic path: with the SPC frozen, semantic ids are bit-identical
/// with or without the pixel branch, and before and after a training step of the pixel branch.
fn stage2_invariant(dev: Device) -> anyhow::Result<()> {
    tch::manual_seed(1);
    let mut model = tiny(Fusion::ChannelConcat).init(dev)?;
    model.freeze(Part::Spc);
    assert!(model.trainable_variables(Part::Spc).is_empty());
    let spc_before: Vec<(String, Tensor)> = model
        .named_variables(Part::Spc)
        .into_iter()
        .map(|(k, t)| (k, t.copy()))
        .collect();
    let pix_before = model.named_variables(Part::Pixel)[0].1.copy();
    let (images, feats) = inputs(4, dev);
    // Without the pixel branch: the SPC alone.
    let alone = tch::no_grad(|| model.spc().quantize(&feats))?.ids;
    let params: Vec<Tensor> = [Part::Pixel, Part::Decoder]
        .iter()
        .flat_map(|&p| model.trainable_variables(p))
        .map(|(_, t)| t)
        .collect();
    assert!(!params.is_empty());
    let mut ids = vec![];
    for _ in 0..3 {
        let out = model.forward_t(&images, &feats, true)?;
        ids.push(out.semantic_ids.copy());
        let loss = PixelLoss::L2.compute(&out.recon, &images)?
            + &out.pixel.loss_codebook
            + &out.pixel.loss_commit;
        for p in &params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
        loss.backward();
        tch::no_grad(|| {
            for p in &params {
                let g = p.grad();
                if g.defined() {
                    let _ = p.shallow_clone().f_sub_(&(g * 0.5)).unwrap();
                }
            }
        });
    }
    for (i, t) in ids.iter().enumerate() {
        assert!(t.equal(&alone), "step {i}: semantic ids changed");
    }
    for ((k, t0), (_, t1)) in spc_before.iter().zip(model.named_variables(Part::Spc)) {
        assert!(t0.equal(&t1), "{k} changed in stage 2");
        assert!(!t1.grad().defined(), "{k} received a gradient");
    }
    let pix_after = &model.named_variables(Part::Pixel)[0].1;
    assert!(
        !pix_after.equal(&pix_before),
        "the pixel branch did not train"
    );
    Ok(())
}
test_device!(
    stage2_invariant,
    stage2_invariant_cpu,
    stage2_invariant_cuda
);

fn fusions(dev: Device) -> anyhow::Result<()> {
    tch::manual_seed(2);
    for (f, din, groups) in [
        (Fusion::ChannelConcat, 12, 1),
        (Fusion::PixelOnly, 4, 1),
        (Fusion::LengthConcat, 8, 2),
        (Fusion::SemanticOnly, 8, 1),
    ] {
        let cfg = tiny(f);
        assert_eq!(
            (cfg.decoder.in_dim, cfg.decoder.groups),
            (din, groups),
            "{f:?}"
        );
        let model = cfg.init(dev)?;
        let (images, feats) = inputs(2, dev);
        let out = model.forward_t(&images, &feats, true)?;
        assert_eq!(out.recon.size(), [2, 3, S, S], "{f:?}");
        let enc = model.encode(&images, &feats)?;
        assert_eq!(model.decode(&enc.unified_ids)?.size(), [2, 3, S, S]);
    }
    // Semantic-only: the decoder output ignores the pixel codes entirely.
    let model = tiny(Fusion::SemanticOnly).init(dev)?;
    let (images, feats) = inputs(1, dev);
    let u = model.encode(&images, &feats)?.unified_ids;
    let other = (&u - u.remainder(M)) + (u.remainder(M) + 1).remainder(M);
    assert!(model.decode(&u)?.equal(&model.decode(&other)?));
    let model = tiny(Fusion::PixelOnly).init(dev)?;
    assert!(!model.decode(&u)?.equal(&model.decode(&other)?));
    // Fuse shapes.
    let s = Tensor::ones([2, 5, 3], (Kind::Float, dev));
    let p = Tensor::ones([2, 5, 2], (Kind::Float, dev));
    assert_eq!(Fusion::LengthConcat.fuse(&s, &p)?.size(), [2, 10, 3]);
    assert_eq!(Fusion::ChannelConcat.fuse(&s, &p)?.size(), [2, 5, 5]);
    Ok(())
}
test_device!(fusions, fusions_cpu, fusions_cuda);

#[test]
fn bad_input_is_an_error() -> anyhow::Result<()> {
    let model = tiny(Fusion::ChannelConcat).init(Device::Cpu)?;
    let (images, feats) = inputs(2, Device::Cpu);
    let err = model
        .encode(
            &Tensor::zeros([2, 3, S, S + 4], (Kind::Float, Device::Cpu)),
            &feats,
        )
        .unwrap_err();
    assert!(err.to_string().contains("[B, 3, 16, 16]"), "{err}");
    let err = model
        .encode(
            &Tensor::zeros([2, 4, S, S], (Kind::Float, Device::Cpu)),
            &feats,
        )
        .unwrap_err();
    assert!(err.to_string().contains("[B, 3, 16, 16]"), "{err}");
    let err = model.encode(&images, &feats.narrow(1, 0, 8)).unwrap_err();
    assert!(err.to_string().contains("[2, 16, 12]"), "{err}");
    let err = model
        .decode(&Tensor::full([1, G, G], K * M, (Kind::Int64, Device::Cpu)))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::OutOfRange {
                value: 128,
                bound: 128,
                ..
            }
        ),
        "{err}"
    );
    let err = model
        .decode(&Tensor::full([1, G, G], -1, (Kind::Int64, Device::Cpu)))
        .unwrap_err();
    assert!(matches!(err, Error::OutOfRange { value: -1, .. }), "{err}");
    let err = model
        .decode(&Tensor::zeros([1, G, G + 1], (Kind::Int64, Device::Cpu)))
        .unwrap_err();
    assert!(err.to_string().contains("[B, 4, 4]"), "{err}");
    let nan_img = images.copy();
    let _ = nan_img.get(0).get(0).get(0).fill_(f64::NAN);
    let err = model.encode(&nan_img, &feats).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    let nan_feats = feats.copy();
    let _ = nan_feats.get(1).get(3).fill_(f64::NAN);
    let err = model.encode(&images, &nan_feats).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    // Inconsistent configs are errors.
    let mut bad = tiny(Fusion::ChannelConcat);
    bad.sghc.k_sem = 7;
    assert!(matches!(bad.init(Device::Cpu), Err(Error::Config(_))));
    let mut bad = tiny(Fusion::ChannelConcat);
    bad.fusion = Fusion::LengthConcat;
    assert!(matches!(bad.validate(), Err(Error::Config(_))));
    Ok(())
}

#[test]
fn parts_save_load_swap() -> anyhow::Result<()> {
    tch::manual_seed(4);
    let dir = tempfile::tempdir()?;
    let mut a = tiny(Fusion::ChannelConcat).init(Device::Cpu)?;
    let mut b = tiny(Fusion::ChannelConcat).init(Device::Cpu)?;
    let (images, feats) = inputs(2, Device::Cpu);
    assert!(!a
        .reconstruct(&images, &feats)?
        .equal(&b.reconstruct(&images, &feats)?));
    for part in Part::ALL {
        let path = dir.path().join(format!("{part:?}.safetensors"));
        a.save(part, &path)?;
        b.load(part, &path)?;
    }
    assert!(a
        .reconstruct(&images, &feats)?
        .equal(&b.reconstruct(&images, &feats)?));
    // Names are prefixed per part; EMA buffers are variables but never trainable.
    let spc_names: Vec<String> = a
        .named_variables(Part::Spc)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(spc_names.contains(&"spc.quantize.embedding".to_string()));
    assert!(spc_names.contains(&"spc.encode_task_layer.0.weight".to_string()));
    let spc_train: Vec<String> = a
        .trainable_variables(Part::Spc)
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert!(
        !spc_train.iter().any(|k| k.contains("quantize")),
        "{spc_train:?}"
    );
    assert!(a
        .trainable_variables(Part::Pixel)
        .iter()
        .any(|(k, _)| k == "pixel.quantize.embedding"));
    assert!(a
        .trainable_variables(Part::Pixel)
        .iter()
        .any(|(k, _)| k.starts_with("pixel.encoder.blocks.1.")));
    // A pixel checkpoint does not load into the decoder: strict loading lists the keys.
    let err = b
        .load(Part::Decoder, &dir.path().join("Pixel.safetensors"))
        .unwrap_err();
    assert!(matches!(err, Error::Checkpoint { .. }), "{err}");
    // Decoder swap (fine-tune stage): the encoder side keeps its weights and ids.
    let ids_before = a.encode(&images, &feats)?.unified_ids;
    let wider = VitDecoderConfig {
        vit: VitConfig::custom(48, 3, 3),
        ..a.config().decoder.clone()
    };
    a.replace_decoder(wider)?;
    assert_eq!(a.config().decoder.vit.hidden_size, 48);
    assert!(a.encode(&images, &feats)?.unified_ids.equal(&ids_before));
    assert_eq!(a.reconstruct(&images, &feats)?.size(), [2, 3, S, S]);
    assert!(a
        .named_variables(Part::Decoder)
        .iter()
        .any(|(k, t)| k == "decoder.blocks.2.norm1.weight" && t.size() == [48]));
    let mut bad = a.config().decoder.clone();
    bad.in_dim = 3;
    assert!(a.replace_decoder(bad).is_err());
    Ok(())
}

#[test]
fn paper_config() -> anyhow::Result<()> {
    let c = SemHiTokConfig::paper_256();
    c.validate()?;
    assert_eq!(c.encoder.grid(), 16);
    assert_eq!(c.sghc.vocab_size(), 16384 * 12);
    assert_eq!(c.spc.codebook_size, 16384);
    assert_eq!(c.spc.code_dim, 32);
    assert_eq!(c.spc.decoder.depth, 3);
    assert_eq!(c.decoder.in_dim, 32 + 8);
    let json = serde_json::to_string_pretty(&c)?;
    assert_eq!(serde_json::from_str::<SemHiTokConfig>(&json)?, c);
    assert!(
        serde_json::from_str::<SemHiTokConfig>(&json.replacen("\"fusion\"", "\"fusoin\"", 1))
            .is_err()
    );
    Ok(())
}

/// A fake teacher: mean-pooled patches projected by a fixed matrix.
#[derive(Debug)]
struct PatchTeacher {
    dim: i64,
}

impl semhitok_nn::teacher::Teacher for PatchTeacher {
    fn features(&self, images: &Tensor) -> semhitok_nn::Result<Tensor> {
        let x = images.avg_pool2d([P, P], [P, P], [0, 0], false, true, None::<i64>);
        let t = x.flatten(2, 3).transpose(1, 2); // [B, N, 3]
        Ok(t.repeat([1, 1, self.dim / 3]))
    }
    fn dim(&self) -> i64 {
        self.dim
    }
    fn grid(&self, h: i64, w: i64) -> (i64, i64) {
        (h / P, w / P)
    }
    fn name(&self) -> &str {
        "patch-test"
    }
    fn variables(&self) -> Vec<(String, Tensor)> {
        vec![]
    }
}

#[test]
fn teacher_features_checked() -> anyhow::Result<()> {
    let model = tiny(Fusion::ChannelConcat).init(Device::Cpu)?;
    let (images, _) = inputs(2, Device::Cpu);
    let f = model.teacher_features(&PatchTeacher { dim: CT }, &images)?;
    assert_eq!(f.size(), [2, G * G, CT]);
    assert_eq!(model.encode(&images, &f)?.unified_ids.size(), [2, G, G]);
    let err = model
        .teacher_features(&PatchTeacher { dim: 9 }, &images)
        .unwrap_err();
    assert!(err.to_string().contains("dim 9"), "{err}");
    Ok(())
}
