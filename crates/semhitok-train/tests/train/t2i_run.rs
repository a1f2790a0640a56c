//! Text-to-image training (issue 18 §1, §4): a tiny random Llama (HF folder with a word-level
//! tokenizer) on hand-written token shards with Fashion-MNIST class labels. Exact resume, the
//! caption dropout and loss mask of the batches, generation from the run, export round trip.

use super::common::{quiet, serial};
use semhitok_data::FASHION_MNIST_CLASSES;
use semhitok_mllm::llm::load::LoadedLm;
use semhitok_mllm::llm::{LlamaConfig, LlamaModel, Weights};
use semhitok_mllm::tokenizer::TextTokenizer;
use semhitok_train::checkpoint;
use semhitok_train::t2i::config::T2iConfig;
use semhitok_train::t2i::generate_cmd::{generate_for, SamplingArgs};
use semhitok_train::t2i::model_io::{export_t2i, load_t2i};
use semhitok_train::t2i::task::build;
use semhitok_train::trainer::{train, Batches, TrainOptions};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const ROWS: i64 = 40;

fn write(p: &Path, s: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, s).unwrap();
}

/// The fixtures under `root`: llm/, tok/config.json, tokens/ (2 shards, 14 + 10 samples,
/// grid 2 x 2, K = 4, m = 3; an image's ids depend on its label).
pub(super) fn fixtures(root: &Path) {
    let mut words: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    for w in "a photo of"
        .split(' ')
        .chain(FASHION_MNIST_CLASSES.iter().flat_map(|c| c.split(' ')))
    {
        if !words.iter().any(|x| x == w) {
            words.push(w.to_string());
        }
    }
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.clone(), serde_json::json!(i)))
        .collect();
    let tj = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    let tp = root.join("tokenizer.json");
    write(&tp, &tj.to_string());
    let cfg = LlamaConfig {
        max_position_embeddings: 128,
        ..LlamaConfig::tiny(ROWS)
    };
    let model = LlamaModel::new(&cfg, &Weights::random(0.2, 1, Kind::Float, Device::Cpu)).unwrap();
    LoadedLm {
        model,
        tokenizer: TextTokenizer::from_file(&tp).unwrap(),
        chat_template: None,
        bos_to_add: None,
        eos: vec![2],
    }
    .save_hf_dir(&root.join("llm"))
    .unwrap();
    write(
        &root.join("tok/config.json"),
        r#"{"vocab": {"semantic_codebook_size": 4, "sub_codebook_size": 3, "unified_vocab_size": 12}, "grid": [2, 2]}"#,
    );
    let t = root.join("tokens");
    write(
        &t.join("meta.json"),
        r#"{"format": "semhitok-tokens/1", "grid": [2, 2], "semantic_codebook_size": 4, "sub_codebook_size": 3, "unified_vocab_size": 12, "shards": 2}"#,
    );
    let mut list = vec![];
    let mut i = 0i64;
    for (s, n) in [(0usize, 14i64), (1, 10)] {
        let labels: Vec<i64> = (0..n).map(|k| (i + k) % 10).collect();
        let ids: Vec<i32> = labels
            .iter()
            .flat_map(|&l| (0..4).map(move |p| ((l + p) % 12) as i32))
            .collect();
        let name = format!("shard-{s:05}");
        Tensor::write_safetensors(
            &[
                ("unified", &Tensor::from_slice(&ids).view([n, 2, 2])),
                ("labels", &Tensor::from_slice(&labels)),
            ],
            t.join(format!("{name}.safetensors")),
        )
        .unwrap();
        let keys: Vec<String> = (0..n).map(|k| (i + k).to_string()).collect();
        write(
            &t.join(format!("{name}.json")),
            &serde_json::json!({"keys": keys, "captions": null, "count": n, "skipped": [], "skipped_count": 0}).to_string(),
        );
        list.push(serde_json::json!({"name": name, "count": n}));
        i += n;
    }
    write(
        &t.join("complete.json"),
        &serde_json::json!({"shards": list, "images": i, "skipped": 0}).to_string(),
    );
}

