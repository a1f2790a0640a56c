//! `semhitok t2i-eval`: N images per class for each CFG scale from a T2I model trained on
//! class captions, written as one u8 file per scale (`OUT/cfg-{s}.safetensors`: `images` u8
//! [N, 3, H, W], `labels` int64 = the asked class; what `semhitok t2i-score` reads), a grid per
//! scale (`OUT/cfg-{s}.png`: one row per class, 10 samples), and optionally the scores.

use super::config::ClassNames;
use super::generate_cmd::{decode_ids, generate_for, SamplingArgs};
use super::judge::{to_u8, write_images};
use super::model_io::load_t2i;
use crate::error::{Error, Result};
use semhitok_mllm::llm::load::default_kind;
use semhitok_nn::pretrained::Tokenizer;
use std::path::PathBuf;
use std::time::Instant;
use tch::Tensor;

/// `semhitok t2i-eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct T2iEvalArgs {
    /// A T2I run directory or an exported folder.
    #[arg(long)]
    pub llm: PathBuf,
    /// The SemHiTok folder that decodes the ids (default: the recorded one).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Images per class.
    #[arg(long, default_value_t = 1000)]
    pub per_class: usize,
    /// CFG scales, comma separated.
    #[arg(long, default_value = "1,3,5", value_delimiter = ',')]
    pub cfgs: Vec<f64>,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// Generate and write every scale's file; returns the files.
pub fn run(a: &T2iEvalArgs) -> Result<Vec<PathBuf>> {
    let device = super::classifier::parse_device(&a.sampling.device)?;
    let m = load_t2i(&a.llm, default_kind(device), device)?;
    let (template, names) = match (&m.caption_template, m.classes) {
        (Some(t), Some(c)) => (t.clone(), c.names()),
        _ => (
            "a photo of a {class}".to_string(),
            ClassNames::FashionMnist.names(),
        ),
    };
    let prompts: Vec<String> = (0..names.len())
        .map(|c| super::data::class_caption(&template, names, c))
        .collect();
    let tok =
        Tokenizer::from_pretrained(a.tokenizer.as_ref().unwrap_or(&m.image_tokenizer), device)?;
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let mut files = vec![];
    for &s in &a.cfgs {
        let t0 = Instant::now();
        let (_, ids) = generate_for(&m, &prompts, a.per_class, &a.sampling, s)?;
        let secs = t0.elapsed().as_secs_f64();
        let images = decode_ids(&tok, &ids, m.grid)?;
        let labels: Vec<i64> = (0..prompts.len() as i64)
            .flat_map(|c| std::iter::repeat_n(c, a.per_class))
            .collect();
        let f = a.out.join(format!("cfg-{s}.safetensors"));
        write_images(&f, &to_u8(&images)?, &Tensor::from_slice(&labels))?;
        let k = a.per_class.min(10);
        let columns: Vec<Tensor> = (0..k)
            .map(|i| {
                let idx: Vec<i64> = (0..prompts.len())
                    .map(|c| (c * a.per_class + i) as i64)
                    .collect();
                images.index_select(0, &Tensor::from_slice(&idx))
            })
            .collect();
        let refs: Vec<&Tensor> = columns.iter().collect();
        crate::report::save_grid(&refs, &a.out.join(format!("cfg-{s}.png")))?;
        eprintln!(
            "cfg {s}: {} images in {secs:.1} s ({:.1} images/s) -> {}",
            ids.len(),
            ids.len() as f64 / secs,
            f.display()
        );
        files.push(f);
    }
    Ok(files)
}
