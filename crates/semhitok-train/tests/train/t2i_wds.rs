//! Webdataset captions through `semhitok tokenize` into text-to-image training (issue 18 §1
//! Data): an image folder with `<stem>.txt` captions packed by `semhitok data pack`, plus a tar
//! written here whose only caption is the `.json` `caption` field; tokenized with a tiny exported
//! SemHiTok (`--data wds:DIR`); the shards carry the captions; a tiny Llama trains 2 T2I steps
//! on them with the stored captions (no `caption_template`).

use super::artifact::{export, trained_pre};
use super::common::{quiet, serial};
use semhitok_mllm::llm::load::LoadedLm;
use semhitok_mllm::llm::{LlamaConfig, LlamaModel, Weights};
use semhitok_mllm::tokenizer::TextTokenizer;
use semhitok_train::report::save_png;
use semhitok_train::synthetic::SyntheticBatches;
use semhitok_train::t2i::config::T2iConfig;
use semhitok_train::t2i::task::build;
use semhitok_train::tokenize::{run, TokenizeArgs};
use semhitok_train::trainer::train;
use std::path::Path;
use std::process::Command;
use tch::{Device, Kind, Tensor};

const CAPTIONS: [&str; 5] = [
    "a red bag",
    "a blue coat",
    "a red sneaker",
    "a small blue bag",
    "a coat",
];

/// A word-level tokenizer over the captions' words and a tiny random Llama, as an HF folder.
fn tiny_llm(dir: &Path) {
    let mut words = vec!["<unk>", "<s>", "</s>"];
    for w in CAPTIONS.iter().flat_map(|c| c.split(' ')).chain(["green"]) {
        if !words.contains(&w) {
            words.push(w);
        }
    }
    let vocab: serde_json::Map<String, serde_json::Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| (w.to_string(), serde_json::json!(i)))
        .collect();
    let tj = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    });
    std::fs::create_dir_all(dir).unwrap();
    let tp = dir.join("words.json");
    std::fs::write(&tp, tj.to_string()).unwrap();
    let cfg = LlamaConfig {
        max_position_embeddings: 64,
        ..LlamaConfig::tiny(32)
    };
    LoadedLm {
        model: LlamaModel::new(&cfg, &Weights::random(0.2, 1, Kind::Float, Device::Cpu)).unwrap(),
        tokenizer: TextTokenizer::from_file(&tp).unwrap(),
        chat_template: None,
        bos_to_add: None,
        eos: vec![2],
    }
    .save_hf_dir(&dir.join("llm"))
    .unwrap();
}

/// A tar with one sample: `json-0.png` and `json-0.json` `{"caption": ...}`, no `.txt`.
fn json_caption_tar(path: &Path, png: &Path, caption: &str) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut add = |name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, bytes).unwrap();
    };
    add("json-0.png", &std::fs::read(png).unwrap());
    add(
        "json-0.json",
        serde_json::json!({"key": "json-0", "caption": caption})
            .to_string()
            .as_bytes(),
    );
    b.finish().unwrap();
}

#[test]
fn webdataset_captions_reach_the_token_shards_and_t2i_trains_on_them() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let model = root.join("model");
    export(&trained_pre(root), &model);

    // 5 images with <stem>.txt captions -> `semhitok data pack` (2 per shard: 3 tars).
    let src = root.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let imgs = SyntheticBatches::new(5, 6, 40)
        .next_images(Device::Cpu)
        .unwrap();
    for (i, c) in CAPTIONS.iter().enumerate() {
        save_png(&imgs.get(i as i64), &src.join(format!("im{i}.png"))).unwrap();
        std::fs::write(src.join(format!("im{i}.txt")), format!("{c}\n")).unwrap();
    }
    let wds = root.join("wds");
    let out = Command::new(env!("CARGO_BIN_EXE_semhitok"))
        .args(["data", "pack", "--shard-size", "2", "--src"])
        .arg(&src)
        .arg("--out")
        .arg(&wds)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    save_png(&imgs.get(5), &root.join("json.png")).unwrap();
    json_caption_tar(
        &wds.join("zz-json.tar"),
        &root.join("json.png"),
        "a green coat",
    );

    let tokens = root.join("tokens");
    let a = TokenizeArgs {
        precision: Default::default(),
        model: model.clone(),
        data: format!("wds:{}", wds.display()),
        out: tokens.clone(),
        device: "cpu".into(),
        batch: 2,
        shard_size: 4096,
        workers: 1,
        rank: None,
        world_size: None,
        crash_after_shards: None,
        limit: None,
    };
    let r = run(&a).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.complete, "{r:?}");
    assert_eq!((r.shards_total, r.images, r.skipped), (4, 6, 0), "{r:?}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tokens.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["source_tars"].as_array().unwrap().len(), 4, "{meta}");
    let mut captions = vec![];
    for s in 0..4 {
        let side: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(tokens.join(format!("shard-{s:05}.json"))).unwrap(),
        )
        .unwrap();
        let t = Tensor::read_safetensors(tokens.join(format!("shard-{s:05}.safetensors"))).unwrap();
        let u = &t.iter().find(|(n, _)| n == "unified").unwrap().1;
        assert_eq!(u.size()[0] as u64, side["count"].as_u64().unwrap());
        captions.extend(
            side["captions"]
                .as_array()
                .unwrap_or_else(|| panic!("shard {s} has no captions: {side}"))
                .iter()
                .map(|c| c.as_str().unwrap().to_string()),
        );
    }
    let mut want: Vec<String> = CAPTIONS.iter().map(|c| c.to_string()).collect();
    want.push("a green coat".into());
    assert_eq!(captions, want);
    // --limit is for indexed sources only.
    let e = run(&TokenizeArgs {
        precision: Default::default(),
        limit: Some(2),
        out: root.join("t2"),
        ..a.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("--limit"), "{e}");

    // Two T2I steps on the shards, the stored captions as the prompts.
    tiny_llm(&root.join("lm"));
    let cfg_path = root.join("t2i.toml");
    std::fs::write(
        &cfg_path,
        format!(
            r#"
[run]
name = "t2i-wds"
out_dir = "{out}"
stage = "t2i"
seed = 0
device = "cpu"

[llm]
weights = "{llm}"
dtype = "f32"
train = "full"
max_seq_len = 40

[t2i]
tokenizer = "{tok}"
cfg_dropout = 0.1

[data]
tokens = "{tokens}"
batch_size = 3

[optim]
lr = 1e-3
betas = [0.9, 0.95]
weight_decay = 0.0
warmup_steps = 1
min_lr_ratio = 0.1
grad_clip = 1.0

[schedule]
steps = 2
log_every = 1
ckpt_every = 2
keep_last = 1
"#,
            out = root.join("run").display(),
            llm = root.join("lm/llm").display(),
            tok = model.display(),
            tokens = tokens.display(),
        ),
    )
    .unwrap();
    let cfg = T2iConfig::load(&cfg_path, &[]).unwrap();
    let (mut task, mut data) = build(&cfg).unwrap_or_else(|e| panic!("{e}"));
    let rep = train(&cfg.loop_config(), &mut task, &mut data, &quiet()).unwrap();
    assert_eq!(rep.losses.len(), 2);
    assert!(
        rep.losses.iter().all(|l| l.1.is_finite()),
        "{:?}",
        rep.losses
    );
}
