//! NumPy `.npy` arrays and `.npz` archives (a zip of `KEY.npy` members, stored or deflated), as
//! far as FID reference statistics need them: float arrays (`<f8`, `<f4`, `>f8`, `>f4`)
//! of any shape, C or Fortran order, read into f64; written as C-order `<f8`, uncompressed, as
//! `numpy.savez` writes them. Format: numpy's `lib/format.py` (versions 1.0, 2.0 and 3.0 of the
//! header). Every error names the file and the key.

use crate::error::{Error, Result};
use std::io::{Read, Write};
use std::path::Path;

/// One array: its shape and its values in C (row-major) order.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

fn bad(path: &Path, key: &str, msg: impl std::fmt::Display) -> Error {
    Error::Input(format!("{}: key `{key}`: {msg}", path.display()))
}

/// The value of `name` in a numpy header dict (`{'descr': '<f8', 'fortran_order': False, 'shape': (3, 4), }`).
fn header_field<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    let at = header.find(&format!("'{name}'"))? + name.len() + 2;
    let rest = header[at..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else if let Some(q) = rest.strip_prefix('\'') {
        q.find('\'')? + 2
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    Some(rest[..end].trim())
}

/// Parse one `.npy` file's bytes (`path` and `key` only name it in errors).
pub fn parse_npy(bytes: &[u8], path: &Path, key: &str) -> Result<NpyArray> {
    let err = |m: String| bad(path, key, m);
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(err("not a .npy array (no \\x93NUMPY magic)".into()));
    }
    let (hlen, hstart) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => return Err(err(format!("unsupported .npy format version {v}"))),
    };
    let header = bytes
        .get(hstart..hstart + hlen)
        .ok_or_else(|| err(format!("header of {hlen} bytes cut short")))?;
    let header = std::str::from_utf8(header).map_err(|e| err(format!("header: {e}")))?;
    let descr = header_field(header, "descr")
        .ok_or_else(|| err(format!("header without 'descr': {header}")))?
        .trim_matches('\'');
    let fortran = match header_field(header, "fortran_order") {
        Some("True") => true,
        Some("False") => false,
        other => return Err(err(format!("header 'fortran_order' is {other:?}"))),
    };
    let shape_s = header_field(header, "shape")
        .ok_or_else(|| err(format!("header without 'shape': {header}")))?;
    let shape: Vec<usize> = shape_s
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| err(format!("shape {shape_s}: {e}")))?;
    let n: usize = shape.iter().product();
    let (width, little) = match descr {
        "<f8" => (8, true),
        ">f8" => (8, false),
        "<f4" => (4, true),
        ">f4" => (4, false),
        d => {
            return Err(err(format!(
                "dtype {d} is not a float array (<f8, <f4, >f8, >f4)"
            )))
        }
    };
    let body = &bytes[hstart + hlen..];
    if body.len() != n * width {
        return Err(err(format!(
            "shape {shape:?} of {descr} needs {} data bytes, the file has {}",
            n * width,
            body.len()
        )));
    }
    let mut data: Vec<f64> = body
        .chunks_exact(width)
        .map(|c| match (width, little) {
            (8, true) => f64::from_le_bytes(c.try_into().unwrap_or([0; 8])),
            (8, false) => f64::from_be_bytes(c.try_into().unwrap_or([0; 8])),
            (_, true) => f32::from_le_bytes(c.try_into().unwrap_or([0; 4])) as f64,
            (_, false) => f32::from_be_bytes(c.try_into().unwrap_or([0; 4])) as f64,
        })
        .collect();
    if fortran && shape.len() > 1 {
        data = fortran_to_c(&data, &shape);
    }
    Ok(NpyArray { shape, data })
}

/// Reorder column-major values of `shape` into row-major order.
fn fortran_to_c(data: &[f64], shape: &[usize]) -> Vec<f64> {
    let n = data.len();
    let mut out = vec![0.0; n];
    let mut idx = vec![0usize; shape.len()];
    for (c_pos, o) in out.iter_mut().enumerate() {
        // the multi-index of C position c_pos
        let mut rem = c_pos;
        for d in (0..shape.len()).rev() {
            idx[d] = rem % shape[d];
            rem /= shape[d];
        }
        let mut f_pos = 0;
        for d in (0..shape.len()).rev() {
            f_pos = f_pos * shape[d] + idx[d];
        }
        *o = data[f_pos];
    }
    out
}

/// The `.npy` bytes of a C-order `<f8` array (format version 1.0, header padded to 64 bytes).
pub fn npy_bytes(shape: &[usize], data: &[f64]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_s = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape_s}, }}");
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + data.len() * 8);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Read the arrays `keys` of the `.npz` file `path` (an error names the file and a missing key,
/// listing the keys the archive has).
pub fn read_npz(path: &Path, keys: &[&str]) -> Result<Vec<NpyArray>> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(f)).map_err(|e| {
        Error::Input(format!(
            "{}: not an .npz (zip) archive: {e}",
            path.display()
        ))
    })?;
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    keys.iter()
        .map(|key| {
            let member = format!("{key}.npy");
            let mut entry = zip.by_name(&member).map_err(|_| {
                let have: Vec<&str> = names
                    .iter()
                    .map(|n| n.strip_suffix(".npy").unwrap_or(n))
                    .collect();
                bad(path, key, format!("not in the archive (it has {have:?})"))
            })?;
            let mut bytes = Vec::with_capacity(entry.size() as usize);
            entry
                .read_to_end(&mut bytes)
                .map_err(|e| bad(path, key, format!("member {member}: {e}")))?;
            parse_npy(&bytes, path, key)
        })
        .collect()
}

/// Write `arrays` (key, shape, C-order values) as an uncompressed `.npz` (what `numpy.savez`
/// writes), atomically.
pub fn write_npz(path: &Path, arrays: &[(&str, &[usize], &[f64])]) -> Result<()> {
    let zerr = |e: zip::result::ZipError| Error::Input(format!("{}: {e}", path.display()));
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts =
        zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (key, shape, data) in arrays {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(bad(
                path,
                key,
                format!("shape {shape:?} has {n} values, given {}", data.len()),
            ));
        }
        w.start_file(format!("{key}.npy"), opts).map_err(zerr)?;
        w.write_all(&npy_bytes(shape, data))
            .map_err(|e| Error::io(path, e))?;
    }
    let bytes = w.finish().map_err(zerr)?.into_inner();
    crate::atomic::write_atomic(path, &bytes)
}
