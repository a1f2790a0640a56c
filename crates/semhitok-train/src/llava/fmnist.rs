//! Fashion-MNIST as a LLaVA-format understanding set (issue 17 §4): `semhitok data llava-fmnist`.
//!
//! Writes, under `out/`:
//! - `images/{train,test}/NNNNN.png`: the 28 x 28 grey images as they are (the tokenizer's
//!   preprocessing resizes them and replicates grey to RGB);
//! - `pretrain.json` (stage 1, `plain`): per train image `human: "<image>"`, `gpt:` the caption
//!   semhitok-data gives Fashion-MNIST (`"a photo of a {class}"`, lower case);
//! - `instruct.json` (stage 2): per train image two single-turn records, the class question
//!   `"What is this item? Answer with the class name."` answered with the class name as
//!   Fashion-MNIST spells it (`"T-shirt/top"`, `"Ankle boot"`), and the POPE-style
//!   `"Is there a {class} in the image?"` answered `Yes` / `No`, balanced: half of the images
//!   (a seeded choice) are asked about their own class, the others about a uniformly drawn
//!   other class;
//! - `test.jsonl`: the same two questions per test image as evaluation items
//!   (`semhitok_mllm::llava::eval`; kinds `exact` and `yes_no`, categories `class` / `pope`).
//!
//! The questions of the training records are the evaluation prompts
//! ([`semhitok_mllm::llava::eval::prompt_text`]: the short-answer suffix added), so training and
//! evaluation ask in the same words. Everything is seeded; the folder is written next to `out`
//! and renamed into place (an existing `out` is refused).

use crate::error::{Error, Result};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use semhitok_data::{fashion_mnist_caption, FashionMnist, Split, Transform, FASHION_MNIST_CLASSES};
use semhitok_mllm::llava::eval::{prompt_text, write_jsonl, EvalItem, QaKind};
use std::path::{Path, PathBuf};

/// The class question.
pub const CLASS_QUESTION: &str = "What is this item? Answer with the class name.";

/// The POPE-style question about `class`.
pub fn pope_question(class: &str) -> String {
    format!("Is there a {class} in the image?")
}

/// `semhitok data llava-fmnist`.
#[derive(Debug, Clone, clap::Args)]
pub struct FmnistArgs {
    /// Folder with the four Fashion-MNIST IDX .gz files.
    #[arg(long, default_value = ".assets/fashion-mnist")]
    pub fmnist: PathBuf,
    /// Output folder (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Use the first N train images (default: all 60,000).
    #[arg(long)]
    pub train: Option<usize>,
    /// Use the first N test images (default: all 10,000).
    #[arg(long)]
    pub test: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FmnistReport {
    pub out: PathBuf,
    pub train_images: usize,
    pub test_images: usize,
    pub pretrain_records: usize,
    pub instruct_records: usize,
    pub test_items: usize,
    /// Test POPE items answered yes (half of them, rounded down).
    pub test_pope_yes: usize,
}

fn record(id: String, image: &str, human: String, gpt: &str) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "image": image,
        "conversations": [
            {"from": "human", "value": human},
            {"from": "gpt", "value": gpt},
        ]
    })
}

/// Which images of a split are asked about their own class: a seeded half.
fn positives(n: usize, rng: &mut ChaCha8Rng) -> Vec<bool> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    let mut pos = vec![false; n];
    for &i in &order[..n / 2] {
        pos[i] = true;
    }
    pos
}

fn pope_class(label: usize, positive: bool, rng: &mut ChaCha8Rng) -> usize {
    if positive {
        label
    } else {
        let other = rng.gen_range(0..FASHION_MNIST_CLASSES.len() - 1);
        if other >= label {
            other + 1
        } else {
            other
        }
    }
}

