//! `cargo xtask demo llava` and `cargo xtask demo t2i`: the CPU demos of the two downstream tasks
//! (issues 17 §4, 18 §3). LibTorch and the assets first, then `semhitok` is built and
//! `scripts/demo_llava.sh` / `scripts/t2i_cpu_demo.sh` run over it (the options below become the
//! scripts' variables); the LLaVA table is made here from the runs' `eval.json`.
//! `cargo xtask demo` without `llava` / `t2i` stays the tokenizer demo.

use crate::{libtorch, util};
use anyhow::{Context, Result};
use clap::Parser;
use std::path::{Path, PathBuf};

/// `cargo xtask demo llava`: projector-only LLaVA stage 1 per tokenizer, evaluation, table, ask.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask demo llava")]
pub struct LlavaDemoArgs {
    /// A `cargo xtask fmnist-tokenizers` set (`<name>/model`); when it has none, a mini set is
    /// trained once into `--mini`.
    #[arg(long, default_value = "runs/fmnist")]
    pub tokenizers: PathBuf,
    /// Where the mini tokenizer set goes (shared with `demo t2i`).
    #[arg(long, default_value = "runs/demo-tokenizers")]
    pub mini: PathBuf,
    /// Steps of each mini tokenizer run (the SPC gets half).
    #[arg(long, default_value_t = 120)]
    pub mini_steps: u64,
    /// Output folder (finished parts are reused).
    #[arg(long, default_value = "runs/demo-llava")]
    pub out: PathBuf,
    /// Projector steps per feature set (240 x 8: the class question rises from chance, 0.10, to
    /// about 0.5 on SGHC codes; 60 steps stayed at chance).
    #[arg(long, default_value_t = 240)]
    pub steps: u64,
    /// Records per step.
    #[arg(long, default_value_t = 8)]
    pub batch: u64,
    /// Test items answered (the first N / 2 test images, each asked both questions).
    #[arg(long, default_value_t = 100)]
    pub eval: u64,
    /// Feature sets, in order (of sghc, sem-only, pixel-vq, teacher). The default pair, SGHC
    /// codes against the continuous teacher features (the upper bound), fits the ~15-minute budget
    /// of a 2-core machine; `--only sghc,sem-only,pixel-vq,teacher` runs the paper's comparison.
    #[arg(long, value_delimiter = ',', default_value = "sghc,teacher")]
    pub only: Vec<String>,
    /// LibTorch threads per process (1: on a shared 2-core VM two were 10x slower, from
    /// OpenMP oversubscription; 2 on an idle machine).
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
}

/// `cargo xtask demo t2i`: a short T2I fine-tune of SmolLM2-135M, a class grid, its accuracy.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask demo t2i")]
pub struct T2iDemoArgs {
    /// A `cargo xtask fmnist-tokenizers` set; when it has no `<name>/model`, a mini set is
    /// trained once into `--mini`.
    #[arg(long, default_value = "runs/fmnist")]
    pub tokenizers: PathBuf,
    /// Which tokenizer of the set (sghc, sem-only, pixel-vq).
    #[arg(long, default_value = "sghc")]
    pub name: String,
    #[arg(long, default_value = "runs/demo-tokenizers")]
    pub mini: PathBuf,
    #[arg(long, default_value_t = 120)]
    pub mini_steps: u64,
    #[arg(long, default_value = "runs/demo-t2i")]
    pub out: PathBuf,
    /// Training steps.
    #[arg(long, default_value_t = 150)]
    pub steps: u64,
    /// Sequences per step.
    #[arg(long, default_value_t = 8)]
    pub batch: u64,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Training images tokenized when the set has no train tokens.
    #[arg(long, default_value_t = 6000)]
    pub train_n: u64,
    /// Images per class of the scored grid.
    #[arg(long, default_value_t = 4)]
    pub per_class: u64,
    #[arg(long, default_value_t = 3.0)]
    pub cfg: f64,
    /// The prompt of the final `semhitok generate`.
    #[arg(long, default_value = "a photo of a Trouser")]
    pub prompt: String,
    /// Images of that prompt.
    #[arg(long, default_value_t = 8)]
    pub n: u64,
    /// The Fashion-MNIST judge (`semhitok fmnist-classifier`); trained when missing.
    #[arg(long, default_value = "runs/fmnist/classifier.safetensors")]
    pub classifier: PathBuf,
    /// Epochs of that training.
    #[arg(long, default_value_t = 1)]
    pub clf_epochs: u64,
    /// LibTorch threads per process (see `demo llava --help`).
    #[arg(long, default_value_t = 1)]
    pub threads: u32,
}

