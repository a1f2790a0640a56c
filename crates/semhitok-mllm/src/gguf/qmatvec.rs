//! Matrix-vector products straight from GGUF's quantized blocks, for batch-1 decoding on the
//! CPU: `y = W x` with `W` kept as the file's Q4_1 / Q8_0 blocks (0.625 / 1.06 bytes per weight
//! instead of 4 in f32). Decoding one token of a small model reads every weight once, so its
//! speed is set by the bytes of weights read; these products read the blocks themselves.
//!
//! The weights are the file's, not a re-quantization: each block's dequantized values are the
//! ones [`super::dequant`] gives (`d q` for Q8_0, `d q + m` for Q4_1), so the product differs from
//! the f32 path's only by rounding. Per block it is computed as `d * sum_i q_i x_i (+ m *
//! sum_i x_i)` in f32, which rounds differently from summing the f32-rounded weights times `x`:
//! relative differences of order 1e-6 of `sum |w_i x_i|` (bounded in the tests).
//!
//! Kernels: AVX2 + FMA + F16C when the CPU has them (runtime detection), else portable scalar
//! code with the same formula. Rows are split over LibTorch's own intra-op threads
//! (`semhitok_sys::parallel_for`; a second thread pool was tried and oversubscribed the cores).

use super::dequant::GgmlType;
use crate::error::{Error, Result};
use half::f16;

/// Rows `[rows, cols]` of one quantized tensor, row-major blocks (each row `cols / 32` blocks).
#[derive(Debug, Clone)]
pub struct QRows {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
}

impl QRows {
    /// `data`: `rows` rows of `cols / 32` blocks of `ty` (Q4_1 or Q8_0), `cols % 32 == 0`.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self> {
        if !matches!(ty, GgmlType::Q4_1 | GgmlType::Q8_0) {
            return Err(Error::Config(format!(
                "quantized matvec: {ty:?} blocks are not supported (Q4_1, Q8_0)"
            )));
        }
        let want = rows * (cols / 32) * ty.block_bytes();
        if cols % 32 != 0 || data.len() != want {
            return Err(Error::Config(format!(
                "quantized matvec: {rows} x {cols} {ty:?} needs cols % 32 == 0 and {want} bytes, got {}",
                data.len()
            )));
        }
        Ok(Self {
            ty,
            rows,
            cols,
            data,
        })
    }
    /// The rows in the order `perm` (row `i` of the result is row `perm[i]` of `self`).
    pub fn permuted(&self, perm: &[usize]) -> Result<Self> {
        let rb = self.row_bytes();
        if perm.len() != self.rows || perm.iter().any(|&p| p >= self.rows) {
            return Err(Error::Config(format!(
                "quantized matvec: row permutation of length {} for {} rows",
                perm.len(),
                self.rows
            )));
        }
        let mut data = Vec::with_capacity(self.data.len());
        for &p in perm {
            data.extend_from_slice(&self.data[p * rb..(p + 1) * rb]);
        }
        Self::new(self.ty, self.rows, self.cols, data)
    }
    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The block type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }
    fn row_bytes(&self) -> usize {
        self.cols / 32 * self.ty.block_bytes()
    }
    /// Bytes of weights (what one product reads).
    pub fn bytes(&self) -> usize {
        self.data.len()
    }
}

/// A linear layer's weight as quantized row segments stacked in order (one per HF module of a
/// stacked q/k/v or gate/up layer: their block types may differ).
#[derive(Debug, Clone)]
pub struct QMatrix {
    parts: Vec<QRows>,
    rows: usize,
    cols: usize,
}

impl QMatrix {
    /// Segments stacked along the rows; all must have the same `cols`.
    pub fn stack(parts: Vec<QRows>) -> Result<Self> {
        let cols = parts.first().map_or(0, |p| p.cols);
        if parts.is_empty() || parts.iter().any(|p| p.cols != cols) {
            return Err(Error::Config(
                "quantized matvec: a stack needs one or more segments of equal cols".into(),
            ));
        }
        let rows = parts.iter().map(|p| p.rows).sum();
        Ok(Self { parts, rows, cols })
    }
    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input columns.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Bytes of weights read per product.
    pub fn bytes(&self) -> usize {
        self.parts.iter().map(QRows::bytes).sum()
    }