fn write_png(path: &Path, pixels: &[u8], w: u32, h: u32) -> Result<()> {
    let img = image::GrayImage::from_raw(w, h, pixels.to_vec()).ok_or_else(|| {
        Error::Input(format!(
            "{}: {w}x{h} image from {} bytes",
            path.display(),
            pixels.len()
        ))
    })?;
    img.save(path).map_err(|e| Error::Render {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<()> {
    let s = serde_json::to_string_pretty(v).expect("serializable");
    std::fs::write(path, s).map_err(|e| Error::io(path, e))
}

/// Write the set (see the module docs).
pub fn generate(args: &FmnistArgs) -> Result<FmnistReport> {
    if args.out.exists() {
        return Err(Error::Input(format!(
            "{}: exists; give a new folder",
            args.out.display()
        )));
    }
    let parent = args
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    let name = args
        .out
        .file_name()
        .ok_or_else(|| Error::Input(format!("{}: not a folder name", args.out.display())))?;
    let tmp = parent.join(format!(
        ".tmp-{}-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let res = write_all(args, &tmp);
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    let mut report = res?;
    std::fs::rename(&tmp, &args.out).map_err(|e| Error::io(&args.out, e))?;
    report.out = args.out.clone();
    Ok(report)
}

fn write_all(args: &FmnistArgs, root: &Path) -> Result<FmnistReport> {
    let mut rng = ChaCha8Rng::seed_from_u64(args.seed ^ 0x11A7_A17F);
    let mut pretrain = vec![];
    let mut instruct = vec![];
    let mut test_items = vec![];
    let mut counts = [0usize; 2];
    for (si, (split, limit)) in [(Split::Train, args.train), (Split::Test, args.test)]
        .into_iter()
        .enumerate()
    {
        let data = FashionMnist::open(&args.fmnist, split, Transform::CenterCrop { size: 28 })?;
        let n = limit
            .unwrap_or(data.labels().len())
            .min(data.labels().len());
        counts[si] = n;
        let sname = if split == Split::Train {
            "train"
        } else {
            "test"
        };
        let dir = root.join("images").join(sname);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let pos = positives(n, &mut rng);
        for i in 0..n {
            let label = data.labels()[i] as usize;
            let rel = format!("images/{sname}/{i:05}.png");
            write_png(&root.join(&rel), data.raw(i), 28, 28)?;
            let class = FASHION_MNIST_CLASSES[label];
            let asked = pope_class(label, pos[i], &mut rng);
            let yes_no = if asked == label { "yes" } else { "no" };
            let class_item = EvalItem {
                image: rel.clone(),
                question: CLASS_QUESTION.into(),
                answer: class.into(),
                kind: QaKind::Exact,
                options: None,
                id: Some(format!("{sname}-{i:05}-class")),
                category: Some("class".into()),
            };
            let pope_item = EvalItem {
                image: rel.clone(),
                question: pope_question(FASHION_MNIST_CLASSES[asked]),
                answer: yes_no.into(),
                kind: QaKind::YesNo,
                options: None,
                id: Some(format!("{sname}-{i:05}-pope")),
                category: Some("pope".into()),
            };
            if split == Split::Train {
                pretrain.push(record(
                    format!("{sname}-{i:05}"),
                    &rel,
                    "<image>".into(),
                    &fashion_mnist_caption(label as i64).unwrap_or_default(),
                ));
                for (it, answer) in [
                    (&class_item, class),
                    (&pope_item, if asked == label { "Yes" } else { "No" }),
                ] {
                    instruct.push(record(
                        it.id.clone().expect("set"),
                        &rel,
                        format!("<image>\n{}", prompt_text(it)),
                        answer,
                    ));
                }
            } else {
                test_items.push(class_item);
                test_items.push(pope_item);
            }
        }
    }
    write_json(
        &root.join("pretrain.json"),
        &serde_json::Value::Array(pretrain.clone()),
    )?;
    write_json(
        &root.join("instruct.json"),
        &serde_json::Value::Array(instruct.clone()),
    )?;
    if !test_items.is_empty() {
        write_jsonl(&root.join("test.jsonl"), &test_items)?;
    }
    let test_pope_yes = test_items
        .iter()
        .filter(|t| t.kind == QaKind::YesNo && t.answer == "yes")
        .count();
    Ok(FmnistReport {
        out: root.to_path_buf(),
        train_images: counts[0],
        test_images: counts[1],
        pretrain_records: pretrain.len(),
        instruct_records: instruct.len(),
        test_items: test_items.len(),
        test_pope_yes,
    })
}
