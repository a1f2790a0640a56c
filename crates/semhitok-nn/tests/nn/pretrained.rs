//! Model folders (`semhitok_nn::pretrained`): save -> from_pretrained gives bit-identical ids,
//! features and images; any-size u8 / f32 inputs; strict loading (every corrupt folder is an
//! error naming the tensor, key or file); out-of-range ids name their position; the
//! semantic-only decode mode never runs the pixel branch.

use semhitok_nn::fusion::Fusion;
use semhitok_nn::model::{DecodeMode, Part, SemHiTok, SemHiTokConfig};
use semhitok_nn::pretrained::{adm_geometry, PretrainedConfig, TeacherSpec, Tokenizer};
use semhitok_nn::siglip::{SiglipLayer, SiglipTeacher, SiglipVisionConfig};
use std::path::Path;
use tch::{Device, Kind, Tensor};

const S: i64 = 16;
const G: i64 = 4;
const K: i64 = 32;
const M: i64 = 4;

fn vision() -> SiglipVisionConfig {
    SiglipVisionConfig {
        hidden_size: 16,
        intermediate_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        image_size: S,
        patch_size: S / G,
        vision_use_head: false,
        ..Default::default()
    }
}

/// A random tiny tokenizer: SigLIP-shaped teacher (16 x 16 px, 4 x 4 tokens of width 16).
fn tiny(fusion: Fusion, seed: i64) -> Tokenizer {
    tch::manual_seed(seed);
    let teacher = SiglipTeacher::random_init(&vision(), Device::Cpu, SiglipLayer::Last, None)
        .expect("teacher");
    let mut cfg = SemHiTokConfig::tiny(S, S / G, 16, K, M).with_fusion(fusion);
    cfg.spc.kmeans_init = false;
    let model = cfg.init(Device::Cpu).expect("model");
    let spec = TeacherSpec::Siglip {
        vision: vision(),
        layer: SiglipLayer::Last,
        resize: None,
    };
    let pc = PretrainedConfig::new(cfg, spec, serde_json::json!({"test": true}));
    Tokenizer::new(model, Box::new(teacher), pc).expect("tokenizer")
}

fn images(b: i64, seed: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::rand([b, 3, S, S], (Kind::Float, Device::Cpu)) * 2.0 - 1.0
}

