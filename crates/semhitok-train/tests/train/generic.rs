//! The training loop on a task that is not an image tokenizer: a tiny next-token model on
//! `Batch::Tokens`, fed by a toy token source, with a `LoopConfig` built in code (no TOML, no
//! tokenizer config). It trains, checkpoints and resumes bit-exactly, as the image tasks do.

use super::common::{bit_equal, quiet, serial, snapshot};
use semhitok_train::checkpoint;
use semhitok_train::config::{
    DeviceKind, DistConfig, GuardConfig, OptimConfig, Precision, RunConfig, ScheduleConfig, Stage,
};
use semhitok_train::optim::Param;
use semhitok_train::trainer::{
    train, Batch, Batches, LoopConfig, LossOut, Task, TokenBatch, TrainOptions, IGNORE_INDEX,
};
use std::collections::BTreeMap;
use std::path::Path;
use tch::nn::{self, Module};
use tch::{Device, Kind, Reduction, Tensor};

const VOCAB: i64 = 11;
const LEN: i64 = 6;

/// Embedding -> dropout -> linear head; loss: next-token cross-entropy on the shifted labels.
struct TokenLm {
    vs: nn::VarStore,
    emb: nn::Embedding,
    head: nn::Linear,
}

impl TokenLm {
    fn new(seed: i64) -> Self {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        let emb = nn::embedding(&p / "emb", VOCAB, 8, Default::default());
        let head = nn::linear(&p / "head", 8, VOCAB, Default::default());
        Self { vs, emb, head }
    }
}

impl Task for TokenLm {
    fn params(&self) -> Vec<Param> {
        super::common::vs_params(&self.vs)
    }
    fn state(&self) -> BTreeMap<String, Tensor> {
        self.vs.variables().into_iter().collect()
    }
    fn loss(&mut self, batch: &Batch, _step: u64) -> semhitok_train::Result<LossOut> {
        let tb = batch.tokens()?;
        // Dropout draws from the global generator: resume must re-seed it exactly.
        let x = self.emb.forward(&tb.input_ids).dropout(0.1, true);
        let logits = self.head.forward(&x); // [B, L, V]
        let pred = logits.narrow(1, 0, LEN - 1).reshape([-1, VOCAB]);
        let target = tb.labels.narrow(1, 1, LEN - 1).reshape([-1]);
        let ce =
            pred.cross_entropy_loss::<Tensor>(&target, None, Reduction::Mean, IGNORE_INDEX, 0.0);
        let n = tb.n_loss_tokens()?.to_kind(Kind::Float);
        Ok(LossOut {
            parts: vec![("ce", ce.detach()), ("loss_tokens", n)],
            total: ce,
            disc_inputs: None,
        })
    }
}

/// Sequences counting up mod VOCAB from a seeded start, right-padded to LEN; the first token
/// is a "prompt" without loss. Sequence `i` depends only on `i`: the position is one counter.
struct CountingSeqs {
    batch: i64,
    index: u64,
}

impl Batches for CountingSeqs {
    fn next_batch(&mut self, device: Device) -> semhitok_train::Result<Batch> {
        let (mut ids, mut labels, mut mask) = (vec![], vec![], vec![]);
        for _ in 0..self.batch {
            let i = self.index;
            self.index += 1;
            let start = (i * 7 + 3) as i64 % VOCAB;
            let real = 3 + (i % 4) as i64; // 3..=6 real tokens
            for t in 0..LEN {
                let on = t < real;
                let id = if on { (start + t) % VOCAB } else { 0 };
                ids.push(id);
                labels.push(if on && t > 0 { id } else { IGNORE_INDEX });
                mask.push(on);
            }
        }
        let shape = [self.batch, LEN];
        Ok(Batch::Tokens(TokenBatch {
            input_ids: Tensor::from_slice(&ids).view(shape).to_device(device),
            labels: Tensor::from_slice(&labels).view(shape).to_device(device),
            attention_mask: Tensor::from_slice(&mask).view(shape).to_device(device),
            images: None,
        }))
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({ "index": self.index })
    }
    fn restore(&mut self, state: &serde_json::Value) -> semhitok_train::Result<()> {
        self.index = state["index"].as_u64().ok_or_else(|| {
            semhitok_train::Error::Input(format!("token toy state without index: {state}"))
        })?;
        Ok(())
    }
}

