//! LLaVA prompts and labels against LLaVA's own preprocessing (golden from
//! `scripts/fixtures/llava_prompts.py`), image splicing, truncation, and the answer scorer.

use proptest::prelude::*;
use semhitok_data::llava::{Role, Turn};
use semhitok_mllm::chat::ChatTemplate;
use semhitok_mllm::llava::eval::{self, EvalItem, QaKind};
use semhitok_mllm::llava::splice::{collate, expand, splice_embeddings};
use semhitok_mllm::llava::{
    Example, PromptBuilder, PromptStats, Template, IGNORE_INDEX, IMAGE_TOKEN_INDEX,
};
use semhitok_mllm::spm::SpmModel;
use semhitok_mllm::tokenizer::TextTokenizer;
use tch::{Device, Kind, Tensor};

fn fixtures() -> std::path::PathBuf {
    super::workspace().join("crates/semhitok-mllm/tests/fixtures/llava")
}

fn tokenizer() -> TextTokenizer {
    let p = fixtures().join("tokenizer.model");
    let o = p.display().to_string();
    TextTokenizer::from_tokenizer(SpmModel::open(&p).unwrap().to_tokenizer(&o).unwrap(), &o)
}

fn golden() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("golden.json")).unwrap()).unwrap()
}

fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn turns(record: &serde_json::Value) -> Vec<Turn> {
    serde_json::from_value(record["conversations"].clone()).unwrap()
}

fn template(name: &str) -> Template {
    serde_json::from_value(serde_json::Value::String(name.into())).unwrap()
}

/// Ids and labels equal LLaVA's `preprocess_v1` / `preprocess_plain` on 5 conversations
/// (3 image records with one or three rounds, a text-only record, odd whitespace and Unicode),
/// and the layout after splicing 4 features equals `prepare_inputs_labels_for_multimodal`'s.
#[test]
fn prompts_match_llava() {
    let tk = tokenizer();
    let g = golden();
    assert_eq!(g["image_token_index"], IMAGE_TOKEN_INDEX);
    assert_eq!(g["ignore_index"], IGNORE_INDEX);
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    let mut stats = PromptStats::default();
    for c in cases {
        let t = template(c["template"].as_str().unwrap());
        let b = PromptBuilder::new(&tk, t, None, Some(1), 2048).unwrap();
        let id = c["record"]["id"].as_str().unwrap();
        let ex = b.example(&turns(&c["record"]), id).unwrap();
        let what = format!("{id} ({t:?})");
        assert_eq!(ex.input_ids, ints(&c["input_ids"]), "{what}: input ids");
        assert_eq!(ex.labels, ints(&c["labels"]), "{what}: labels");
        assert_eq!(ex.mismatch, c["mismatch"].as_bool().unwrap(), "{what}");
        assert_eq!(
            ex.has_image(),
            c["record"].get("image").is_some(),
            "{what}: image placeholder"
        );
        let n = c["n_image"].as_u64().unwrap() as usize;
        let seq = expand(&ex, n, 2048);
        assert_eq!(seq.input_ids, ints(&c["spliced_input_ids"]), "{what}");
        assert_eq!(seq.labels, ints(&c["spliced_labels"]), "{what}");
        assert!(!seq.truncated);
        stats.record(&ex, &seq);
    }
    assert_eq!(
        (stats.examples, stats.text_only, stats.truncated),
        (8, 1, 0)
    );
    assert!(stats.warning(2048).is_none());
}