fn saved(tok: &Tokenizer, dir: &Path) {
    tok.save_pretrained(dir, "# test card\n", false)
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn save_then_from_pretrained_is_bit_identical() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("model");
    let tok = tiny(Fusion::ChannelConcat, 1);
    saved(&tok, &dir);
    for f in ["config.json", "model.safetensors", "README.md"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    // No temporary folder is left next to the model folder.
    let names: Vec<String> = std::fs::read_dir(tmp.path())?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    assert_eq!(names, ["model"]);

    let back = SemHiTok::from_pretrained(&dir, Device::Cpu)?;
    assert_eq!(back.config(), tok.config());
    let x = images(3, 2);
    let (a, b) = (tok.encode(&x)?, back.encode(&x)?);
    assert!(a.unified_ids.equal(&b.unified_ids));
    assert!(a.semantic_ids.equal(&b.semantic_ids));
    assert!(a.pixel_ids.equal(&b.pixel_ids));
    assert!(a.features.equal(&b.features));
    assert_eq!(a.unified_ids.size(), [3, G, G]);
    assert_eq!(a.features.size(), [3, G * G, tok.config().feature_dim]);
    assert!(a.unified_ids.equal(&(&a.semantic_ids * M + &a.pixel_ids)));
    assert!(tok
        .decode(&a.unified_ids)?
        .equal(&back.decode(&b.unified_ids)?));
    // Codebook lookups vs the straight-through codes `z + (q - z)`: equal up to rounding.
    let d = (back.features_of(&b.unified_ids)? - &b.features)
        .abs()
        .max()
        .double_value(&[]);
    assert!(d <= 1e-6, "features_of vs encode: {d}");
    // decode(encode(x)) is the one-pass reconstruction (straight-through rounding apart).
    let d = (back.decode(&b.unified_ids)? - back.reconstruct(&x)?)
        .abs()
        .max()
        .double_value(&[]);
    assert!(d <= 1e-5, "decode(encode(x)) vs reconstruct: {d}");
    // analyze() is encode + reconstruct in one forward, bit for bit.
    let an = back.analyze(&x)?;
    assert!(an.encoded.unified_ids.equal(&b.unified_ids));
    assert!(an.recon.equal(&back.reconstruct(&x)?));
    // The weights file holds every part and the teacher by module path.
    let keys: Vec<String> = Tensor::read_safetensors(dir.join("model.safetensors"))?
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    for p in ["spc.", "pixel.", "decoder.", "teacher."] {
        assert!(keys.iter().any(|k| k.starts_with(p)), "{p}");
    }
    Ok(())
}

#[test]
fn u8_and_any_size_inputs() -> anyhow::Result<()> {
    let tok = tiny(Fusion::ChannelConcat, 3);
    tch::manual_seed(4);
    let u8s = Tensor::randint(256, [2, 3, S, S], (Kind::Uint8, Device::Cpu));
    let f = u8s.to_kind(Kind::Float) * (1.0 / 127.5) - 1.0;
    assert!(tok
        .encode(&u8s)?
        .unified_ids
        .equal(&tok.encode(&f)?.unified_ids));
    // One unbatched image.
    assert_eq!(tok.encode(&u8s.get(0))?.unified_ids.size(), [1, G, G]);
    // 24 x 40: shorter side to 16 (16 x 27 after rounding), 5 px cut on the left, the ADM crop.
    let big = Tensor::rand([1, 3, 24, 40], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
    assert_eq!(adm_geometry(24, 40, S), ((16, 27), (0, 5)));
    let manual = big
        .internal_upsample_bicubic2d_aa([16, 27], false, None, None)
        .narrow(3, 5, S)
        .clamp(-1.0, 1.0);
    assert!(tok.preprocess(&big)?.equal(&manual));
    assert!(tok
        .encode(&big)?
        .unified_ids
        .equal(&tok.encode(&manual)?.unified_ids));
    // Floats outside [-1, 1] (e.g. 0..255 floats) are refused.
    let e = tok.encode(&((f + 1.0) * 127.5)).unwrap_err();
    assert!(e.to_string().contains("[-1, 1]"), "{e}");
    let e = tok
        .encode(&Tensor::zeros([2, 4, S, S], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    assert!(e.to_string().contains("[B, 3, H, W]"), "{e}");
    Ok(())
}

#[test]
fn adm_geometry_matches_the_data_crate_crop_box() {
    for (w, h, size) in [
        (500, 375, 256),
        (375, 500, 256),
        (64, 64, 64),
        (1000, 17, 16),
        (33, 800, 32),
        (256, 257, 256),
    ] {
        let ((rh, rw), (top, left)) = adm_geometry(h, w, size);
        let b = semhitok_data::transform::adm_center_crop_box(w as u32, h as u32, size as u32);
        // The data crate maps the same crop back to source pixels: left = ox / (rw / w).
        let ox = (b.left * rw as f64 / w as f64).round() as i64;
        let oy = (b.top * rh as f64 / h as f64).round() as i64;
        assert_eq!((oy, ox), (top, left), "{w}x{h} at {size}");
        assert_eq!(rh.min(rw), size);
    }
}

/// Rewrite `model.safetensors` of `dir` through `f`.
fn edit_weights(dir: &Path, f: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let p = dir.join("model.safetensors");
    let mut t = Tensor::read_safetensors(&p).unwrap();
    f(&mut t);
    Tensor::write_safetensors(&t, &p).unwrap();
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

fn load_err(dir: &Path) -> String {
    Tokenizer::from_pretrained(dir, Device::Cpu)
        .err()
        .expect("a corrupt folder must not load")
        .to_string()
}

#[test]
fn corrupt_folders_are_errors_naming_the_culprit() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = tiny(Fusion::ChannelConcat, 5);
    let fresh = |name: &str| {
        let d = tmp.path().join(name);
        saved(&tok, &d);
        d
    };
    let names: Vec<String> = tok.state_dict().into_iter().map(|(k, _)| k).collect();
    let pick = |prefix: &str| {
        names
            .iter()
            .find(|k| k.starts_with(prefix))
            .unwrap()
            .clone()
    };

    for prefix in ["pixel.", "teacher.", "spc."] {
        let d = fresh(&format!("missing-{prefix}"));
        let gone = pick(prefix);
        edit_weights(&d, |t| t.retain(|(k, _)| *k != gone));
        let e = load_err(&d);
        assert!(e.contains(&gone) && e.contains("missing"), "{e}");
    }

    let d = fresh("shape");
    let bad = pick("decoder.");
    edit_weights(&d, |t| {
        for (k, v) in t.iter_mut() {
            if *k == bad {
                *v = Tensor::zeros([3, 1], (Kind::Float, Device::Cpu));
            }
        }
    });
    let e = load_err(&d);
    assert!(e.contains(&bad) && e.contains("[3, 1]"), "{e}");

    let d = fresh("unexpected");
    edit_weights(&d, |t| {
        t.push((
            "extra.weight".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ));
        t.push((
            "teacher.bogus".into(),
            Tensor::zeros([2], (Kind::Float, Device::Cpu)),
        ));
    });
    let e = load_err(&d);
    assert!(
        e.contains("extra.weight") && e.contains("teacher.bogus"),
        "{e}"
    );

    // Config and weights disagree: a consistent config of a model with twice the codes.
    let d = fresh("config-vs-weights");
    edit_config(&d, |v| {
        v["model"]["spc"]["codebook_size"] = (2 * K).into();
        v["model"]["sghc"]["k_sem"] = (2 * K).into();
        v["vocab"]["semantic_codebook_size"] = (2 * K).into();
        v["vocab"]["unified_vocab_size"] = (2 * K * M).into();
    });
    let e = load_err(&d);
    assert!(
        e.contains("mis-shaped") && e.contains(&format!("[{}, ", 2 * K)),
        "{e}"
    );
    assert!(e.contains("spc."), "{e}");

    // A config that contradicts itself, an unknown key, a wrong format tag.
    let d = fresh("vocab");
    edit_config(&d, |v| v["vocab"]["unified_vocab_size"] = 7.into());
    let e = load_err(&d);
    assert!(e.contains("vocab") && e.contains("config.json"), "{e}");
    let d = fresh("unknown-key");
    edit_config(&d, |v| v["preprocessing"]["colour"] = "rgb".into());
    let e = load_err(&d);
    assert!(e.contains("colour"), "{e}");
    let d = fresh("format");
    edit_config(&d, |v| v["format"] = "other/9".into());
    assert!(load_err(&d).contains("other/9"));

    // Missing and truncated files.
    let d = fresh("no-config");
    std::fs::remove_file(d.join("config.json")).unwrap();
    assert!(load_err(&d).contains("config.json"));
    let d = fresh("truncated");
    let w = d.join("model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    assert!(load_err(&d).contains("model.safetensors"));
    assert!(load_err(&tmp.path().join("nowhere")).contains("nowhere"));

    // An existing folder is not overwritten unless asked; with overwrite it is replaced.
    let d = fresh("again");
    let e = tok.save_pretrained(&d, "", false).unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    let other = tiny(Fusion::ChannelConcat, 6);
    other.save_pretrained(&d, "", true).unwrap();
    let x = images(2, 7);
    let back = Tokenizer::from_pretrained(&d, Device::Cpu).unwrap();
    assert!(back
        .encode(&x)
        .unwrap()
        .features
        .equal(&other.encode(&x).unwrap().features));
}

#[test]
fn decode_names_the_first_out_of_range_position() {
    let tok = tiny(Fusion::ChannelConcat, 8);
    let v = tok.vocab_size();
    assert_eq!(v, K * M);
    let ids = Tensor::zeros([2, G, G], (Kind::Int64, Device::Cpu));
    let _ = ids.get(1).get(2).get(3).fill_(v);
    let _ = ids.get(1).get(3).get(0).fill_(-1);
    let e = tok.decode(&ids).unwrap_err().to_string();
    assert!(e.contains("[1, 2, 3]") && e.contains(&v.to_string()), "{e}");
    let e = tok.decode(&ids.get(1)).unwrap_err().to_string();
    assert!(e.contains("[0, 2, 3]"), "{e}");
    let e = tok
        .decode(&Tensor::zeros([1, G, G], (Kind::Float, Device::Cpu)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("Float") && e.contains("integer"), "{e}");
    let e = tok
        .decode(&Tensor::zeros([1, G, G + 1], (Kind::Int, Device::Cpu)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("[B, 4, 4]"), "{e}");
    // int32 ids (the token shards' dtype) decode like int64.
    let ok = Tensor::full([1, G, G], v - 1, (Kind::Int, Device::Cpu));
    assert!(tok
        .decode(&ok)
        .unwrap()
        .equal(&tok.decode(&ok.to_kind(Kind::Int64)).unwrap()));
}

#[test]
fn semantic_only_mode_never_runs_the_pixel_branch() -> anyhow::Result<()> {
    let mut tok = tiny(Fusion::SemanticOnly, 9);
    assert_eq!(tok.config().decode_mode, DecodeMode::SemanticOnly);
    assert_eq!(tok.config().feature_dim, 8);
    let x = images(2, 10);
    let enc = tok.encode(&x)?;
    let recon = tok.reconstruct(&x)?;
    assert_eq!(enc.features.size(), [2, G * G, 8]);
    assert_eq!(enc.pixel_ids.abs().sum(Kind::Int64).int64_value(&[]), 0);
    assert!(enc.unified_ids.equal(&(&enc.semantic_ids * M)));
    let d = (tok.decode(&enc.unified_ids)? - &recon)
        .abs()
        .max()
        .double_value(&[]);
    assert!(d <= 1e-5, "decode(encode(x)) vs reconstruct: {d}");
    // NaN pixel-branch weights change nothing: that branch is not computed.
    let tmp = tempfile::tempdir()?;
    let d = tmp.path().join("sem");
    saved(&tok, &d);
    edit_weights(&d, |t| {
        for (k, v) in t.iter_mut() {
            if k.starts_with(Part::Pixel.prefix()) && v.is_floating_point() {
                *v = v.full_like(f64::NAN);
            }
        }
    });
    tok = Tokenizer::from_pretrained(&d, Device::Cpu)?;
    assert!(tok.reconstruct(&x)?.equal(&recon));
    assert!(tok.encode(&x)?.features.equal(&enc.features));
    Ok(())
}

/// A folder saved on the CPU and loaded on `dev` gives the CPU's ids (the canonical ones); on CUDA
/// this is the fp32 (TF32 off) equality of issue 15.
fn folder_ids_match_cpu(dev: Device) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let d = tmp.path().join("m");
    let tok = tiny(Fusion::ChannelConcat, 11);
    saved(&tok, &d);
    tch::manual_seed(12);
    let x = Tensor::randint(256, [8, 3, S, S], (Kind::Uint8, Device::Cpu));
    let want = tok.encode(&x)?;
    let on_dev = Tokenizer::from_pretrained(&d, dev)?;
    let got = on_dev.encode(&x)?;
    assert!(got
        .unified_ids
        .to_device(Device::Cpu)
        .equal(&want.unified_ids));
    let diff = (got.features.to_device(Device::Cpu) - &want.features)
        .abs()
        .max()
        .double_value(&[]);
    assert!(diff <= 1e-5, "features on {dev:?}: {diff}");
    Ok(())
}
semhitok_nn::test_device!(
    folder_ids_match_cpu,
    folder_ids_match_cpu_cpu,
    folder_ids_match_cpu_cuda
);
