//! The SemHiTok model in tch (LibTorch 2.11).

pub mod amp;
pub mod cuda;
pub mod device;
pub mod discriminator;
pub mod efficientnet;
pub mod error;
pub mod fid;
pub mod fusion;
pub mod layers;
pub mod losses;
pub mod lpips;
pub mod model;
pub mod perceptual;
pub mod pretrained;
pub mod quantizer;
pub mod role;
pub mod sghc;
pub mod siglip;
pub mod spc;
pub mod teacher;
pub mod unified;
pub mod vit;
pub mod weights;

pub use error::{Error, Result};
