//! `semhitok tokenize` (issue 15 §2): shards of a class-folder dataset with a bad image; a run
//! killed after its first shard (with a partial file of the next) and restarted writes the same
//! bytes as an uninterrupted run, and so does a 2-rank split; the docs' numpy reader reads them.

use super::artifact::{export, trained_pre};
use super::common::serial;
use semhitok_nn::pretrained::Tokenizer;
use semhitok_train::codec::load_image;
use semhitok_train::report::save_png;
use semhitok_train::synthetic::SyntheticBatches;
use semhitok_train::tokenize::{run, TokenizeArgs};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use tch::{Device, Kind, Tensor};

/// root/{cat,dog}/*.png: 7 decodable images, and `cat/broken.png`.
fn dataset(root: &Path) -> Vec<PathBuf> {
    let imgs = SyntheticBatches::new(31, 7, 40)
        .next_images(Device::Cpu)
        .unwrap();
    let mut good = vec![];
    for i in 0..7 {
        let class = if i < 4 { "cat" } else { "dog" };
        let d = root.join(class);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(format!("im{i}.png"));
        save_png(&imgs.get(i), &p).unwrap();
        good.push(p);
    }
    std::fs::write(root.join("cat/broken.png"), b"\x89PNG not really").unwrap();
    good
}

fn args(model: &Path, data: &Path, out: &Path) -> TokenizeArgs {
    TokenizeArgs {
        precision: Default::default(),
        model: model.to_path_buf(),
        data: format!("imagenet:{}", data.display()),
        out: out.to_path_buf(),
        device: "cpu".into(),
        batch: 2,
        shard_size: 3,
        workers: 2,
        rank: None,
        world_size: None,
        crash_after_shards: None,
        limit: None,
    }
}

/// Every file of `dir` by name, with its bytes.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

fn cli(a: &TokenizeArgs, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_semhitok"))
        .arg("tokenize")
        .arg("--model")
        .arg(&a.model)
        .args([
            "--data",
            &a.data,
            "--batch",
            "2",
            "--shard-size",
            "3",
            "--out",
        ])
        .arg(&a.out)
        .args(extra)
        .env_remove("RANK")
        .env_remove("WORLD_SIZE")
        .output()
        .expect("semhitok runs")
}

