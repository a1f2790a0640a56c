//! LLaVA training on a tiny random LLM (the golden SentencePiece tokenizer, 400 tokens) and a
//! tiny random SemHiTok (16 px, 4 x 4 patches) over the Fashion-MNIST LLaVA set: stage 1's loss
//! falls, lr = 0 moves nothing, only the projector changes in stage 1, resume is exact, LoRA
//! checkpoints hold only the trained tensors, and ask / llava-eval / export work on the run.

use super::super::common::{quiet, serial};
use semhitok_mllm::chat::ChatTemplate;
use semhitok_mllm::llm::load::LoadedLm;
use semhitok_mllm::llm::{LlamaConfig, LlamaModel, Weights};
use semhitok_mllm::spm::SpmModel;
use semhitok_mllm::tokenizer::TextTokenizer;
use semhitok_nn::model::SemHiTokConfig;
use semhitok_nn::pretrained::{PretrainedConfig, TeacherSpec, Tokenizer};
use semhitok_nn::siglip::{SiglipLayer, SiglipTeacher, SiglipVisionConfig};
use semhitok_train::llava::config::LlavaConfig;
use semhitok_train::llava::run::{finish, loop_config, prepare};
use semhitok_train::trainer::{train, TrainOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn ws() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Tokenizer folder, LLM folder and data set under `root` (built once per test).
pub(crate) struct Fixture {
    pub tok: PathBuf,
    pub llm: PathBuf,
    pub data: PathBuf,
}

pub(crate) fn fixture(root: &Path) -> Fixture {
    // SemHiTok: random SigLIP-shaped teacher, tiny model.
    let vision = SiglipVisionConfig {
        hidden_size: 16,
        intermediate_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        image_size: 16,
        patch_size: 4,
        vision_use_head: false,
        ..Default::default()
    };
    tch::manual_seed(3);
    let teacher =
        SiglipTeacher::random_init(&vision, Device::Cpu, SiglipLayer::Last, None).unwrap();
    let mut cfg = SemHiTokConfig::tiny(16, 4, 16, 32, 4);
    cfg.spc.kmeans_init = false;
    let model = cfg.init(Device::Cpu).unwrap();
    let spec = TeacherSpec::Siglip {
        vision,
        layer: SiglipLayer::Last,
        resize: None,
    };
    let pc = PretrainedConfig::new(cfg, spec, serde_json::json!({"test": "llava"}));
    let tok = root.join("tok");
    Tokenizer::new(model, Box::new(teacher), pc)
        .unwrap()
        .save_pretrained(&tok, "# tiny test tokenizer\n", false)
        .unwrap();
    // LLM: 2 layers, width 32, the golden SentencePiece tokenizer (<s> = 1, </s> = 2).
    let lcfg = LlamaConfig {
        max_position_embeddings: 512,
        tie_word_embeddings: false,
        ..LlamaConfig::tiny(400)
    };
    let w = Weights::random(0.3, 11, Kind::Float, Device::Cpu);
    let spm = ws().join("crates/semhitok-mllm/tests/fixtures/llava/tokenizer.model");
    let o = spm.display().to_string();
    let lm = LoadedLm {
        model: LlamaModel::new(&lcfg, &w).unwrap(),
        tokenizer: TextTokenizer::from_tokenizer(
            SpmModel::open(&spm).unwrap().to_tokenizer(&o).unwrap(),
            &o,
        ),
        chat_template: None::<ChatTemplate>,
        bos_to_add: Some(1),
        eos: vec![2],
    };
    let llm = root.join("llm");
    lm.save_hf_dir(&llm).unwrap();
    let data = root.join("data");
    semhitok_train::llava::fmnist::generate(&semhitok_train::llava::fmnist::FmnistArgs {
        fmnist: ws().join(".assets/fashion-mnist"),
        out: data.clone(),
        train: Some(16),
        test: Some(4),
        seed: 0,
    })
    .unwrap();
    Fixture { tok, llm, data }
}

pub(crate) fn config(f: &Fixture, out: &Path, stage: &str, extra: &[&str]) -> LlavaConfig {
    let (json, template, train) = if stage == "llava-pretrain" {
        ("pretrain.json", "plain", "train = \"frozen\"")
    } else {
        (
            "instruct.json",
            "vicuna_v1",
            "train = \"lora\"\nlora_r = 4\nlora_alpha = 8.0",
        )
    };
    let text = format!(
        r#"
[run]
name = "llava-test"
out_dir = "{out}"
stage = "{stage}"
seed = 5

[optim]
lr = 1e-2
betas = [0.9, 0.999]
weight_decay = 0.0
warmup_steps = 1
grad_clip = 1.0

[schedule]
steps = 12
log_every = 1
ckpt_every = 4
keep_last = 5

[llm]
weights = "{llm}"
{train}
max_seq_len = 256

[llava]
tokenizer = "{tok}"
template = "{template}"

[data]
json = "{data}/{json}"
batch_size = 4
"#,
        out = out.display(),
        llm = f.llm.display(),
        tok = f.tok.display(),
        data = f.data.display(),
    );
    let overrides: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    let p = out.with_extension("toml");
    std::fs::write(&p, text).unwrap();
    LlavaConfig::load(&p, &overrides).unwrap().0
}

fn snapshot(m: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    m.iter()
        .map(|(k, t)| (k.clone(), t.detach().copy()))
        .collect()
}

fn equal(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> bool {
    a.len() == b.len() && a.iter().all(|(k, t)| b.get(k).is_some_and(|u| t.equal(u)))
}

fn lm_weights(task: &semhitok_train::llava::task::LlavaTask) -> BTreeMap<String, Tensor> {
    task.model
        .lm
        .model
        .hf_state_dict(false)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k, t.copy()))
        .collect()
}