    /// `y = W x`: x `[cols]`, y `[rows]`, with the kernel of [`Kernel::detect`] on
    /// `tch::get_num_threads()` threads.
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) -> Result<()> {
        self.matvec_with(Kernel::detect(), threads(), x, y)
    }

    /// [`Self::matvec`] with an explicit kernel and thread count.
    pub fn matvec_with(&self, k: Kernel, threads: usize, x: &[f32], y: &mut [f32]) -> Result<()> {
        if x.len() != self.cols || y.len() != self.rows {
            return Err(Error::Config(format!(
                "quantized matvec: W [{}, {}] x [{}] -> y [{}]",
                self.rows,
                self.cols,
                x.len(),
                y.len()
            )));
        }
        let k = if k == Kernel::Avx2 && Kernel::detect() != Kernel::Avx2 {
            Kernel::Portable
        } else {
            k
        };
        // Per-block sums of x (the Q4_1 min term).
        let xsum: Vec<f32> = x.chunks_exact(32).map(|c| c.iter().sum()).collect();
        // Rows [lo, hi) of the stack into out (= y[lo..hi]).
        let rows_into = |lo: usize, hi: usize, out: &mut [f32]| {
            let mut off = 0;
            for p in &self.parts {
                let (a, b) = (lo.max(off), hi.min(off + p.rows));
                let rb = p.row_bytes();
                for r in a..b.max(a) {
                    out[r - lo] = dot_row(
                        k,
                        p.ty,
                        &p.data[(r - off) * rb..(r - off + 1) * rb],
                        x,
                        &xsum,
                    );
                }
                off += p.rows;
            }
        };
        if threads <= 1 {
            rows_into(0, self.rows, y);
            return Ok(());
        }
        let yp = SendPtr(y.as_mut_ptr());
        let grain = (self.rows / threads).max(64) as i64;
        semhitok_sys::parallel_for(0, self.rows as i64, grain, &|lo, hi| {
            let (lo, hi) = (lo as usize, hi as usize);
            // SAFETY: each chunk writes only y[lo..hi]; parallel_for's chunks are disjoint and
            // inside [0, rows) = y's range, and it returns only after every chunk is done.
            let out = unsafe { std::slice::from_raw_parts_mut(yp.get().add(lo), hi - lo) };
            rows_into(lo, hi, out);
        })
        .map_err(|e| Error::Config(format!("quantized matvec: {e}")))?;
        Ok(())
    }
}

/// `y`'s base pointer, shared by the chunks of one product (each writes its own rows).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only for the disjoint row ranges of one `matvec_with` call, which outlives it.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The dot-product kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX2 + FMA + F16C (x86-64, detected at run time).
    Avx2,
    /// Scalar Rust, any CPU.
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Kernel {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Kernel::Avx2;
            }
        }
        Kernel::Portable
    }
}

fn threads() -> usize {
    tch::get_num_threads().max(1) as usize
}

