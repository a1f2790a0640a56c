//! Issue 13: runs never mix (run-directory lock, fresh-into-existing, stale metrics) and
//! non-finite or zero hyperparameters are config errors before anything is written.

use super::common::{quiet, serial, tiny_config, tiny_config_text, ToyTask};
use semhitok_train::checkpoint;
use semhitok_train::config::TrainConfig;
use semhitok_train::rundir::{read_metrics, RunDir, RunStart};
use semhitok_train::stages::run_stage;
use semhitok_train::synthetic::SyntheticBatches;
use semhitok_train::trainer::{train, TrainOptions};
use semhitok_train::Error;
use std::path::Path;

/// The toy task trained under `opts` (same init and data every call).
fn toy_run(
    cfg: &TrainConfig,
    opts: TrainOptions,
) -> semhitok_train::Result<semhitok_train::trainer::TrainReport> {
    let mut task = ToyTask::new(1);
    let mut data = SyntheticBatches::new(3, 4, 16);
    train(&cfg.loop_config(), &mut task, &mut data, &opts)
}

/// The steps metrics.jsonl of `dir` holds, in file order.
fn logged_steps(dir: &Path) -> Vec<u64> {
    read_metrics(dir)
        .iter()
        .filter_map(|m| m["step"].as_u64())
        .collect()
}

#[test]
fn bad_hyperparameters_name_key_and_file() {
    let text = tiny_config_text(Path::new("/tmp/never-written"), 5, 5);
    for (set, key) in [
        ("optim.lr=nan", "optim.lr"),
        ("optim.lr=inf", "optim.lr"),
        ("optim.lr=-1.0", "optim.lr"),
        ("optim.betas=[0.9, 1.0]", "optim.betas[1]"),
        ("optim.betas=[-0.1, 0.99]", "optim.betas[0]"),
        ("optim.grad_clip=nan", "optim.grad_clip"),
        ("data.heldout_fraction=1.0", "data.heldout_fraction"),
        ("data.max_crop_frac=0.0", "data.max_crop_frac"),
        ("schedule.log_every=0", "schedule.log_every"),
    ] {
        let err = TrainConfig::from_toml_str(&text, Path::new("configs/bad.toml"), &[set.into()])
            .expect_err(set)
            .to_string();
        assert!(err.contains(key), "{set}: {err}");
        assert!(err.contains("configs/bad.toml"), "{set}: {err}");
    }
    assert!(!Path::new("/tmp/never-written").exists());
}

#[test]
fn second_process_on_a_run_dir_is_refused_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(&tmp.path().join("r"), 5, 5, &[]);
    let held = RunDir::create(&cfg.loop_config(), &[], RunStart::Fresh).unwrap();
    // flock locks belong to the open file, so a second open in this process conflicts too.
    let err = RunDir::create(&cfg.loop_config(), &[], RunStart::Resume)
        .unwrap_err()
        .to_string();
    assert!(err.contains("in use by another process"), "{err}");
    assert!(
        err.contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    assert!(
        err.contains(&cfg.run.out_dir.display().to_string()),
        "{err}"
    );
    drop(held);
    // Released with its holder (the kernel does the same when a process dies).
    RunDir::create(&cfg.loop_config(), &[], RunStart::Resume).unwrap();
}

#[test]
fn fresh_run_into_an_existing_run_is_refused_unless_resume_or_overwrite() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    let cfg = tiny_config(&dir, 4, 2, &[]);
    let run = |opts: TrainOptions| toy_run(&cfg, opts);
    run(quiet()).unwrap();
    let before = read_metrics(&dir).len();
    let err = run(quiet()).unwrap_err().to_string();
    assert!(err.contains("already holds a run"), "{err}");
    assert_eq!(
        read_metrics(&dir).len(),
        before,
        "a refused run wrote metrics"
    );
    // --resume auto on a finished run: nothing left to do, nothing appended.
    let r = run(TrainOptions {
        resume: true,
        ..quiet()
    })
    .unwrap();
    assert_eq!(r.start_step, 4);
    assert_eq!(read_metrics(&dir).len(), before);
    // --overwrite: the old run is gone, the new one complete and alone.
    let r = run(TrainOptions {
        overwrite: true,
        ..quiet()
    })
    .unwrap();
    assert_eq!(r.start_step, 0);
    assert_eq!(logged_steps(&dir), vec![1, 2, 3, 4]);
}

#[test]
fn resume_before_the_first_checkpoint_drops_the_dead_runs_metrics() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    let cfg = tiny_config(&dir, 6, 5, &[]);
    let run = |opts: TrainOptions| toy_run(&cfg, opts);
    // Dies after 3 steps: metrics for steps 1..3, no checkpoint (the first is at 5).
    run(TrainOptions {
        stop_after: Some(3),
        ..quiet()
    })
    .unwrap();
    assert_eq!(read_metrics(&dir).len(), 3);
    let r = run(TrainOptions {
        resume: true,
        ..quiet()
    })
    .unwrap();
    assert_eq!(r.start_step, 0);
    assert_eq!(logged_steps(&dir), vec![1, 2, 3, 4, 5, 6]);
}

/// The toy task, altered by `setup`, trained under `opts`.
fn toy_run_with(
    cfg: &TrainConfig,
    opts: TrainOptions,
    setup: impl FnOnce(&mut ToyTask),
) -> semhitok_train::Result<semhitok_train::trainer::TrainReport> {
    let mut task = ToyTask::new(1);
    setup(&mut task);
    let mut data = SyntheticBatches::new(3, 4, 16);
    train(&cfg.loop_config(), &mut task, &mut data, &opts)
}