pub(super) fn config(root: &Path, run: &str, steps: u64, sets: &[String]) -> T2iConfig {
    let text = format!(
        r#"
[run]
name = "t2i-test"
out_dir = "{out}"
stage = "t2i"
seed = 3
device = "cpu"

[llm]
weights = "{llm}"
dtype = "f32"
train = "full"
max_seq_len = 24

[t2i]
tokenizer = "{tok}"
cfg_dropout = 0.2
caption_template = "a photo of a {{class}}"
classes = "fashion-mnist"

[data]
tokens = "{tokens}"
batch_size = 5

[optim]
lr = 3e-3
betas = [0.9, 0.95]
weight_decay = 0.01
warmup_steps = 2
min_lr_ratio = 0.1
grad_clip = 1.0
accum_steps = 2

[schedule]
steps = {steps}
log_every = 1
ckpt_every = 4
keep_last = 3
"#,
        out = root.join(run).display(),
        llm = root.join("llm").display(),
        tok = root.join("tok").display(),
        tokens = root.join("tokens").display(),
    );
    let p = root.join(format!("{run}.toml"));
    write(&p, &text);
    T2iConfig::load(&p, sets).unwrap()
}

fn params(task: &semhitok_train::t2i::task::T2iTask) -> BTreeMap<String, Tensor> {
    use semhitok_train::trainer::Task;
    task.state()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect()
}

#[test]
fn t2i_training_resumes_exactly_and_generates_from_the_run_and_the_export() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fixtures(root);

    // Uninterrupted: 10 steps (2 micro-batches of 5 each: the 24 samples wrap into epoch 1).
    let cfg_a = config(root, "a", 10, &[]);
    let (mut task, mut data) = build(&cfg_a).unwrap();
    let full = train(&cfg_a.loop_config(), &mut task, &mut data, &quiet()).unwrap();
    assert_eq!(full.losses.len(), 10);
    let first = full.losses[..3].iter().map(|l| l.1).sum::<f64>();
    let last = full.losses[7..].iter().map(|l| l.1).sum::<f64>();
    assert!(last < first, "loss did not fall: {:?}", full.losses);
    let pa = params(&task);

    // Interrupted after 6 (checkpoint at 4), resumed in a fresh task.
    let cfg_b = config(root, "b", 10, &[]);
    let (mut tb, mut db) = build(&cfg_b).unwrap();
    let stop = TrainOptions {
        stop_after: Some(6),
        ..quiet()
    };
    train(&cfg_b.loop_config(), &mut tb, &mut db, &stop).unwrap();
    let ck = checkpoint::load_latest(&root.join("b")).unwrap().unwrap();
    assert_eq!(ck.state.step, 4);
    assert_eq!(ck.state.data_state["epoch"], 1, "{}", ck.state.data_state);
    assert_eq!(ck.state.data_state["cursor"], 4 * 10 - 24);
    let (mut tc, mut dc) = build(&cfg_b).unwrap();
    let resume = TrainOptions {
        resume: true,
        ..quiet()
    };
    let resumed = train(&cfg_b.loop_config(), &mut tc, &mut dc, &resume).unwrap();
    assert_eq!(resumed.start_step, 4);
    for ((sa, la), (sb, lb)) in full.losses[4..].iter().zip(&resumed.losses) {
        assert_eq!(sa, sb);
        assert_eq!(la.to_bits(), lb.to_bits(), "step {sa}: {la} vs {lb}");
    }
    let pc = params(&tc);
    assert_eq!(pa.len(), pc.len());
    for (k, v) in &pa {
        assert!(v.equal(&pc[k]), "{k} differs after resume");
    }

    // Generation from the run directory and from its export: the same ids for the same seeds.
    let s = SamplingArgs {
        cfg: 3.0,
        cfg_interval: None,
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        seed: 7,
        batch: 4,
        device: "cpu".into(),
    };
    let m = load_t2i(&root.join("a"), Kind::Float, Device::Cpu).unwrap();
    assert_eq!(m.grid, [2, 2]);
    let prompts = vec![
        "a photo of a trouser".to_string(),
        "a photo of a bag".to_string(),
    ];
    let (reqs, ids) = generate_for(&m, &prompts, 3, &s, 3.0).unwrap();
    assert_eq!(ids.len(), 6);
    assert_eq!(reqs[4].seed, 7 + 4);
    assert!(ids
        .iter()
        .all(|r| r.len() == 4 && r.iter().all(|&u| u < 12)));
    let out = root.join("export");
    export_t2i(&root.join("a"), &out).unwrap();
    let e = load_t2i(&out, Kind::Float, Device::Cpu).unwrap();
    assert_eq!(e.layout, m.layout);
    assert_eq!(e.layout.vocab.visual_start(), ROWS as u32);
    let (_, ids_e) = generate_for(&e, &prompts, 3, &s, 3.0).unwrap();
    assert_eq!(ids, ids_e, "export round trip");
    let e = load_t2i(&root.join("tok"), Kind::Float, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("t2i.json") && e.contains("config.toml"), "{e}");
}