fn run(
    cfg: &LlavaConfig,
    opts: &TrainOptions,
) -> (
    semhitok_train::llava::task::LlavaTask,
    Vec<(u64, f64)>,
    BTreeMap<String, Tensor>,
) {
    let (mut task, mut data) = prepare(cfg, Path::new("test.toml")).unwrap();
    let lm_before = lm_weights(&task);
    let r = train(&loop_config(cfg), &mut task, &mut data, opts).unwrap();
    finish(cfg, &task, &data, &r.run_dir).unwrap();
    (task, r.losses, lm_before)
}

/// Stage 1: the loss falls below 60% of its start in 12 steps; only the projector moves (the
/// LLM's weights are bit-identical, the tokenizer is frozen by construction); with lr = 0
/// nothing moves; the checkpoint holds only the projector.
#[test]
fn stage1_trains_only_the_projector() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path());
    let cfg = config(
        &f,
        &tmp.path().join("s1"),
        "llava-pretrain",
        &[
            "optim.lr=0.1",
            "schedule.steps=20",
            "schedule.ckpt_every=10",
        ],
    );
    let (prepared, _) = prepare(&cfg, Path::new("t.toml")).unwrap();
    let proj0 = snapshot(&prepared.trained());
    drop(prepared);
    let (task, losses, lm_before) = run(&cfg, &quiet());
    let tail = |l: &[(u64, f64)]| l[l.len() - 4..].iter().map(|x| x.1).sum::<f64>() / 4.0;
    let first = (losses[0].1 + losses[1].1) / 2.0;
    assert!(
        tail(&losses) < 0.9 * first,
        "stage-1 loss did not fall: {losses:?}"
    );
    assert!(
        equal(&lm_before, &lm_weights(&task)),
        "the LLM moved in stage 1"
    );
    let trained = task.trained();
    assert_eq!(
        trained.keys().cloned().collect::<Vec<_>>(),
        [
            "model.mm_projector.0.bias",
            "model.mm_projector.0.weight",
            "model.mm_projector.2.bias",
            "model.mm_projector.2.weight"
        ]
    );
    assert!(
        !equal(&proj0, &snapshot(&trained)),
        "the projector did not move"
    );
    // The checkpoint holds the projector and its optimizer state only.
    let ck = semhitok_train::checkpoint::load_latest(&tmp.path().join("s1"))
        .unwrap()
        .unwrap();
    let model_keys: Vec<&String> = ck
        .tensors
        .keys()
        .filter(|k| k.starts_with("model."))
        .collect();
    assert_eq!(
        model_keys.len(),
        4,
        "{:?}",
        ck.tensors.keys().collect::<Vec<_>>()
    );
    assert!(
        ck.tensors
            .keys()
            .all(|k| k.contains("mm_projector") || k == "optim.gen.steps"),
        "{:?}",
        ck.tensors.keys().collect::<Vec<_>>()
    );
    assert!(tmp.path().join("s1/mm_projector.safetensors").is_file());

    // lr = 0 (same batches): every trained tensor and the LLM stay bit-identical, and the
    // trained run's last losses are well below the untrained ones on the same batches.
    let cfg0 = config(
        &f,
        &tmp.path().join("s1-lr0"),
        "llava-pretrain",
        &[
            "optim.lr=0.0",
            "schedule.steps=20",
            "schedule.ckpt_every=10",
        ],
    );
    let (p0, _) = prepare(&cfg0, Path::new("t.toml")).unwrap();
    let init = snapshot(&p0.trained());
    drop(p0);
    let (t0, losses0, lm0) = run(&cfg0, &quiet());
    assert!(
        tail(&losses) < tail(&losses0) - 0.4,
        "trained {losses:?} vs lr = 0 {losses0:?}"
    );
    assert!(
        equal(&init, &snapshot(&t0.trained())),
        "lr = 0 moved the projector"
    );
    assert!(equal(&lm0, &lm_weights(&t0)));
}

