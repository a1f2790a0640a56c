//! ggml tensor types and their dequantization to f32.
//!
//! Block layouts follow ggml (`ggml-common.h`, `ggml-quants.c` `dequantize_row_*`): each block
//! holds `block_elems()` values in `block_bytes()` bytes, f16 scales little endian. The fast path
//! ([`dequantize`]) decodes block by block over threads; [`reference_element`] decodes one value
//! straight from the layout description, as an independent scalar reference for tests.

use crate::error::{Error, Result};
use half::{bf16, f16};
use rayon::prelude::*;

/// The tensor types this reader understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    /// 32 values: f16 d, 32 x i8. x = d * q.
    Q8_0,
    /// 32 values: f16 d, 16 bytes of nibbles. x = d * (q - 8).
    Q4_0,
    /// 32 values: f16 d, f16 m, 16 bytes of nibbles. x = d * q + m.
    Q4_1,
    /// 256 values in 8 sub-blocks of 32 with 6-bit scales/mins: x = d * sc * q - dmin * mn.
    Q4K,
    /// Q4_K plus one high bit per value (5-bit q).
    Q5K,
    /// 256 values: 4 low + 2 high bits (q - 32), 16 signed 8-bit scales, f16 d.
    Q6K,
}

impl GgmlType {
    /// From the ggml type id (`enum ggml_type`); `None` for types not supported here.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            30 => Self::BF16,
            _ => return None,
        })
    }
    /// The ggml type id.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q4_1 => 3,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
            Self::Q5K => 13,
            Self::Q6K => 14,
            Self::BF16 => 30,
        }
    }
    /// Values per block.
    pub fn block_elems(self) -> usize {
        match self {
            Self::F32 | Self::F16 | Self::BF16 => 1,
            Self::Q8_0 | Self::Q4_0 | Self::Q4_1 => 32,
            Self::Q4K | Self::Q5K | Self::Q6K => 256,
        }
    }
    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::Q8_0 => 34,
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q4K => 144,
            Self::Q5K => 176,
            Self::Q6K => 210,
        }
    }
}

