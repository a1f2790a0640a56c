//! `cargo xtask bench llm`: prefill and decode tokens/s of semhitok-mllm's decoder on the embedded
//! SmolLM2-135M-Instruct GGUF versus transformers loading the same GGUF (dequantized to f32), same
//! threads, same prompt ids, in one run.
//!
//! Builds `crates/semhitok-mllm/examples/bench_llm.rs` in release and runs it once per dtype
//! (f32, the reference path; gguf, f32 plus the file's Q4_1 / Q8_0 blocks for the batch-1 decode
//! products; bf16; the last two with their decode-step logits error against f32), then
//! `scripts/bench_llm_cpu.py` (needs transformers in `.pytools/`:
//! `pip install --target .pytools -r scripts/fixtures/requirements.txt`). Prints a table and
//! writes `target/bench/llm.json`. Target (issue 16): >= 1.5x transformers on decode.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::util;

/// Arguments of `cargo xtask bench llm`.
#[derive(Debug, clap::Args)]
pub struct LlmBenchArgs {
    /// GGUF model (default: the embedded SmolLM2-135M-Instruct).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Intra-op threads on both sides.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Prompt length (prefill).
    #[arg(long, default_value_t = 128)]
    prompt_tokens: u32,
    /// New tokens (decode).
    #[arg(long, default_value_t = 64)]
    new_tokens: u32,
    /// Timed runs per side (best kept), after one warm-up.
    #[arg(long, default_value_t = 3)]
    reps: u32,
}

fn num(v: &Value, k: &str) -> Result<f64> {
    v[k].as_f64()
        .with_context(|| format!("missing number {k} in {v}"))
}

/// Runs the benchmark.
pub fn run(root: &Path, a: &LlmBenchArgs) -> Result<()> {
    let model = a
        .model
        .clone()
        .unwrap_or_else(|| root.join(".assets/llm/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if !model.is_file() {
        bail!(
            "{} does not exist: run `cargo xtask assets`",
            model.display()
        );
    }
    if !root.join(".pytools/transformers").is_dir() {
        bail!(
            "transformers is missing from .pytools/: \
             pip install --target .pytools -r scripts/fixtures/requirements.txt"
        );
    }
    let common: Vec<String> = vec![
        "--threads".into(),
        a.threads.to_string(),
        "--prompt-tokens".into(),
        a.prompt_tokens.to_string(),
        "--new-tokens".into(),
        a.new_tokens.to_string(),
        "--reps".into(),
        a.reps.max(1).to_string(),
    ];
    eprintln!("building semhitok-mllm bench_llm (release)...");
    let exe = util::build_example(root, "semhitok-mllm", "bench_llm")?;
    let mut rows = vec![];
    for dtype in ["f32", "gguf", "bf16"] {
        eprintln!("running bench_llm --dtype {dtype}...");
        let mut cmd = Command::new(&exe);
        cmd.current_dir(root)
            .arg("--model")
            .arg(&model)
            .args(["--dtype", dtype, "--accuracy"])
            .args(&common);
        let out = util::output(&mut cmd)?;
        rows.push(
            serde_json::from_str::<Value>(out.trim())
                .with_context(|| format!("bench_llm printed:\n{out}"))?,
        );
    }
    eprintln!("running scripts/bench_llm_cpu.py (transformers)...");
    let mut py = Command::new("python3");
    py.current_dir(root)
        .env(
            "PYTHONPATH",
            format!(
                "{}:{}",
                root.join(".pytools").display(),
                root.join(".libtorch").display()
            ),
        )
        .env("PYTHONNOUSERSITE", "1")
        .arg("scripts/bench_llm_cpu.py")
        .arg("--model")
        .arg(&model)
        .args(&common);
    let out = util::output(&mut py)?;
    let hf: Value = serde_json::from_str(out.trim())
        .with_context(|| format!("bench_llm_cpu.py printed:\n{out}"))?;
    let (hp, hd) = (num(&hf, "prefill_tok_s")?, num(&hf, "decode_tok_s")?);
    println!(
        "SmolLM2-135M-Instruct (GGUF), {} threads, prompt {} tokens, {} new tokens, batch 1, best of {}:",
        a.threads, a.prompt_tokens, a.new_tokens, a.reps
    );
    println!("| implementation | dtype | prefill tok/s | decode tok/s | decode vs transformers | decode-step logits rel err vs f32 |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | f32 | {hp:.1} | {hd:.1} | 1.00x | - |",
        hf["impl"].as_str().unwrap_or("transformers")
    );
    for r in &rows {
        let (p, d) = (num(r, "prefill_tok_s")?, num(r, "decode_tok_s")?);
        let acc = r["accuracy"]["decode_logits_max_rel_err_vs_f32"]
            .as_f64()
            .map_or("-".to_string(), |e| format!("{e:.2e}"));
        println!(
            "| semhitok-mllm | {} | {p:.1} | {d:.1} | {:.2}x | {acc} |",
            r["dtype"].as_str().unwrap_or("?"),
            d / hd
        );
    }
    let path = root.join("target/bench/llm.json");
    std::fs::create_dir_all(path.parent().expect("has parent"))?;
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json!({"rust": rows, "transformers": hf}))?,
    )?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