fn loop_config(out_dir: &Path, steps: u64) -> LoopConfig {
    LoopConfig {
        run: RunConfig {
            name: "token-toy".into(),
            out_dir: out_dir.to_path_buf(),
            stage: Stage::T2i,
            seed: 5,
            device: DeviceKind::Cpu,
            precision: Precision::F32,
            bf16_weight_copy: true,
            threads: 0,
        },
        optim: OptimConfig {
            lr: 3e-2,
            betas: [0.9, 0.99],
            eps: 1e-8,
            weight_decay: 0.01,
            warmup_steps: 2,
            min_lr_ratio: 0.1,
            grad_clip: 1.0,
            accum_steps: 2,
            ema_decay: Some(0.9),
        },
        schedule: ScheduleConfig {
            steps,
            log_every: 1,
            ckpt_every: 4,
            keep_last: 3,
            eval_every: 0,
        },
        guard: GuardConfig::default(),
        dist: DistConfig::default(),
        disc: None,
        batch_size: 3,
        log: Default::default(),
        config_toml: "# built in code (tests/train/generic.rs)\n".into(),
    }
}

#[test]
fn token_task_trains_checkpoints_and_resumes_bit_exactly() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));

    let cfg_a = loop_config(&a_dir, 12);
    let mut task = TokenLm::new(1);
    let mut data = CountingSeqs { batch: 3, index: 0 };
    let full = train(&cfg_a, &mut task, &mut data, &quiet()).unwrap();
    assert_eq!(full.losses.len(), 12);
    let first = full.losses[..3].iter().map(|l| l.1).sum::<f64>();
    let last = full.losses[9..].iter().map(|l| l.1).sum::<f64>();
    assert!(last < first, "loss did not fall: {:?}", full.losses);
    let full_state = snapshot(&task.vs);

    // Interrupted after 6 steps (last checkpoint at 4), resumed with another init.
    let cfg_b = loop_config(&b_dir, 12);
    let mut task_b = TokenLm::new(1);
    let mut data_b = CountingSeqs { batch: 3, index: 0 };
    let stop = TrainOptions {
        stop_after: Some(6),
        ..quiet()
    };
    train(&cfg_b, &mut task_b, &mut data_b, &stop).unwrap();
    let ck = checkpoint::load_latest(&b_dir).unwrap().unwrap();
    assert_eq!((ck.state.step, ck.state.stage), (4, Stage::T2i));
    // 4 steps x 2 micro-batches x 3 sequences read before the checkpoint.
    assert_eq!(ck.state.data_state["index"], 24);
    let mut task_c = TokenLm::new(99);
    let mut data_c = CountingSeqs { batch: 3, index: 0 };
    let resume = TrainOptions {
        resume: true,
        ..quiet()
    };
    let resumed = train(&cfg_b, &mut task_c, &mut data_c, &resume).unwrap();
    assert_eq!(resumed.start_step, 4);
    for ((sa, la), (sb, lb)) in full.losses[4..].iter().zip(&resumed.losses) {
        assert_eq!(sa, sb);
        assert_eq!(la.to_bits(), lb.to_bits(), "step {sa}: {la} vs {lb}");
    }
    assert!(bit_equal(&full_state, &snapshot(&task_c.vs)));

    // Throughput for token batches: samples/s and tokens/s, no img/s; the loss parts logged.
    let metrics = std::fs::read_to_string(a_dir.join("metrics.jsonl")).unwrap();
    let recs: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 12);
    for r in &recs {
        assert!(r["samples_per_s"].as_f64().is_some(), "{r}");
        assert!(r["tok_per_s"].as_f64().is_some(), "{r}");
        assert!(r.get("img_per_s").is_none(), "{r}");
        assert!(r["ce"].as_f64().is_some(), "{r}");
    }
    // The last step closes the rate window.
    let end = &recs[11];
    let (sps, tps) = (
        end["samples_per_s"].as_f64().unwrap(),
        end["tok_per_s"].as_f64().unwrap(),
    );
    assert!(sps > 0.0 && tps > sps, "{end}");
    // Step 1 reads sequences 0..6: real lengths 3,4,5,6,3,4 -> 2+3+4+5+2+3 = 19 loss tokens,
    // averaged over the 2 micro-batches.
    assert_eq!(recs[0]["loss_tokens"].as_f64().unwrap(), 19.0 / 2.0);
    let toml = std::fs::read_to_string(a_dir.join("config.toml")).unwrap();
    assert!(toml.contains("built in code"), "{toml}");
}

/// An image task handed token batches stops with an error naming what it got.
#[test]
fn image_task_on_token_batches_is_a_clear_error() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let mut task = super::common::ToyTask::new(1);
    let mut data = CountingSeqs { batch: 3, index: 0 };
    let err = train(&loop_config(tmp.path(), 2), &mut task, &mut data, &quiet())
        .unwrap_err()
        .to_string();
    assert!(err.contains("token batch"), "{err}");
}