/// Truncation at max_len (inside the second round of the three-turn record) keeps LLaVA's
/// layout and is counted.
#[test]
fn truncation_is_llava_s_and_counted() {
    let tk = tokenizer();
    let t = &golden()["truncation"];
    let max_len = t["max_len"].as_u64().unwrap() as usize;
    let n = t["n_image"].as_u64().unwrap() as usize;
    let b = PromptBuilder::new(&tk, Template::VicunaV1, None, Some(1), max_len).unwrap();
    let ex = b.example(&turns(&t["record"]), "three-turns").unwrap();
    let seq = expand(&ex, n, max_len);
    assert!(seq.truncated);
    assert_eq!(seq.input_ids.len(), max_len);
    assert_eq!(seq.input_ids, ints(&t["spliced_input_ids"]));
    assert_eq!(seq.labels, ints(&t["spliced_labels"]));
    let mut stats = PromptStats::default();
    stats.record(&ex, &seq);
    assert_eq!(stats.truncated, 1);
    let w = stats.warning(max_len).unwrap();
    assert!(
        w.contains("1 of 1") && w.contains(&max_len.to_string()),
        "{w}"
    );
}

/// The image positions: the h*w features sit right where `<image>` was, nothing else moves.
#[test]
fn image_positions_and_text_only_records() {
    let ex = Example {
        input_ids: vec![1, 5, IMAGE_TOKEN_INDEX, 7, 8],
        labels: vec![IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 7, 8],
        mismatch: false,
    };
    let seq = expand(&ex, 3, 100);
    assert_eq!(seq.input_ids, vec![1, 5, -200, -200, -200, 7, 8]);
    assert_eq!(seq.labels, vec![-100, -100, -100, -100, -100, 7, 8]);
    let text = Example {
        input_ids: vec![1, 9, 10],
        labels: vec![IGNORE_INDEX, 9, 10],
        mismatch: false,
    };
    let tseq = expand(&text, 3, 100);
    assert_eq!(tseq.input_ids, text.input_ids);
    let (ids, labels, mask) = collate(&[seq, tseq], 0, Device::Cpu).unwrap();
    assert_eq!(ids.size(), [2, 7]);
    assert_eq!(
        Vec::<i64>::try_from(ids.get(1)).unwrap(),
        vec![1, 9, 10, 0, 0, 0, 0]
    );
    assert_eq!(
        Vec::<i64>::try_from(labels.get(1)).unwrap(),
        vec![-100, 9, 10, -100, -100, -100, -100]
    );
    assert_eq!(i64::try_from(mask.sum(Kind::Int64)).unwrap(), 10);

    // Embedding splice: row 0's positions 2..5 take features 0..3; row 1 (text-only) is
    // unchanged; gradients reach the features.
    let (d, n) = (4, 3);
    let emb = Tensor::zeros([2, 7, d], (Kind::Float, Device::Cpu));
    let feats = Tensor::arange(2 * n * d, (Kind::Float, Device::Cpu))
        .view([2, n, d])
        .set_requires_grad(true);
    let out = splice_embeddings(&emb, &ids, &feats).unwrap();
    for k in 0..n {
        assert!(out.get(0).get(2 + k).equal(&feats.get(0).get(k)));
    }
    assert_eq!(
        f64::try_from(out.get(0).get(0).abs().sum(Kind::Float)).unwrap(),
        0.0
    );
    assert_eq!(
        f64::try_from(out.get(1).abs().sum(Kind::Float)).unwrap(),
        0.0
    );
    out.sum(Kind::Float).backward();
    let g = feats.grad();
    assert_eq!(
        f64::try_from(g.get(0).sum(Kind::Float)).unwrap(),
        (n * d) as f64
    );
    assert_eq!(f64::try_from(g.get(1).sum(Kind::Float)).unwrap(), 0.0);
    // A row with more image positions than features is refused, naming the row.
    let too_few = Tensor::zeros([2, 2, d], (Kind::Float, Device::Cpu));
    let e = splice_embeddings(&emb, &ids, &too_few)
        .unwrap_err()
        .to_string();
    assert!(e.contains("image positions"), "{e}");
}

