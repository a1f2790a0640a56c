//! `semhitok generate`: text-to-image from a trained run or an exported folder. PNGs, a grid
//! (one row per prompt, one column per sample) and `images.jsonl` with one line per image:
//! `{"prompt", "prompt_index", "sample", "seed", "file"}`; image `i` of prompt `p` has seed
//! `--seed + p * n + i`, so any line can be regenerated alone. Benchmark prompt sets (GenEval,
//! MJHQ-30K) are a `--prompts` file: one prompt per line, or JSONL with a `"prompt"` field.

use super::classifier::parse_device;
use super::model_io::{load_t2i, T2iModel};
use crate::error::{Error, Result};
use semhitok_mllm::cfg::Guidance;
use semhitok_mllm::llm::load::default_kind;
use semhitok_mllm::t2i::{generate_images, ImageRequest, T2iSampling, VisualSampling};
use semhitok_nn::pretrained::Tokenizer;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Device, Tensor};

/// Sampling flags shared by `generate` and `t2i-eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct SamplingArgs {
    /// Classifier-free guidance scale (1 = none: the unconditional pass is skipped).
    #[arg(long, default_value_t = 5.0)]
    pub cfg: f64,
    /// Guide only image-token steps A..B (0 = the first token); default: all.
    #[arg(long, value_name = "A..B")]
    pub cfg_interval: Option<String>,
    /// Softmax temperature.
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Keep the k most likely visual tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: i64,
    /// Nucleus mass (1 = all).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,
    /// Base seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Images per forward batch (the guided batch has twice as many rows).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl SamplingArgs {
    /// The sampler settings at guidance `scale`.
    pub fn sampling(&self, scale: f64) -> Result<T2iSampling> {
        let interval = match &self.cfg_interval {
            None => None,
            Some(s) => {
                let (a, b) = s
                    .split_once("..")
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
                    .ok_or_else(|| Error::Input(format!("--cfg-interval {s}: expected A..B")))?;
                Some((a, b))
            }
        };
        let s = T2iSampling {
            sampling: VisualSampling {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
            },
            guidance: Guidance { scale, interval },
        };
        s.sampling.validate()?;
        s.guidance.validate()?;
        Ok(s)
    }
}

/// `semhitok generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    /// A T2I run directory (newest checkpoint) or an exported folder (`semhitok export`).
    #[arg(long)]
    pub llm: PathBuf,
    /// The SemHiTok model folder that decodes the ids (default: the one the run recorded).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// One prompt.
    #[arg(long, conflicts_with = "prompts")]
    pub prompt: Option<String>,
    /// A prompt file: one per line, or JSONL with "prompt".
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Images per prompt.
    #[arg(long, default_value_t = 8)]
    pub n: usize,
    /// Output folder.
    #[arg(long, default_value = "generated")]
    pub out: PathBuf,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Read a prompt file (plain lines or JSONL with "prompt"); empty lines are skipped.
pub fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() {
            continue;
        }
        if l.starts_with('{') {
            let v: serde_json::Value = serde_json::from_str(l)
                .map_err(|e| Error::Input(format!("{}:{}: {e}", path.display(), i + 1)))?;
            let p = v["prompt"].as_str().ok_or_else(|| {
                Error::Input(format!(
                    "{}:{}: no \"prompt\" string",
                    path.display(),
                    i + 1
                ))
            })?;
            out.push(p.to_string());
        } else {
            out.push(l.to_string());
        }
    }
    if out.is_empty() {
        return Err(Error::Input(format!("{}: no prompts", path.display())));
    }
    Ok(out)
}