#[inline]
fn h(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// ggml `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) from 12 bytes.
#[inline]
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Decode one block `b` (exactly `block_bytes()` long) into `y` (`block_elems()` long).
fn dequant_block(ty: GgmlType, b: &[u8], y: &mut [f32]) {
    match ty {
        GgmlType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => y[0] = h(b, 0),
        GgmlType::BF16 => y[0] = bf16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32(),
        GgmlType::Q8_0 => {
            let d = h(b, 0);
            for (yi, &q) in y.iter_mut().zip(&b[2..34]) {
                *yi = d * (q as i8) as f32;
            }
        }
        GgmlType::Q4_0 => {
            let d = h(b, 0);
            let qs = &b[2..18];
            for j in 0..16 {
                y[j] = ((qs[j] & 0xF) as i32 - 8) as f32 * d;
                y[j + 16] = ((qs[j] >> 4) as i32 - 8) as f32 * d;
            }
        }
        GgmlType::Q4_1 => {
            let (d, m) = (h(b, 0), h(b, 2));
            let qs = &b[4..20];
            for j in 0..16 {
                y[j] = (qs[j] & 0xF) as f32 * d + m;
                y[j + 16] = (qs[j] >> 4) as f32 * d + m;
            }
        }
        GgmlType::Q4K => {
            let (d, dmin) = (h(b, 0), h(b, 2));
            let scales = &b[4..16];
            let qs = &b[16..144];
            for c in 0..4 {
                let (s1, m1) = scale_min_k4(2 * c, scales);
                let (s2, m2) = scale_min_k4(2 * c + 1, scales);
                let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
                let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
                let q = &qs[32 * c..32 * c + 32];
                for l in 0..32 {
                    y[64 * c + l] = d1 * (q[l] & 0xF) as f32 - m1;
                    y[64 * c + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
                }
            }
        }
        GgmlType::Q5K => {
            let (d, dmin) = (h(b, 0), h(b, 2));
            let scales = &b[4..16];
            let qh = &b[16..48];
            let qs = &b[48..176];
            for c in 0..4 {
                let (s1, m1) = scale_min_k4(2 * c, scales);
                let (s2, m2) = scale_min_k4(2 * c + 1, scales);
                let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
                let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
                let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
                let q = &qs[32 * c..32 * c + 32];
                for l in 0..32 {
                    let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
                    let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
                    y[64 * c + l] = d1 * ((q[l] & 0xF) + hi1) as f32 - m1;
                    y[64 * c + 32 + l] = d2 * ((q[l] >> 4) + hi2) as f32 - m2;
                }
            }
        }
        GgmlType::Q6K => {
            let d = h(b, 208);
            for n in 0..2 {
                let ql = &b[64 * n..64 * n + 64];
                let qh = &b[128 + 32 * n..128 + 32 * n + 32];
                let sc = &b[192 + 8 * n..192 + 8 * n + 8];
                let yo = &mut y[128 * n..128 * n + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    yo[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    yo[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    yo[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    yo[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }
    }
}

/// Dequantize `n` values of type `ty` from `bytes` (whole blocks) into f32, in parallel.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>> {
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    if n % be != 0 || bytes.len() != n / be * bb {
        return Err(Error::Config(format!(
            "{ty:?}: {} bytes do not hold {n} values ({bb} bytes per {be})",
            bytes.len()
        )));
    }
    let mut out = vec![0f32; n];
    // Chunks of 64 blocks keep per-task overhead small for the 1-element types.
    let per = 64;
    out.par_chunks_mut(be * per)
        .zip(bytes.par_chunks(bb * per))
        .for_each(|(y, b)| {
            for (yb, bb_) in y.chunks_mut(be).zip(b.chunks(bb)) {
                dequant_block(ty, bb_, yb);
            }
        });
    Ok(out)
}

/// Value `i` of one block, decoded independently of [`dequantize`] from the layout: the scalar
/// reference the property tests compare the fast path with.
pub fn reference_element(ty: GgmlType, b: &[u8], i: usize) -> f32 {
    let half_at = |at: usize| f16::from_bits(b[at] as u16 | (b[at + 1] as u16) << 8).to_f32();
    let nib = |byte: u8, high: bool| if high { byte >> 4 } else { byte & 15 };
    match ty {
        GgmlType::F32 => f32::from_bits(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => half_at(0),
        GgmlType::BF16 => f32::from_bits(((b[1] as u32) << 24) | ((b[0] as u32) << 16)),
        GgmlType::Q8_0 => half_at(0) * (b[2 + i] as i8 as f32),
        GgmlType::Q4_0 => {
            let q = nib(b[2 + i % 16], i >= 16) as f32 - 8.0;
            q * half_at(0)
        }
        GgmlType::Q4_1 => nib(b[4 + i % 16], i >= 16) as f32 * half_at(0) + half_at(2),
        GgmlType::Q4K | GgmlType::Q5K => {
            // sub-block s = i / 32 of 8; sub-blocks 2c and 2c+1 share the 32 bytes of chunk c
            // (low and high nibbles).
            let s = i / 32;
            let (c, l, high) = (s / 2, i % 32, s % 2 == 1);
            let sc = &b[4..16];
            let (scale, min) = if s < 4 {
                (sc[s] & 0x3F, sc[s + 4] & 0x3F)
            } else {
                (
                    (sc[s + 4] & 0x0F) | ((sc[s - 4] & 0xC0) >> 2),
                    (sc[s + 4] >> 4) | ((sc[s] & 0xC0) >> 2),
                )
            };
            let qs0 = if ty == GgmlType::Q4K { 16 } else { 48 };
            let mut q = nib(b[qs0 + 32 * c + l], high) as u32;
            if ty == GgmlType::Q5K {
                // bit s of qh[l] is the fifth bit of the value in sub-block s.
                q += (((b[16 + l] >> s) & 1) as u32) << 4;
            }
            half_at(0) * scale as f32 * q as f32 - half_at(2) * min as f32
        }
        GgmlType::Q6K => {
            // Halves of 128; inside a half, quarter k of 32 values: low nibble of ql (k 0/1)
            // or high (k 2/3) at l + 32 * (k % 2), 2 high bits at shift 2k of qh[l].
            let (n, r) = (i / 128, i % 128);
            let (k, l) = (r / 32, r % 32);
            let lo = nib(b[64 * n + l + 32 * (k % 2)], k >= 2) as i32;
            let hi = ((b[128 + 32 * n + l] >> (2 * k)) & 3) as i32;
            let scale = b[192 + 8 * n + l / 16 + 2 * k] as i8 as f32;
            half_at(208) * scale * ((lo | (hi << 4)) - 32) as f32
        }
    }
}
