//! `semhitok ask --llava RUN_OR_DIR --image X "question"` and `semhitok llava-eval`.

use super::evaluate::{evaluate, read_items, summary, write_report};
use crate::error::{Error, Result};
use std::path::PathBuf;

/// `semhitok ask`.
#[derive(Debug, Clone, clap::Args)]
pub struct AskArgs {
    /// The question.
    pub question: String,
    /// A LLaVA run directory or a folder written by `semhitok export` of one.
    #[arg(long)]
    pub llava: PathBuf,
    /// The image file (repeat for several images, each asked the same question, batched).
    #[arg(long, required = true)]
    pub image: Vec<PathBuf>,
    /// cpu | cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// Add the lmms-eval short-answer suffix ("Answer the question using a single word or phrase.").
    #[arg(long)]
    pub short: bool,
}

/// Answer; prints one answer per image.
pub fn ask(a: &AskArgs) -> Result<Vec<String>> {
    let device = crate::codec::parse_device(&a.device)?;
    let (model, text) = super::run::load(&a.llava, device)?;
    let size = model.vision.config().preprocessing.image_size;
    let mut imgs = vec![];
    for p in &a.image {
        let lim = semhitok_data::DecodeLimits::default();
        let bytes = semhitok_data::read_image_file(p, &lim)
            .map_err(|e| Error::Input(format!("{}: {e}", p.display())))?;
        let img = semhitok_data::decode_rgb8(&bytes, &lim)
            .map_err(|e| Error::Input(format!("{}: {e}", p.display())))?;
        let t = tch::Tensor::from_slice(&img.data)
            .view([img.height as i64, img.width as i64, 3])
            .permute([2, 0, 1]);
        imgs.push(semhitok_nn::pretrained::preprocess(&t, size, device)?);
    }
    let q = if a.short {
        format!(
            "{}\n{}",
            a.question.trim_end(),
            semhitok_mllm::llava::eval::SHORT_ANSWER
        )
    } else {
        a.question.clone()
    };
    let qs = vec![q; imgs.len()];
    let builder = text.builder()?;
    model.answer(&builder, &tch::Tensor::cat(&imgs, 0), &qs, a.max_new_tokens)
}

/// `semhitok llava-eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct LlavaEvalArgs {
    /// A LLaVA run directory or an exported LLaVA folder.
    #[arg(long)]
    pub llava: PathBuf,
    /// JSONL of `{image, question, answer, kind}` (kind: exact | yes_no | choice; optional
    /// options, id, category).
    #[arg(long)]
    pub questions: PathBuf,
    /// Folder the items' images are relative to (default: the JSONL's folder).
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Score only the first N items.
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 16)]
    pub max_new_tokens: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Where to write the report (default: LLAVA/eval-<questions stem>.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Run the scorer; returns the report path.
pub fn llava_eval(a: &LlavaEvalArgs) -> Result<PathBuf> {
    let device = crate::codec::parse_device(&a.device)?;
    let (model, text) = super::run::load(&a.llava, device)?;
    let items = read_items(&a.questions, a.limit)?;
    let root = a
        .image_root
        .clone()
        .or_else(|| a.questions.parent().map(|p| p.to_path_buf()))
        .unwrap_or_default();
    let out = evaluate(&model, &text, &items, &root, a.batch_size, a.max_new_tokens)?;
    let path = a.out.clone().unwrap_or_else(|| {
        let stem = a
            .questions
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "questions".into());
        a.llava.join(format!("eval-{stem}.json"))
    });
    write_report(&path, &out)?;
    eprintln!("{} items in {:.1} s", out.n, out.seconds);
    println!("{}", summary(&out.report));
    Ok(path)
}
