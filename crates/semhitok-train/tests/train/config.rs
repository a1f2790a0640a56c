//! Strict config parsing and `--set` overrides.

use super::common::tiny_config_text;
use semhitok_train::config::{peek_stage, Stage, TrainConfig};
use semhitok_train::dispatch::{self, TrainRequest};
use semhitok_train::rundir::RunStart;
use semhitok_train::Error;
use std::path::Path;

#[test]
fn misspelled_key_names_key_and_file() {
    let text =
        tiny_config_text(Path::new("/tmp/x"), 5, 5).replace("weight_decay =", "weight_decayy =");
    let err = TrainConfig::from_toml_str(&text, Path::new("configs/mine.toml"), &[]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Config { .. }), "{msg}");
    assert!(msg.contains("configs/mine.toml"), "{msg}");
    assert!(msg.contains("weight_decayy"), "{msg}");
}

#[test]
fn override_sets_nested_keys_and_rejects_unknown() {
    let text = tiny_config_text(Path::new("/tmp/x"), 5, 5);
    let cfg = TrainConfig::from_toml_str(
        &text,
        Path::new("a.toml"),
        &[
            "optim.lr=0.5".into(),
            "optim.betas=[0.8, 0.95]".into(),
            "run.name=other".into(),
        ],
    )
    .unwrap();
    assert_eq!(cfg.optim.lr, 0.5);
    assert_eq!(cfg.optim.betas, [0.8, 0.95]);
    assert_eq!(cfg.run.name, "other");
    let err = TrainConfig::from_toml_str(&text, Path::new("a.toml"), &["optim.lrr=1".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("lrr") && err.contains("--set"), "{err}");
    let err = TrainConfig::from_toml_str(&text, Path::new("a.toml"), &["optim.lr=abc".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("optim.lr"), "{err}");
}

#[test]
fn resolved_config_round_trips() {
    let text = tiny_config_text(Path::new("/tmp/x"), 5, 5);
    let cfg = TrainConfig::from_toml_str(&text, Path::new("a.toml"), &[]).unwrap();
    let again =
        TrainConfig::from_toml_str(&cfg.to_toml(), Path::new("resolved.toml"), &[]).unwrap();
    assert_eq!(cfg.to_toml(), again.to_toml());
}

#[test]
fn every_preset_in_configs_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            // LLaVA and text-to-image configs are other types (their own tests parse them).
            let stage = peek_stage(&p, &[]).unwrap_or_else(|e| panic!("{e}"));
            if !stage.is_tokenizer() {
                continue;
            }
            let c = TrainConfig::load(&p, &[]).unwrap_or_else(|e| panic!("{e}"));
            c.model
                .validate()
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            // A SigLIP teacher's token grid (after its resize) is the SPC's and the pixel ViTs'.
            if let Some((v, resize)) = semhitok_train::stages::siglip_spec(c.teacher.kind) {
                let (h, w) = resize.unwrap_or((c.data.image_size, c.data.image_size));
                let (gh, gw) = (h / v.patch_size, w / v.patch_size);
                let g = c.model.encoder.grid();
                assert_eq!(
                    (gh * gw, gh, v.hidden_size),
                    (c.model.spc.num_tokens, g, c.model.spc.teacher_dim),
                    "{}: teacher grid {gh}x{gw} of width {} vs SPC / pixel ViT",
                    p.display(),
                    v.hidden_size
                );
                assert_eq!(c.model.decoder.grid(), g, "{}", p.display());
            }
            n += 1;
        }
    }
    assert!(n >= 4, "expected the presets in {}", dir.display());
}

