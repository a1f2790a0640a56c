//! `encode` / `decode` (issue 6 §5): images -> semantic, pixel, unified ids -> PNG round trip on
//! a tiny trained `pre` checkpoint, a batch with bad files, and the errors for wrong inputs.

use super::common::serial;
use super::stages::{cfg, run, spc_run};
use semhitok_data::{photos::load_file, transform::write_chw_f32, DecodeLimits, Transform};
use semhitok_train::codec::{decode_cmd, encode_cmd, DecodeArgs, EncodeArgs};
use semhitok_train::report::save_png;
use semhitok_train::stages::load_model;
use semhitok_train::synthetic::SyntheticBatches;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// An image file as `encode` sees it: decoded, ADM center crop at `size`, [1, 3, S, S] in [-1, 1].
fn load(p: &Path, size: u32) -> Tensor {
    let im = load_file(p, &DecodeLimits::default()).unwrap_or_else(|e| panic!("{p:?}: {e:?}"));
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let im = Transform::center_crop(size).apply(&im, &mut rng).unwrap();
    let mut buf = vec![0f32; 3 * (size * size) as usize];
    write_chw_f32(&im, &mut buf);
    Tensor::from_slice(&buf).view([1, 3, size as i64, size as i64])
}

fn trained(root: &Path) -> (PathBuf, PathBuf) {
    let spc = spc_run(root, 5);
    let pre = root.join("pre");
    run(&cfg(
        &pre,
        "pre",
        5,
        &[format!("init.spc=\"{}\"", spc.display())],
    ));
    (spc, pre)
}