/// Which demo `cargo xtask demo ARGS` asks for: `Some` for `llava` / `t2i`, `None` for the
/// tokenizer demo (whose arguments go to `semhitok demo` unchanged).
#[derive(Debug)]
pub enum Which {
    Llava(LlavaDemoArgs),
    T2i(T2iDemoArgs),
}

/// Parse `cargo xtask demo ARGS` (`--help` and bad options are clap errors: `e.exit()`).
pub fn parse(args: &[String]) -> std::result::Result<Option<Which>, clap::Error> {
    let rest = || args[1..].iter().map(String::as_str);
    Ok(match args.first().map(String::as_str) {
        Some("llava") => Some(Which::Llava(LlavaDemoArgs::try_parse_from(
            std::iter::once("cargo xtask demo llava").chain(rest()),
        )?)),
        Some("t2i") => Some(Which::T2i(T2iDemoArgs::try_parse_from(
            std::iter::once("cargo xtask demo t2i").chain(rest()),
        )?)),
        _ => None,
    })
}

fn script(root: &Path, name: &str, exe: &Path, env: &[(&str, String)]) -> Result<()> {
    let mut cmd = std::process::Command::new("bash");
    cmd.current_dir(root)
        .arg(root.join("scripts").join(name))
        .arg(exe);
    for (k, v) in env {
        cmd.env(k, v);
    }
    util::run(&mut cmd)
}

