//! Input validation shared by the modules: contiguous views, finiteness, id ranges.

use crate::error::{Error, Result};
use ndarray::{ArrayView2, CowArray, Ix2};

/// `x` in C order (borrowed when it already is, copied otherwise).
pub(crate) fn standard2<'a>(x: ArrayView2<'a, f32>) -> CowArray<'a, f32, Ix2> {
    if x.is_standard_layout() {
        CowArray::from(x)
    } else {
        CowArray::from(x.as_standard_layout().into_owned())
    }
}

/// The contiguous slice of a C-order array (always present after [`standard2`]).
pub(crate) fn slice<'a>(x: &'a CowArray<'_, f32, Ix2>) -> &'a [f32] {
    x.as_slice()
        .expect("as_standard_layout always yields a contiguous array")
}

/// Error naming the first NaN/inf in a row-major `[rows, cols]` buffer.
pub(crate) fn finite(data: &[f32], cols: usize, what: &str) -> Result<()> {
    // Branch-free per chunk (exponent bits all ones = NaN/inf) so the scan vectorizes.
    let all_finite = data.chunks(256).all(|c| {
        c.iter().fold(0u32, |acc, v| {
            acc | u32::from(v.to_bits() & 0x7f80_0000 == 0x7f80_0000)
        }) == 0
    });
    if all_finite {
        return Ok(());
    }
    let pos = data.iter().position(|v| !v.is_finite()).unwrap_or(0);
    let (row, col) = (
        pos.checked_div(cols).unwrap_or(0),
        pos.checked_rem(cols).unwrap_or(0),
    );
    Err(Error::NonFinite {
        what: what.to_string(),
        value: data[pos],
        location: format!("[{row}, {col}]"),
    })
}

/// Error naming the first id `>= bound`.
pub(crate) fn ids_below(ids: &[u32], bound: usize, what: &str) -> Result<()> {
    match ids.iter().position(|&i| i as usize >= bound) {
        None => Ok(()),
        Some(p) => Err(Error::IdOutOfRange {
            what: format!("{what}[{p}]"),
            id: u64::from(ids[p]),
            bound: bound as u64,
        }),
    }
}

/// Error unless `got == expected` (named).
pub(crate) fn len_eq(what: &str, got: usize, expected: usize, expected_desc: &str) -> Result<()> {
    if got == expected {
        Ok(())
    } else {
        Err(Error::Shape {
            what: what.to_string(),
            expected: format!("[{expected}] ({expected_desc})"),
            got: vec![got],
        })
    }
}

/// `x / max(|x|, 1e-12)` in place (the `F.normalize` convention), returning `|x|`.
pub(crate) fn l2_normalize(x: &mut [f32]) -> f32 {
    let n = norm(x);
    let inv = 1.0 / n.max(1e-12);
    x.iter_mut().for_each(|v| *v *= inv);
    n
}

/// Euclidean norm, accumulated in f64 so it is exact enough for tests and never overflows for finite input.
pub(crate) fn norm(x: &[f32]) -> f32 {
    x.iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt() as f32
}

/// `sum(x^2)` with eight lane-wise partial sums (vectorizes without reassociating).
#[inline]
pub(crate) fn sq_norm(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            acc[l] += c[l] * c[l];
        }
    }
    let tail: f32 = chunks.remainder().iter().map(|v| v * v).sum();
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}
