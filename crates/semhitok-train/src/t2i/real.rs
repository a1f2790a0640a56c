//! `semhitok t2i-real`: real Fashion-MNIST images written as a generated-images file, so that
//! `t2i-score` measures the reference point of its own FID: real held-out images against the test
//! split's statistics (issue 18 §3, "a real-vs-real reference FID"). Real images go through the
//! same transform as the test split in [`super::judge`] (`Transform::center_crop(size)`, grey
//! replicated to RGB, u8), so the only difference between the two sides is which images they are.

use super::classifier::load_split;
use super::judge::write_images;
use crate::error::{Error, Result};
use semhitok_data::Split;
use std::path::PathBuf;

/// Which split the real images come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RealSplit {
    /// `train-*`: disjoint from the test split the FID compares against.
    Train,
    /// `t10k-*`: the FID reference itself (its FID against its own statistics is ~0).
    Test,
}

impl From<RealSplit> for Split {
    fn from(s: RealSplit) -> Split {
        match s {
            RealSplit::Train => Split::Train,
            RealSplit::Test => Split::Test,
        }
    }
}

/// Arguments of `semhitok t2i-real`.
#[derive(Debug, Clone, clap::Args)]
pub struct RealArgs {
    /// The Fashion-MNIST IDX folder.
    #[arg(long, default_value = ".assets/fashion-mnist")]
    pub data: PathBuf,
    /// The split the images come from.
    #[arg(long, value_enum, default_value = "train")]
    pub split: RealSplit,
    /// The first N images of the split (with their true labels as the "asked" classes).
    #[arg(long, default_value_t = 10_000)]
    pub n: usize,
    /// Side of the images (the tokenizers' input size).
    #[arg(long, default_value_t = 32)]
    pub size: u32,
    /// The images file to write (safetensors: `images` u8 [N, 3, size, size], `labels` [N]).
    #[arg(long)]
    pub out: PathBuf,
}

/// Write the first `a.n` images of `a.split` as an images file; returns how many were written.
pub fn write_real(a: &RealArgs) -> Result<i64> {
    if a.n == 0 {
        return Err(Error::Input("t2i-real: --n must be at least 1".into()));
    }
    let (x, y) = load_split(&a.data, a.split.into(), a.size, a.n)?; // [N, 1, s, s] u8
    let n = x.size()[0];
    if (n as usize) < a.n {
        return Err(Error::Input(format!(
            "t2i-real: {} has {n} images in the {:?} split, fewer than --n {}",
            a.data.display(),
            a.split,
            a.n
        )));
    }
    let s = a.size as i64;
    let rgb = x.f_expand([n, 3, s, s], false)?.f_contiguous()?;
    write_images(&a.out, &rgb, &y)?;
    Ok(n)
}
