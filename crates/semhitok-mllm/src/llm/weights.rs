//! Where the decoder's tensors come from: a strict name -> tensor map (safetensors, single or
//! sharded; GGUF after dequantization) or seeded random values (benchmarks).
//!
//! Names are composed as the modules nest ([`WeightPath::pp`]), so they come out as the
//! Hugging Face state-dict keys (`model.layers.3.self_attn.q_proj.weight`). Loading is strict:
//! a missing tensor or a shape mismatch is an error naming the tensor and the file, and
//! [`Weights::finish`] reports every tensor of the file the model did not use.

use crate::error::{Error, Result};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

#[derive(Debug)]
enum Source {
    Map(BTreeMap<String, Tensor>),
    /// N(0, std^2) values drawn on the target device (LibTorch's generator, seeded once).
    Random {
        std: f64,
    },
}

/// A set of named tensors the model takes its weights from, converted to `kind` on `device`.
#[derive(Debug)]
pub struct Weights {
    source: Source,
    origin: String,
    kind: Kind,
    device: Device,
    used: RefCell<BTreeSet<String>>,
}

fn load_err(origin: &str, msg: impl std::fmt::Display) -> Error {
    Error::Weights {
        origin: origin.to_string(),
        msg: msg.to_string(),
    }
}

/// Read every tensor of one safetensors file (kept as stored, on the CPU).
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.is_file() {
        return Err(load_err(&path.display().to_string(), "file not found"));
    }
    Tensor::read_safetensors(path).map_err(|e| {
        load_err(
            &path.display().to_string(),
            format!("not a readable safetensors file: {e}"),
        )
    })
}

/// The safetensors files of a Hugging Face model folder: `model.safetensors`, or every shard
/// named by `model.safetensors.index.json`'s `weight_map` (each shard must exist, and each
/// tensor must sit in the shard the index names).
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let o = index.display().to_string();
        let text = std::fs::read_to_string(&index).map_err(|e| load_err(&o, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| load_err(&o, e))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| load_err(&o, "no `weight_map` object"))?;
        let mut files = BTreeSet::new();
        for (k, f) in map {
            let f = f
                .as_str()
                .ok_or_else(|| load_err(&o, format!("weight_map[{k:?}] is not a file name")))?;
            files.insert(f.to_string());
        }
        let files: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
        for f in &files {
            if !f.is_file() {
                return Err(load_err(&o, format!("shard {} is missing", f.display())));
            }
        }
        Ok(files)
    } else if single.is_file() {
        Ok(vec![single])
    } else {
        Err(load_err(
            &dir.display().to_string(),
            "neither model.safetensors nor model.safetensors.index.json found \
             (pytorch_model*.bin pickles: convert them to safetensors first)",
        ))
    }
}

impl Weights {
    /// All tensors of a HF model folder (single file or sharded), to be converted to `kind` on `device`.
    pub fn from_hf_dir(dir: &Path, kind: Kind, device: Device) -> Result<Self> {
        let files = safetensors_files(dir)?;
        let mut map = BTreeMap::new();
        for f in &files {
            for (k, t) in read_safetensors(f)? {
                if map.insert(k.clone(), t).is_some() {
                    return Err(load_err(
                        &dir.display().to_string(),
                        format!("tensor {k} appears in more than one shard"),
                    ));
                }
            }
        }
        Ok(Self::from_map(map, dir.display().to_string(), kind, device))
    }

    /// A named map (e.g. dequantized GGUF tensors renamed to HF keys).
    pub fn from_map(
        map: BTreeMap<String, Tensor>,
        origin: String,
        kind: Kind,
        device: Device,
    ) -> Self {
        Self {
            source: Source::Map(map),
            origin,
            kind,
            device,
            used: RefCell::new(BTreeSet::new()),
        }
    }

    /// Random N(0, std^2) weights (norm scales are 1), drawn from LibTorch's generator after
    /// `tch::manual_seed(seed)`: for benchmarks of a model shape without its checkpoint.
    pub fn random(std: f64, seed: i64, kind: Kind, device: Device) -> Self {
        tch::manual_seed(seed);
        Self {
            source: Source::Random { std },
            origin: format!("random(std={std}, seed={seed})"),
            kind,
            device,
            used: RefCell::new(BTreeSet::new()),
        }
    }