/// Every checkpoint of `dir`: (step, all floating tensors finite, largest |value|).
fn checkpoints(dir: &Path) -> Vec<(u64, bool, f64)> {
    checkpoint::list(dir)
        .unwrap()
        .iter()
        .map(|d| {
            let ck = checkpoint::load(d).unwrap();
            let floats = ck.tensors.values().filter(|t| t.is_floating_point());
            let (mut finite, mut max) = (true, 0f64);
            for t in floats {
                finite &= t.isfinite().all().int64_value(&[]) == 1;
                max = max.max(t.abs().max().double_value(&[]));
            }
            (ck.state.step, finite, max)
        })
        .collect()
}

#[test]
fn lr_blowup_stops_before_any_checkpoint_holds_blown_up_weights() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    // The landed trainer ran this to the end, its step-1 checkpoint holding weights ~1e5.
    let cfg = tiny_config(&dir, 5, 1, &["optim.lr=1e6", "optim.grad_clip=0.0"]);
    let err = toy_run(&cfg, quiet()).unwrap_err();
    match &err {
        Error::Diverged { step, detail } => {
            assert_eq!(*step, 1, "{detail}");
            assert!(detail.contains("guard.max_weight_growth"), "{detail}");
        }
        e => panic!("expected Diverged, got {e}"),
    }
    assert!(checkpoints(&dir).is_empty(), "{:?}", checkpoints(&dir));
    let diag = std::fs::read_to_string(dir.join("nan-diagnostic.json")).unwrap();
    assert!(diag.contains("param_norm_after"), "{diag}");
}

#[test]
fn non_finite_state_is_never_checkpointed_and_names_the_tensor() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    let cfg = tiny_config(&dir, 8, 1, &[]);
    // A weight goes NaN after step index 2 (the 3rd step) while its loss was still finite.
    let err = toy_run_with(&cfg, quiet(), |t| t.poison_after = Some(2)).unwrap_err();
    match &err {
        Error::NonFinite { step, detail } => {
            assert_eq!(*step, 3, "{detail}");
            assert!(detail.contains("model.enc.weight"), "{detail}");
            assert!(detail.contains("step-00000002"), "{detail}");
        }
        e => panic!("expected NonFinite, got {e}"),
    }
    let cks = checkpoints(&dir);
    assert_eq!(cks.iter().map(|c| c.0).max(), Some(2), "{cks:?}");
    assert!(cks.iter().all(|c| c.1), "{cks:?}");
}

#[test]
fn persisting_loss_spike_stops_and_holds_back_checkpoints() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    let sets = ["guard.spike_window=8", "guard.spike_patience=3"];
    let cfg = tiny_config(&dir, 30, 1, &sets);
    // Steps with index >= 20 (metrics steps 21, 22, ...) have a 1000x loss.
    let err = toy_run_with(&cfg, quiet(), |t| t.spike_at = Some(20)).unwrap_err();
    match &err {
        Error::Diverged { step, detail } => {
            assert_eq!(*step, 23, "{detail}");
            assert!(detail.contains("\"loss\""), "{detail}");
            assert!(detail.contains("step-00000020"), "{detail}");
        }
        e => panic!("expected Diverged, got {e}"),
    }
    // Steps 21 and 22 were spiking: their checkpoints were held back.
    let cks = checkpoints(&dir);
    assert_eq!(cks.iter().map(|c| c.0).max(), Some(20), "{cks:?}");
    // The same run without the spike trains to the end (the guard does not fire on its own).
    let ok = tiny_config(&tmp.path().join("ok"), 30, 10, &sets);
    toy_run(&ok, quiet()).unwrap();
}

#[test]
fn bad_guard_values_are_config_errors() {
    let text = tiny_config_text(Path::new("/tmp/never-written"), 5, 5);
    for (set, key) in [
        ("guard.spike_factor=0.5", "guard.spike_factor"),
        ("guard.spike_factor=nan", "guard.spike_factor"),
        ("guard.max_weight_growth=1.0", "guard.max_weight_growth"),
        ("guard.spike_window=2", "guard.spike_window"),
        ("guard.spike_patience=0", "guard.spike_patience"),
        ("teacher.stride=4", "teacher.stride"),
    ] {
        let err = TrainConfig::from_toml_str(&text, Path::new("configs/g.toml"), &[set.into()])
            .expect_err(set)
            .to_string();
        assert!(err.contains(key), "{set}: {err}");
        assert!(err.contains("configs/g.toml"), "{set}: {err}");
    }
}

#[test]
fn missing_input_paths_name_key_path_and_file() {
    // Through the user's path (`semhitok train` = `run_stage`): each missing input is an error
    // naming its key, the path and the config file, before the run directory is written.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r");
    let text = tiny_config_text(&out, 5, 5);
    for (sets, key, path) in [
        (
            vec!["teacher.weights=\"/nonexistent/w.safetensors\""],
            "teacher.weights",
            "/nonexistent/w.safetensors",
        ),
        (
            vec!["init.spc=\"/nonexistent/spc-run\""],
            "init.spc",
            "/nonexistent/spc-run",
        ),
        (
            vec!["data.kind=\"photos\"", "data.root=\"/nonexistent/photos\""],
            "data.root",
            "/nonexistent/photos",
        ),
    ] {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let cfg = TrainConfig::from_toml_str(&text, Path::new("configs/p.toml"), &sets).unwrap();
        let err = run_stage(&cfg, RunStart::Fresh, vec![], true)
            .unwrap_err()
            .to_string();
        assert!(err.contains(key), "{sets:?}: {err}");
        assert!(err.contains(path), "{sets:?}: {err}");
        assert!(err.contains("configs/p.toml"), "{sets:?}: {err}");
        assert!(!out.exists(), "{sets:?}: the run directory was written");
    }
}
