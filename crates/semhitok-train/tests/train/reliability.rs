//! Issue 13: runs never mix (run-directory lock, fresh-into-existing, stale metrics) and
//! non-finite or zero hyperparameters are config errors before anything is written.

use super::common::{quiet, serial, tiny_config, tiny_config_text, ToyTask};
use semhitok_train::config::TrainConfig;
use semhitok_train::rundir::{read_metrics, RunDir, RunStart};
use semhitok_train::synthetic::SyntheticBatches;
use semhitok_train::trainer::{train, TrainOptions};
use std::path::Path;

/// The toy task trained under `opts` (same init and data every call).
fn toy_run(
    cfg: &TrainConfig,
    opts: TrainOptions,
) -> semhitok_train::Result<semhitok_train::trainer::TrainReport> {
    let mut task = ToyTask::new(1);
    let mut data = SyntheticBatches::new(3, 4, 16);
    train(cfg, &mut task, &mut data, &opts)
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
    let held = RunDir::create(&cfg, &[], RunStart::Fresh).unwrap();
    // flock locks belong to the open file, so a second open in this process conflicts too.
    let err = RunDir::create(&cfg, &[], RunStart::Resume)
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
    RunDir::create(&cfg, &[], RunStart::Resume).unwrap();
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
