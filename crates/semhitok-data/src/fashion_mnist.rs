//! Fashion-MNIST IDX files (`{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz`) as image-caption
//! pairs: the 28 x 28 grayscale image becomes RGB, goes through the transform, and the caption is
//! `"a photo of a {class}"` with Zalando's class names in lower case.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result, SkipReason};
use crate::image::Rgb8Image;
use crate::loader::{IndexedSource, Item, Loader, LoaderConfig};
use crate::transform::Transform;

/// The 10 Fashion-MNIST classes, index = label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
];

/// The 10 class names as Zalando's Fashion-MNIST README spells them (the LLaVA-format set's
/// answers), index = label.
pub const FASHION_MNIST_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Which IDX pair to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// `train-*` (60 000 images).
    Train,
    /// `t10k-*` (10 000 images).
    Test,
}

impl Split {
    fn prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Fashion-MNIST held in memory (70 MB decompressed for both splits).
#[derive(Debug)]
pub struct FashionMnist {
    transform: Transform,
    rows: usize,
    cols: usize,
    pixels: Vec<u8>,
    labels: Vec<u8>,
}

fn read_gz(path: &Path) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).map_err(|e| {
        let hint = if path.to_string_lossy().contains(".assets") {
            " (run `cargo xtask assets`)"
        } else {
            ""
        };
        Error::format(path, format!("{e}{hint}"))
    })?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .map_err(|e| Error::format(path, format!("gzip: {e}")))?;
    Ok(out)
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses an IDX3 (images, magic 0x803) buffer into (n, rows, cols, pixels).
pub fn parse_idx_images(path: &Path, b: &[u8]) -> Result<(usize, usize, usize, Vec<u8>)> {
    if b.len() < 16 || be_u32(b, 0) != 0x0803 {
        return Err(Error::format(
            path,
            "not an IDX3 u8 image file (magic 0x00000803)",
        ));
    }
    let (n, r, c) = (
        be_u32(b, 4) as usize,
        be_u32(b, 8) as usize,
        be_u32(b, 12) as usize,
    );
    let need = n
        .checked_mul(r)
        .and_then(|x| x.checked_mul(c))
        .unwrap_or(usize::MAX);
    if r == 0 || c == 0 || b.len() - 16 != need {
        return Err(Error::format(
            path,
            format!(
                "header says {n} x {r} x {c} but holds {} pixel bytes",
                b.len() - 16
            ),
        ));
    }
    Ok((n, r, c, b[16..].to_vec()))
}

/// Parses an IDX1 (labels, magic 0x801) buffer.
pub fn parse_idx_labels(path: &Path, b: &[u8]) -> Result<Vec<u8>> {
    if b.len() < 8 || be_u32(b, 0) != 0x0801 {
        return Err(Error::format(
            path,
            "not an IDX1 u8 label file (magic 0x00000801)",
        ));
    }
    let n = be_u32(b, 4) as usize;
    if b.len() - 8 != n {
        return Err(Error::format(
            path,
            format!("header says {n} labels but holds {}", b.len() - 8),
        ));
    }
    Ok(b[8..].to_vec())
}

impl FashionMnist {
    /// Paths of the two files of `split` in `dir`.
    pub fn files(dir: &Path, split: Split) -> (PathBuf, PathBuf) {
        let p = split.prefix();
        (
            dir.join(format!("{p}-images-idx3-ubyte.gz")),
            dir.join(format!("{p}-labels-idx1-ubyte.gz")),
        )
    }

    /// Reads and validates both files of `split`.
    pub fn open(dir: impl AsRef<Path>, split: Split, transform: Transform) -> Result<Self> {
        let (ip, lp) = Self::files(dir.as_ref(), split);
        let (n, rows, cols, pixels) = parse_idx_images(&ip, &read_gz(&ip)?)?;
        let labels = parse_idx_labels(&lp, &read_gz(&lp)?)?;
        if labels.len() != n {
            return Err(Error::format(
                &lp,
                format!("{} labels for {n} images", labels.len()),
            ));
        }
        if let Some((i, l)) = labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l as usize >= FASHION_MNIST_CLASSES.len())
        {
            return Err(Error::format(
                &lp,
                format!("label {l} of sample {i} is not in 0..10"),
            ));
        }
        Ok(Self {
            transform,
            rows,
            cols,
            pixels,
            labels,
        })
    }
    /// Labels, index order.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }
    /// The raw grayscale image `index` (`rows x cols`).
    pub fn raw(&self, index: usize) -> &[u8] {
        let per = self.rows * self.cols;
        &self.pixels[index * per..(index + 1) * per]
    }
    /// A loader over this split.
    pub fn loader(self, cfg: LoaderConfig) -> Result<Loader> {
        Loader::new(Arc::new(self), cfg)
    }
}

impl IndexedSource for FashionMnist {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn key(&self, index: usize) -> String {
        index.to_string()
    }
    fn output_size(&self) -> (u32, u32) {
        (self.transform.size(), self.transform.size())
    }
    fn get(&self, index: usize, rng: &mut ChaCha8Rng) -> std::result::Result<Item, SkipReason> {
        let rgb = self.raw(index).iter().flat_map(|&g| [g, g, g]).collect();
        let img = Rgb8Image {
            width: self.cols as u32,
            height: self.rows as u32,
            data: rgb,
        };
        let image = self.transform.apply(&img, rng)?;
        let label = self.labels[index];
        Ok(Item {
            key: index.to_string(),
            image,
            label: Some(label as i64),
            caption: Some(format!(
                "a photo of a {}",
                FASHION_MNIST_CLASSES[label as usize]
            )),
        })
    }
}
