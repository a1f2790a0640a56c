//! Whole-dataset checks behind `cargo xtask data scan`: every file or sample is read and fully
//! decoded, and the result is a [`ScanReport`] with counts per reason and one entry per item.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result, SkipReason};
use crate::fashion_mnist::{FashionMnist, Split};
use crate::image::{decode_rgb8, DecodeLimits};
use crate::photos::{has_image_ext, load_file};
use crate::tar_samples::{for_each_sample, list_shards};
use crate::transform::Transform;

/// Which layout to scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScanSource {
    /// `root/<class>/<file>`.
    Imagenet,
    /// Webdataset shards (a directory of `.tar`/`.tar.gz`, or one shard).
    Wds,
    /// A flat folder of photos.
    Photos,
    /// A folder with the Fashion-MNIST IDX `.gz` files.
    FashionMnist,
    /// A LLaVA JSON file.
    Llava,
}

/// One scanned item.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScanEntry {
    pub path: String,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Scan result. `ok + skipped == entries.len()`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScanReport {
    pub ok: u64,
    pub skipped: u64,
    pub reasons: BTreeMap<String, u64>,
    #[serde(skip)]
    pub entries: Vec<ScanEntry>,
}

impl ScanReport {
    fn push(&mut self, path: String, r: std::result::Result<(), SkipReason>) {
        match r {
            Ok(()) => {
                self.ok += 1;
                self.entries.push(ScanEntry {
                    path,
                    ok: true,
                    reason: None,
                    detail: None,
                });
            }
            Err(e) => {
                self.skipped += 1;
                *self.reasons.entry(e.as_str().to_string()).or_default() += 1;
                self.entries.push(ScanEntry {
                    path,
                    ok: false,
                    reason: Some(e.as_str().to_string()),
                    detail: Some(e.to_string()),
                });
            }
        }
    }
    /// The summary line: `{"ok": N, "skipped": N, "reasons": {...}}`.
    pub fn summary_json(&self) -> String {
        serde_json::json!({"ok": self.ok, "skipped": self.skipped, "reasons": self.reasons})
            .to_string()
    }
    /// One JSON object per line, one line per entry.
    pub fn entries_jsonl(&self) -> String {
        let mut s = String::new();
        for e in &self.entries {
            s.push_str(&serde_json::to_string(e).unwrap_or_default());
            s.push('\n');
        }
        s
    }
}

/// Options of [`scan`].
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    pub limits: DecodeLimits,
    /// LLaVA: check that images exist under this root.
    pub image_root: Option<PathBuf>,
    /// Webdataset: samples without `.txt` are skipped.
    pub require_caption: bool,
}

fn list_files(dir: &Path, recurse_one: bool) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut out = Vec::new();
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        // symlink_metadata: a dangling link is still listed (and reported unreadable).
        let is_dir = std::fs::metadata(&p).map(|m| m.is_dir()).unwrap_or(false);
        if is_dir && recurse_one {
            out.extend(list_files(&p, false)?);
        } else if has_image_ext(&p) {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

fn scan_files(root: &Path, files: &[PathBuf], limits: &DecodeLimits) -> ScanReport {
    let results: Vec<_> = files
        .par_iter()
        .map(|p| {
            let rel = p
                .strip_prefix(root)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned();
            (rel, load_file(p, limits).map(|_| ()))
        })
        .collect();
    let mut rep = ScanReport::default();
    for (p, r) in results {
        rep.push(p, r);
    }
    rep
}

/// Scans `path` as `source`.
pub fn scan(source: ScanSource, path: &Path, opts: &ScanOptions) -> Result<ScanReport> {
    match source {
        ScanSource::Imagenet => Ok(scan_files(path, &list_files(path, true)?, &opts.limits)),
        ScanSource::Photos => Ok(scan_files(path, &list_files(path, false)?, &opts.limits)),
        ScanSource::FashionMnist => {
            let mut rep = ScanReport::default();
            let mut found = false;
            for split in [Split::Train, Split::Test] {
                let (ip, lp) = FashionMnist::files(path, split);
                if !ip.exists() && !lp.exists() {
                    continue;
                }
                found = true;
                match FashionMnist::open(path, split, Transform::center_crop(28)) {
                    Ok(ds) => {
                        for i in 0..ds.labels().len() {
                            rep.push(format!("{}#{i}", ip.display()), Ok(()));
                        }
                    }
                    Err(e) => rep.push(
                        ip.display().to_string(),
                        Err(SkipReason::Corrupt(e.to_string())),
                    ),
                }
            }
            if !found {
                return Err(Error::Empty {
                    path: path.to_path_buf(),
                    detail: "no Fashion-MNIST IDX .gz files".into(),
                });
            }
            Ok(rep)
        }
        ScanSource::Wds => {
            let shards = list_shards(path)?;
            let per_shard: Vec<ScanReport> = shards
                .par_iter()
                .map(|shard| {
                    let mut rep = ScanReport::default();
                    let res = for_each_sample(shard, |raw| {
                        let key = format!("{}:{}", shard.display(), raw.key);
                        let r = (|| {
                            let bytes = raw.image().ok_or(SkipReason::MissingImage)?;
                            if opts.require_caption
                                && raw.caption().as_deref().is_none_or(str::is_empty)
                            {
                                return Err(SkipReason::MissingCaption);
                            }
                            decode_rgb8(bytes, &opts.limits).map(|_| ())
                        })();
                        rep.push(key, r);
                        std::ops::ControlFlow::Continue(())
                    });
                    if let Err(e) = res {
                        rep.push(shard.display().to_string(), Err(e));
                    }
                    rep
                })
                .collect();
            let mut rep = ScanReport::default();
            for r in per_shard {
                rep.ok += r.ok;
                rep.skipped += r.skipped;
                for (k, v) in r.reasons {
                    *rep.reasons.entry(k).or_default() += v;
                }
                rep.entries.extend(r.entries);
            }
            Ok(rep)
        }
        ScanSource::Llava => {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let values: Vec<serde_json::Value> =
                serde_json::from_reader(std::io::BufReader::new(file)).map_err(|e| {
                    Error::format(path, format!("expected a JSON array of records: {e}"))
                })?;
            let mut rep = ScanReport::default();
            for (i, v) in values.iter().enumerate() {
                let id = v.get("id").map(|x| x.to_string()).unwrap_or_default();
                let r = crate::llava::validate_record(v, opts.image_root.as_deref()).map(|_| ());
                rep.push(format!("#{i}:{id}"), r);
            }
            Ok(rep)
        }
    }
}
