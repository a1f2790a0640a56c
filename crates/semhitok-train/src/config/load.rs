//! Strict TOML loading for every config type of the crate ([`TrainConfig`](super::TrainConfig),
//! the LLaVA and text-to-image configs): the file parsed alone first (so an error in the file
//! names the file), then again with the `--set key.path=value` overrides applied (errors name
//! the file plus the overrides). Unknown keys are errors as long as the config structs deny
//! unknown fields (all of this crate's do); every error names the dotted key.

use super::Stage;
use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A config read by [`load_toml`] / [`from_toml_str`], with where it came from.
#[derive(Debug, Clone)]
pub struct Loaded<C> {
    pub config: C,
    /// The file, plus ` + --set ...` when overrides were applied: the `file` of every
    /// [`Error::Config`] about this config (see [`config_error`]).
    pub origin: PathBuf,
}

/// A config error naming `key` (dotted path) and `origin` (the file, plus overrides).
pub fn config_error(origin: &Path, key: &str, msg: impl Into<String>) -> Error {
    Error::Config {
        file: origin.to_path_buf(),
        key: key.into(),
        msg: msg.into(),
    }
}

/// Read `path`, apply `overrides` (`key.path=value`) and deserialize strictly into `C`.
/// Cross-field validation is the caller's (name keys with [`config_error`] and the returned
/// origin).
pub fn load_toml<C: DeserializeOwned>(path: &Path, overrides: &[String]) -> Result<Loaded<C>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    from_toml_str(&text, path, overrides)
}

/// As [`load_toml`] on TOML text (`file` is only used in error messages).
pub fn from_toml_str<C: DeserializeOwned>(
    text: &str,
    file: &Path,
    overrides: &[String],
) -> Result<Loaded<C>> {
    Ok(from_toml_str_with(text, file, overrides, |_| ())?.0)
}

/// As [`from_toml_str`], with `prepare` applied to the TOML value right before each strict
/// deserialization (the file alone, then the file plus overrides); returns what the last
/// `prepare` returned. [`TrainConfig`](super::TrainConfig) takes its derived keys out this way.
pub fn from_toml_str_with<C: DeserializeOwned, T>(
    text: &str,
    file: &Path,
    overrides: &[String],
    prepare: impl Fn(&mut toml::Value) -> T,
) -> Result<(Loaded<C>, T)> {
    let raw = parse_raw(text, file)?;
    // The file alone first: an error that is in the file names the file.
    let mut alone = raw.clone();
    let taken = prepare(&mut alone);
    let config = from_value::<C>(alone, file)?;
    if overrides.is_empty() {
        let origin = file.to_path_buf();
        return Ok((Loaded { config, origin }, taken));
    }
    let (mut v, origin) = apply_overrides(raw, file, overrides)?;
    let taken = prepare(&mut v);
    let config = from_value::<C>(v, &origin)?;
    Ok((Loaded { config, origin }, taken))
}

/// `[run] stage` of the config at `path` (after `overrides`), read without parsing the rest:
/// which config type the file is (`semhitok train` dispatches on it).
pub fn peek_stage(path: &Path, overrides: &[String]) -> Result<Stage> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    peek_stage_str(&text, path, overrides)
}

/// As [`peek_stage`] on TOML text (`file` is only used in error messages).
pub fn peek_stage_str(text: &str, file: &Path, overrides: &[String]) -> Result<Stage> {
    #[derive(Deserialize)]
    struct Run {
        stage: Stage,
    }
    #[derive(Deserialize)]
    struct Peek {
        run: Run,
    }
    let raw = parse_raw(text, file)?;
    let (v, origin) = if overrides.is_empty() {
        (raw, file.to_path_buf())
    } else {
        apply_overrides(raw, file, overrides)?
    };
    let p: Peek = from_value(v, &origin)?;
    Ok(p.run.stage)
}

fn parse_raw(text: &str, file: &Path) -> Result<toml::Value> {
    toml::from_str(text).map_err(|e| config_error(file, "(syntax)", e.to_string()))
}

fn apply_overrides(
    mut v: toml::Value,
    file: &Path,
    overrides: &[String],
) -> Result<(toml::Value, PathBuf)> {
    for o in overrides {
        let (k, val) = parse_override(o)?;
        set_path(&mut v, &k, val)?;
    }
    Ok((v, origin_of(file, overrides)))
}