/// The LLM stages parse as stages but a tokenizer TrainConfig refuses them, naming `run.stage`
/// and the config type the stage needs, from the file and from a `--set` override alike.
#[test]
fn tokenizer_config_rejects_llm_stages() {
    let text = tiny_config_text(Path::new("/tmp/x"), 5, 5);
    for (stage, wants) in [
        ("llava-pretrain", "LLaVA"),
        ("llava-finetune", "LLaVA"),
        ("t2i", "T2I"),
    ] {
        assert_eq!(stage.parse::<Stage>().unwrap().as_str(), stage);
        let file = text.replace("stage = \"spc\"", &format!("stage = \"{stage}\""));
        let err = TrainConfig::from_toml_str(&file, Path::new("llm.toml"), &[]).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, Error::Config { .. }), "{msg}");
        for part in ["llm.toml", "run.stage", stage, wants, "TrainConfig"] {
            assert!(msg.contains(part), "{stage}: `{part}` missing in {msg}");
        }
        let set = [format!("run.stage=\"{stage}\"")];
        let msg = TrainConfig::from_toml_str(&text, Path::new("a.toml"), &set)
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("run.stage") && msg.contains("--set") && msg.contains(wants),
            "{msg}"
        );
        // A config built in code with such a stage fails validation the same way.
        let mut c = TrainConfig::from_toml_str(&text, Path::new("a.toml"), &[]).unwrap();
        c.run.stage = stage.parse().unwrap();
        let msg = c.validate(Path::new("code")).unwrap_err().to_string();
        assert!(msg.contains("run.stage") && msg.contains(wants), "{msg}");
    }
    let e = "llava".parse::<Stage>().unwrap_err();
    assert!(e.contains("llava-pretrain") && e.contains("t2i"), "{e}");
}

/// `semhitok train` reads the stage first and hands LLM stages to their own code (not to the
/// tokenizer config, which would refuse them); `--stage` must agree with the file.
#[test]
fn train_dispatches_on_the_stage() {
    let tmp = tempfile::tempdir().unwrap();
    for (stage, family) in [
        ("llava-pretrain", "LLaVA"),
        ("llava-finetune", "LLaVA"),
        ("t2i", "text-to-image"),
    ] {
        let file = tmp.path().join(format!("{stage}.toml"));
        let out = tmp.path().join(format!("run-{stage}"));
        std::fs::write(
            &file,
            format!(
                "[run]\nname = \"x\"\nout_dir = \"{}\"\nstage = \"{stage}\"\n",
                out.display()
            ),
        )
        .unwrap();
        let req = TrainRequest {
            config: file.clone(),
            overrides: vec![],
            start: RunStart::Fresh,
            command_line: vec![],
            quiet: true,
        };
        let msg = dispatch::train(&req, None).unwrap_err().to_string();
        // Whatever the stage's own code says about this minimal file, it names the file and
        // is not the tokenizer config's refusal.
        assert!(msg.contains(&file.display().to_string()), "{msg}");
        assert!(
            !msg.contains("TrainConfig"),
            "{stage} reached the tokenizer config: {msg}"
        );
        assert!(
            msg.contains(family) || !msg.contains("not built yet"),
            "{msg}"
        );
        let msg = dispatch::train(&req, Some(Stage::Spc))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("--stage spc") && msg.contains(&format!("run.stage = \"{stage}\"")),
            "{msg}"
        );
    }
    // A tokenizer config still goes to the tokenizer config (here: its validation).
    let file = tmp.path().join("tok.toml");
    let text = tiny_config_text(&tmp.path().join("run-tok"), 5, 5)
        .replace("batch_size = 4", "batch_size = 0");
    std::fs::write(&file, text).unwrap();
    let req = TrainRequest {
        config: file,
        overrides: vec![],
        start: RunStart::Fresh,
        command_line: vec![],
        quiet: true,
    };
    let msg = dispatch::train(&req, None).unwrap_err().to_string();
    assert!(msg.contains("data.batch_size"), "{msg}");
}

/// `tiny_config_text` without the derived model keys (what a preset states now).
fn without_derived(text: &str) -> String {
    let mut t: toml::Table = toml::from_str(text).unwrap();
    let m = t["model"].as_table_mut().unwrap();
    for (part, key) in [
        ("sghc", "k_sem"),
        ("encoder", "out_dim"),
        ("decoder", "in_dim"),
        ("decoder", "groups"),
    ] {
        assert!(
            m[part].as_table_mut().unwrap().remove(key).is_some(),
            "{part}.{key}"
        );
    }
    toml::to_string(&t).unwrap()
}

