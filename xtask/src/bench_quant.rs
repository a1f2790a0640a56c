//! `cargo xtask bench quant`: semhitok-quant versus PyTorch CPU doing the same work the peers'
//! way, with the same thread count, in one run, plus the machine's SGEMM peak.
//!
//! Builds `crates/semhitok-quant/examples/bench_quant.rs` in release, runs it and
//! `scripts/bench_quant_torch.py` (project-local torch in `.libtorch/`), prints a table and writes
//! `target/bench/quant.json`. Targets (issue 3): semantic search >= 4x PyTorch and >= 40% of
//! the SGEMM peak; SGHC search >= 10x PyTorch.

use crate::util;
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::process::Command;

/// Arguments of `cargo xtask bench quant`.
#[derive(Debug, clap::Args)]
pub struct QuantArgs {
    /// Threads for both sides (rayon pool and torch.set_num_threads); default: all cores.
    #[arg(long)]
    threads: Option<usize>,
    /// Timed repetitions per measurement (the best time of each side is reported).
    #[arg(long, default_value_t = 10)]
    reps: usize,
}

fn parse_json(what: &str, text: &str) -> Result<Map<String, Value>> {
    let v: Value = serde_json::from_str(text)
        .with_context(|| format!("{what} printed invalid JSON:\n{text}"))?;
    match v {
        Value::Object(m) => Ok(m),
        _ => bail!("{what} printed JSON that is not an object"),
    }
}

fn num(m: &Map<String, Value>, key: &str) -> Result<f64> {
    m.get(key)
        .and_then(Value::as_f64)
        .with_context(|| format!("missing numeric key {key:?}"))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Runs both sides and writes `target/bench/quant.json`.
pub fn run(root: &Path, args: &QuantArgs) -> Result<()> {
    let threads = match args.threads {
        Some(t) => t,
        None => std::thread::available_parallelism()?.get(),
    };
    let reps = args.reps.max(1).to_string();
    let threads_s = threads.to_string();
    eprintln!("building semhitok-quant bench_quant (release)...");
    let exe = util::build_example(root, "semhitok-quant", "bench_quant")?;
    eprintln!(
        "running {} --threads {threads} --reps {reps}",
        exe.display()
    );
    let ours = parse_json(
        "bench_quant",
        &util::output(Command::new(&exe).args(["--threads", &threads_s, "--reps", &reps]))?,
    )?;
    eprintln!("running scripts/bench_quant_torch.py (PyTorch CPU, {threads} threads)...");
    let mut py = Command::new("python3");
    py.current_dir(root)
        .env("PYTHONPATH", root.join(".libtorch"))
        .args([
            "scripts/bench_quant_torch.py",
            "--threads",
            &threads_s,
            "--reps",
            &reps,
        ]);
    let torch = parse_json("bench_quant_torch.py", &util::output(&mut py)?)?;

    let sem = num(&ours, "sem_search_tokens_per_s")?;
    let tsem = num(&torch, "torch_sem_search_tokens_per_s")?;
    let gflops = num(&ours, "sem_search_gflops")?;
    let peak = num(&torch, "sgemm_peak_gflops")?;
    // SGHC headline: the D_pix (8 or 32) with the smaller speedup over PyTorch.
    let mut sghc = Vec::new();
    for d in [8, 32] {
        let a = num(&ours, &format!("sghc_d{d}_tokens_per_s"))?;
        let b = num(&torch, &format!("torch_sghc_d{d}_tokens_per_s"))?;
        sghc.push((d, a, b));
    }
    let &(sghc_d, sghc_ours, sghc_torch) = sghc
        .iter()
        .min_by(|x, y| (x.1 / x.2).total_cmp(&(y.1 / y.2)))
        .expect("two entries");

    let mut out = Map::new();
    out.insert("threads".into(), json!(threads));
    out.insert("sem_search_tokens_per_s".into(), json!(sem));
    out.insert("torch_sem_search_tokens_per_s".into(), json!(tsem));
    out.insert("sem_search_speedup".into(), json!(sem / tsem));
    out.insert("sem_search_gflops".into(), json!(gflops));
    out.insert("sgemm_peak_gflops".into(), json!(peak));
    out.insert("sem_search_fraction_of_peak".into(), json!(gflops / peak));
    out.insert("sghc_search_d_pix".into(), json!(sghc_d));
    out.insert("sghc_search_tokens_per_s".into(), json!(sghc_ours));
    out.insert("torch_sghc_search_tokens_per_s".into(), json!(sghc_torch));
    out.insert("sghc_search_speedup".into(), json!(sghc_ours / sghc_torch));
    out.insert(
        "machine".into(),
        json!({ "cpu": cpu_model(), "logical_cpus": std::thread::available_parallelism()?.get() }),
    );
    out.insert(
        "command".into(),
        json!(format!(
            "cargo xtask bench quant --threads {threads} --reps {reps}"
        )),
    );
    out.insert("semhitok_quant".into(), Value::Object(ours.clone()));
    out.insert("torch".into(), Value::Object(torch.clone()));

    println!(
        "semhitok-quant vs PyTorch {} CPU, {threads} threads ({})",
        torch["torch_version"].as_str().unwrap_or("?"),
        cpu_model()
    );
    println!(
        "{:<44} {:>14} {:>14} {:>8} {:>8}",
        "measure", "semhitok-quant", "PyTorch", "ratio", "target"
    );
    let row = |name: &str, a: f64, b: f64, target: f64| {
        let r = a / b;
        let ok = if r >= target { "met" } else { "MISSED" };
        println!("{name:<44} {a:>14.0} {b:>14.0} {r:>7.2}x {target:>5}x {ok}");
    };
    row(
        "semantic search, tokens/s (N4096 K16384 D32)",
        sem,
        tsem,
        4.0,
    );
    for &(d, a, b) in &sghc {
        row(
            &format!("SGHC search D_pix={d}, tokens/s (m=12)"),
            a,
            b,
            10.0,
        );
    }
    let frac = gflops / peak;
    println!(
        "{:<44} {gflops:>14.1} {peak:>14.1} {:>7.0}% {:>6}% {}",
        "search GFLOP/s vs SGEMM peak",
        frac * 100.0,
        40,
        if frac >= 0.4 { "met" } else { "MISSED" }
    );

    let dir = root.join("target").join("bench");
    std::fs::create_dir_all(&dir).with_context(|| dir.display().to_string())?;
    let path = dir.join("quant.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&Value::Object(out))? + "\n",
    )
    .with_context(|| path.display().to_string())?;
    println!("wrote {}", path.display());
    Ok(())
}
