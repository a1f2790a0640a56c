//! `semhitok data pack`: an image folder (ImageNet class folders, or a flat folder, with optional
//! `<stem>.txt` captions beside the images) written as webdataset tar shards in img2dataset's
//! layout: `OUT/00000.tar, 00001.tar, ...`, each holding for sample key `K` (9 digits, the
//! sample's index) `K.jpg` (or `.png`/`.webp`/...: the original bytes, never re-encoded),
//! `K.txt` (the caption, when there is one), `K.cls` (the class index, for class folders) and
//! `K.json` (`{"key", "source", "caption", "class", "label"}`).
//!
//! Files are listed in sorted order (classes sorted, as [`crate::ImageFolder`] numbers them), so
//! the shards are a deterministic function of the folder. Each image is decoded once to check it;
//! undecodable files are skipped and counted, never packed. Every shard is written to a temporary
//! file and renamed into place.

use std::io::Write;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::image::{decode_rgb8, read_image_file, DecodeLimits};
use crate::loader::SkipStats;
use crate::photos::has_image_ext;

/// Options of [`pack`].
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Samples per shard (>= 1).
    pub shard_size: usize,
    pub limits: DecodeLimits,
}

/// What [`pack`] wrote.
#[derive(Debug, Clone, Default)]
pub struct PackReport {
    pub shards: Vec<PathBuf>,
    pub samples: u64,
    pub with_caption: u64,
    pub classes: Vec<String>,
    pub skipped: SkipStats,
}

fn sniff_ext(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [0xFF, 0xD8, 0xFF, ..] => Some("jpg"),
        [0x89, b'P', b'N', b'G', ..] => Some("png"),
        [b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'E', b'B', b'P', ..] => Some("webp"),
        [b'G', b'I', b'F', b'8', ..] => Some("gif"),
        [b'B', b'M', ..] => Some("bmp"),
        [b'I', b'I', 42, 0, ..] | [b'M', b'M', 0, 42, ..] => Some("tiff"),
        _ => None,
    }
}

/// `(path, class index)` of every image under `src`: class folders when `src` has
/// sub-directories, else the flat folder (class `None`).
fn list(src: &Path) -> Result<(Vec<(PathBuf, Option<usize>)>, Vec<String>)> {
    let rd = std::fs::read_dir(src).map_err(|e| Error::io(src, e))?;
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        if p.is_dir() {
            dirs.push(e.file_name().to_string_lossy().into_owned());
        } else if has_image_ext(&p) {
            files.push(p);
        }
    }
    dirs.sort();
    files.sort();
    if dirs.is_empty() {
        return Ok((files.into_iter().map(|p| (p, None)).collect(), vec![]));
    }
    let mut out = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let dir = src.join(d);
        let rd = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut fs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| has_image_ext(p))
            .collect();
        fs.sort();
        out.extend(fs.into_iter().map(|p| (p, Some(i))));
    }
    Ok((out, dirs))
}

fn member(b: &mut tar::Builder<std::fs::File>, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, name, bytes)
}

/// Packs `src` into shards in `out` (created if needed). See the module docs.
pub fn pack(src: &Path, out: &Path, opts: &PackOptions) -> Result<PackReport> {
    if opts.shard_size == 0 {
        return Err(Error::Config("shard size must be >= 1".into()));
    }
    let (files, classes) = list(src)?;
    if files.is_empty() {
        return Err(Error::Empty {
            path: src.to_path_buf(),
            detail: "no image files (flat or in class folders)".into(),
        });
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // Read and check in parallel, in order.
    let checked: Vec<_> = files
        .par_iter()
        .map(|(p, class)| {
            let r = read_image_file(p, &opts.limits).and_then(|bytes| {
                decode_rgb8(&bytes, &opts.limits)?;
                Ok(bytes)
            });
            let caption = std::fs::read_to_string(p.with_extension("txt"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty());
            (p, *class, r, caption)
        })
        .collect();
    let mut rep = PackReport {
        classes: classes.clone(),
        ..Default::default()
    };
    let good: Vec<_> = checked
        .into_iter()
        .filter_map(|(p, class, r, caption)| {
            let rel = p
                .strip_prefix(src)
                .unwrap_or(p)
                .to_string_lossy()
                .into_owned();
            match r {
                Ok(bytes) => Some((rel, class, bytes, caption)),
                Err(e) => {
                    rep.skipped.record(&rel, &e);
                    None
                }
            }
        })
        .collect();
    for (si, chunk) in good.chunks(opts.shard_size).enumerate() {
        let path = out.join(format!("{si:05}.tar"));
        let tmp = out.join(format!(".{si:05}.tar.tmp"));
        let write = || -> std::io::Result<()> {
            let f = std::fs::File::create(&tmp)?;
            let mut b = tar::Builder::new(f);
            for (j, (rel, class, bytes, caption)) in chunk.iter().enumerate() {
                let key = format!("{:09}", si * opts.shard_size + j);
                let ext = sniff_ext(bytes).unwrap_or("jpg");
                member(&mut b, &format!("{key}.{ext}"), bytes)?;
                if let Some(c) = caption {
                    member(&mut b, &format!("{key}.txt"), c.as_bytes())?;
                }
                if let Some(c) = class {
                    member(&mut b, &format!("{key}.cls"), c.to_string().as_bytes())?;
                }
                let json = serde_json::json!({
                    "key": key,
                    "source": rel,
                    "caption": caption,
                    "class": class.map(|c| classes[c].clone()),
                    "label": class,
                });
                member(&mut b, &format!("{key}.json"), json.to_string().as_bytes())?;
            }
            let mut f = b.into_inner()?;
            f.flush()?;
            f.sync_all()?;
            Ok(())
        };
        write().map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        rep.samples += chunk.len() as u64;
        rep.with_caption += chunk.iter().filter(|c| c.3.is_some()).count() as u64;
        rep.shards.push(path);
    }
    Ok(rep)
}
