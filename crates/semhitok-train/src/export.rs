//! `semhitok export`: a trained run (or one of its checkpoints) as a portable model folder,
//! `config.json` + `model.safetensors` + `README.md` (layout in `semhitok_nn::pretrained`),
//! written atomically. The weights are the model "as trained" (its EMA when the run kept one)
//! and the frozen teacher, so the folder alone encodes and decodes.

use crate::error::Result;
use crate::rundir::read_metrics;
use crate::stages::{load_model, Loaded};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use tch::Device;

/// `semhitok export`.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    /// A `pre` / `decoder-ft` / `joint` run dir (its newest checkpoint) or checkpoint dir, or a
    /// `t2i` run (then the extended LLM is written as an HF folder plus `t2i.json`).
    #[arg(long)]
    pub run: PathBuf,
    /// The model folder to write.
    #[arg(long)]
    pub out: PathBuf,
    /// An `eval.json` of `semhitok eval` on this run, quoted in the model card.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// Replace an existing folder (only after the new one is complete).
    #[arg(long)]
    pub overwrite: bool,
}

/// Export `a.run` into `a.out`; returns the folder.
pub fn export_cmd(a: &ExportArgs) -> Result<PathBuf> {
    // A LLaVA run exports in LLaVA's layout (the LLM's HF folder + mm_projector).
    let cfg = a.run.join("config.toml");
    if cfg.is_file()
        && crate::config::peek_stage(&cfg, &[])?.config_kind() == crate::config::ConfigKind::Llava
    {
        let out = crate::llava::run::export(&a.run, &a.out, a.overwrite)?;
        eprintln!(
            "exported LLaVA run {} -> {}",
            a.run.display(),
            out.display()
        );
        return Ok(out);
    }
    if crate::t2i::model_io::is_t2i(&a.run) {
        if a.out.exists() && !a.overwrite {
            return Err(crate::Error::Input(format!(
                "{} exists (--overwrite replaces it)",
                a.out.display()
            )));
        }
        return crate::t2i::model_io::export_t2i(&a.run, &a.out);
    }
    let loaded = load_model(&a.run, Device::Cpu, false)?;
    let eval = match &a.eval {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .map_err(|e| crate::Error::io(p, e))
                .and_then(|t| {
                    serde_json::from_str::<serde_json::Value>(&t)
                        .map_err(|e| crate::Error::Input(format!("{}: {e}", p.display())))
                })?,
        ),
        None => None,
    };
    let card = model_card(&loaded, eval.as_ref());
    loaded.tok.save_pretrained(&a.out, &card, a.overwrite)?;
    let v = &loaded.tok.config().vocab;
    eprintln!(
        "exported {} (stage {}, step {}, {} weights) -> {} (K = {}, m = {}, K*m = {})",
        loaded.checkpoint.display(),
        loaded.stage.as_str(),
        loaded.step,
        if loaded.ema_used { "EMA" } else { "raw" },
        a.out.display(),
        v.semantic_codebook_size,
        v.sub_codebook_size,
        v.unified_vocab_size
    );
    Ok(a.out.clone())
}

fn run_dir_of(ck: &Path) -> PathBuf {
    ck.parent()
        .and_then(|p| p.parent())
        .map_or_else(|| ck.to_path_buf(), Path::to_path_buf)
}