#[test]
fn t2i_batches_drop_captions_and_mask_the_loss() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fixtures(root);
    let cfg = config(root, "d", 1, &["t2i.cfg_dropout=1.0".into()]);
    let (_, mut data) = build(&cfg).unwrap();
    let b = data.next_batch(Device::Cpu).unwrap();
    let tb = b.tokens().unwrap();
    // All dropped: [bos] <boi> v v v v <eoi>, 7 tokens, loss on the last 5.
    assert_eq!(tb.input_ids.size(), [5, 7]);
    let boi = (ROWS + 12) as i64;
    assert!(tb.input_ids.select(1, 1).eq(boi).all().int64_value(&[]) == 1);
    assert!(tb.labels.narrow(1, 0, 2).eq(-100).all().int64_value(&[]) == 1);
    assert!(tb.labels.narrow(1, 2, 5).ne(-100).all().int64_value(&[]) == 1);
    let cfg = config(root, "e", 1, &["t2i.cfg_dropout=0.0".into()]);
    let (_, mut data) = build(&cfg).unwrap();
    let b = data.next_batch(Device::Cpu).unwrap();
    let tb = b.tokens().unwrap();
    // Captions kept: longer rows, padding masked and without loss.
    assert!(tb.input_ids.size()[1] > 7);
    let pad = tb.attention_mask.logical_not();
    assert!(
        tb.labels
            .masked_select(&pad)
            .eq(-100)
            .all()
            .int64_value(&[])
            == 1
    );
    // Config errors name the key.
    let p = root.join("d.toml");
    let e = T2iConfig::load(&p, &["llm.train=\"frozen\"".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("llm.train"), "{e}");
    let e = T2iConfig::load(&p, &["t2i.cfg_dropout=1.5".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("t2i.cfg_dropout"), "{e}");
    let e = T2iConfig::load(&p, &["t2i.typo=1".into()])
        .unwrap_err()
        .to_string();
    assert!(e.contains("typo"), "{e}");
    let _ = PathBuf::new();
}

/// The committed configs and the embedded presets parse and validate.
#[test]
fn t2i_configs_and_presets_parse() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    for f in [
        "t2i-qwen2.5-3b.toml",
        "t2i-fmnist-smollm2.toml",
        "t2i-tiny-cpu.toml",
    ] {
        let c = T2iConfig::load(&root.join(f), &[]).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(c.t2i.cfg_dropout, 0.1, "{f}");
    }
    for (name, _) in semhitok_train::t2i::config::PRESETS {
        T2iConfig::preset(name, &[]).unwrap();
    }
    assert!(T2iConfig::preset("nope", &[]).is_err());
}
