//! Reading webdataset tar shards as img2dataset writes them: members
//! `<key>.jpg|jpeg|png|webp` + `<key>.txt` (caption) + `<key>.json` (+ `<key>.cls`), grouped by key
//! (the path up to the first `.` of the file name, consecutive members), streamed member by member.
//! A shard is never loaded whole; `.tar`, `.tar.gz` and `.tgz` are read. No member is read past
//! [`DecodeLimits::max_file_bytes`].

use std::io::Read;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, SkipReason};
use crate::image::DecodeLimits;

/// Image member extensions, in order of preference.
pub const WDS_IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp"];

/// One grouped tar sample before decoding: `(extension, bytes)` members.
#[derive(Debug, Clone)]
pub struct RawSample {
    pub key: String,
    pub members: Vec<(String, Vec<u8>)>,
}

impl RawSample {
    /// Bytes of the member with extension `ext` (lower case).
    pub fn get(&self, ext: &str) -> Option<&[u8]> {
        self.members
            .iter()
            .find(|(e, _)| e == ext)
            .map(|(_, b)| b.as_slice())
    }
    /// The image member's bytes, if any.
    pub fn image(&self) -> Option<&[u8]> {
        WDS_IMAGE_EXTENSIONS.iter().find_map(|e| self.get(e))
    }
    /// The caption: `.txt` (lossily decoded, trimmed), else the `caption` field of `.json`.
    pub fn caption(&self) -> Option<String> {
        if let Some(b) = self.get("txt") {
            return Some(String::from_utf8_lossy(b).trim().to_string());
        }
        let v: serde_json::Value = serde_json::from_slice(self.get("json")?).ok()?;
        v.get("caption")?.as_str().map(|c| c.trim().to_string())
    }
    /// The class label of `.cls` (a decimal integer), if any.
    pub fn label(&self) -> Option<i64> {
        std::str::from_utf8(self.get("cls")?)
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

fn split_key(path: &str) -> Option<(String, String)> {
    let (dir, file) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    let dot = file.find('.')?;
    Some((
        format!("{dir}{}", &file[..dot]),
        file[dot + 1..].to_ascii_lowercase(),
    ))
}

/// Streams the samples of one shard to `f`. Returns `Err(BrokenTar)` when the archive is
/// corrupt; the samples before the damage have been delivered.
pub fn for_each_sample(
    path: &Path,
    mut f: impl FnMut(RawSample) -> ControlFlow<()>,
) -> std::result::Result<(), SkipReason> {
    // Only regular files: a FIFO named `*.tar` would block the reader forever.
    let meta = std::fs::metadata(path).map_err(|e| SkipReason::Unreadable(e.to_string()))?;
    if !meta.is_file() {
        return Err(SkipReason::Unreadable(format!(
            "not a regular file ({:?})",
            meta.file_type()
        )));
    }
    if meta.len() == 0 {
        return Err(SkipReason::Empty);
    }
    let file = std::fs::File::open(path).map_err(|e| SkipReason::Unreadable(e.to_string()))?;
    let name = path.to_string_lossy();
    let reader: Box<dyn Read> = if name.ends_with(".gz") || name.ends_with(".tgz") {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| SkipReason::BrokenTar(e.to_string()))?;
    let mut cur: Option<RawSample> = None;
    let mut any = false;
    for entry in entries {
        let mut entry = entry.map_err(|e| SkipReason::BrokenTar(format!("header: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let p = entry
            .path()
            .map_err(|e| SkipReason::BrokenTar(e.to_string()))?;
        let Some((key, ext)) = split_key(&p.to_string_lossy()) else {
            continue;
        };
        any = true;
        if entry.size() > DecodeLimits::default().max_file_bytes {
            // Never read a member past the per-file limit: the sample loses this member (an
            // image member: counted as `missing_image`).
            continue;
        }
        let mut bytes = Vec::with_capacity(entry.size().min(1 << 26) as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| SkipReason::BrokenTar(format!("member {key}.{ext}: {e}")))?;
        match &mut cur {
            Some(s) if s.key == key => s.members.push((ext, bytes)),
            _ => {
                if let Some(done) = cur.replace(RawSample {
                    key,
                    members: vec![(ext, bytes)],
                }) {
                    if f(done).is_break() {
                        return Ok(());
                    }
                }
            }
        }
    }
    match cur {
        Some(done) => {
            let _ = f(done);
            Ok(())
        }
        // A readable archive without a single member file (e.g. only end-of-archive blocks).
        None if !any => Err(SkipReason::Empty),
        None => Ok(()),
    }
}

/// Lists `*.tar`, `*.tar.gz`, `*.tgz` files in `dir` (sorted), or returns `[dir]` for a file.
pub fn list_shards(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let rd = std::fs::read_dir(path).map_err(|e| Error::io(path, e))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let s = p.to_string_lossy();
            s.ends_with(".tar") || s.ends_with(".tar.gz") || s.ends_with(".tgz")
        })
        .collect();
    v.sort();
    if v.is_empty() {
        return Err(Error::Empty {
            path: path.to_path_buf(),
            detail: "no .tar shards".into(),
        });
    }
    Ok(v)
}