/// The origin of a config read from `file` with `overrides`: the file, plus ` + --set ...`
/// when there are overrides.
pub fn origin_of(file: &Path, overrides: &[String]) -> PathBuf {
    if overrides.is_empty() {
        file.to_path_buf()
    } else {
        PathBuf::from(format!(
            "{} + --set {}",
            file.display(),
            overrides.join(" ")
        ))
    }
}

/// Strict deserialization of a TOML value; an error names the dotted key and `file`.
pub fn from_value<C: DeserializeOwned>(v: toml::Value, file: &Path) -> Result<C> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let key = e.path().to_string();
        config_error(file, &key, e.into_inner().to_string())
    })
}

/// Parse `key.path=value`. The value is read as a TOML literal (`1e-4`, `true`, `"x"`,
/// `[0.9, 0.95]`); anything that is not a valid literal is taken as a bare string.
pub fn parse_override(s: &str) -> Result<(String, toml::Value)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| config_error(Path::new("--set"), s, "expected `key.path=value`"))?;
    let k = k.trim().to_string();
    let v = v.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {v}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(v.into())),
        Err(_) => toml::Value::String(v.into()),
    };
    Ok((k, value))
}

fn set_path(root: &mut toml::Value, key: &str, value: toml::Value) -> Result<()> {
    let err = |msg: &str| config_error(Path::new("--set"), key, msg);
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(err("empty key segment"));
    }
    let mut cur = root;
    for p in &parts[..parts.len() - 1] {
        let table = cur
            .as_table_mut()
            .ok_or_else(|| err(&format!("`{p}` is inside a non-table value")))?;
        cur = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    let table = cur
        .as_table_mut()
        .ok_or_else(|| err("parent is not a table"))?;
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        lr: f64,
        #[serde(default)]
        betas: Option<[f64; 2]>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Mine {
        name: String,
        optim: Inner,
    }

    const TEXT: &str = "name = \"a\"\n[optim]\nlr = 0.1\n";

    #[test]
    fn parses_and_applies_overrides_with_origin() {
        let l: Loaded<Mine> = from_toml_str(TEXT, Path::new("m.toml"), &[]).unwrap();
        assert_eq!((l.config.name.as_str(), l.config.optim.lr), ("a", 0.1));
        assert_eq!(l.origin, Path::new("m.toml"));
        let set = ["optim.lr=0.5".to_string(), "optim.betas=[0.8, 0.9]".into()];
        let l: Loaded<Mine> = from_toml_str(TEXT, Path::new("m.toml"), &set).unwrap();
        assert_eq!(l.config.optim.lr, 0.5);
        assert_eq!(l.config.optim.betas, Some([0.8, 0.9]));
        let o = l.origin.display().to_string();
        assert!(o.starts_with("m.toml + --set optim.lr=0.5"), "{o}");
    }

    #[test]
    fn errors_name_key_and_file() {
        let bad = TEXT.replace("lr =", "lrr =");
        let e = from_toml_str::<Mine>(&bad, Path::new("m.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.toml") && e.contains("lrr"), "{e}");
        let e = from_toml_str::<Mine>(TEXT, Path::new("m.toml"), &["optim.lr=x".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("optim.lr") && e.contains("--set"), "{e}");
        let e = from_toml_str::<Mine>("name = ", Path::new("m.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("m.toml") && e.contains("(syntax)"), "{e}");
        let e = from_toml_str::<Mine>(TEXT, Path::new("m.toml"), &["novalue".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--set") && e.contains("novalue"), "{e}");
    }

    #[test]
    fn peeks_the_stage_only() {
        let t = "[run]\nstage = \"llava-finetune\"\nanything = 1\n[other]\nx = 2\n";
        assert_eq!(
            peek_stage_str(t, Path::new("l.toml"), &[]).unwrap(),
            Stage::LlavaFinetune
        );
        let set = ["run.stage=\"t2i\"".to_string()];
        assert_eq!(
            peek_stage_str(t, Path::new("l.toml"), &set).unwrap(),
            Stage::T2i
        );
        let e = peek_stage_str("[run]\nstage = \"llava\"\n", Path::new("l.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("l.toml") && e.contains("run.stage"), "{e}");
        let e = peek_stage_str("x = 1\n", Path::new("l.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("l.toml") && e.contains("run"), "{e}");
    }
}