#[test]
fn encode_then_decode_round_trips_and_reports_bad_files() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (spc, pre) = trained(tmp.path());
    // Three good PNGs, an undecodable file and a missing one.
    let imgs = SyntheticBatches::new(11, 3, 32)
        .next_images(Device::Cpu)
        .unwrap();
    let mut files = vec![];
    for i in 0..3 {
        let p = tmp.path().join(format!("in{i}.png"));
        save_png(&imgs.get(i), &p).unwrap();
        files.push(p);
    }
    let bad = tmp.path().join("broken.jpg");
    std::fs::write(&bad, b"\xff\xd8\xff\xe0 definitely not a jpeg").unwrap();
    let missing = tmp.path().join("missing.png");
    let mut all = files.clone();
    all.insert(1, bad.clone());
    all.push(missing.clone());

    let out = tmp.path().join("ids/batch");
    let rep = encode_cmd(&EncodeArgs {
        precision: Default::default(),
        model: pre.clone(),
        out: out.clone(),
        device: "cpu".into(),
        batch: 2,
        images: all,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(rep.encoded.len(), 3);
    let failed: Vec<&str> = rep.failed.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        failed,
        [bad.display().to_string(), missing.display().to_string()]
    );
    assert!(rep.failed.iter().all(|(_, why)| !why.is_empty()));
    assert_eq!(
        rep.unified_vocab_size,
        rep.semantic_codebook_size * rep.sub_codebook_size
    );

    // The ids file: unified = semantic * m + pixel, every id in range, grid 4x4 (32 px / 8).
    let t: std::collections::BTreeMap<String, Tensor> =
        Tensor::read_safetensors(out.with_extension("safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let (sem, pix, uni) = (&t["semantic"], &t["pixel"], &t["unified"]);
    assert_eq!(uni.size(), [3, 4, 4]);
    assert!(uni.equal(&(sem * rep.sub_codebook_size + pix)));
    let (lo, hi) = (uni.min().int64_value(&[]), uni.max().int64_value(&[]));
    assert!(
        lo >= 0 && hi < rep.unified_vocab_size,
        "ids in [{lo}, {hi}]"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(json["images"].as_array().unwrap().len(), 3);
    assert_eq!(json["summary"]["failed"].as_array().unwrap().len(), 2);
    assert_eq!(json["precision"], "fp32");

    // `--precision bf16` is a CUDA option: on the CPU the ids are the canonical fp32 ones and the
    // metadata says so.
    let out16 = tmp.path().join("ids/bf16");
    encode_cmd(&EncodeArgs {
        precision: semhitok_train::encode_precision::EncodePrecision::Bf16,
        model: pre.clone(),
        out: out16.clone(),
        device: "cpu".into(),
        batch: 2,
        images: files.clone(),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let t16: std::collections::BTreeMap<String, Tensor> =
        Tensor::read_safetensors(out16.with_extension("safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    assert!(t16["unified"].equal(uni));
    let json16: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out16.with_extension("json")).unwrap())
            .unwrap();
    assert_eq!(json16["precision"], "fp32");

    // The semantic ids are the SPC's (stage 2 leaves them alone).
    let spc_model = load_model(&spc, Device::Cpu, true).unwrap();
    let m = load_model(&pre, Device::Cpu, false).unwrap();
    let x = Tensor::cat(&files.iter().map(|p| load(p, 32)).collect::<Vec<_>>(), 0);
    assert!(spc_model
        .semantic_ids(&x)
        .unwrap()
        .view([3, 4, 4])
        .equal(sem));

    // decode(ids) is the model's reconstruction of the same images, up to PNG rounding.
    let dec_dir = tmp.path().join("decoded");
    let pngs = decode_cmd(&DecodeArgs {
        model: pre.clone(),
        ids: out.with_extension("safetensors"),
        out: dec_dir.clone(),
        device: "cpu".into(),
        batch: 2,
    })
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pngs.len(), 3);
    let recon = m.reconstruct(&x).unwrap().clamp(-1.0, 1.0);
    for (i, p) in pngs.iter().enumerate() {
        let got = load(p, 32);
        let err = (&got - recon.get(i as i64).unsqueeze(0))
            .abs()
            .max()
            .double_value(&[]);
        // one 8-bit level is 2/255 in [-1, 1]
        assert!(
            err <= 1.01 * 2.0 / 255.0,
            "{}: max abs err {err}",
            p.display()
        );
    }
    // and an image the model reconstructs is not just any image: it is close to the input
    let d = (&recon - &x).abs().mean(Kind::Float).double_value(&[]);
    assert!(d < 1.0, "mean abs reconstruction error {d}");
}

#[test]
fn decode_rejects_out_of_range_ids_and_wrong_checkpoints() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (spc, pre) = trained(tmp.path());
    let m = load_model(&pre, Device::Cpu, false).unwrap();
    let vocab = m.cfg.model.sghc.vocab_size();

    let ids = tmp.path().join("bad.safetensors");
    let bad = Tensor::zeros([1, 4, 4], (Kind::Int64, Device::Cpu));
    let _ = bad.get(0).get(2).get(3).fill_(vocab);
    Tensor::write_safetensors(&[("unified", &bad)], &ids).unwrap();
    let e = decode_cmd(&DecodeArgs {
        model: pre.clone(),
        ids: ids.clone(),
        out: tmp.path().join("o"),
        device: "cpu".into(),
        batch: 2,
    })
    .expect_err("an id >= vocab must be an error");
    let msg = e.to_string();
    assert!(msg.contains("bad.safetensors"), "{msg}");
    assert!(msg.contains(&vocab.to_string()), "{msg}");

    let e = decode_cmd(&DecodeArgs {
        model: pre.clone(),
        ids: tmp.path().join("nope.safetensors"),
        out: tmp.path().join("o"),
        device: "cpu".into(),
        batch: 2,
    })
    .expect_err("a missing ids file must be an error");
    assert!(e.to_string().contains("nope.safetensors"), "{e}");

    Tensor::write_safetensors(&[("ids", &bad)], &ids).unwrap();
    let e = decode_cmd(&DecodeArgs {
        model: pre.clone(),
        ids: ids.clone(),
        out: tmp.path().join("o"),
        device: "cpu".into(),
        batch: 2,
    })
    .expect_err("no `unified` tensor must be an error");
    assert!(e.to_string().contains("unified"), "{e}");

    // Float ids (issue 13 item 8): refused naming the dtype, never truncated.
    let floats = Tensor::full([1, 4, 4], 5.7, (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(&[("unified", &floats)], &ids).unwrap();
    let e = decode_cmd(&DecodeArgs {
        model: pre.clone(),
        ids: ids.clone(),
        out: tmp.path().join("o"),
        device: "cpu".into(),
        batch: 2,
    })
    .expect_err("float ids must be an error");
    assert!(e.to_string().contains("Float"), "{e}");
    assert!(e.to_string().contains("integer dtype"), "{e}");

    let e = encode_cmd(&EncodeArgs {
        precision: Default::default(),
        model: spc.clone(),
        out: tmp.path().join("x"),
        device: "cpu".into(),
        batch: 2,
        images: vec![tmp.path().join("whatever.png")],
    })
    .expect_err("an spc checkpoint has no pixel decoder");
    assert!(e.to_string().contains("`spc` checkpoint"), "{e}");
}

/// LPIPS-VGG as the trainer's perceptual loss and as an eval metric. No VGG16 weights ship offline,
/// so the trunk here is a randomly initialised VGG16 saved under torchvision's names: this checks
/// the wiring (loading by name, the loss term, the metric), not LPIPS's values (the nn crate's
/// golden test does that).
#[test]
fn lpips_vgg_trains_and_evaluates_with_a_given_trunk() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let heads =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.assets/weights/lpips_vgg.safetensors");
    assert!(
        heads.exists(),
        "{}: run `cargo xtask assets`",
        heads.display()
    );
    let vgg = tmp.path().join("vgg16.safetensors");
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let _net = semhitok_nn::lpips::Vgg16Features::new(vs.root());
    vs.save(&vgg).unwrap();

    let spc = spc_run(tmp.path(), 3);
    let pre = tmp.path().join("pre");
    // Without the trunk: a config error naming the key.
    let c = cfg(
        &pre,
        "pre",
        3,
        &[
            format!("init.spc=\"{}\"", spc.display()),
            "loss.perceptual=\"lpips-vgg\"".into(),
            "loss.perceptual_weight=1.0".into(),
        ],
    );
    let e = semhitok_train::stages::build_task(&c)
        .err()
        .expect("no trunk must fail");
    assert!(e.to_string().contains("loss.lpips_vgg16"), "{e}");
    // With it: the term is trained on and logged.
    let mut sets = vec![
        format!("init.spc=\"{}\"", spc.display()),
        "loss.perceptual=\"lpips-vgg\"".into(),
        "loss.perceptual_weight=1.0".into(),
        format!("loss.lpips_vgg16=\"{}\"", vgg.display()),
        format!("loss.lpips_heads=\"{}\"", heads.display()),
        "schedule.log_every=1".into(),
    ];
    let r = run(&cfg(&pre, "pre", 3, &sets));
    assert!(r.losses.iter().all(|(_, l)| l.is_finite()));
    let recs = semhitok_train::rundir::read_metrics(&pre);
    assert!(recs.iter().all(|r| r["perceptual"]
        .as_f64()
        .is_some_and(|p| p.is_finite() && p > 0.0)));
    sets.clear();

    // Eval with and without LPIPS: the metric is there only when the trunk is given.
    let photos = tmp.path().join("photos");
    std::fs::create_dir_all(&photos).unwrap();
    let imgs = SyntheticBatches::new(3, 12, 96)
        .next_images(Device::Cpu)
        .unwrap();
    for i in 0..12 {
        save_png(&imgs.get(i), &photos.join(format!("p{i:02}.png"))).unwrap();
    }
    let fid =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.assets/weights/fid_inception_v3.pt");
    let args = |lp: Option<PathBuf>, out: &str| semhitok_train::eval::EvalArgs {
        checkpoint: pre.clone(),
        baseline: None,
        name: "model".into(),
        also: vec![],
        data: Some(photos.clone()),
        out: tmp.path().join(out),
        n_images: 16,
        fid_weights: fid.clone(),
        device: "cpu".into(),
        lpips_vgg16: lp,
        lpips_heads: heads.clone(),
        fid_ref: None,
        fid_cache: Some(tmp.path().join("fid-cache")),
        no_fid_cache: false,
    };
    let with = semhitok_train::eval::run(&args(Some(vgg.clone()), "e1"), &[]).unwrap();
    let l = with.models[0].lpips.expect("lpips computed");
    assert!(l.is_finite() && l > 0.0, "lpips {l}");
    let without = semhitok_train::eval::run(&args(None, "e2"), &[]).unwrap();
    assert!(without.models[0].lpips.is_none());
    assert_eq!(
        with.models[0].psnr.to_bits(),
        without.models[0].psnr.to_bits()
    );
    // The first run computed and cached the reference statistics, the second read them from
    // the cache: the same rFID, bit for bit; `--fid-ref` with the cached npz gives it too, and
    // the report states the convention and the caveat next to the number.
    let src = |r: &semhitok_train::eval::EvalReport| {
        r.protocol["fid_reference"]["source"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(
        src(&with).starts_with("computed, cached as "),
        "{}",
        src(&with)
    );
    assert!(src(&without).starts_with("cache "), "{}", src(&without));
    assert_eq!(
        with.models[0].rfid.to_bits(),
        without.models[0].rfid.to_bits()
    );
    let npz = PathBuf::from(src(&without).trim_start_matches("cache "));
    let mut a = args(None, "e3");
    a.fid_ref = Some(npz);
    let given = semhitok_train::eval::run(&a, &[]).unwrap();
    assert_eq!(
        with.models[0].rfid.to_bits(),
        given.models[0].rfid.to_bits()
    );
    let md = std::fs::read_to_string(tmp.path().join("e3/eval.md")).unwrap();
    assert!(
        md.contains("rFID reference:") && md.contains("caveat") && md.contains("299"),
        "{md}"
    );
    let mut a = args(None, "e4");
    a.fid_ref = Some(tmp.path().join("missing.npz"));
    let e = semhitok_train::eval::run(&a, &[]).unwrap_err().to_string();
    assert!(e.contains("missing.npz"), "{e}");
}
