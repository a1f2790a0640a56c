//! Strict config parsing and `--set` overrides.

use super::common::tiny_config_text;
use semhitok_train::config::TrainConfig;
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
