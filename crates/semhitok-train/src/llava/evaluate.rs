//! Scoring a LLaVA model on an evaluation JSONL (`semhitok llava-eval`, and after training
//! with `data.eval`): batched greedy answers with the KV cache, then
//! `semhitok_mllm::llava::eval::score` (VQA exact match, POPE, multiple choice).

use super::data::LlmText;
use super::model::LlavaModel;
use crate::error::{Error, Result};
use semhitok_data::{decode_rgb8, read_image_file, DecodeLimits};
use semhitok_mllm::llava::eval::{prompt_text, read_jsonl, score, EvalItem, Report};
use std::path::Path;
use std::time::Instant;
use tch::Tensor;

/// Items of `path` (the first `limit`).
pub fn read_items(path: &Path, limit: Option<usize>) -> Result<Vec<EvalItem>> {
    let mut items = read_jsonl(path)?;
    if let Some(l) = limit {
        items.truncate(l);
    }
    Ok(items)
}

/// Answers and scores.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalOutput {
    pub report: Report,
    pub n: usize,
    pub seconds: f64,
    /// `{id, question, answer, prediction, correct}` per item.
    pub predictions: Vec<serde_json::Value>,
}

fn load_image(root: &Path, rel: &str, size: i64, device: tch::Device) -> Result<Tensor> {
    let p = root.join(rel);
    let lim = DecodeLimits::default();
    let bytes =
        read_image_file(&p, &lim).map_err(|e| Error::Input(format!("{}: {e}", p.display())))?;
    let img =
        decode_rgb8(&bytes, &lim).map_err(|e| Error::Input(format!("{}: {e}", p.display())))?;
    let t = Tensor::from_slice(&img.data)
        .view([img.height as i64, img.width as i64, 3])
        .permute([2, 0, 1]);
    Ok(semhitok_nn::pretrained::preprocess(&t, size, device)?)
}

/// Answer every item (images under `root`) in batches of `batch`, score.
pub fn evaluate(
    model: &LlavaModel,
    text: &LlmText,
    items: &[EvalItem],
    root: &Path,
    batch: usize,
    max_new_tokens: usize,
) -> Result<EvalOutput> {
    let builder = text.builder()?;
    let size = model.vision.config().preprocessing.image_size;
    let t0 = Instant::now();
    let mut preds = Vec::with_capacity(items.len());
    for chunk in items.chunks(batch.max(1)) {
        let imgs = chunk
            .iter()
            .map(|it| load_image(root, &it.image, size, model.device()))
            .collect::<Result<Vec<_>>>()?;
        let qs: Vec<String> = chunk.iter().map(prompt_text).collect();
        preds.extend(model.answer(&builder, &Tensor::cat(&imgs, 0), &qs, max_new_tokens)?);
    }
    let report = score(items, &preds)?;
    let predictions = items
        .iter()
        .zip(&preds)
        .map(|(it, p)| {
            serde_json::json!({
                "id": it.id, "question": it.question, "answer": it.answer, "prediction": p,
                "correct": semhitok_mllm::llava::eval::is_correct(it, p),
            })
        })
        .collect();
    Ok(EvalOutput {
        report,
        n: items.len(),
        seconds: t0.elapsed().as_secs_f64(),
        predictions,
    })
}

/// Write `eval.json` atomically.
pub fn write_report(path: &Path, out: &EvalOutput) -> Result<()> {
    let s = serde_json::to_string_pretty(out).expect("serializable");
    crate::atomic::write_atomic(path, s.as_bytes())
}

/// One line per score.
pub fn summary(r: &Report) -> String {
    let mut s = vec![];
    if let Some(e) = r.overall.exact {
        s.push(format!(
            "exact match {:.4} ({}/{})",
            e.accuracy, e.correct, e.n
        ));
    }
    if let Some(y) = r.overall.yes_no {
        s.push(format!(
            "yes/no accuracy {:.4}, precision {:.4}, recall {:.4}, F1 {:.4}, yes ratio {:.3} (n = {})",
            y.accuracy, y.precision, y.recall, y.f1, y.yes_ratio, y.n
        ));
    }
    if let Some(c) = r.overall.choice {
        s.push(format!(
            "choice accuracy {:.4} ({}/{})",
            c.accuracy, c.correct, c.n
        ));
    }
    s.join("\n")
}