/// A record without `<image>` under `plain` is an error naming the record; v1 without a BOS
/// is refused at construction.
#[test]
fn bad_conversations_are_named() {
    let tk = tokenizer();
    let b = PromptBuilder::new(&tk, Template::Plain, None, Some(1), 64).unwrap();
    let t = vec![
        Turn {
            from: Role::Human,
            value: "no image here".into(),
        },
        Turn {
            from: Role::Gpt,
            value: "ok".into(),
        },
    ];
    let e = b.example(&t, "rec-7").unwrap_err().to_string();
    assert!(e.contains("rec-7") && e.contains("plain"), "{e}");
    let swapped = vec![t[1].clone(), t[0].clone()];
    let v1 = PromptBuilder::new(&tk, Template::VicunaV1, None, Some(1), 64).unwrap();
    assert!(v1
        .example(&swapped, "rec-8")
        .unwrap_err()
        .to_string()
        .contains("rec-8"));
    let e = PromptBuilder::new(&tk, Template::VicunaV1, None, None, 64).unwrap_err();
    assert!(e.to_string().contains("BOS"), "{e}");
    assert!(PromptBuilder::new(&tk, Template::Chat, None, None, 64).is_err());
}

const CHATML: &str = "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] \
    + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' \
    }}{% endif %}";

/// The model's own template: only the assistant turns (answer + end of turn) carry labels,
/// the image sits in the first user turn, and generation ends with the assistant header.
#[test]
fn chat_template_labels_cover_answers_only() {
    let tk = tokenizer();
    let chat = ChatTemplate::new(CHATML, "test", "", "").unwrap();
    let b = PromptBuilder::new(&tk, Template::Chat, Some(&chat), None, 4096).unwrap();
    let t: Vec<Turn> = serde_json::from_value(serde_json::json!([
        {"from": "human", "value": "What is this item?\n<image>"},
        {"from": "gpt", "value": "Bag"},
        {"from": "human", "value": "Is it red?"},
        {"from": "gpt", "value": "no"}
    ]))
    .unwrap();
    let ex = b.example(&t, "c").unwrap();
    assert_eq!(
        ex.input_ids
            .iter()
            .filter(|&&i| i == IMAGE_TOKEN_INDEX)
            .count(),
        1
    );
    let targets: Vec<u32> = ex
        .labels
        .iter()
        .filter(|&&l| l != IGNORE_INDEX)
        .map(|&l| l as u32)
        .collect();
    let all: Vec<u32> = ex
        .input_ids
        .iter()
        .filter(|&&i| i >= 0)
        .map(|&i| i as u32)
        .collect();
    let text = tk.decode(&all).unwrap();
    assert!(text.starts_with("<|im_start|>user\n"), "{text:?}");
    // Targets are exactly the two answer segments, in order.
    let want = [
        tk.encode("Bag<|im_end|>\n").unwrap(),
        tk.encode("no<|im_end|>\n").unwrap(),
    ]
    .concat();
    assert_eq!(targets, want);
    let gen = b
        .generation_prompt("Is there a Bag in the image?", true)
        .unwrap();
    assert_eq!(gen.iter().filter(|&&i| i == IMAGE_TOKEN_INDEX).count(), 1);
    let gtext = tk
        .decode(
            &gen.iter()
                .filter(|&&i| i >= 0)
                .map(|&i| i as u32)
                .collect::<Vec<_>>(),
        )
        .unwrap();
    assert!(gtext.ends_with("<|im_start|>assistant\n"), "{gtext:?}");
    // vicuna_v1's generation prompt ends with "ASSISTANT:".
    let v1 = PromptBuilder::new(&tk, Template::VicunaV1, None, Some(1), 4096).unwrap();
    let ids = v1.generation_prompt("What is it?", true).unwrap();
    assert_eq!(ids[0], 1);
    let tail: Vec<u32> = ids[ids.len() - 3..].iter().map(|&i| i as u32).collect();
    assert!(tk.decode(&tail).unwrap().ends_with("ASSISTANT:"));
}

fn item(kind: QaKind, q: &str, a: &str) -> EvalItem {
    EvalItem {
        image: "x.png".into(),
        question: q.into(),
        answer: a.into(),
        kind,
        options: None,
        id: None,
        category: None,
    }
}

