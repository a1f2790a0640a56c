//! Codebook I/O in safetensors, with name, shape and dtype checks.
//!
//! Suggested names: `semantic_codebook` `[K_sem, D_sem]` and `pixel_codebook` `[K_sem, m, D_pix]`
//! (the tch side stores its own state-dict keys; any name works here).

use crate::check::finite;
use crate::error::{Error, Result};
use ndarray::{Array2, Array3, ArrayD, ArrayViewD, IxDyn};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::path::Path;

/// Writes f32 tensors `(name, array)` to `path` (arrays in any layout; stored C-order, little-endian).
pub fn save(path: &Path, tensors: &[(&str, ArrayViewD<'_, f32>)]) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, a)| {
            let data = a
                .as_standard_layout()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (name.to_string(), a.shape().to_vec(), data)
        })
        .collect();
    let st_err = |source| Error::SafeTensors {
        path: path.to_path_buf(),
        source,
    };
    let views = bytes
        .iter()
        .map(|(n, shape, data)| {
            Ok((
                n.clone(),
                TensorView::new(Dtype::F32, shape.clone(), data).map_err(st_err)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize_to_file(views, &None, path).map_err(st_err)
}

/// Reads the f32 tensor `name` from `path`; `expected[i] = Some(n)` pins dimension i.
/// Errors name the file, the tensor, and the mismatching shape, dtype or non-finite value.
pub fn load(path: &Path, name: &str, expected: &[Option<usize>]) -> Result<ArrayD<f32>> {
    let buf = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let st = SafeTensors::deserialize(&buf).map_err(|source| Error::SafeTensors {
        path: path.to_path_buf(),
        source,
    })?;
    let view = st.tensor(name).map_err(|_| {
        let mut available: Vec<String> = st.names().into_iter().cloned().collect();
        available.sort();
        Error::MissingTensor {
            path: path.to_path_buf(),
            name: name.to_string(),
            available,
        }
    })?;
    if view.dtype() != Dtype::F32 {
        return Err(Error::Dtype {
            path: path.to_path_buf(),
            name: name.to_string(),
            dtype: format!("{:?}", view.dtype()),
        });
    }
    let shape = view.shape().to_vec();
    let ok = shape.len() == expected.len()
        && shape
            .iter()
            .zip(expected)
            .all(|(&s, e)| e.is_none_or(|e| e == s));
    if !ok {
        let exp: Vec<String> = expected
            .iter()
            .map(|e| e.map_or("_".to_string(), |v| v.to_string()))
            .collect();
        return Err(Error::Shape {
            what: format!("{}: tensor {name:?}", path.display()),
            expected: format!("[{}]", exp.join(", ")),
            got: shape,
        });
    }
    let data: Vec<f32> = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let cols = shape.last().copied().unwrap_or(1);
    finite(&data, cols, &format!("{}: tensor {name:?}", path.display()))?;
    ArrayD::from_shape_vec(IxDyn(&shape), data).map_err(|e| Error::Shape {
        what: format!("{}: tensor {name:?} ({e})", path.display()),
        expected: "data length matching the shape".into(),
        got: shape.clone(),
    })
}

/// A flat codebook `[K, D]`; `k`/`d` pin the sizes when given.
pub fn load_codebook(
    path: &Path,
    name: &str,
    k: Option<usize>,
    d: Option<usize>,
) -> Result<Array2<f32>> {
    let a = load(path, name, &[k, d])?;
    Ok(a.into_dimensionality().expect("rank checked by load"))
}

/// A pixel codebook `[K_sem, m, D_pix]`; each size is pinned when given.
pub fn load_pixel_codebook(
    path: &Path,
    name: &str,
    k_sem: Option<usize>,
    m: Option<usize>,
    d: Option<usize>,
) -> Result<Array3<f32>> {
    let a = load(path, name, &[k_sem, m, d])?;
    Ok(a.into_dimensionality().expect("rank checked by load"))
}
