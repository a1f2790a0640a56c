//! ImageNet-style class folders: `root/<class>/<image>` (e.g. `train/n01440764/x.JPEG`).
//!
//! Classes are the sorted sub-directory names; the label is the class's index in that order
//! (the torchvision `ImageFolder` convention, so ImageNet synsets map to the usual 0..999). An
//! optional labels file in the `LOC_synset_mapping.txt` format (`n01440764 tench, Tinca tinca`)
//! gives human-readable names; the caption is then `"a photo of a {first name}"`. Files are
//! listed once at open (sorted, extension filter [`crate::photos::IMAGE_EXTENSIONS`]); they are
//! read and decoded lazily, in the loader's worker threads.
//!
//! The raw ImageNet validation layout (all images in one folder, classes in
//! `LOC_val_solution.csv`: `ImageId,PredictionString` with the synset as the first token) is read
//! by [`ImageFolder::open_flat`]; labels are the sorted synsets of the CSV, which is the same
//! index as the train folders when every class appears (ImageNet val has 50 per class).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result, SkipReason};
use crate::image::read_image_file;
use crate::image::DecodeLimits;
use crate::jpeg_scaled::decode_rgb8_scaled;
use crate::loader::{IndexedSource, Item, Loader, LoaderConfig};
use crate::photos::has_image_ext;
use crate::transform::Transform;

/// Settings of [`ImageFolder`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageFolderConfig {
    pub transform: Transform,
    /// `LOC_synset_mapping.txt`-style file: `<class-dir> <name>[, <other names>]` per line.
    pub labels_file: Option<PathBuf>,
    pub limits: DecodeLimits,
}

impl ImageFolderConfig {
    /// ADM center crops (evaluation / rFID).
    pub fn eval(size: u32) -> Self {
        Self {
            transform: Transform::center_crop(size),
            labels_file: None,
            limits: DecodeLimits::default(),
        }
    }
    /// Random resized crops + flips (training).
    pub fn train(size: u32) -> Self {
        Self {
            transform: Transform::random_resized_crop(size),
            ..Self::eval(size)
        }
    }
}

/// A class-folder dataset.
#[derive(Debug)]
pub struct ImageFolder {
    root: PathBuf,
    cfg: ImageFolderConfig,
    classes: Vec<String>,
    names: Vec<String>,
    /// (relative path, label)
    files: Vec<(PathBuf, usize)>,
}

/// Display names of `classes` (wnids): from the labels file (`wnid name` lines) where given,
/// else the wnid itself.
fn class_names(classes: &[String], labels_file: Option<&Path>) -> Result<Vec<String>> {
    let labels = labels_file.map(read_labels_file).transpose()?;
    Ok(classes
        .iter()
        .map(|c| {
            labels
                .as_ref()
                .and_then(|m| m.get(c).cloned())
                .unwrap_or_else(|| c.clone())
        })
        .collect())
}

/// Reads a `LOC_synset_mapping.txt`-style file into class -> first name.
pub fn read_labels_file(path: &Path) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut map = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (id, rest) = line.split_once(char::is_whitespace).ok_or_else(|| {
            Error::format(
                path,
                format!("line {}: expected `<class> <name>`, got {line:?}", i + 1),
            )
        })?;
        let name = rest.split(',').next().unwrap_or(rest).trim().to_string();
        map.insert(id.to_string(), name);
    }
    Ok(map)
}

/// The image files (by extension) directly inside `dir`, in directory order.
fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    Ok(rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| has_image_ext(p))
        .collect())
}

