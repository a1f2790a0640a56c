//! Shared helpers: a tiny config and a toy task that exercises the training loop without the
//! SemHiTok model (so machinery tests stay fast and independent of the model crate).

use semhitok_train::config::TrainConfig;
use semhitok_train::optim::{Param, Role};
use semhitok_train::trainer::{Batch, LossOut, Task, ValOut};
use std::collections::BTreeMap;
use std::path::Path;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// A complete minimal config (toy model section is ignored by the toy task).
pub fn tiny_config_text(out_dir: &Path, steps: u64, ckpt_every: u64) -> String {
    let text = format!(
        r#"
[run]
name = "toy"
out_dir = "{}"
stage = "spc"
seed = 7

[teacher]
kind = "efficientnet-lite0"

[data]
kind = "synthetic"
image_size = 16
batch_size = 4

[optim]
lr = 3e-3
betas = [0.9, 0.99]
weight_decay = 0.01
warmup_steps = 3
grad_clip = 1.0
ema_decay = 0.9

[schedule]
steps = {steps}
log_every = 1
ckpt_every = {ckpt_every}
keep_last = 3
"#,
        out_dir.display()
    );
    with_model(&text)
}

pub fn tiny_config(out_dir: &Path, steps: u64, ckpt_every: u64, sets: &[&str]) -> TrainConfig {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    TrainConfig::from_toml_str(
        &tiny_config_text(out_dir, steps, ckpt_every),
        Path::new("tiny.toml"),
        &sets,
    )
    .expect("tiny config parses")
}

/// `tiny_config_text` has no `[model]`; add semhitok-nn's tiny model (16 px, 8 px patches).
pub fn with_model(text: &str) -> String {
    let mut t: toml::Table = toml::from_str(text).unwrap();
    let m = semhitok_nn::model::SemHiTokConfig::tiny(16, 8, 40, 16, 4);
    t.insert("model".into(), toml::Value::try_from(m).unwrap());
    toml::to_string(&t).unwrap()
}

/// Toy autoencoder (conv down, dropout, conv up) on 16x16 synthetic images. `nan_at`: the loss
/// becomes NaN from that step on.
pub struct ToyTask {
    pub vs: nn::VarStore,
    enc: nn::Conv2D,
    dec: nn::ConvTranspose2D,
    pub nan_at: Option<u64>,
    /// The loss is multiplied by 1000 from this step on (a finite spike).
    pub spike_at: Option<u64>,
    /// After this step, one weight of the encoder is set to NaN (non-finite state, finite loss
    /// until the next forward).
    pub poison_after: Option<u64>,
}

impl ToyTask {
    pub fn new(seed: i64) -> Self {
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        let enc = nn::conv2d(
            &p / "enc",
            3,
            8,
            4,
            nn::ConvConfig {
                stride: 4,
                ..Default::default()
            },
        );
        let dec = nn::conv_transpose2d(
            &p / "dec",
            8,
            3,
            4,
            nn::ConvTransposeConfig {
                stride: 4,
                ..Default::default()
            },
        );
        Self {
            vs,
            enc,
            dec,
            nan_at: None,
            spike_at: None,
            poison_after: None,
        }
    }
}

/// Every variable of `vs` as an optimizer parameter (sorted by name), for the toy tasks of these
/// tests. They are made by tch's own `conv2d` / `conv_transpose2d` (no declared roles), so their
/// roles are declared here: the kernels (`weight`, 4-d) are matrices, the biases theirs.
pub fn vs_params(vs: &tch::nn::VarStore) -> Vec<Param> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    vars.into_iter()
        .map(|(name, var)| {
            let role = match name.rsplit('.').next() {
                Some("weight") if var.dim() >= 2 => Role::Matrix,
                Some("bias") => Role::MatrixBias,
                _ => Role::Plain,
            };
            Param { name, var, role }
        })
        .collect()
}

impl Task for ToyTask {
    fn params(&self) -> Vec<Param> {
        vs_params(&self.vs)
    }
    fn state(&self) -> BTreeMap<String, Tensor> {
        self.vs.variables().into_iter().collect()
    }
    fn after_step(&mut self, step: u64) -> semhitok_train::Result<()> {
        if self.poison_after == Some(step) {
            let _g = tch::no_grad_guard();
            let _ = self.enc.ws.view([-1]).get(0).fill_(f64::NAN);
        }
        Ok(())
    }
    fn loss(&mut self, batch: &Batch, step: u64) -> semhitok_train::Result<LossOut> {
        let images = batch.images()?;
        let z = self.enc.forward(images).gelu("none").dropout(0.1, true);
        let rec = self.dec.forward(&z).tanh();
        let mut l = (rec - images).square().mean(Kind::Float);
        if self.nan_at.is_some_and(|s| step >= s) {
            l *= f64::NAN;
        }
        if self.spike_at.is_some_and(|s| step >= s) {
            l *= 1000.0;
        }
        Ok(LossOut {
            parts: vec![("rec", l.detach())],
            total: l,
            disc_inputs: None,
        })
    }
    /// The autoencoder in evaluation mode (no dropout, no gradient).
    fn validate(&mut self, images: &Tensor) -> semhitok_train::Result<Option<ValOut>> {
        let rec = tch::no_grad(|| {
            self.dec
                .forward(&self.enc.forward(images).gelu("none"))
                .tanh()
        });
        Ok(Some(ValOut {
            recon: Some(rec),
            codes: None,
            teacher_cosine: None,
        }))
    }
}

/// All variables of a VarStore, deep-copied, by name.
pub fn snapshot(vs: &nn::VarStore) -> BTreeMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect()
}

/// True when both maps hold bit-identical tensors.
pub fn bit_equal(a: &BTreeMap<String, Tensor>, b: &BTreeMap<String, Tensor>) -> bool {
    a.len() == b.len()
        && a.iter()
            .all(|(k, t)| b.get(k).is_some_and(|u| t.size() == u.size() && t.equal(u)))
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Training tests hold this lock: LibTorch's random generator is process-global, and the loop
/// re-seeds it every step, so two trainings in parallel threads would disturb each other.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Training options of the machinery tests: no progress bar, a fixed command line.
pub fn quiet() -> semhitok_train::trainer::TrainOptions {
    semhitok_train::trainer::TrainOptions {
        quiet: true,
        command_line: vec!["test".into()],
        ..Default::default()
    }
}
