//! `semhitok data llava-fmnist`: the written records pass semhitok-data's LLaVA validation with
//! every image present, the POPE questions are balanced, the answers are the class names.

use semhitok_data::{load_llava, FashionMnist, Split, Transform, FASHION_MNIST_CLASSES};
use semhitok_mllm::llava::eval::{read_jsonl, QaKind};
use semhitok_train::llava::fmnist::{generate, FmnistArgs, CLASS_QUESTION};
use std::path::PathBuf;

fn fmnist_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.assets/fashion-mnist")
}

#[test]
fn fmnist_llava_set_is_valid_balanced_and_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let args = |out: &str, seed| FmnistArgs {
        fmnist: fmnist_dir(),
        out: dir.path().join(out),
        train: Some(40),
        test: Some(30),
        seed,
    };
    let r = generate(&args("a", 3)).unwrap();
    assert_eq!((r.train_images, r.test_images), (40, 30));
    assert_eq!(
        (r.pretrain_records, r.instruct_records, r.test_items),
        (40, 80, 60)
    );
    assert_eq!(r.test_pope_yes, 15);
    let root = dir.path().join("a");
    for f in ["pretrain.json", "instruct.json"] {
        let (recs, skipped) = load_llava(&root.join(f), Some(&root)).unwrap();
        assert_eq!(skipped.skipped, 0, "{f}: {:?}", skipped.examples);
        assert!(recs.iter().all(|r| r.image.is_some()));
    }
    let (inst, _) = load_llava(&root.join("instruct.json"), Some(&root)).unwrap();
    let test = FashionMnist::open(
        fmnist_dir(),
        Split::Train,
        Transform::CenterCrop { size: 28 },
    )
    .unwrap();
    let class_rec = &inst[2];
    assert!(class_rec.conversations[0].value.contains(CLASS_QUESTION));
    assert_eq!(
        class_rec.conversations[1].value,
        FASHION_MNIST_CLASSES[test.labels()[1] as usize]
    );
    let yes = inst
        .iter()
        .filter(|r| r.conversations[1].value == "Yes")
        .count();
    assert_eq!(yes, 20, "half of the train POPE questions are positive");
    let items = read_jsonl(&root.join("test.jsonl")).unwrap();
    assert_eq!(items.iter().filter(|i| i.kind == QaKind::Exact).count(), 30);
    assert!(items.iter().all(|i| root.join(&i.image).is_file()));
    // Same seed, same set; an existing folder is refused.
    generate(&args("b", 3)).unwrap();
    for f in ["instruct.json", "test.jsonl"] {
        assert_eq!(
            std::fs::read(root.join(f)).unwrap(),
            std::fs::read(dir.path().join("b").join(f)).unwrap()
        );
    }
    assert!(generate(&args("a", 3))
        .unwrap_err()
        .to_string()
        .contains("exists"));
}

/// The committed LLaVA configs parse and validate; a stage-1 config that trains the LLM is
/// refused naming `llm.train`.
#[test]
fn llava_configs_parse() {
    use semhitok_train::config::peek_stage;
    use semhitok_train::llava::config::LlavaConfig;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml")
            && peek_stage(&p, &[]).unwrap().config_kind()
                == semhitok_train::config::ConfigKind::Llava
        {
            LlavaConfig::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 4);
    let e = LlavaConfig::load(
        &dir.join("llava-fmnist-stage1.toml"),
        &["llm.train=\"full\"".to_string()],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("llm.train") && e.contains("llava-fmnist-stage1.toml"),
        "{e}"
    );
}
