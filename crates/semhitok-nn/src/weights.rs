//! Strict checkpoint loading: every model variable must be in the file with the same shape, and
//! (unless asked otherwise) every tensor of the file must belong to the model.

use crate::error::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Kind, Tensor};

/// How to match file keys to VarStore names.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions<'a> {
    /// Prefix stripped from file keys before matching (e.g. `"vision_model."` for a full SigLIP checkpoint).
    pub strip_prefix: Option<&'a str>,
    /// Ignore file tensors that do not belong to the model (e.g. the text tower of a full SigLIP checkpoint).
    pub allow_unexpected: bool,
}

/// Read every tensor of a safetensors file (any float dtype; kept as stored).
pub fn read_safetensors(path: &Path) -> Result<Vec<(String, Tensor)>> {
    if !path.exists() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"),
        });
    }
    Tensor::read_safetensors(path).map_err(|e| Error::Format {
        path: path.to_path_buf(),
        msg: format!("not a readable safetensors file: {e}"),
    })
}

/// Load `path` into `vs` strictly: missing, unexpected (unless allowed) and mis-shaped tensors
/// are all reported together in one [`Error::Checkpoint`]. Values are cast to each variable's kind.
pub fn load_strict(vs: &mut VarStore, path: &Path, opts: &LoadOptions<'_>) -> Result<()> {
    let file = read_safetensors(path)?;
    load_strict_tensors(vs, file, path, opts)
}

/// [`load_strict`] from tensors already read (e.g. one prefix of a model folder's
/// `model.safetensors`); `origin` names them in errors.
pub fn load_strict_tensors(
    vs: &mut VarStore,
    file: impl IntoIterator<Item = (String, Tensor)>,
    origin: &Path,
    opts: &LoadOptions<'_>,
) -> Result<()> {
    let path = origin;
    let mut from_file: BTreeMap<String, Tensor> = BTreeMap::new();
    for (k, t) in file {
        let k = match opts.strip_prefix {
            Some(p) => match k.strip_prefix(p) {
                Some(s) => s.to_string(),
                None if opts.allow_unexpected => continue,
                None => k,
            },
            None => k,
        };
        from_file.insert(k, t);
    }
    let vars = vs.variables();
    let model_keys: BTreeSet<&String> = vars.keys().collect();
    let missing: Vec<String> = vars
        .keys()
        .filter(|k| !from_file.contains_key(*k))
        .cloned()
        .collect();
    let unexpected: Vec<String> = if opts.allow_unexpected {
        vec![]
    } else {
        from_file
            .keys()
            .filter(|k| !model_keys.contains(k))
            .cloned()
            .collect()
    };
    let mismatched: Vec<String> = vars
        .iter()
        .filter_map(|(k, v)| {
            let t = from_file.get(k)?;
            (t.size() != v.size())
                .then(|| format!("{k}: checkpoint {:?} vs model {:?}", t.size(), v.size()))
        })
        .collect();
    if !missing.is_empty() || !unexpected.is_empty() || !mismatched.is_empty() {
        return Err(Error::Checkpoint {
            path: path.to_path_buf(),
            missing,
            unexpected,
            mismatched,
        });
    }
    tch::no_grad(|| -> Result<()> {
        for (k, mut v) in vars {
            let src = &from_file[&k];
            v.f_copy_(&src.f_to_kind(v.kind())?.f_to_device(v.device())?)?;
        }
        Ok(())
    })
}

/// Save every variable of `vs` to a safetensors file, atomically (temporary file + rename).
pub fn save_atomic(vs: &VarStore, path: &Path) -> Result<()> {
    let tmp = path.with_extension("safetensors.tmp");
    let vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(k, v)| Ok((k, v.f_to_device(tch::Device::Cpu)?)))
        .collect::<Result<_>>()?;
    Tensor::write_safetensors(&vars, &tmp)?;
    std::fs::rename(&tmp, path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Count NaN/Inf entries of `t`; an error naming `what` when there are any.
pub fn check_finite(what: &str, t: &Tensor) -> Result<()> {
    let bad = t
        .f_isfinite()?
        .f_logical_not()?
        .f_sum(Kind::Int64)?
        .int64_value(&[]);
    if bad > 0 {
        return Err(Error::NonFinite {
            what: what.to_string(),
            count: bad,
        });
    }
    Ok(())
}
