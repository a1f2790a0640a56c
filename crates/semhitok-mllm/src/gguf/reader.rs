//! GGUF v2/v3 container: header, metadata key/values, tensor infos, aligned data section.
//!
//! Layout (ggml `docs/gguf.md`, little endian): `"GGUF"`, u32 version, u64 tensor count,
//! u64 metadata count; metadata as (string key, u32 type, value); tensor infos as (string name,
//! u32 n_dims, u64 dims innermost-first, u32 ggml type, u64 offset into the data section); the
//! data section starts at the next multiple of `general.alignment` (default 32).
//! Every length and offset is checked against the file size, so a truncated or corrupt file is
//! an error naming the field, never a panic or a huge allocation.

use super::dequant::GgmlType;
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any integer type as u64 (negative: None).
    pub fn as_u64(&self) -> Option<u64> {
        Some(match *self {
            Value::U8(x) => x as u64,
            Value::U16(x) => x as u64,
            Value::U32(x) => x as u64,
            Value::U64(x) => x,
            Value::I8(x) if x >= 0 => x as u64,
            Value::I16(x) if x >= 0 => x as u64,
            Value::I32(x) if x >= 0 => x as u64,
            Value::I64(x) if x >= 0 => x as u64,
            _ => return None,
        })
    }
    /// Any integer as i64.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            Value::I8(x) => x as i64,
            Value::I16(x) => x as i64,
            Value::I32(x) => x as i64,
            Value::I64(x) => x,
            _ => return self.as_u64().and_then(|x| i64::try_from(x).ok()),
        })
    }
    /// Any number as f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(x) => Some(x as f64),
            Value::F64(x) => Some(x),
            _ => self.as_i64().map(|x| x as f64),
        }
    }
    /// A string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    /// A bool value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    /// An array value.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's entry.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// GGUF name (`blk.3.attn_q.weight`).
    pub name: String,
    /// Dims as stored: innermost (contiguous) first.
    pub dims: Vec<u64>,
    /// Element / block type.
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
    /// Row-major (PyTorch) shape: the dims reversed.
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }
}

/// A parsed GGUF file held in memory.
#[derive(Debug)]
pub struct GgufFile {
    /// Path for messages.
    pub path: String,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata in file order of keys (sorted map).
    pub metadata: BTreeMap<String, Value>,
    /// Tensor infos in file order.
    pub tensors: Vec<TensorInfo>,
    data: Vec<u8>,
    data_start: usize,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a str,
}

impl<'a> Cursor<'a> {
    fn err(&self, what: &str) -> Error {
        Error::Gguf {
            path: self.path.to_string(),
            msg: format!(
                "truncated or corrupt at byte {} while reading {what}",
                self.pos
            ),
        }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).ok_or_else(|| self.err(what))?;
        if end > self.buf.len() {
            return Err(self.err(what));
        }
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("length checked"))
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    /// A count that must fit in the rest of the file at `min_bytes` per item.
    fn count(&mut self, what: &str, min_bytes: usize) -> Result<usize> {
        let n = self.u64(what)?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_bytes.max(1) as u64) > left {
            return Err(Error::Gguf {
                path: self.path.to_string(),
                msg: format!("{what} = {n} does not fit in the {left} bytes left (truncated?)"),
            });
        }
        Ok(n as usize)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(what, 1)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| Error::Gguf {
            path: self.path.to_string(),
            msg: format!("{what} is not UTF-8"),
        })
    }
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.arr::<1>(key)?[0]),
            1 => Value::I8(self.arr::<1>(key)?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.arr(key)?)),
            3 => Value::I16(i16::from_le_bytes(self.arr(key)?)),
            4 => Value::U32(self.u32(key)?),
            5 => Value::I32(i32::from_le_bytes(self.arr(key)?)),
            6 => Value::F32(f32::from_le_bytes(self.arr(key)?)),
            7 => Value::Bool(self.arr::<1>(key)?[0] != 0),
            8 => Value::Str(self.string(key)?),
            9 if depth == 0 => {
                let ety = self.u32(key)?;
                let n = self.count(key, 1)?;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(ety, key, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64(key)?),
            11 => Value::I64(i64::from_le_bytes(self.arr(key)?)),
            12 => Value::F64(f64::from_le_bytes(self.arr(key)?)),
            other => {
                return Err(Error::Gguf {
                    path: self.path.to_string(),
                    msg: format!("metadata {key}: unknown value type {other}"),
                })
            }
        })
    }
}

