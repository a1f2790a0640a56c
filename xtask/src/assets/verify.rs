//! Verification with a hash cache.

use super::*;

/// Why a file does not match the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    Missing,
    Size { expected: u64, got: u64 },
    Sha256 { expected: String, got: String },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => write!(f, "missing"),
            Problem::Size { expected, got } => {
                write!(f, "size mismatch (expected {expected} B, found {got} B)")
            }
            Problem::Sha256 { expected, got } => {
                write!(f, "sha256 mismatch (expected {expected}, found {got})")
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Cached {
    size: u64,
    mtime_ns: u128,
    sha256: String,
}

/// The asset folder plus its sha256 cache (`.hashcache.json`, keyed by path, size and mtime).
#[derive(Debug)]
pub struct Store {
    /// Workspace root (where `scripts/` lives).
    pub root: PathBuf,
    /// The asset folder (`.assets/` normally; a scratch folder in tests).
    pub dir: PathBuf,
    /// Ignore the cache and hash every file.
    pub full: bool,
    cache: BTreeMap<String, Cached>,
    dirty: bool,
    /// Bytes actually hashed (cache misses), for the summary.
    pub hashed_bytes: u64,
}

impl Store {
    pub fn open(root: &Path, dir: &Path, full: bool) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let cache = fs::read_to_string(dir.join(HASH_CACHE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Ok(Self {
            root: root.to_path_buf(),
            dir: dir.to_path_buf(),
            full,
            cache,
            dirty: false,
            hashed_bytes: 0,
        })
    }

    pub fn downloads(&self) -> PathBuf {
        self.dir.join("downloads")
    }

    pub fn save(&mut self) -> Result<()> {
        if self.dirty {
            let p = self.dir.join(HASH_CACHE);
            fs::write(&p, serde_json::to_string(&self.cache)?)
                .with_context(|| format!("writing {}", p.display()))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// sha256 of a file, from the cache when its size and mtime are unchanged.
    pub fn sha256(&mut self, path: &Path) -> Result<String> {
        let meta = fs::metadata(path).with_context(|| format!("stat {}", path.display()))?;
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        let key = path.to_string_lossy().into_owned();
        if !self.full {
            if let Some(c) = self.cache.get(&key) {
                if c.size == meta.len() && c.mtime_ns == mtime_ns && mtime_ns != 0 {
                    return Ok(c.sha256.clone());
                }
            }
        }
        let sha256 = hash_file(path)?;
        self.hashed_bytes += meta.len();
        self.cache.insert(
            key,
            Cached {
                size: meta.len(),
                mtime_ns,
                sha256: sha256.clone(),
            },
        );
        self.dirty = true;
        Ok(sha256)
    }

    /// Check `path` against `want`: `Ok(None)` if it matches.
    pub fn verify(&mut self, path: &Path, want: &FileSum) -> Result<Option<Problem>> {
        let meta = match fs::metadata(path) {
            Ok(m) if m.is_file() => m,
            _ => return Ok(Some(Problem::Missing)),
        };
        if meta.len() != want.size {
            return Ok(Some(Problem::Size {
                expected: want.size,
                got: meta.len(),
            }));
        }
        let got = self.sha256(path)?;
        if !got.eq_ignore_ascii_case(&want.sha256) {
            return Ok(Some(Problem::Sha256 {
                expected: want.sha256.clone(),
                got,
            }));
        }
        Ok(None)
    }

    /// Every output of `item` that does not match the manifest, by `.assets/`-relative path.
    pub fn check_outputs(&mut self, item: &Item) -> Result<Vec<(String, Problem)>> {
        let mut bad = Vec::new();
        for o in &item.outputs {
            if let Some(p) = self.verify(&self.dir.join(&o.path), o)? {
                bad.push((o.path.clone(), p));
            }
        }
        Ok(bad)
    }
}

pub fn hash_file(path: &Path) -> Result<String> {
    let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