/// The README.md of the folder: what the model is, how it was trained, its figures, how to use it.
pub fn model_card(l: &Loaded, eval: Option<&serde_json::Value>) -> String {
    let c = l.tok.config();
    let cfg = &l.cfg;
    let run = run_dir_of(&l.checkpoint);
    let mut md = String::new();
    let _ = writeln!(md, "# SemHiTok tokenizer `{}`\n", cfg.run.name);
    let _ = writeln!(
        md,
        "A SemHiTok image tokenizer (semantic-guided hierarchical codebook) exported by `semhitok export` from `{}`.\n",
        l.checkpoint.display()
    );
    let _ = writeln!(md, "| | |\n|---|---|");
    let rows = [
        ("stage", l.stage.as_str().to_string()),
        ("optimizer steps", l.step.to_string()),
        (
            "weights",
            if l.ema_used {
                format!("EMA (decay {})", cfg.optim.ema_decay.unwrap_or(f64::NAN))
            } else {
                "as trained (no EMA kept)".into()
            },
        ),
        ("decode mode", format!("{:?}", c.decode_mode)),
        (
            "teacher",
            format!(
                "{:?} ({}; weights stored under `teacher.`)",
                cfg.teacher.kind,
                l.tok.teacher().name()
            ),
        ),
        (
            "input",
            format!(
                "{0} x {0} px, ADM center crop + antialiased bicubic, values in [-1, 1]",
                c.preprocessing.image_size
            ),
        ),
        ("token grid", format!("{} x {}", c.grid[0], c.grid[1])),
        (
            "vocabulary",
            format!(
                "K = {} semantic codes x m = {} pixel codes = {} unified ids (`k * m + j`)",
                c.vocab.semantic_codebook_size,
                c.vocab.sub_codebook_size,
                c.vocab.unified_vocab_size
            ),
        ),
        ("feature width", c.feature_dim.to_string()),
        (
            "data",
            format!(
                "{:?}{}",
                cfg.data.kind,
                cfg.data
                    .root
                    .as_ref()
                    .map_or(String::new(), |r| format!(" from `{}`", r.display()))
            ),
        ),
        (
            "SPC from",
            cfg.init
                .spc
                .as_ref()
                .map_or("this run".into(), |p| format!("`{}`", p.display())),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(md, "| {k} | {v} |");
    }
    // The last logged step at or before the exported checkpoint (a run may have gone on).
    let recs = read_metrics(&run);
    let logged = recs
        .iter()
        .rev()
        .filter(|r| r.get("kind").is_none()) // training records (not `"kind": "val"`)
        .find(|r| r["step"].as_u64().is_some_and(|s| s <= l.step));
    if let Some(rec) = logged {
        let _ = writeln!(
            md,
            "\nTraining log at step {} (`metrics.jsonl`): `{}`",
            rec["step"],
            serde_json::to_string(rec).unwrap_or_default()
        );
    }
    match eval {
        Some(e) => {
            let _ = writeln!(md, "\n## Evaluation (`semhitok eval`)\n");
            let _ = writeln!(
                md,
                "| model | PSNR (dB) | SSIM | rFID | teacher cos |\n|---|---|---|---|---|"
            );
            for m in e["models"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    md,
                    "| {} | {:.2} | {:.3} | {:.2} | {:.3} |",
                    m["name"].as_str().unwrap_or("?"),
                    m["psnr"].as_f64().unwrap_or(f64::NAN),
                    m["ssim"].as_f64().unwrap_or(f64::NAN),
                    m["rfid"].as_f64().unwrap_or(f64::NAN),
                    m["teacher_cosine"].as_f64().unwrap_or(f64::NAN),
                );
            }
            let _ = writeln!(
                md,
                "\n{} held-out images; reference set: {}",
                e["n_images"], e["protocol"]["reference_set"]
            );
        }
        None => {
            let _ = writeln!(
                md,
                "\nNo evaluation figures were given at export (`semhitok export --eval RUN_EVAL/eval.json`)."
            );
        }
    }
    let _ = writeln!(
        md,
        "\n## Use\n\n```bash\nsemhitok encode --model DIR --out ids img1.jpg img2.png\nsemhitok decode --model DIR --ids ids.safetensors --out decoded/\nsemhitok tokenize --model DIR --data photos:FOLDER --out tokens/\n```\n\n```rust\nlet tok = semhitok_nn::model::SemHiTok::from_pretrained(\"DIR\", tch::Device::Cpu)?;\nlet enc = tok.encode(&images)?;        // u8 or [-1, 1] f32 [B, 3, H, W], any size\nlet back = tok.decode(&enc.unified_ids)?;\n```"
    );
    md
}