    /// The root path ("" prefix).
    pub fn root(&self) -> WeightPath<'_> {
        WeightPath {
            w: self,
            prefix: String::new(),
        }
    }

    /// Where the weights come from (a file or folder), for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Kind the tensors are converted to.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Device the tensors are put on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// Whether `name` exists (random sources have every name).
    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            Source::Map(m) => m.contains_key(name),
            Source::Random { .. } => true,
        }
    }

    fn get(&self, name: &str, shape: &[i64], ones: bool) -> Result<Tensor> {
        let t = match &self.source {
            Source::Map(m) => {
                let t = m
                    .get(name)
                    .ok_or_else(|| load_err(&self.origin, format!("tensor {name} is missing")))?;
                if t.size() != shape {
                    return Err(load_err(
                        &self.origin,
                        format!(
                            "tensor {name} has shape {:?}, the model expects {shape:?}",
                            t.size()
                        ),
                    ));
                }
                t.f_to_device(self.device)?.f_to_kind(self.kind)?
            }
            Source::Random { std } => {
                let opts = (self.kind, self.device);
                if ones {
                    Tensor::f_ones(shape, opts)?
                } else {
                    Tensor::f_randn(shape, opts)?.f_mul_scalar(*std)?
                }
            }
        };
        self.used.borrow_mut().insert(name.to_string());
        Ok(t)
    }

    /// Strictness check after the model is built: every tensor of the source was used.
    /// `ignored` names tensors that may be present without being used (e.g. a saved
    /// `lm_head.weight` of a tied model, or `rotary_emb.inv_freq` buffers of old checkpoints).
    pub fn finish(&self, ignored: &dyn Fn(&str) -> bool) -> Result<()> {
        let Source::Map(m) = &self.source else {
            return Ok(());
        };
        let used = self.used.borrow();
        let unexpected: Vec<&String> = m
            .keys()
            .filter(|k| !used.contains(*k) && !ignored(k))
            .collect();
        if unexpected.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = unexpected.iter().take(8).map(|s| s.as_str()).collect();
        Err(load_err(
            &self.origin,
            format!(
                "{} tensor(s) the model does not use: {}{}",
                unexpected.len(),
                shown.join(", "),
                if unexpected.len() > 8 { ", ..." } else { "" }
            ),
        ))
    }

    /// The stored tensor `name` as is (for checks such as "tied heads are equal").
    pub fn raw(&self, name: &str) -> Option<&Tensor> {
        match &self.source {
            Source::Map(m) => m.get(name),
            Source::Random { .. } => None,
        }
    }
}

/// A name prefix into [`Weights`]; `pp` appends one path component (joined with `.`).
#[derive(Debug, Clone)]
pub struct WeightPath<'a> {
    w: &'a Weights,
    prefix: String,
}

impl<'a> WeightPath<'a> {
    /// The sub-path `self.prefix + "." + part`.
    pub fn pp(&self, part: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            part.to_string()
        } else {
            format!("{}.{part}", self.prefix)
        };
        Self { w: self.w, prefix }
    }
    /// The path itself (`model.layers.0.self_attn`; "" at the root).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// The full name of `leaf` under this path.
    pub fn name(&self, leaf: &str) -> String {
        if self.prefix.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.prefix)
        }
    }
    /// Tensor `leaf` with exactly `shape` (random source: N(0, std^2)).
    pub fn get(&self, leaf: &str, shape: &[i64]) -> Result<Tensor> {
        self.w.get(&self.name(leaf), shape, false)
    }
    /// Like [`Self::get`] but a random source gives ones (norm scales).
    pub fn get_scale(&self, leaf: &str, shape: &[i64]) -> Result<Tensor> {
        self.w.get(&self.name(leaf), shape, true)
    }
    /// The weights this path reads from.
    pub fn weights(&self) -> &'a Weights {
        self.w
    }
}