#[test]
fn killed_and_restarted_equals_uninterrupted_and_python_reads_it() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    export(&trained_pre(tmp.path()), &model);
    let data = tmp.path().join("data");
    let good = dataset(&data);

    // Uninterrupted.
    let a_dir = tmp.path().join("a");
    let a = args(&model, &data, &a_dir);
    let r = run(&a).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.complete);
    assert_eq!((r.shards_total, r.images, r.skipped), (3, 7, 1));
    let want = files(&a_dir);
    let names: Vec<&str> = want.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        [
            "complete.json",
            "meta.json",
            "shard-00000.json",
            "shard-00000.safetensors",
            "shard-00001.json",
            "shard-00001.safetensors",
            "shard-00002.json",
            "shard-00002.safetensors"
        ]
    );

    // Killed after one shard, with a partial file of the second; then restarted.
    let b_dir = tmp.path().join("b");
    let b = args(&model, &data, &b_dir);
    let out = cli(&b, &["--crash-after-shards", "1"]);
    assert!(!out.status.success(), "the crash switch aborts");
    let left = files(&b_dir);
    assert!(left.contains_key("shard-00000.safetensors"));
    assert!(!left.contains_key("shard-00001.safetensors"));
    assert!(
        left.keys().any(|k| k.contains(".tmp-")),
        "{:?}",
        left.keys()
    );
    let out = cli(&b, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1 already present"), "{stderr}");
    assert!(
        files(&b_dir) == want,
        "restarted run differs from the uninterrupted one"
    );

    // Two ranks write the same files.
    let c_dir = tmp.path().join("c");
    for rank in 0..2 {
        let mut c = args(&model, &data, &c_dir);
        c.rank = Some(rank);
        c.world_size = Some(2);
        run(&c).unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(files(&c_dir) == want, "the 2-rank split differs");

    // The same output folder with other settings is refused, naming the setting.
    let mut other = args(&model, &data, &a_dir);
    other.shard_size = 4;
    let e = run(&other).unwrap_err().to_string();
    assert!(e.contains("shard_size"), "{e}");

    // Contents: the ids are the model's for the same files, the bad file is listed.
    let tok = Tokenizer::from_pretrained(&model, Device::Cpu).unwrap();
    let x = Tensor::cat(
        &good
            .iter()
            .map(|p| load_image(p, 32).unwrap())
            .collect::<Vec<_>>(),
        0,
    );
    let direct = tok.encode(&x).unwrap().unified_ids.to_kind(Kind::Int);
    let ids = shard_ids(&a_dir); // the 3 shards listed above, in order
    assert_eq!(ids.kind(), Kind::Int);
    assert!(ids.equal(&direct));
    let s0: serde_json::Value = serde_json::from_slice(&want["shard-00000.json"]).unwrap();
    assert_eq!(s0["skipped"][0]["key"], "cat/broken.png", "{s0}");
    assert_eq!(s0["count"], 2);

    // The numpy reader of docs/tokens-format.md.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let doc = std::fs::read_to_string(root.join("docs/tokens-format.md")).unwrap();
    let code = doc
        .split("```python\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a python block in docs/tokens-format.md");
    let script = tmp.path().join("read_tokens.py");
    std::fs::write(&script, code).unwrap();
    let out = Command::new("python3")
        .arg(&script)
        .arg(&a_dir)
        .env("PYTHONPATH", root.join(".libtorch"))
        .output()
        .expect("python3 runs (numpy from .libtorch/)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["count"], 7);
    assert_eq!(v["id_sum"], direct.sum(Kind::Int64).int64_value(&[]));
    let keys: Vec<String> = good
        .iter()
        .map(|p| p.strip_prefix(&data).unwrap().display().to_string())
        .collect();
    assert_eq!(v["keys"], serde_json::json!(keys));
    assert_eq!(v["labels"], serde_json::json!([0, 0, 0, 0, 1, 1, 1]));
    assert_eq!(v["captions"][0], "a photo of a cat");
}

/// The `unified` ids of every shard of a finished tokenize folder, concatenated.
fn shard_ids(dir: &Path) -> Tensor {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with("shard-") && n.ends_with(".safetensors")
        })
        .collect();
    names.sort();
    let ids: Vec<Tensor> = names
        .iter()
        .map(|p| {
            Tensor::read_safetensors(p)
                .unwrap()
                .into_iter()
                .find(|(k, _)| k == "unified")
                .expect("a `unified` tensor")
                .1
        })
        .collect();
    Tensor::cat(&ids, 0)
}

/// On CUDA (fp32, TF32 off, the canonical path): `tokenize --device cuda` killed after its first
/// shard and restarted writes the same ids as an uninterrupted CUDA run, and those are the CPU
/// run's ids (issue 15 §1 and §3). Runs on the GPU host; skipped without a CUDA device.
#[test]
fn cuda_tokenize_restarted_gives_the_cpu_ids() {
    let Some(_dev) = semhitok_nn::device::cuda_if_available() else {
        eprintln!("cuda_tokenize_restarted_gives_the_cpu_ids: no CUDA device, skipped");
        return;
    };
    let _g = serial();
    let _one_cuda_test = semhitok_nn::device::cuda_test_lock();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    export(&trained_pre(tmp.path()), &model);
    let data = tmp.path().join("data");
    dataset(&data);
    let cpu_dir = tmp.path().join("cpu");
    run(&args(&model, &data, &cpu_dir)).unwrap_or_else(|e| panic!("{e}"));
    let cpu = shard_ids(&cpu_dir);

    let mut a = args(&model, &data, &tmp.path().join("cuda"));
    a.device = "cuda".into();
    let r = run(&a).unwrap_or_else(|e| panic!("{e}"));
    assert!(r.complete && r.images == 7);
    assert!(
        shard_ids(&a.out).equal(&cpu),
        "CUDA ids differ from the CPU's"
    );

    let b = args(&model, &data, &tmp.path().join("cuda-restarted"));
    let out = cli(&b, &["--device", "cuda", "--crash-after-shards", "1"]);
    assert!(!out.status.success(), "the crash switch aborts");
    let out = cli(&b, &["--device", "cuda"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shard_ids(&b.out).equal(&cpu),
        "restarted CUDA run's ids differ from the CPU's"
    );
}