impl ImageFolder {
    /// Lists `root/<class>/*` (one level; class directories sorted by name).
    pub fn open(root: impl AsRef<Path>, cfg: ImageFolderConfig) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        let rd = std::fs::read_dir(&root).map_err(|e| Error::io(&root, e))?;
        let mut classes: Vec<String> = rd
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        classes.sort();
        if classes.is_empty() {
            return Err(Error::Empty {
                path: root,
                detail: "no class sub-directories".into(),
            });
        }
        let names = class_names(&classes, cfg.labels_file.as_deref())?;
        let mut files = Vec::new();
        for (label, class) in classes.iter().enumerate() {
            let mut fs: Vec<PathBuf> = image_files(&root.join(class))?
                .into_iter()
                .map(|p| PathBuf::from(class).join(p.file_name().unwrap_or_default()))
                .collect();
            fs.sort();
            files.extend(fs.into_iter().map(|f| (f, label)));
        }
        if files.is_empty() {
            return Err(Error::Empty {
                path: root,
                detail: "no image files in the class folders".into(),
            });
        }
        Ok(Self {
            root,
            cfg,
            classes,
            names,
            files,
        })
    }
    /// A flat folder whose classes come from a `LOC_val_solution.csv`-style file
    /// (`ImageId,<synset> ...`, one header line). Images are `dir/<ImageId>.<ext>` for any image
    /// extension; ids listed without a file are an error naming the first few.
    pub fn open_flat(
        dir: impl AsRef<Path>,
        solution_csv: &Path,
        cfg: ImageFolderConfig,
    ) -> Result<Self> {
        let root = dir.as_ref().to_path_buf();
        let text = std::fs::read_to_string(solution_csv).map_err(|e| Error::io(solution_csv, e))?;
        let mut pairs = Vec::new();
        for (i, line) in text.lines().enumerate().skip(1) {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let (id, pred) = line.split_once(',').ok_or_else(|| {
                Error::format(
                    solution_csv,
                    format!("line {}: expected `ImageId,PredictionString`", i + 1),
                )
            })?;
            let synset = pred.split_whitespace().next().ok_or_else(|| {
                Error::format(
                    solution_csv,
                    format!("line {}: empty PredictionString", i + 1),
                )
            })?;
            pairs.push((id.to_string(), synset.to_string()));
        }
        let mut classes: Vec<String> = pairs.iter().map(|(_, s)| s.clone()).collect();
        classes.sort();
        classes.dedup();
        if classes.is_empty() {
            return Err(Error::Empty {
                path: solution_csv.to_path_buf(),
                detail: "no rows".into(),
            });
        }
        let mut by_stem = HashMap::new();
        for p in image_files(&root)? {
            if let (Some(stem), Some(name)) = (p.file_stem(), p.file_name()) {
                by_stem.insert(stem.to_string_lossy().into_owned(), PathBuf::from(name));
            }
        }
        let mut files = Vec::with_capacity(pairs.len());
        let mut missing = Vec::new();
        for (id, synset) in &pairs {
            let label = classes.binary_search(synset).unwrap_or_default();
            match by_stem.get(id) {
                Some(f) => files.push((f.clone(), label)),
                None => missing.push(id.clone()),
            }
        }
        if !missing.is_empty() {
            return Err(Error::format(
                &root,
                format!(
                    "{} ids of {} have no image file (first: {:?})",
                    missing.len(),
                    solution_csv.display(),
                    &missing[..missing.len().min(3)]
                ),
            ));
        }
        files.sort();
        let names = class_names(&classes, cfg.labels_file.as_deref())?;
        Ok(Self {
            root,
            cfg,
            classes,
            names,
            files,
        })
    }

    /// Class directory names, index = label.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }
    /// Human-readable class names (labels file, else the directory name).
    pub fn class_names(&self) -> &[String] {
        &self.names
    }
    /// `(path relative to root, label)` of every file, in index order.
    pub fn files(&self) -> &[(PathBuf, usize)] {
        &self.files
    }
    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// A loader over this folder.
    pub fn loader(self, cfg: LoaderConfig) -> Result<Loader> {
        Loader::new(Arc::new(self), cfg)
    }
}

impl IndexedSource for ImageFolder {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn key(&self, index: usize) -> String {
        self.files[index].0.to_string_lossy().into_owned()
    }
    fn output_size(&self) -> (u32, u32) {
        (self.cfg.transform.size(), self.cfg.transform.size())
    }
    fn get(&self, index: usize, rng: &mut ChaCha8Rng) -> std::result::Result<Item, SkipReason> {
        let (rel, label) = &self.files[index];
        let bytes = read_image_file(&self.root.join(rel), &self.cfg.limits)?;
        let min = self.cfg.transform.min_source_side();
        let img = decode_rgb8_scaled(&bytes, &self.cfg.limits, min)?;
        let image = self.cfg.transform.apply(&img, rng)?;
        Ok(Item {
            key: rel.to_string_lossy().into_owned(),
            image,
            label: Some(*label as i64),
            caption: Some(format!("a photo of a {}", self.names[*label])),
        })
    }
}