/// Generated unified ids -> images [N, 3, S, S] in [-1, 1] on the CPU.
pub fn decode_ids(tok: &Tokenizer, ids: &[Vec<u32>], grid: [i64; 2]) -> Result<Tensor> {
    let mut out = vec![];
    for chunk in ids.chunks(256) {
        let flat: Vec<i64> = chunk.iter().flatten().map(|&u| u as i64).collect();
        let t = Tensor::from_slice(&flat).view([chunk.len() as i64, grid[0], grid[1]]);
        out.push(tch::no_grad(|| tok.decode(&t))?.to_device(Device::Cpu));
    }
    Ok(Tensor::f_cat(&out, 0)?)
}

/// Generate images for `prompts` x `n` (seeds `seed + p * n + i`): unified ids per image.
pub fn generate_for(
    m: &T2iModel,
    prompts: &[String],
    n: usize,
    s: &SamplingArgs,
    scale: f64,
) -> Result<(Vec<ImageRequest>, Vec<Vec<u32>>)> {
    let cfg = s.sampling(scale)?;
    let mut reqs = Vec::with_capacity(prompts.len() * n);
    for (p, text) in prompts.iter().enumerate() {
        let caption = m.tokenizer.encode(text)?;
        for i in 0..n {
            reqs.push(ImageRequest {
                caption: caption.clone(),
                seed: s.seed + (p * n + i) as u64,
            });
        }
    }
    let n_tokens = (m.grid[0] * m.grid[1]) as usize;
    let ids = generate_images(&m.model, &m.layout, &reqs, n_tokens, &cfg, s.batch)?;
    Ok((reqs, ids))
}

/// `semhitok generate`; returns the JSONL path.
pub fn run(a: &GenerateArgs) -> Result<PathBuf> {
    let device = parse_device(&a.sampling.device)?;
    let prompts = match (&a.prompt, &a.prompts) {
        (Some(p), None) => vec![p.clone()],
        (None, Some(f)) => read_prompts(f)?,
        _ => return Err(Error::Input("give --prompt TEXT or --prompts FILE".into())),
    };
    if a.n == 0 {
        return Err(Error::Input("--n must be >= 1".into()));
    }
    let m = load_t2i(&a.llm, default_kind(device), device)?;
    let tok_dir = a
        .tokenizer
        .clone()
        .unwrap_or_else(|| m.image_tokenizer.clone());
    let tok = Tokenizer::from_pretrained(&tok_dir, device)?;
    let t0 = Instant::now();
    let (reqs, ids) = generate_for(&m, &prompts, a.n, &a.sampling, a.sampling.cfg)?;
    let secs = t0.elapsed().as_secs_f64();
    let images = decode_ids(&tok, &ids, m.grid)?;
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let jp = a.out.join("images.jsonl");
    let mut jf = std::fs::File::create(&jp).map_err(|e| Error::io(&jp, e))?;
    for (k, r) in reqs.iter().enumerate() {
        let (p, i) = (k / a.n, k % a.n);
        let name = format!("{p:05}-{i:03}.png");
        crate::report::save_png(&images.get(k as i64), &a.out.join(&name))?;
        let line = serde_json::json!({
            "prompt": prompts[p], "prompt_index": p, "sample": i, "seed": r.seed, "file": name,
            "cfg": a.sampling.cfg,
        });
        writeln!(jf, "{line}").map_err(|e| Error::io(&jp, e))?;
    }
    // Grid: rows = prompts (at most 16), columns = samples (at most 16).
    let rows = prompts.len().min(16) as i64;
    let cols = a.n.min(16);
    let columns: Vec<Tensor> = (0..cols)
        .map(|i| {
            let idx: Vec<i64> = (0..rows).map(|p| p * a.n as i64 + i as i64).collect();
            images.index_select(0, &Tensor::from_slice(&idx))
        })
        .collect();
    let refs: Vec<&Tensor> = columns.iter().collect();
    crate::report::save_grid(&refs, &a.out.join("grid.png"))?;
    eprintln!(
        "{} images in {:.2} s ({:.1} images/s) -> {}",
        reqs.len(),
        secs,
        reqs.len() as f64 / secs,
        a.out.display()
    );
    Ok(jp)
}