#[inline]
fn h16(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// One row (its blocks) . x; `xsum[b]` = sum of x over block b.
fn dot_row(k: Kernel, ty: GgmlType, row: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
    match k {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => {
            // SAFETY: `Kernel::Avx2` is used only after `Kernel::detect` found AVX2, FMA and
            // F16C (`matvec_with` downgrades it otherwise); `row` holds `x.len() / 32` blocks of
            // `ty` and `xsum` one entry per block (checked by the callers' shapes).
            unsafe {
                match ty {
                    GgmlType::Q4_1 => avx2::dot_q4_1(row, x, xsum),
                    _ => avx2::dot_q8_0(row, x),
                }
            }
        }
        _ => match ty {
            GgmlType::Q4_1 => portable_q4_1(row, x, xsum),
            _ => portable_q8_0(row, x),
        },
    }
}

/// Q4_1 block: d (f16), m (f16), 16 bytes: element i < 16 in the low nibble of byte i, element
/// 16 + i in its high nibble. `sum_b d_b sum_i q_i x_i + m_b xsum_b`.
fn portable_q4_1(row: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in row.chunks_exact(20).enumerate() {
        let (d, m) = (h16(blk, 0), h16(blk, 2));
        let xb = &x[b * 32..b * 32 + 32];
        let mut s = 0f32;
        for i in 0..16 {
            s += (blk[4 + i] & 0x0F) as f32 * xb[i];
            s += (blk[4 + i] >> 4) as f32 * xb[16 + i];
        }
        acc += d * s + m * xsum[b];
    }
    acc
}

/// Q8_0 block: d (f16), 32 int8. `sum_b d_b sum_i q_i x_i`.
fn portable_q8_0(row: &[u8], x: &[f32]) -> f32 {
    let mut acc = 0f32;
    for (b, blk) in row.chunks_exact(34).enumerate() {
        let d = h16(blk, 0);
        let xb = &x[b * 32..b * 32 + 32];
        let s: f32 = (0..32).map(|i| blk[2 + i] as i8 as f32 * xb[i]).sum();
        acc += d * s;
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    /// Safety: AVX2/FMA/F16C present; `p` points at 2 readable bytes.
    unsafe fn h16(p: *const u8) -> f32 {
        // SAFETY: the caller's contract above.
        unsafe {
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(
                u16::from_le_bytes([*p, *p.add(1)]) as i32,
            )))
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// See `portable_q4_1`. Safety: AVX2/FMA/F16C present; `row` has `x.len() / 32` blocks of
    /// 20 bytes, `xsum` `x.len() / 32` entries.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q4_1(row: &[u8], x: &[f32], xsum: &[f32]) -> f32 {
        // SAFETY: the caller's contract (this function's doc); every pointer stays inside `row` / `x`.
        unsafe {
            let nb = x.len() / 32;
            debug_assert!(row.len() >= nb * 20 && xsum.len() >= nb);
            let mask = _mm_set1_epi8(0x0F);
            let mut acc = _mm256_setzero_ps();
            let mut accm = 0f32;
            let (rp, xp) = (row.as_ptr(), x.as_ptr());
            for b in 0..nb {
                let blk = rp.add(b * 20);
                let d = h16(blk);
                let m = h16(blk.add(2));
                let qs = _mm_loadu_si128(blk.add(4) as *const __m128i);
                let lo = _mm_and_si128(qs, mask);
                let hi = _mm_and_si128(_mm_srli_epi16(qs, 4), mask);
                let xb = xp.add(b * 32);
                macro_rules! f {
                    ($v:expr) => {
                        _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32($v))
                    };
                }
                let mut s = _mm256_mul_ps(f!(lo), _mm256_loadu_ps(xb));
                s = _mm256_fmadd_ps(f!(_mm_srli_si128(lo, 8)), _mm256_loadu_ps(xb.add(8)), s);
                s = _mm256_fmadd_ps(f!(hi), _mm256_loadu_ps(xb.add(16)), s);
                s = _mm256_fmadd_ps(f!(_mm_srli_si128(hi, 8)), _mm256_loadu_ps(xb.add(24)), s);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc);
                accm = m.mul_add(*xsum.get_unchecked(b), accm);
            }
            hsum(acc) + accm
        }
    }

    /// See `portable_q8_0`. Safety: AVX2/FMA/F16C present; `row` has `x.len() / 32` blocks of
    /// 34 bytes.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q8_0(row: &[u8], x: &[f32]) -> f32 {
        // SAFETY: the caller's contract (this function's doc); every pointer stays inside `row` / `x`.
        unsafe {
            let nb = x.len() / 32;
            debug_assert!(row.len() >= nb * 34);
            let mut acc = _mm256_setzero_ps();
            let (rp, xp) = (row.as_ptr(), x.as_ptr());
            for b in 0..nb {
                let blk = rp.add(b * 34);
                let d = h16(blk);
                let q = blk.add(2);
                let xb = xp.add(b * 32);
                macro_rules! f {
                    ($o:expr) => {
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(
                            q.add($o) as *const __m128i
                        )))
                    };
                }
                let mut s = _mm256_mul_ps(f!(0), _mm256_loadu_ps(xb));
                s = _mm256_fmadd_ps(f!(8), _mm256_loadu_ps(xb.add(8)), s);
                s = _mm256_fmadd_ps(f!(16), _mm256_loadu_ps(xb.add(16)), s);
                s = _mm256_fmadd_ps(f!(24), _mm256_loadu_ps(xb.add(24)), s);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc);
            }
            hsum(acc)
        }
    }
}
