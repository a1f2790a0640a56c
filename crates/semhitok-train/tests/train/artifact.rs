//! `semhitok export` (issue 15): a tiny trained run (EMA kept) as a model folder, loaded in a
//! fresh `semhitok` process: its ids are the trainer's model's, bit for bit, and its decoded
//! images are the trainer's reconstructions; the folder holds the EMA weights.

use super::common::serial;
use super::stages::{cfg, run, spc_run};
use semhitok_nn::pretrained::Tokenizer;
use semhitok_train::checkpoint;
use semhitok_train::codec::load_image;
use semhitok_train::export::{export_cmd, ExportArgs};
use semhitok_train::report::save_png;
use semhitok_train::stages::load_model;
use semhitok_train::synthetic::SyntheticBatches;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Tensor};

/// spc (5 steps) then pre (5 steps, weight EMA kept).
pub(super) fn trained_pre(root: &Path) -> PathBuf {
    let spc = spc_run(root, 5);
    let pre = root.join("pre");
    run(&cfg(
        &pre,
        "pre",
        5,
        &[
            format!("init.spc=\"{}\"", spc.display()),
            "optim.ema_decay=0.9".into(),
        ],
    ));
    pre
}

pub(super) fn export(pre: &Path, out: &Path) {
    export_cmd(&ExportArgs {
        run: pre.to_path_buf(),
        out: out.to_path_buf(),
        eval: None,
        overwrite: false,
    })
    .unwrap_or_else(|e| panic!("{e}"));
}

fn semhitok(args: &[&std::ffi::OsStr]) {
    let out = Command::new(env!("CARGO_BIN_EXE_semhitok"))
        .args(args)
        .output()
        .expect("semhitok runs");
    assert!(
        out.status.success(),
        "semhitok {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn exported_folder_in_a_fresh_process_gives_the_trainers_ids_and_images() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let pre = trained_pre(tmp.path());
    let dir = tmp.path().join("model");
    export(&pre, &dir);
    let card = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(
        card.contains("| stage | pre |") && card.contains("EMA"),
        "{card}"
    );

    // The folder holds the weights as trained: the EMA of every trained tensor.
    let ck = checkpoint::resolve(&pre).unwrap();
    let folder: BTreeMap<String, Tensor> = Tensor::read_safetensors(dir.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let mut ema = 0;
    for (k, t) in &ck.tensors {
        if let Some(name) = k.strip_prefix("ema.") {
            assert!(folder[name].equal(t), "{name} is not the EMA");
            ema += 1;
        }
    }
    assert!(ema > 0, "the run kept an EMA");
    assert!(folder.keys().any(|k| k.starts_with("teacher.")));

    // Images on disk, as `encode` reads them.
    let imgs = SyntheticBatches::new(21, 3, 48)
        .next_images(Device::Cpu)
        .unwrap();
    let mut files = vec![];
    for i in 0..3 {
        let p = tmp.path().join(format!("img{i}.png"));
        save_png(&imgs.get(i), &p).unwrap();
        files.push(p);
    }
    let x = Tensor::cat(
        &files
            .iter()
            .map(|p| load_image(p, 32).unwrap())
            .collect::<Vec<_>>(),
        0,
    );

    // The trainer's model, straight from the checkpoint (no Tokenizer in between).
    let m = load_model(&pre, Device::Cpu, false).unwrap();
    let feats = m.teacher().features(&x).unwrap();
    let want = m.model().encode(&x, &feats).unwrap();
    let want_recon = m.model().reconstruct(&x, &feats).unwrap();

    // A fresh process encodes and decodes with the folder alone.
    let ids = tmp.path().join("ids");
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "encode".as_ref(),
        "--model".as_ref(),
        dir.as_os_str(),
        "--out".as_ref(),
        ids.as_os_str(),
        "--batch".as_ref(),
        "2".as_ref(),
    ];
    args.extend(files.iter().map(|p| p.as_os_str()));
    semhitok(&args);
    let got: BTreeMap<String, Tensor> = Tensor::read_safetensors(ids.with_extension("safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    assert!(
        got["unified"].equal(&want.unified_ids),
        "unified ids differ"
    );
    assert!(got["semantic"].equal(&want.semantic_ids));
    assert!(got["pixel"].equal(&want.pixel_ids));
    let dec = tmp.path().join("decoded");
    let ids_file = ids.with_extension("safetensors");
    semhitok(&[
        "decode".as_ref(),
        "--model".as_ref(),
        dir.as_os_str(),
        "--ids".as_ref(),
        ids_file.as_os_str(),
        "--out".as_ref(),
        dec.as_os_str(),
    ]);
    for i in 0..3 {
        let png = load_image(&dec.join(format!("{i:05}.png")), 32).unwrap();
        let r = want_recon.get(i).unsqueeze(0).clamp(-1.0, 1.0);
        let err = (png - r).abs().max().double_value(&[]);
        // PNG rounding (one 8-bit level = 2/255) plus straight-through rounding
        assert!(err <= 1.01 * 2.0 / 255.0, "image {i}: {err}");
    }

    // In process: the same ids and features, and decode(encode(x)) = the trainer's reconstruction.
    let tok = Tokenizer::from_pretrained(&dir, Device::Cpu).unwrap();
    let enc = tok.encode(&x).unwrap();
    assert!(enc.unified_ids.equal(&want.unified_ids));
    assert!(enc.features.equal(&want.features));
    let d = (tok.decode(&enc.unified_ids).unwrap() - &want_recon)
        .abs()
        .max()
        .double_value(&[]);
    assert!(
        d <= 1e-5,
        "decode(encode(x)) vs the trainer's reconstruction: {d}"
    );
    assert!(tok.reconstruct(&x).unwrap().equal(&want_recon));

    // Exporting over it again is refused; an spc run has nothing to decode with.
    let e = export_cmd(&ExportArgs {
        run: pre.clone(),
        out: dir.clone(),
        eval: None,
        overwrite: false,
    })
    .unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    let e = export_cmd(&ExportArgs {
        run: tmp.path().join("spc"),
        out: tmp.path().join("m2"),
        eval: None,
        overwrite: false,
    })
    .unwrap_err();
    assert!(e.to_string().contains("`spc` checkpoint"), "{e}");
}