/// Stage 2 with LoRA from stage 1's projector: interrupted and resumed, it ends bit-identical to
/// the uninterrupted run; its checkpoint holds only the projector and the adapters; ask,
/// llava-eval and export work on it, and the exported folder answers as the run does.
#[test]
fn stage2_lora_resumes_exactly_and_answers() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path());
    let s1 = tmp.path().join("s1");
    let c1 = config(&f, &s1, "llava-pretrain", &["schedule.steps=4"]);
    run(&c1, &quiet());
    let proj = format!("llava.projector=\"{}\"", s1.display());
    let full_cfg = config(&f, &tmp.path().join("full"), "llava-finetune", &[&proj]);
    let (full, full_losses, _) = run(&full_cfg, &quiet());
    let names: Vec<String> = full.trained().keys().cloned().collect();
    assert!(
        names
            .iter()
            .all(|n| n.contains("mm_projector") || n.contains(".lora_")),
        "{names:?}"
    );
    assert_eq!(
        names.iter().filter(|n| n.contains(".lora_")).count(),
        2 * 7 * 2
    );

    let part = tmp.path().join("part");
    let part_cfg = config(&f, &part, "llava-finetune", &[&proj]);
    let stop = TrainOptions {
        stop_after: Some(6),
        ..quiet()
    };
    run(&part_cfg, &stop);
    let ck = semhitok_train::checkpoint::load_latest(&part)
        .unwrap()
        .unwrap();
    assert_eq!(ck.state.step, 4);
    let resume = TrainOptions {
        resume: true,
        ..quiet()
    };
    let (resumed, losses, _) = run(&part_cfg, &resume);
    for ((sa, la), (sb, lb)) in full_losses[4..].iter().zip(&losses) {
        assert_eq!(
            (sa, la.to_bits()),
            (sb, lb.to_bits()),
            "step {sa}: {la} vs {lb}"
        );
    }
    assert!(equal(
        &snapshot(&full.trained()),
        &snapshot(&resumed.trained())
    ));

    // ask (batched over two images) from the run directory and from the export.
    let img = |i: usize| f.data.join(format!("images/test/{i:05}.png"));
    let ask = semhitok_train::llava::ask::AskArgs {
        question: "What is this item?".into(),
        llava: tmp.path().join("full"),
        image: vec![img(0), img(1)],
        device: "cpu".into(),
        max_new_tokens: 6,
        short: true,
    };
    let a = semhitok_train::llava::ask::ask(&ask).unwrap();
    assert_eq!(a.len(), 2);
    let out = tmp.path().join("export");
    semhitok_train::llava::run::export(&tmp.path().join("full"), &out, false).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "mm_projector.safetensors",
        "llava_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["mm_projector_type"], "mlp2x_gelu");
    let b = semhitok_train::llava::ask::ask(&semhitok_train::llava::ask::AskArgs {
        llava: out.clone(),
        ..ask.clone()
    })
    .unwrap();
    assert_eq!(a, b, "the exported folder answers as the run does");
    // llava-eval over the generated test items.
    let rep = semhitok_train::llava::ask::llava_eval(&semhitok_train::llava::ask::LlavaEvalArgs {
        llava: out.clone(),
        questions: f.data.join("test.jsonl"),
        image_root: None,
        limit: None,
        batch_size: 3,
        max_new_tokens: 4,
        device: "cpu".into(),
        out: None,
    })
    .unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rep).unwrap()).unwrap();
    assert_eq!(r["n"], 8);
    assert_eq!(r["report"]["overall"]["yes_no"]["n"], 4);
}

/// The loss with the head on labelled positions only equals `causal_lm_loss` over the full
/// logits, and gradients reach the projector either way.
#[test]
fn selective_head_loss_equals_full_logits_loss() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(tmp.path());
    let cfg = config(&f, &tmp.path().join("x"), "llava-finetune", &[]);
    let (task, mut data) = prepare(&cfg, Path::new("t.toml")).unwrap();
    use semhitok_train::trainer::Batches;
    let batch = data.next_batch(Device::Cpu).unwrap();
    let tb = batch.tokens().unwrap();
    let m = &task.model;
    let (loss, n) = m
        .loss(
            &tb.input_ids,
            &tb.labels,
            &tb.attention_mask,
            tb.images.as_ref(),
        )
        .unwrap();
    let x = m.embeds(&tb.input_ids, tb.images.as_ref()).unwrap();
    let logits =
        m.lm.model
            .forward_train(semhitok_mllm::llm::Input::Embeds(&x), &tb.attention_mask)
            .unwrap();
    let (full, n2) = semhitok_mllm::loss::causal_lm_loss(&logits, &tb.labels).unwrap();
    assert_eq!(n.int64_value(&[]), n2.int64_value(&[]));
    assert!(n.int64_value(&[]) > 0);
    let (a, b) = (loss.double_value(&[]), full.double_value(&[]));
    assert!((a - b).abs() < 1e-5 * b.abs(), "{a} vs {b}");
}
