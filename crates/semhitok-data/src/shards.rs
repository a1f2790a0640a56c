//! Where tar shards are: [`resolve_shards`] turns what users write (webdataset's brace patterns,
//! globs, a text file listing shards, a folder, one shard) into a sorted list of paths.
//!
//! * Brace pattern: `/data/coyo/{00000..09999}.tar` (numeric range, zero-padded to the width of
//!   its first bound) or `{a,b,c}` alternatives; several braces multiply. Expanded paths that do
//!   not exist are left out and counted (img2dataset leaves gaps where a shard failed).
//! * Glob: `*` and `?` in any path component (`/data/laion/part-*/*.tar`).
//! * A folder: its `*.tar`, `*.tar.gz`, `*.tgz` files.
//! * A file ending in `.tar`, `.tar.gz` or `.tgz`: that shard.
//! * Any other file: a list, one shard path per line (blank lines and `#` comments ignored;
//!   relative paths are relative to the list file's folder).
//!
//! Matching nothing is an error naming the pattern.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::tar_samples::list_shards;

/// Resolved shards and how many listed or expanded paths did not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shards {
    pub paths: Vec<PathBuf>,
    pub missing: usize,
}

fn is_shard_name(s: &str) -> bool {
    s.ends_with(".tar") || s.ends_with(".tar.gz") || s.ends_with(".tgz")
}

/// Resolves `spec` (see the module docs).
pub fn resolve_shards(spec: &str) -> Result<Shards> {
    let nothing = |detail: &str| Error::Empty {
        path: PathBuf::from(spec),
        detail: detail.into(),
    };
    let (paths, missing) = if spec.contains('{') {
        let all = expand_braces(spec).map_err(|m| Error::Config(format!("{spec}: {m}")))?;
        let n = all.len();
        let found: Vec<PathBuf> = all
            .into_iter()
            .map(PathBuf::from)
            .filter(|p| p.is_file())
            .collect();
        let missing = n - found.len();
        (found, missing)
    } else if spec.contains(['*', '?']) {
        (glob(spec), 0)
    } else {
        let p = Path::new(spec);
        if p.is_dir() {
            (list_shards(p)?, 0)
        } else if p.is_file() && is_shard_name(spec) {
            (vec![p.to_path_buf()], 0)
        } else if p.is_file() {
            read_list(p)?
        } else {
            return Err(Error::io(
                p,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
            ));
        }
    };
    let mut paths = paths;
    paths.sort();
    paths.dedup();
    if paths.is_empty() {
        return Err(nothing(if missing > 0 {
            "none of the expanded shard paths exists"
        } else {
            "matches no shard"
        }));
    }
    Ok(Shards { paths, missing })
}

fn read_list(p: &Path) -> Result<(Vec<PathBuf>, usize)> {
    let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
    let dir = p.parent().unwrap_or(Path::new("."));
    let (mut found, mut missing) = (Vec::new(), 0);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let q = dir.join(line);
        if q.is_file() {
            found.push(q);
        } else {
            missing += 1;
        }
    }
    Ok((found, missing))
}

/// Expands every `{..}` of `s` (numeric ranges `{a..b}` zero-padded to `a`'s width, or
/// comma alternatives). At most 10 million results.
pub fn expand_braces(s: &str) -> std::result::Result<Vec<String>, String> {
    let Some(open) = s.find('{') else {
        return Ok(vec![s.to_string()]);
    };
    let close = s[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or("unclosed `{`")?;
    let (head, body, tail) = (&s[..open], &s[open + 1..close], &s[close + 1..]);
    let alts: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let (lo, hi): (u64, u64) = (
            a.trim()
                .parse()
                .map_err(|_| format!("`{a}` is not a number"))?,
            b.trim()
                .parse()
                .map_err(|_| format!("`{b}` is not a number"))?,
        );
        if hi < lo || hi - lo >= 10_000_000 {
            return Err(format!("range {{{body}}} is empty or too long"));
        }
        let width = a.trim().len();
        (lo..=hi).map(|v| format!("{v:0width$}")).collect()
    } else {
        body.split(',').map(str::to_string).collect()
    };
    let rest = expand_braces(tail)?;
    let mut out = Vec::with_capacity(alts.len() * rest.len());
    for a in &alts {
        for r in &rest {
            out.push(format!("{head}{a}{r}"));
        }
    }
    if out.len() > 10_000_000 {
        return Err("more than 10 million paths".into());
    }
    Ok(out)
}

/// `*` / `?` matching of one path component.
pub fn wildcard_match(pat: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while n < name.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some(p);
            mark = n;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

fn glob(spec: &str) -> Vec<PathBuf> {
    let absolute = spec.starts_with('/');
    let mut current = vec![PathBuf::from(if absolute { "/" } else { "." })];
    let comps: Vec<&str> = spec.split('/').filter(|c| !c.is_empty()).collect();
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let mut next = Vec::new();
        for dir in &current {
            if !c.contains(['*', '?']) {
                let p = dir.join(c);
                if p.exists() {
                    next.push(p);
                }
                continue;
            }
            let Ok(rd) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in rd.filter_map(|e| e.ok()) {
                let name = e.file_name();
                if wildcard_match(c.as_bytes(), name.as_encoded_bytes()) {
                    let p = e.path();
                    if last || p.is_dir() {
                        next.push(p);
                    }
                }
            }
        }
        current = next;
    }
    let strip = !absolute;
    current
        .into_iter()
        .filter(|p| p.is_file())
        .map(|p| {
            if strip {
                p.strip_prefix(".").map(Path::to_path_buf).unwrap_or(p)
            } else {
                p
            }
        })
        .collect()
}
