//! Image-quality metrics in tch: PSNR and SSIM.
//!
//! Conventions (written next to every number by the report): images are mapped from [-1, 1]
//! to [0, 1] and clamped; PSNR uses data range 1 and is averaged over images; SSIM uses the
//! Wang et al. (2004) Gaussian window (11x11, sigma 1.5), K1 = 0.01, K2 = 0.03, data range 1,
//! "valid" convolution, averaged over channels and images (as `skimage.metrics.
//! structural_similarity(..., gaussian_weights=True, sigma=1.5, data_range=1)`).

use tch::{Kind, Tensor};

fn to01(x: &Tensor) -> Tensor {
    ((x.to_kind(Kind::Float) + 1.0) * 0.5).clamp(0.0, 1.0)
}

/// Per-image PSNR in dB. a, b: [B, 3, H, W] in [-1, 1] -> [B].
pub fn psnr_per_image(a: &Tensor, b: &Tensor) -> Tensor {
    let mse = (to01(a) - to01(b))
        .square()
        .mean_dim(&[1i64, 2, 3][..], false, Kind::Float)
        .clamp_min(1e-10);
    mse.log10() * -10.0
}

fn gaussian_window(size: i64, sigma: f64, channels: i64, device: tch::Device) -> Tensor {
    let half = (size - 1) as f64 / 2.0;
    let g: Vec<f32> = (0..size)
        .map(|i| (-((i as f64 - half).powi(2)) / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let g = Tensor::from_slice(&g).to_device(device);
    let g = &g / g.sum(Kind::Float);
    let w = g.unsqueeze(1).matmul(&g.unsqueeze(0)); // [size, size]
    w.expand([channels, 1, size, size], false).contiguous()
}

/// Per-image SSIM. a, b: [B, C, H, W] in [-1, 1] with H, W >= 11 -> [B].
pub fn ssim_per_image(a: &Tensor, b: &Tensor) -> Tensor {
    let (x, y) = (to01(a), to01(b));
    let c = x.size()[1];
    let w = gaussian_window(11, 1.5, c, x.device());
    let f = |t: &Tensor| t.conv2d(&w, None::<Tensor>, [1, 1], [0, 0], [1, 1], c);
    let (mx, my) = (f(&x), f(&y));
    let sxx = f(&(&x * &x)) - &mx * &mx;
    let syy = f(&(&y * &y)) - &my * &my;
    let sxy = f(&(&x * &y)) - &mx * &my;
    let (c1, c2) = (0.01f64.powi(2), 0.03f64.powi(2));
    let num = (&mx * &my * 2.0 + c1) * (sxy * 2.0 + c2);
    let den = (mx.square() + my.square() + c1) * (sxx + syy + c2);
    (num / den).mean_dim(&[1i64, 2, 3][..], false, Kind::Float)
}

/// Mean cosine similarity over tokens. a, b: [B, N, C] -> scalar.
pub fn mean_cosine(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(Kind::Float);
    let b = b.to_kind(Kind::Float);
    let num = (&a * &b).sum_dim_intlist(-1, false, Kind::Float);
    let den = a.norm_scalaropt_dim(2, [-1i64], false) * b.norm_scalaropt_dim(2, [-1i64], false);
    (num / den.clamp_min(1e-8))
        .mean(Kind::Float)
        .double_value(&[])
}