#[test]
fn vqa_normalisation_and_exact_match() {
    use eval::normalize_answer as n;
    assert_eq!(n("Two dogs."), "2 dogs");
    assert_eq!(n("The T-shirt/top"), "t shirt top");
    assert_eq!(n("T-shirt/top"), n("t-shirt/top"));
    assert_eq!(n("Ankle boot"), "ankle boot");
    assert_eq!(n("  an Ankle   boot!\n"), "ankle boot");
    assert_eq!(n("3.5"), "3.5");
    assert_eq!(n("1,000"), "1000");
    assert_eq!(n("dont"), "don't");
    assert_eq!(n("it's red"), "it 's red");
    let it = item(QaKind::Exact, "What is this item?", "Ankle boot");
    assert!(eval::is_correct(&it, "ankle boot."));
    assert!(!eval::is_correct(&it, "Sneaker"));
    assert_eq!(
        eval::prompt_text(&it),
        "What is this item?\nAnswer the question using a single word or phrase."
    );
    let done = item(
        QaKind::Exact,
        "Q?\nAnswer the question using a single word or phrase.",
        "x",
    );
    assert_eq!(eval::prompt_text(&done), done.question);
}

#[test]
fn pope_reading_and_scores() {
    assert!(eval::pope_prediction("Yes, there is."));
    assert!(!eval::pope_prediction("No"));
    assert!(!eval::pope_prediction("There is not a bag. Yes."));
    assert!(eval::pope_prediction("Yes. No other item."));
    assert!(!eval::pope_prediction("no, it is a coat"));
    // 4 positives, 4 negatives; the model says yes to 3 positives and 1 negative.
    let mut items = vec![];
    let mut preds = vec![];
    for (label, pred) in [
        ("yes", "Yes"),
        ("yes", "yes"),
        ("yes", "Yes."),
        ("yes", "No"),
        ("no", "Yes"),
        ("no", "No"),
        ("no", "no."),
        ("no", "No, it is not."),
    ] {
        items.push(item(QaKind::YesNo, "Is there a Bag in the image?", label));
        preds.push(pred.to_string());
    }
    let r = eval::score(&items, &preds).unwrap();
    let s = r.overall.yes_no.unwrap();
    assert_eq!((s.tp, s.fp, s.tn, s.fn_), (3, 1, 3, 1));
    assert_eq!(s.accuracy, 0.75);
    assert_eq!(s.precision, 0.75);
    assert_eq!(s.recall, 0.75);
    assert!((s.f1 - 0.75).abs() < 1e-12);
    assert_eq!(s.yes_ratio, 0.5);
    assert!(r.overall.exact.is_none());
    // All-no predictions: precision 0 and F1 0, no division by zero.
    let none = vec!["No".to_string(); 8];
    let s = eval::score(&items, &none).unwrap().overall.yes_no.unwrap();
    assert_eq!((s.precision, s.f1, s.accuracy), (0.0, 0.0, 0.5));
}

#[test]
fn multiple_choice_letters() {
    assert_eq!(eval::choice_letter("B", 4), Some('B'));
    assert_eq!(eval::choice_letter("(C) a coat", 4), Some('C'));
    assert_eq!(eval::choice_letter("The answer is D.", 4), Some('D'));
    assert_eq!(eval::choice_letter("E", 4), None);
    assert_eq!(eval::choice_letter("Bag", 4), None);
    let mut it = item(QaKind::Choice, "Which item is shown?", "B");
    it.options = Some(vec!["Coat".into(), "Bag".into(), "Dress".into()]);
    assert_eq!(
        eval::prompt_text(&it),
        "Which item is shown?\nA. Coat\nB. Bag\nC. Dress\nAnswer with the option's letter from \
         the given choices directly."
    );
    assert!(eval::is_correct(&it, "B."));
    assert!(!eval::is_correct(&it, "A"));
}