#[test]
fn derived_model_keys_are_filled_and_a_conflict_names_both_values() {
    let text = tiny_config_text(Path::new("/tmp/x"), 5, 5);
    let stated = TrainConfig::from_toml_str(&text, Path::new("a.toml"), &[]).unwrap();
    // Left out: derived, to the same config as one that states them.
    let bare = without_derived(&text);
    let cfg = TrainConfig::from_toml_str(&bare, Path::new("a.toml"), &[]).unwrap();
    assert_eq!(cfg.to_toml(), stated.to_toml());
    // One switch: the derived fields follow.
    let cfg = TrainConfig::from_toml_str(
        &bare,
        Path::new("a.toml"),
        &[
            "model.spc.codebook_size=8".into(),
            "model.fusion=\"pixel_only\"".into(),
        ],
    )
    .unwrap();
    assert_eq!(cfg.model.sghc.k_sem, 8);
    assert_eq!(
        cfg.model.decoder.in_dim, cfg.model.sghc.dim,
        "pixel_only decodes the pixel codes alone"
    );
    // Stated and different: an error naming the key and both values, never an overwrite.
    let err =
        TrainConfig::from_toml_str(&text, Path::new("a.toml"), &["model.sghc.k_sem=99".into()])
            .unwrap_err()
            .to_string();
    assert!(
        err.contains("model.sghc.k_sem") && err.contains("99") && err.contains("16"),
        "{err}"
    );
    assert!(err.contains("model.spc.codebook_size"), "{err}");
    let err = TrainConfig::from_toml_str(
        &text,
        Path::new("a.toml"),
        &["model.spc.codebook_size=8".into()],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("model.sghc.k_sem = 16") && err.contains("conflicts with 8"),
        "{err}"
    );
    let err = TrainConfig::from_toml_str(
        &text.replace("groups = 1", "groups = 2"),
        Path::new("mine.toml"),
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("model.decoder.groups") && err.contains("mine.toml"),
        "{err}"
    );
}

#[test]
fn removed_commit_weight_is_refused_naming_the_beta_keys() {
    let text = tiny_config_text(Path::new("/tmp/x"), 5, 5);
    let err = TrainConfig::from_toml_str(
        &text,
        Path::new("a.toml"),
        &["loss.commit_weight=0.25".into()],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("loss.commit_weight")
            && err.contains("model.sghc.beta")
            && err.contains("model.spc.commit_beta"),
        "{err}"
    );
    let cfg = TrainConfig::from_toml_str(&text, Path::new("a.toml"), &[]).unwrap();
    assert!(!cfg.to_toml().contains("commit_weight"));
}

#[test]
fn effnet_perceptual_weights_are_a_checked_key() {
    let text = tiny_config_text(Path::new("/tmp/x"), 5, 5);
    let cfg = TrainConfig::from_toml_str(&text, Path::new("a.toml"), &[]).unwrap();
    assert_eq!(
        cfg.loss.effnet_weights,
        Path::new(".assets/weights/efficientnet_lite0.safetensors")
    );
    let cfg = TrainConfig::from_toml_str(
        &text,
        Path::new("a.toml"),
        &[
            "loss.perceptual=\"effnet\"".into(),
            "loss.perceptual_weight=1.0".into(),
            "loss.effnet_weights=\"/nonexistent/lite0.safetensors\"".into(),
        ],
    )
    .unwrap();
    let err = cfg.check_paths().unwrap_err().to_string();
    assert!(
        err.contains("loss.effnet_weights") && err.contains("/nonexistent/lite0.safetensors"),
        "{err}"
    );
}

#[test]
fn torch_threads_default_to_one_on_cuda_and_leave_the_cpu_alone() {
    let text = tiny_config_text(Path::new("/tmp/x"), 5, 5);
    let load = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        TrainConfig::from_toml_str(&text, Path::new("a.toml"), &sets).unwrap()
    };
    let cpu = load(&["run.device=\"cpu\"", "run.threads=0"]);
    assert_eq!(cpu.run.torch_threads(), None);
    let cuda = load(&["run.device=\"cuda\"", "run.threads=0"]);
    assert_eq!(cuda.run.torch_threads(), Some(1));
    let set = load(&["run.device=\"cuda\"", "run.threads=6"]);
    assert_eq!(set.run.torch_threads(), Some(6));
    let set_cpu = load(&["run.device=\"cpu\"", "run.threads=3"]);
    assert_eq!(set_cpu.run.torch_threads(), Some(3));
}