impl GgufFile {
    /// Read and parse `path` (the whole file is read into memory).
    pub fn open(path: &Path) -> Result<Self> {
        let p = path.display().to_string();
        let data = std::fs::read(path).map_err(|e| Error::Gguf {
            path: p.clone(),
            msg: e.to_string(),
        })?;
        Self::parse(data, p)
    }

    /// Parse an in-memory file; `path` names it in errors.
    pub fn parse(data: Vec<u8>, path: String) -> Result<Self> {
        let mut c = Cursor {
            buf: &data,
            pos: 0,
            path: &path,
        };
        if c.take(4, "magic")? != b"GGUF" {
            return Err(Error::Gguf {
                path,
                msg: "not a GGUF file (magic is not \"GGUF\")".into(),
            });
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            return Err(Error::Gguf {
                path,
                msg: format!("GGUF version {version} is not supported (2, 3)"),
            });
        }
        let n_tensors = c.count("tensor count", 24)?;
        let n_kv = c.count("metadata count", 12)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let ty = c.u32(&key)?;
            let v = c.value(ty, &key, 0)?;
            metadata.insert(key, v);
        }
        let mut tensors = Vec::with_capacity(n_tensors);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let nd = c.u32(&name)?;
            if nd == 0 || nd > 4 {
                return Err(Error::Gguf {
                    path,
                    msg: format!("tensor {name}: {nd} dims (1..=4 supported)"),
                });
            }
            let mut dims = Vec::with_capacity(nd as usize);
            for _ in 0..nd {
                dims.push(c.u64(&name)?);
            }
            let ty_id = c.u32(&name)?;
            let ty = GgmlType::from_id(ty_id).ok_or_else(|| Error::Gguf {
                path: path.clone(),
                msg: format!("tensor {name}: unknown or unsupported ggml type {ty_id}"),
            })?;
            let offset = c.u64(&name)?;
            tensors.push(TensorInfo {
                name,
                dims,
                ty,
                offset,
            });
        }
        let align = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a as usize,
                _ => {
                    return Err(Error::Gguf {
                        path,
                        msg: format!("general.alignment = {v:?} is not a power of two"),
                    })
                }
            },
        };
        let data_start = c.pos.div_ceil(align) * align;
        let file = Self {
            path,
            version,
            metadata,
            tensors,
            data,
            data_start,
        };
        for t in &file.tensors {
            file.tensor_bytes(t)?;
        }
        Ok(file)
    }

    /// The raw bytes of tensor `t` (checked against the file size and the type's block size).
    pub fn tensor_bytes(&self, t: &TensorInfo) -> Result<&[u8]> {
        let n = t.n_elements();
        let bs = t.ty.block_elems() as u64;
        let inner = t.dims[0];
        if inner % bs != 0 {
            return Err(Error::Gguf {
                path: self.path.clone(),
                msg: format!(
                    "tensor {}: row length {inner} is not a multiple of the {:?} block of {bs}",
                    t.name, t.ty
                ),
            });
        }
        let size = (n / bs)
            .checked_mul(t.ty.block_bytes() as u64)
            .ok_or_else(|| self.trunc(t))?;
        let start = (self.data_start as u64)
            .checked_add(t.offset)
            .ok_or_else(|| self.trunc(t))?;
        let end = start.checked_add(size).ok_or_else(|| self.trunc(t))?;
        if end > self.data.len() as u64 {
            return Err(self.trunc(t));
        }
        Ok(&self.data[start as usize..end as usize])
    }

    fn trunc(&self, t: &TensorInfo) -> Error {
        Error::Gguf {
            path: self.path.clone(),
            msg: format!(
                "tensor {} ({:?}, dims {:?}, offset {}) runs past the end of the file ({} bytes): truncated?",
                t.name,
                t.ty,
                t.dims,
                t.offset,
                self.data.len()
            ),
        }
    }

    /// Metadata value `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// Required metadata value, or an error naming the key.
    pub fn require(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| Error::Gguf {
            path: self.path.clone(),
            msg: format!("metadata key {key} is missing"),
        })
    }

    /// Tensor info by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}