/// A generated JSONL file round-trips; bad lines name file and line; categories are scored
/// separately.
#[test]
fn jsonl_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("q.jsonl");
    let mut items = vec![];
    for (i, c) in ["Bag", "Coat", "Dress"].iter().enumerate() {
        let mut it = item(QaKind::Exact, "What is this item?", c);
        it.category = Some(if i == 0 { "a" } else { "b" }.into());
        items.push(it);
    }
    items.push(item(QaKind::YesNo, "Is there a Bag in the image?", "yes"));
    eval::write_jsonl(&p, &items).unwrap();
    let back = eval::read_jsonl(&p).unwrap();
    assert_eq!(back, items);
    let preds: Vec<String> = ["bag", "Coat", "Shirt", "Yes"].map(String::from).to_vec();
    let r = eval::score(&back, &preds).unwrap();
    let ex = r.overall.exact.unwrap();
    assert_eq!((ex.n, ex.correct), (3, 2));
    assert_eq!(r.per_category["a"].exact.unwrap().accuracy, 1.0);
    assert_eq!(r.per_category["b"].exact.unwrap().accuracy, 0.5);
    assert!(eval::score(&back, &preds[..2]).is_err());
    std::fs::write(
        &p,
        "{\"image\": \"a\", \"question\": \"q\", \"answer\": \"maybe\", \"kind\": \"pope\"}\n",
    )
    .unwrap();
    let e = eval::read_jsonl(&p).unwrap_err().to_string();
    assert!(e.contains("q.jsonl:1") && e.contains("maybe"), "{e}");
    std::fs::write(&p, "{\"image\": \"a\"}\n").unwrap();
    assert!(eval::read_jsonl(&p)
        .unwrap_err()
        .to_string()
        .contains("q.jsonl:1"));
}

proptest! {
    /// Expansion: length grows by (n - 1) per image, text tokens keep their order and labels,
    /// every image position is ignored, truncation keeps a prefix.
    #[test]
    fn expansion_properties(pre in prop::collection::vec(0i64..50, 0..10),
                            post in prop::collection::vec(0i64..50, 0..10),
                            n in 1usize..20, max_len in 1usize..60) {
        let input_ids = [pre.clone(), vec![IMAGE_TOKEN_INDEX], post.clone()].concat();
        let labels = [vec![IGNORE_INDEX; pre.len() + 1], post.clone()].concat();
        let ex = Example { input_ids, labels, mismatch: false };
        let full = expand(&ex, n, usize::MAX);
        prop_assert_eq!(full.input_ids.len(), pre.len() + n + post.len());
        prop_assert_eq!(&full.input_ids[pre.len()..pre.len() + n], &vec![IMAGE_TOKEN_INDEX; n][..]);
        prop_assert_eq!(&full.input_ids[pre.len() + n..], &post[..]);
        prop_assert_eq!(&full.labels[pre.len() + n..], &post[..]);
        let cut = expand(&ex, n, max_len);
        let keep = full.input_ids.len().min(max_len);
        prop_assert_eq!(&cut.input_ids[..], &full.input_ids[..keep]);
        prop_assert_eq!(cut.truncated, full.input_ids.len() > max_len);
    }
}

fn spm_tokenizer(legacy: bool) -> TextTokenizer {
    let p = fixtures().join("tokenizer.model");
    let o = p.display().to_string();
    TextTokenizer::from_spm(&SpmModel::open(&p).unwrap(), &o, legacy).unwrap()
}