fn prepare(root: &Path) -> Result<PathBuf> {
    libtorch::ensure(root)?;
    crate::assets::ensure(root)?;
    util::build_bin(root, "semhitok-train", "semhitok")
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

pub fn run(root: &Path, which: Which) -> Result<()> {
    match which {
        Which::Llava(a) => {
            let exe = prepare(root)?;
            let env = [
                ("TOKENIZERS", p(&a.tokenizers)),
                ("MINI", p(&a.mini)),
                ("MINI_STEPS", a.mini_steps.to_string()),
                ("OUT", p(&a.out)),
                ("STEPS", a.steps.to_string()),
                ("BATCH", a.batch.to_string()),
                ("EVAL", a.eval.to_string()),
                ("ONLY", a.only.join(" ")),
                ("THREADS", a.threads.to_string()),
            ];
            script(root, "demo_llava.sh", &exe, &env)?;
            let out = root.join(&a.out);
            let table = llava_table(&out, &a.only)?;
            let ask = ask_lines(&out).unwrap_or_default();
            let times = std::fs::read_to_string(out.join("times.md")).unwrap_or_default();
            let md = format!(
                "# LLaVA CPU demo\n\nProjector-only stage 1 (SmolLM2-135M-Instruct frozen), {} steps x {} \
                 records per feature set; the first {} test items (the first {} Fashion-MNIST test \
                 images, each asked the class question and a POPE-style yes/no question). Chance: \
                 0.10 class accuracy, 0.5 POPE accuracy.\n\n{table}\n{ask}\n## Wall times\n\n{times}",
                a.steps,
                a.batch,
                a.eval,
                a.eval / 2
            );
            let tmp = out.join("table.md.tmp");
            std::fs::write(&tmp, &md)?;
            std::fs::rename(&tmp, out.join("table.md"))?;
            println!("{md}");
            println!("(written to {})", out.join("table.md").display());
            Ok(())
        }
        Which::T2i(a) => {
            let exe = prepare(root)?;
            let env = [
                ("TOKENIZERS", p(&a.tokenizers)),
                ("NAME", a.name.clone()),
                ("MINI", p(&a.mini)),
                ("MINI_STEPS", a.mini_steps.to_string()),
                ("OUT", p(&a.out)),
                ("STEPS", a.steps.to_string()),
                ("BATCH", a.batch.to_string()),
                ("LR", a.lr.to_string()),
                ("TRAIN_N", a.train_n.to_string()),
                ("PER_CLASS", a.per_class.to_string()),
                ("CFG", a.cfg.to_string()),
                ("PROMPT", a.prompt.clone()),
                ("N", a.n.to_string()),
                ("CLASSIFIER", p(&a.classifier)),
                ("CLF_EPOCHS", a.clf_epochs.to_string()),
                ("THREADS", a.threads.to_string()),
            ];
            script(root, "t2i_cpu_demo.sh", &exe, &env)
        }
    }
}

fn f(v: &serde_json::Value) -> String {
    v.as_f64()
        .map(|x| format!("{x:.3}"))
        .unwrap_or_else(|| "-".into())
}

/// The Markdown table of `OUT/<name>/eval.json` for each name (a missing one is a `-` row).
pub fn llava_table(out: &Path, names: &[String]) -> Result<String> {
    let mut s = String::from(
        "| vision features | class accuracy | POPE acc | POPE precision | POPE recall | POPE F1 | yes ratio | items |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for name in names {
        let what = match name.as_str() {
            "sghc" => "sghc (quantized semantic + pixel codes)",
            "sem-only" => "sem-only (semantic codes)",
            "pixel-vq" => "pixel-vq (pixel-only VQ codes)",
            "teacher" => "teacher (continuous features, upper bound)",
            n => n,
        };
        let path = out.join(name).join("eval.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            s.push_str(&format!("| {what} | - | - | - | - | - | - | not run |\n"));
            continue;
        };
        let v: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
        let o = &v["report"]["overall"];
        let (e, y) = (&o["exact"], &o["yes_no"]);
        s.push_str(&format!(
            "| {what} | {} | {} | {} | {} | {} | {} | {} |\n",
            f(&e["accuracy"]),
            f(&y["accuracy"]),
            f(&y["precision"]),
            f(&y["recall"]),
            f(&y["f1"]),
            f(&y["yes_ratio"]),
            v["n"]
        ));
    }
    Ok(s)
}

/// `semhitok ask`'s answers beside the true classes (`OUT/ask.txt`, `OUT/ask.truth.txt`).
fn ask_lines(out: &Path) -> Option<String> {
    let ask = std::fs::read_to_string(out.join("ask.txt")).ok()?;
    let truth = std::fs::read_to_string(out.join("ask.truth.txt")).unwrap_or_default();
    let answers: Vec<&str> = ask.lines().filter(|l| !l.starts_with("loaded ")).collect();
    let mut s = String::from(
        "\n`semhitok ask` (\"What is this item? Answer with the class name.\"):\n\n| test image | answer | true class |\n|---|---|---|\n",
    );
    for (i, a) in answers.iter().enumerate() {
        let t = truth.lines().nth(i).unwrap_or("?");
        s.push_str(&format!("| {i:05}.png | {a} | {t} |\n"));
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn demo_subcommands_parse_and_the_tokenizer_demo_is_untouched() {
        match parse(&args(
            "llava --steps 2 --batch 1 --eval 4 --only sghc,teacher",
        ))
        .unwrap()
        {
            Some(Which::Llava(a)) => {
                assert_eq!((a.steps, a.batch, a.eval), (2, 1, 4));
                assert_eq!(a.only, ["sghc", "teacher"]);
                assert_eq!(a.tokenizers, PathBuf::from("runs/fmnist"));
            }
            w => panic!("{w:?}"),
        }
        match parse(&args("t2i --steps 3 --cfg 5 --per-class 2")).unwrap() {
            Some(Which::T2i(a)) => assert_eq!((a.steps, a.cfg, a.per_class), (3, 5.0, 2)),
            w => panic!("{w:?}"),
        }
        assert!(parse(&args("--steps 5")).unwrap().is_none());
        assert!(parse(&[]).unwrap().is_none());
        let e = parse(&args("t2i --stepz 3")).unwrap_err().to_string();
        assert!(e.contains("--stepz"), "{e}");
    }

    #[test]
    fn llava_table_reads_eval_json_and_marks_missing_runs() {
        let dir = std::env::temp_dir().join(format!("xtask-llava-table-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sghc")).unwrap();
        std::fs::write(
            dir.join("sghc/eval.json"),
            r#"{"n": 4, "report": {"overall": {"exact": {"accuracy": 0.5},
               "yes_no": {"accuracy": 0.75, "precision": 1.0, "recall": 0.5, "f1": 0.6667, "yes_ratio": 0.25}}}}"#,
        )
        .unwrap();
        let t = llava_table(&dir, &["sghc".into(), "teacher".into()]).unwrap();
        assert!(
            t.contains("| sghc (quantized semantic + pixel codes) | 0.500 | 0.750 | 1.000 | 0.500 | 0.667 | 0.250 | 4 |"),
            "{t}"
        );
        assert!(
            t.contains("| teacher (continuous features, upper bound) | - |"),
            "{t}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
