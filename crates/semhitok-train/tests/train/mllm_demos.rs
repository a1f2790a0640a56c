//! `cargo xtask demo llava` / `demo t2i` run `scripts/demo_llava.sh` / `scripts/t2i_cpu_demo.sh`:
//! both scripts end to end at a micro size (a tiny random SemHiTok and a tiny random Llama, 2
//! training steps, a handful of test items), then a re-run that reuses every finished step.

use super::common::serial;
use super::llava::training::fixture;
use std::path::{Path, PathBuf};
use std::process::Command;

fn ws() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn script(name: &str, env: &[(&str, String)]) -> String {
    let out = Command::new("bash")
        .arg(ws().join("scripts").join(name))
        .arg(env!("CARGO_BIN_EXE_semhitok"))
        .current_dir(ws())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("bash runs");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{name} failed:\n{err}");
    err
}

/// TOKENIZERS/sghc/model -> the fixture's tokenizer.
fn tokenizer_set(root: &Path, tok: &Path) -> PathBuf {
    let set = root.join("set");
    std::fs::create_dir_all(set.join("sghc")).unwrap();
    std::os::unix::fs::symlink(tok, set.join("sghc/model")).unwrap();
    set
}

fn p(x: &Path) -> String {
    x.display().to_string()
}

#[test]
fn llava_demo_script_runs_at_micro_size_and_reuses_its_steps() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(&tmp.path().join("fx"));
    let set = tokenizer_set(tmp.path(), &f.tok);
    let out = tmp.path().join("out");
    let env = [
        ("OUT", p(&out)),
        ("TOKENIZERS", p(&set)),
        ("MINI", p(&tmp.path().join("no-mini"))),
        ("LLM", p(&f.llm)),
        ("ONLY", "sghc pixel-vq teacher".into()),
        ("STEPS", "2".into()),
        ("BATCH", "2".into()),
        ("EVAL", "4".into()),
        ("ASK_IMAGES", "2".into()),
        ("TEMPLATE", "vicuna_v1".into()),
        ("THREADS", "1".into()),
    ];
    let log = script("demo_llava.sh", &env);
    assert!(log.contains("skip pixel-vq"), "{log}");
    for name in ["sghc", "teacher"] {
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(name).join("eval.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(v["n"], 4, "{name}: {v}");
        assert!(
            v["report"]["overall"]["exact"]["accuracy"].is_number(),
            "{v}"
        );
        assert!(v["report"]["overall"]["yes_no"]["f1"].is_number(), "{v}");
    }
    let ask = std::fs::read_to_string(out.join("ask.txt")).unwrap();
    assert_eq!(
        ask.lines().filter(|l| !l.starts_with("loaded ")).count(),
        2,
        "{ask}"
    );
    let truth = std::fs::read_to_string(out.join("ask.truth.txt")).unwrap();
    assert_eq!(truth.lines().count(), 2, "{truth}");
    assert!(std::fs::read_to_string(out.join("times.md"))
        .unwrap()
        .contains("| total"));
    // Nothing is redone.
    let again = script("demo_llava.sh", &env);
    assert!(
        again.contains("sghc: done") && again.contains("teacher: done"),
        "{again}"
    );
    assert!(!again.contains("starting fresh"), "{again}");
}

#[test]
fn t2i_demo_script_runs_at_micro_size_and_reuses_its_steps() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let f = fixture(&tmp.path().join("fx"));
    let set = tokenizer_set(tmp.path(), &f.tok);
    let out = tmp.path().join("out");
    let clf = tmp.path().join("clf.safetensors");
    let env = [
        ("OUT", p(&out)),
        ("TOKENIZERS", p(&set)),
        ("MINI", p(&tmp.path().join("no-mini"))),
        ("LLM", p(&f.llm)),
        ("STEPS", "2".into()),
        ("BATCH", "2".into()),
        ("TRAIN_N", "12".into()),
        ("PER_CLASS", "1".into()),
        ("N", "2".into()),
        ("CLASSIFIER", p(&clf)),
        ("CLF_LIMIT", "64".into()),
        ("CLF_TEST_LIMIT", "32".into()),
        ("THREADS", "1".into()),
    ];
    let log = script("t2i_cpu_demo.sh", &env);
    assert!(
        log.contains("the first 12 Fashion-MNIST training images"),
        "{log}"
    );
    let complete: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokens/complete.json")).unwrap())
            .unwrap();
    assert_eq!(complete["images"], 12);
    assert!(clf.is_file());
    for f in [
        "eval/cfg-3.png",
        "eval/cfg-3.safetensors",
        "generate/grid.png",
        "summary.md",
    ] {
        assert!(out.join(f).is_file(), "{f}\n{log}");
    }
    let scores = std::fs::read_to_string(out.join("eval/scores.jsonl")).unwrap();
    let s: serde_json::Value = serde_json::from_str(scores.lines().last().unwrap()).unwrap();
    assert_eq!(s["n"], 10, "{s}");
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        summary.contains("Class accuracy") && summary.contains("| total"),
        "{summary}"
    );
    // Tokens, classifier, training and t2i-eval are reused.
    let again = script("t2i_cpu_demo.sh", &env);
    for s in [
        "2/7 tokens: reusing",
        "3/7 classifier: reusing",
        "4/7 train: done",
        "5/7 t2i-eval: done",
    ] {
        assert!(again.contains(s), "{s}\n{again}");
    }
}