/// transformers' slow `LlamaTokenizer` with `legacy = True` and `= False` (legacy.json, from
/// `scripts/fixtures/llava_prompts.py`) on strings with special tokens followed by text: the
/// dummy prefix after `<s>` / `</s>` only with legacy, a lone leading `▁` dropped before a
/// special token, `▁` in the text read as a space.
#[test]
fn spm_legacy_flag_matches_transformers_slow_llama_tokenizer() {
    let g: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("legacy.json")).unwrap())
            .unwrap();
    let (legacy, non_legacy) = (spm_tokenizer(true), spm_tokenizer(false));
    assert!(legacy.legacy() && !non_legacy.legacy());
    let mut differ = 0;
    for c in g.as_array().unwrap() {
        let tk = if c["legacy"].as_bool().unwrap() {
            &legacy
        } else {
            &non_legacy
        };
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = ints(&c["ids"]).into_iter().map(|i| i as u32).collect();
        let got = tk.encode(text).unwrap();
        assert_eq!(got, want, "legacy = {}: {text:?}", c["legacy"]);
        differ += usize::from(legacy.encode(text).unwrap() != non_legacy.encode(text).unwrap());
    }
    assert!(differ >= 5, "only {differ} strings tokenize differently");
}

/// With `legacy = false` (Vicuna-7B v1.5) ids and labels equal LLaVA's `preprocess_v1` with its
/// `not tokenizer.legacy` round-offset correction (golden-nonlegacy.json): no mismatch, and the
/// multi-round records differ from the legacy golden.
#[test]
fn prompts_match_llava_with_legacy_false() {
    let tk = spm_tokenizer(false);
    let g: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("golden-nonlegacy.json")).unwrap(),
    )
    .unwrap();
    let old = golden();
    let cases = g["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    let mut changed = 0;
    for (c, o) in cases.iter().zip(old["cases"].as_array().unwrap()) {
        let t = template(c["template"].as_str().unwrap());
        let b = PromptBuilder::new(&tk, t, None, Some(1), 2048).unwrap();
        let id = c["record"]["id"].as_str().unwrap();
        let ex = b.example(&turns(&c["record"]), id).unwrap();
        assert_eq!(
            ex.input_ids,
            ints(&c["input_ids"]),
            "{id} ({t:?}): input ids"
        );
        assert_eq!(ex.labels, ints(&c["labels"]), "{id} ({t:?}): labels");
        assert!(!ex.mismatch, "{id}");
        changed += usize::from(c["input_ids"] != o["input_ids"]);
    }
    assert!(changed >= 2, "{changed}");
}

/// An HF folder with only `tokenizer.model` reads `legacy` from tokenizer_config.json.
#[test]
fn hf_folder_honours_tokenizer_config_legacy() {
    use semhitok_mllm::llm::load::{load_hf_dir, LoadedLm};
    use semhitok_mllm::llm::{LlamaConfig, LlamaModel, Weights};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("llm");
    let _rng = crate::rng_lock();
    let model = LlamaModel::new(
        &LlamaConfig::tiny(400),
        &Weights::random(0.2, 1, Kind::Float, Device::Cpu),
    )
    .unwrap();
    LoadedLm {
        model,
        tokenizer: tokenizer(),
        chat_template: None,
        bos_to_add: Some(1),
        eos: vec![2],
    }
    .save_hf_dir(&dir)
    .unwrap();
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    std::fs::copy(
        fixtures().join("tokenizer.model"),
        dir.join("tokenizer.model"),
    )
    .unwrap();
    let text = "the cat</s> USER: what";
    for (legacy, write) in [(true, None), (false, Some(false)), (true, Some(true))] {
        let tc = dir.join("tokenizer_config.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&tc).unwrap()).unwrap();
        match write {
            Some(l) => v["legacy"] = serde_json::json!(l),
            None => {
                v.as_object_mut().unwrap().remove("legacy");
            }
        }
        std::fs::write(&tc, v.to_string()).unwrap();
        let lm = load_hf_dir(&dir, Kind::Float, Device::Cpu).unwrap();
        assert_eq!(lm.tokenizer.legacy(), legacy, "{write:?}");
        assert_eq!(
            lm.tokenizer.encode(text).unwrap(),
            spm_tokenizer(legacy).encode(text).unwrap(),
            "{write:?}"
        );
    }
}
