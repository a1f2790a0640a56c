//! The Fashion-MNIST tokenizer set (`configs/fmnist-*.toml`, `scripts/fmnist/tokenizers.sh`):
//! the four presets parse with one budget and build their tasks; the pixel-only VQ needs no SPC,
//! trains no SPC parameter and logs no semantic loss, and its semantic ids are all 0 (a flat
//! codebook); `semhitok tokenize` over Fashion-MNIST stores every record's label and the class
//! names (round trip through the shards).

use super::artifact::{export, trained_pre};
use super::common::serial;
use super::data::fashion_mnist;
use semhitok_nn::fusion::Fusion;
use semhitok_train::config::{Stage, TrainConfig};
use semhitok_train::rundir::RunStart;
use semhitok_train::stages::{build_task, build_task_uninit, load_model, run_stage};
use semhitok_train::tokenize::{run, TokenizeArgs};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `configs/fmnist-{name}.toml` with its paths pointed at `out`, the embedded teacher and `data`.
fn preset(name: &str, out: &Path, data: &Path, extra: &[&str]) -> TrainConfig {
    let teacher = repo().join(".assets/weights/efficientnet_lite0.safetensors");
    assert!(
        teacher.exists(),
        "{}: run `cargo xtask assets`",
        teacher.display()
    );
    let mut sets = vec![
        format!("run.out_dir=\"{}\"", out.join(name).display()),
        format!("teacher.weights=\"{}\"", teacher.display()),
        format!("data.root=\"{}\"", data.display()),
        format!("eval.data.root=\"{}\"", data.display()),
    ];
    if matches!(name, "sghc" | "sem-only") {
        sets.push(format!("init.spc=\"{}\"", out.join("spc").display()));
    }
    sets.extend(extra.iter().map(|s| s.to_string()));
    let file = repo().join(format!("configs/fmnist-{name}.toml"));
    TrainConfig::load(&file, &sets).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

#[test]
fn fmnist_presets_share_a_budget_and_the_pixel_vq_is_pixel_only() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = fashion_mnist(&tmp.path().join("fm"));
    let cfgs: Vec<(&str, TrainConfig)> = ["spc", "sghc", "sem-only", "pixel-vq"]
        .into_iter()
        .map(|n| (n, preset(n, tmp.path(), &data, &[])))
        .collect();
    let stage2 = &cfgs[1..];
    for (n, c) in &cfgs {
        assert_eq!(c.data.image_size, 32, "{n}");
        assert_eq!(c.model.encoder.grid(), 4, "{n}: 16 tokens per image");
        assert_eq!(c.data.batch_size, cfgs[0].1.data.batch_size, "{n}");
        assert_eq!(c.model.encoder, cfgs[1].1.model.encoder, "{n}: encoder");
        assert_eq!(
            c.model.decoder.vit, cfgs[1].1.model.decoder.vit,
            "{n}: decoder"
        );
    }
    for (n, c) in stage2 {
        assert_eq!(c.run.stage, Stage::Pre, "{n}");
        assert_eq!(c.schedule.steps, stage2[0].1.schedule.steps, "{n}");
        assert_eq!(
            c.loss.perceptual_weight, stage2[0].1.loss.perceptual_weight,
            "{n}"
        );
        assert_eq!(c.disc.start_step, stage2[0].1.disc.start_step, "{n}");
    }
    let fusion = |n: usize| cfgs[n].1.model.fusion;
    assert_eq!(
        [fusion(1), fusion(2), fusion(3)],
        [
            Fusion::ChannelConcat,
            Fusion::SemanticOnly,
            Fusion::PixelOnly
        ]
    );
    // The SPC and the pixel VQ build from nothing; SGHC and semantic-only from the SPC run (a
    // random SPC here: the SPC run does not exist yet). The perceptual network's weights are
    // found relative to the repository root, not to this test's working directory: off here.
    let no_p = ["loss.perceptual_weight=0"];
    let built = |n: &str| preset(n, tmp.path(), &data, &no_p);
    build_task(&built("spc")).unwrap_or_else(|e| panic!("spc: {e}"));
    build_task_uninit(&built("sghc")).unwrap_or_else(|e| panic!("sghc: {e}"));
    build_task_uninit(&built("sem-only")).unwrap_or_else(|e| panic!("sem-only: {e}"));
    let vq = &built("pixel-vq");
    assert!(vq.init.spc.is_none());
    assert_eq!(vq.model.spc.codebook_size, 1);
    assert_eq!(
        vq.model.sghc.vocab_size(),
        cfgs[1].1.model.sghc.vocab_size(),
        "the flat codebook has SGHC's K * m codes"
    );
    let task = build_task(vq).unwrap_or_else(|e| panic!("pixel-vq: {e}"));
    let names: Vec<String> = task.params().into_iter().map(|p| p.name).collect();
    assert!(names.iter().any(|n| n.starts_with("pixel.")), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("spc.")), "{names:?}");
    drop(task);
    // With more than one semantic code, `pre` still needs its SPC.
    let file = repo().join("configs/fmnist-sghc.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    let no_init = text.replace("[init]\nspc = \"runs/fmnist/spc\"\n", "");
    assert_ne!(no_init, text);
    let e = TrainConfig::from_toml_str(&no_init, &file, &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("init.spc"), "{e}");

    // Two steps through `semhitok train`'s path on the IDX files: no semantic loss is logged.
    let vq = preset(
        "pixel-vq",
        tmp.path(),
        &data,
        &[
            "data.batch_size=4",
            "schedule.steps=2",
            "schedule.ckpt_every=2",
            "loss.perceptual_weight=0",
        ],
    );
    run_stage(&vq, RunStart::Fresh, vec!["test".into()], true).unwrap_or_else(|e| panic!("{e}"));
    let text = std::fs::read_to_string(tmp.path().join("pixel-vq/metrics.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The preset validates (schedule.eval_every) at the last step too: on [eval.data], without
    // rFID here (the FID weights path is relative to the repository root, not to this test's
    // working directory).
    let val = recs
        .iter()
        .find(|r| r["kind"] == "val")
        .expect("a val record");
    // (all 12 test images of the fixture: fewer than eval.val_images = 32)
    assert_eq!(
        (val["step"].as_u64(), val["images"].as_u64()),
        (Some(2), Some(12)),
        "{val}"
    );
    assert!(val["psnr"].as_f64().is_some_and(f64::is_finite), "{val}");
    assert!(
        val["usage_unified"].as_f64().is_some_and(|u| u > 0.0),
        "{val}"
    );
    assert!(val.get("rfid").is_none(), "{val}");
    let last = recs
        .iter()
        .rev()
        .find(|r| r.get("kind").is_none())
        .unwrap()
        .clone();
    assert!(
        last.get("rec").is_some() && last.get("codebook").is_some(),
        "{last}"
    );
    assert!(last.get("cos").is_none(), "semantic loss logged: {last}");
    let m = load_model(&tmp.path().join("pixel-vq"), Device::Cpu, false).unwrap();
    let x = Tensor::rand([6, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    let enc = m.tok.encode(&x).unwrap();
    assert_eq!(enc.semantic_ids.max().int64_value(&[]), 0);
    assert!(enc.unified_ids.equal(&enc.pixel_ids));
    assert!(enc.unified_ids.max().int64_value(&[]) < 3072);
}

#[test]
fn fashion_mnist_tokens_keep_labels_and_class_names() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let data = fashion_mnist(&tmp.path().join("fm"));
    let model = tmp.path().join("model");
    export(&trained_pre(tmp.path()), &model);
    let out = tmp.path().join("tokens");
    let a = TokenizeArgs {
        precision: Default::default(),
        model,
        data: format!("fashion-mnist-train:{}", data.display()),
        out: out.clone(),
        device: "cpu".into(),
        batch: 5,
        shard_size: 8,
        workers: 1,
        rank: None,
        world_size: None,
        crash_after_shards: None,
        limit: None,
    };
    let r = run(&a).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.complete && r.images == 12, "{r:?}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("meta.json")).unwrap()).unwrap();
    assert_eq!(
        meta["label_names"],
        serde_json::json!(semhitok_data::FASHION_MNIST_CLASSES)
    );
    assert_eq!(meta["label_names"][0], "T-shirt/top");
    let (mut labels, mut captions) = (vec![], vec![]);
    for s in 0..2 {
        let t = Tensor::read_safetensors(out.join(format!("shard-{s:05}.safetensors"))).unwrap();
        let l = &t
            .iter()
            .find(|(n, _)| n == "labels")
            .expect("labels stored")
            .1;
        assert_eq!(l.kind(), Kind::Int64);
        labels.extend(Vec::<i64>::try_from(l).unwrap());
        let side: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(format!("shard-{s:05}.json"))).unwrap(),
        )
        .unwrap();
        captions.extend(side["captions"].as_array().unwrap().clone());
    }
    // The IDX helper's labels are `i % 10`.
    let want: Vec<i64> = (0..12).map(|i| i % 10).collect();
    assert_eq!(labels, want);
    for (l, c) in labels.iter().zip(&captions) {
        assert_eq!(
            c.as_str(),
            semhitok_data::fashion_mnist_caption(*l).as_deref()
        );
    }
}
