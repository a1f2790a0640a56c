//! Data-parallel training (issue 19) on this machine: Gloo, ranks as `semhitok train` processes
//! on localhost, a free port per run (torchrun's environment, set as `cargo xtask train --gpus N`
//! sets it).
//!
//! - 2 ranks x batch B/2 = 1 process x batch B after 20 steps of `spc` and of `pre` (no
//!   discriminator: its BatchNorm and adaptive weight are per rank), up to float summation order;
//! - world size 1 is exactly the plain run (bit-identical checkpoint);
//! - a killed rank makes the others exit non-zero with the collective error, within the
//!   configured timeout, and the last checkpoint is intact and resumable.

use super::stages::cfg;
use semhitok_train::checkpoint::{load_latest, Checkpoint};
use semhitok_train::config::TrainConfig;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(super) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free localhost port")
}

/// Write `c` as `dir/NAME.toml` and return the path.
pub(super) fn write_cfg(c: &TrainConfig, dir: &Path, name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, c.to_toml()).unwrap();
    p
}

/// `semhitok train --config CFG --quiet` (one intra-op thread: the ranks share 2 cores).
pub(super) fn train_cmd(config: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_semhitok"));
    cmd.args(["train", "--quiet", "--dist-backend", "gloo", "--config"])
        .arg(config)
        .args(["--set", "run.threads=1"])
        .args(extra)
        .env_remove("WORLD_SIZE")
        .env_remove("RANK")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Start `world` ranks with torchrun's variables.
pub(super) fn spawn_ranks(config: &Path, world: usize, extra: &[&str]) -> Vec<Child> {
    let port = free_port().to_string();
    (0..world)
        .map(|r| {
            train_cmd(config, extra)
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .env("RANK", r.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("WORLD_SIZE", world.to_string())
                .spawn()
                .expect("semhitok starts")
        })
        .collect()
}

pub(super) fn check(out: Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run `world` ranks to success; rank 0's stderr.
pub(super) fn run_ranks(config: &Path, world: usize, extra: &[&str]) -> String {
    let kids = spawn_ranks(config, world, extra);
    let mut first = String::new();
    for (r, k) in kids.into_iter().enumerate() {
        let out = k.wait_with_output().unwrap();
        if r == 0 {
            first = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        check(out, &format!("rank {r} of {world}"));
    }
    first
}

pub(super) fn run_plain(config: &Path, extra: &[&str]) {
    check(train_cmd(config, extra).output().unwrap(), "plain run");
}

pub(super) fn latest(run: &Path) -> Checkpoint {
    load_latest(run)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("no checkpoint in {}", run.display()))
}

/// Largest |a - b| over the `model.` and `ema.` tensors (every key of `a` must be in `b`), and
/// the key where it occurs.
pub(super) fn max_diff(a: &Checkpoint, b: &Checkpoint) -> (f64, String) {
    let mut worst = (0f64, String::new());
    for (k, t) in a
        .tensors
        .iter()
        .filter(|(k, _)| k.starts_with("model.") || k.starts_with("ema."))
    {
        let u = b.tensors.get(k).unwrap_or_else(|| panic!("{k} missing"));
        assert_eq!(t.size(), u.size(), "{k}");
        let d = (t.to_kind(tch::Kind::Double) - u.to_kind(tch::Kind::Double))
            .abs()
            .max()
            .double_value(&[]);
        if d > worst.0 || d.is_nan() {
            worst = (d, k.clone());
        }
    }
    worst
}

/// Float summation order (per-rank means averaged vs one mean; gradient sums in another order)
/// moves values by a few ulps per step; AdamW's normalised update and the EMA codebook keep
/// that at ~1e-6 after 20 steps. A wrong reduction (sum instead of mean, stale statistics,
/// different data) moves them by > 1e-2.
pub(super) const TOL: f64 = 1e-4;

/// 20 steps of `stage` as one process with batch 4 and as 2 ranks with batch 2 each.
fn two_halves_equal_one_whole(stage: &str, sets: &[String]) {
    let tmp = tempfile::tempdir().unwrap();
    let whole = cfg(&tmp.path().join("whole"), stage, 20, sets);
    let mut halves = cfg(&tmp.path().join("halves"), stage, 20, sets);
    halves.data.batch_size = 2;
    run_plain(&write_cfg(&whole, tmp.path(), "whole"), &[]);
    run_ranks(&write_cfg(&halves, tmp.path(), "halves"), 2, &[]);
    let (a, b) = (latest(&whole.run.out_dir), latest(&halves.run.out_dir));
    assert_eq!(a.state.step, 20);
    assert_eq!(b.state.step, 20);
    // The same images in the same order: 20 steps x 4 images, as a global position.
    assert_eq!(a.state.data_state, b.state.data_state);
    assert_eq!(a.state.data_state["index"], 80);
    let (d, key) = max_diff(&a, &b);
    eprintln!("{stage}: 2 ranks x 2 vs 1 x 4 after 20 steps: max |diff| {d:.3e} at {key}");
    assert!(
        d <= TOL,
        "{stage}: max |diff| {d} at {key} (tolerance {TOL})"
    );
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(halves.run.out_dir.join("dist.json")).unwrap())
            .unwrap();
    assert_eq!(info["global_batch"], 4, "{info}");
    assert_eq!(info["world_size"], 2, "{info}");
    // Logged values are global: losses averaged over the ranks, the norm of the averaged
    // gradient (AdamW is nearly blind to a gradient scale, these are not).
    let (ma, mb) = (
        semhitok_train::rundir::read_metrics(&whole.run.out_dir),
        semhitok_train::rundir::read_metrics(&halves.run.out_dir),
    );
    assert_eq!(ma.len(), 4, "{ma:?}");
    assert_eq!(mb.len(), 4, "only rank 0 logs: {mb:?}");
    for (ra, rb) in ma.iter().zip(&mb) {
        assert_eq!(ra["step"], rb["step"]);
        for key in ["loss", "grad_norm"] {
            let (x, y) = (ra[key].as_f64().unwrap(), rb[key].as_f64().unwrap());
            assert!(
                (x - y).abs() <= TOL * x.abs().max(1.0),
                "{stage} step {}: {key} {x} (1 x 4) vs {y} (2 x 2)",
                ra["step"]
            );
        }
    }
}

#[test]
fn dist_spc_two_ranks_of_half_batch_equal_one_full_batch() {
    two_halves_equal_one_whole("spc", &[]);
}

#[test]
fn dist_pre_two_ranks_of_half_batch_equal_one_full_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let spc = cfg(&tmp.path().join("spc"), "spc", 5, &[]);
    run_plain(&write_cfg(&spc, tmp.path(), "spc"), &[]);
    let init = format!("init.spc=\"{}\"", spc.run.out_dir.display());
    two_halves_equal_one_whole("pre", &[init]);
}

#[test]
fn dist_world_size_one_is_exactly_the_plain_run() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = cfg(&tmp.path().join("plain"), "spc", 8, &[]);
    let one = cfg(&tmp.path().join("one"), "spc", 8, &[]);
    run_plain(&write_cfg(&plain, tmp.path(), "plain"), &[]);
    run_ranks(&write_cfg(&one, tmp.path(), "one"), 1, &[]);
    let (a, b) = (latest(&plain.run.out_dir), latest(&one.run.out_dir));
    assert_eq!(
        a.state.tensors_sha256, b.state.tensors_sha256,
        "checkpoints differ"
    );
    let losses = |d: &Path| -> Vec<f64> {
        semhitok_train::rundir::read_metrics(d)
            .iter()
            .map(|r| r["loss"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(losses(&plain.run.out_dir), losses(&one.run.out_dir));
}

/// 3 ranks; rank 2 is killed (SIGKILL) once the step-2 checkpoint exists. Ranks 0 and 1 stop
/// with the c10d error naming the collective, their rank and the step, well within the
/// configured 20 s; the newest checkpoint loads (its SHA-256 checked) and a 1-process run with
/// the same global batch resumes from it.
#[test]
fn dist_a_killed_rank_stops_the_others_and_the_checkpoint_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = [
        "schedule.ckpt_every=2".to_string(),
        "dist.timeout_s=20".to_string(),
    ];
    // Far longer than the test (a short schedule can run out between two polls).
    let mut c = cfg(&tmp.path().join("run"), "spc", 1_000_000, &sets);
    c.data.batch_size = 2;
    let config = write_cfg(&c, tmp.path(), "run");
    let mut kids = spawn_ranks(&config, 3, &[]);
    wait_for_a_checkpoint(&mut kids, &c.run.out_dir);
    kids[2].kill().unwrap();
    let killed_at = Instant::now();
    let _ = kids.pop().unwrap().wait();
    for (r, k) in kids.into_iter().enumerate() {
        let out = k.wait_with_output().unwrap();
        let took = killed_at.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().find(|l| l.contains("c10d")).unwrap_or("");
        eprintln!("rank {r} exited after {took:?}: {line}");
        assert!(!out.status.success(), "rank {r} exited 0: {err}");
        assert!(took < Duration::from_secs(20), "rank {r} took {took:?}");
        assert!(
            err.contains("c10d")
                && err.contains(&format!("rank {r} of 3"))
                && err.contains("at step"),
            "rank {r}: {err}"
        );
    }
    let last = latest(&c.run.out_dir);
    assert!(last.state.step >= 2, "{}", last.state.step);
    // Resume with one process and the same global batch (3 x 2): the data position carries over.
    let until = last.state.step + 2;
    let resume_sets = [
        "--resume".to_string(),
        c.run.out_dir.display().to_string(),
        "--set".into(),
        format!("schedule.steps={until}"),
        "--set".into(),
        "data.batch_size=6".into(),
    ];
    let args: Vec<&str> = resume_sets.iter().map(String::as_str).collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_semhitok"));
    cmd.args(["train", "--quiet"])
        .args(&args)
        .env_remove("WORLD_SIZE")
        .env_remove("RANK");
    check(cmd.output().unwrap(), "resume");
    let after = latest(&c.run.out_dir);
    assert_eq!(after.state.step, until);
    assert_eq!(
        after.state.data_state["index"].as_u64().unwrap(),
        until * 6,
        "{}",
        after.state.data_state
    );
}

/// 2 ranks; rank 1 is frozen (SIGSTOP: alive, sockets open, never answering) once the step-2
/// checkpoint exists. Rank 0 stops with the timeout error after about 3 s instead of waiting
/// forever. Both limits are 3 s: rank 1 may be frozen before it reached the checkpoint barrier
/// (`dist.checkpoint_timeout_s`) or in a later step's collective (`dist.timeout_s`).
#[test]
fn dist_a_stuck_rank_makes_the_others_time_out() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = [
        "schedule.ckpt_every=2".to_string(),
        "dist.timeout_s=3".to_string(),
        "dist.checkpoint_timeout_s=3".to_string(),
    ];
    // A schedule far longer than the test: on an idle machine 2,000 tiny steps ran out (and pruned
    // step 2's checkpoint) between two polls.
    let mut c = cfg(&tmp.path().join("run"), "spc", 1_000_000, &sets);
    c.data.batch_size = 2;
    let config = write_cfg(&c, tmp.path(), "run");
    let mut kids = spawn_ranks(&config, 2, &[]);
    wait_for_a_checkpoint(&mut kids, &c.run.out_dir);
    let stuck = kids.pop().unwrap();
    // SAFETY: signalling a child process we started and still own.
    unsafe { libc::kill(stuck.id() as i32, libc::SIGSTOP) };
    let stopped_at = Instant::now();
    let out = kids.pop().unwrap().wait_with_output().unwrap();
    let took = stopped_at.elapsed();
    let mut stuck = stuck;
    let _ = stuck.kill();
    let _ = stuck.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().find(|l| l.contains("c10d")).unwrap_or("");
    eprintln!("rank 0 exited after {took:?}: {line}");
    assert!(!out.status.success(), "rank 0 exited 0: {err}");
    assert!(
        line.contains("rank 0 of 2") && line.contains("at step") && line.contains("timeout 3s"),
        "{err}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(15),
        "rank 0 stopped {took:?} after its peer froze (timeout 3 s)"
    );
    assert!(latest(&c.run.out_dir).state.step >= 2);
}

/// Poll until the run in `run` has a checkpoint, every rank still alive (an early exit fails
/// with that rank's stderr; the others are killed), at most 120 s.
fn wait_for_a_checkpoint(kids: &mut Vec<Child>, run: &Path) {
    let t0 = Instant::now();
    while !semhitok_train::checkpoint::list(run).is_ok_and(|l| !l.is_empty()) {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no checkpoint after 120 s"
        );
        if let Some(r) = kids
            .iter_mut()
            .position(|k| k.try_wait().unwrap().is_some())
        {
            let out = kids.remove(r).wait_with_output().unwrap();
            for k in kids.iter_mut() {
                let _ = k.kill();
            }
            panic!(
                "rank {r} exited early ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// 2 ranks for 6 steps, and 2 ranks resumed from the step-3 checkpoint of a copy of that run:
/// the step-6 checkpoints are bit-identical (every rank restores the same state and data
/// position, the per-step seeds depend only on the step and the rank).
#[test]
fn dist_resume_with_the_same_world_size_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let sets = ["schedule.ckpt_every=3".to_string()];
    let mut c = cfg(&tmp.path().join("full"), "spc", 6, &sets);
    c.data.batch_size = 2;
    c.schedule.keep_last = 2;
    let config = write_cfg(&c, tmp.path(), "full");
    run_ranks(&config, 2, &[]);
    let full = latest(&c.run.out_dir);
    assert_eq!(full.state.step, 6);
    let copy = tmp.path().join("resumed");
    copy_dir(&c.run.out_dir, &copy);
    std::fs::remove_dir_all(copy.join("checkpoints/step-00000006")).unwrap();
    let resume = copy.display().to_string();
    run_ranks(&copy.join("config.toml"), 2, &["--resume", &resume]);
    let again = latest(&copy);
    assert_eq!(again.state.step, 6);
    assert_eq!(again.state.data_state, full.state.data_state);
    assert_eq!(
        again.state.tensors_sha256, full.state.tensors_sha256,
        "resumed 2-rank run differs from the uninterrupted one"
    );
}

/// A checkpoint of a 2-rank run on a real image stream (the embedded photos) holds both ranks'
/// data positions (gathered and merged), so each rank resumes its own: the resumed run ends
/// with the same weights and data state as the uninterrupted one. (With rank 0's position
/// alone, rank 1 refused to resume.)
#[test]
fn dist_resume_on_a_photo_stream_is_exact() {
    let tmp = tempfile::tempdir().unwrap();
    let photos = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.assets/photos");
    assert!(photos.exists(), "run `cargo xtask assets`");
    let sets = [
        "schedule.ckpt_every=2".to_string(),
        "data.kind=\"photos\"".to_string(),
        format!("data.root=\"{}\"", photos.display()),
        "data.max_short_side=96".to_string(),
        "data.workers=1".to_string(),
    ];
    let mut c = cfg(&tmp.path().join("full"), "spc", 4, &sets);
    c.data.batch_size = 2;
    c.schedule.keep_last = 2;
    let config = write_cfg(&c, tmp.path(), "full");
    run_ranks(&config, 2, &[]);
    let full = latest(&c.run.out_dir);
    assert_eq!(full.state.step, 4);
    let copy = tmp.path().join("resumed");
    copy_dir(&c.run.out_dir, &copy);
    std::fs::remove_dir_all(copy.join("checkpoints/step-00000004")).unwrap();
    let resume = copy.display().to_string();
    run_ranks(&copy.join("config.toml"), 2, &["--resume", &resume]);
    let again = latest(&copy);
    assert_eq!(again.state.step, 4);
    assert_eq!(again.state.data_state, full.state.data_state);
    assert_eq!(
        again.state.tensors_sha256, full.state.tensors_sha256,
        "resumed 2-rank photo run differs from the uninterrupted one"
    );
}

/// `dist.bucket_mb` / `dist.overlap`: the generator's gradients all-reduced in buckets after the
/// backward pass, or launched from it by the post-accumulate-grad hooks, give bit for bit the run
/// of one collective over the flat buffer (2 ranks: each element is the same a + b, only split
/// into several collectives), with gradient accumulation (only the last micro-batch launches).
#[test]
fn dist_bucketed_and_overlapped_all_reduce_equal_the_flat_one_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut sums = vec![];
    for (name, sets) in [
        ("flat", vec![]),
        ("bucketed", vec!["dist.bucket_mb=0.02".to_string()]),
        (
            "overlapped",
            vec![
                "dist.bucket_mb=0.02".to_string(),
                "dist.overlap=true".to_string(),
            ],
        ),
    ] {
        let mut sets = sets;
        sets.push("optim.accum_steps=2".into());
        let mut c = cfg(&tmp.path().join(name), "spc", 6, &sets);
        c.data.batch_size = 2;
        let log = run_ranks(&write_cfg(&c, tmp.path(), name), 2, &[]);
        // The reducer really ran: several buckets, and with overlap some launched by the hooks.
        let buckets = log
            .lines()
            .find_map(|l| l.strip_prefix("data-parallel: generator gradients in "))
            .and_then(|l| l.split(' ').next()?.parse::<usize>().ok());
        match name {
            "flat" => assert_eq!(buckets, None, "{log}"),
            _ => assert!(buckets.is_some_and(|n| n >= 4), "{log}"),
        }
        let hooked = log.lines().find_map(|l| {
            l.strip_prefix("data-parallel: ")?
                .split(" of ")
                .next()?
                .parse::<usize>()
                .ok()
        });
        if name == "overlapped" {
            assert!(hooked.is_some_and(|n| n >= 2), "{log}");
        } else {
            assert_eq!(hooked, None, "{log}");
        }
        eprintln!("{name}: {buckets:?} buckets, {hooked:?} completed inside the backward");
        let ck = latest(&c.run.out_dir);
        assert_eq!(ck.state.step, 6);
        let losses: Vec<f64> = semhitok_train::rundir::read_metrics(&c.run.out_dir)
            .iter()
            .map(|r| r["loss"].as_f64().unwrap())
            .collect();
        sums.push((name, ck.state.tensors_sha256.clone(), losses));
    }
    for (name, sha, losses) in &sums[1..] {
        assert_eq!(
            sha, &sums[0].1,
            "{name}: checkpoint differs from the flat all-reduce's"
        );
        assert_eq!(losses, &sums[0].2, "{name}");
    }
    // A bucketed run's config refuses overlap without buckets, naming the keys.
    let c = cfg(
        &tmp.path().join("bad"),
        "spc",
        2,
        &["dist.overlap=true".to_string()],
    );
    let out = spawn_ranks(&write_cfg(&c, tmp.path(), "bad"), 1, &[])
        .pop()
        .unwrap()
        .wait_with_output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("dist.bucket_mb"),
        "{err}"
    );
}
