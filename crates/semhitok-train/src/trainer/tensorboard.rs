//! TensorBoard event files, written directly (no protobuf dependency): `RUN/tb/
//! events.out.tfevents.<unix time>.<host>.<pid>`, one per `train` call, read by `tensorboard
//! --logdir runs/`.
//!
//! Format (TensorFlow's `core/util/event.proto`, `summary.proto`, and the TFRecord framing of
//! `core/lib/io/record_writer.cc`): each record is `u64 length (LE) | u32 masked CRC32C of the
//! length bytes | data | u32 masked CRC32C of the data`, masked as
//! `((crc >> 15) | (crc << 17)) + 0xa282ead8`. Each record's data is one `Event` protobuf: `wall_time` (1, double), `step`
//! (2, int64), then `file_version` (3, string; the first event: `"brain.Event:2"`), `summary`
//! (5) or `session_log` (7). A `Summary` holds repeated `value` (1): `tag` (1) with
//! `simple_value` (2, float) or `image` (4: `height` 1, `width` 2, `colorspace` 3,
//! `encoded_image_string` 4, PNG bytes). A resumed run starts its file with a `SessionLog`
//! `START` (status 1) at the first step it runs (the checkpoint's step + 1), TensorBoard's cue
//! to drop the events the interrupted run logged at and after that step.
//!
//! The writer buffers records and flushes after each group ([`TbWriter::flush`]), so an event
//! file is always a sequence of complete records up to the last flush.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let t = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0x82F6_3B78 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| {
        t[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8)
    })
}

/// TFRecord's masked CRC32C.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xA282_EAD8)
}

/// The TFRecord framing of one record.
pub fn tfrecord(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

// --- protobuf encoding of the few fields we write ------------------------------------------

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, ((field as u64) << 3) | wire as u64);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    key(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn int_field(out: &mut Vec<u8>, field: u32, v: i64) {
    key(out, field, 0);
    varint(out, v as u64);
}

/// An `Event` with `wall_time`, `step` and one more (length-delimited) field.
fn event(wall_time: f64, step: i64, field: u32, payload: &[u8]) -> Vec<u8> {
    let mut e = Vec::with_capacity(payload.len() + 24);
    key(&mut e, 1, 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    int_field(&mut e, 2, step);
    bytes_field(&mut e, field, payload);
    e
}

/// A `Summary.Value` with a `simple_value`.
fn scalar_value(tag: &str, v: f32) -> Vec<u8> {
    let mut val = Vec::with_capacity(tag.len() + 8);
    bytes_field(&mut val, 1, tag.as_bytes());
    key(&mut val, 2, 5);
    val.extend_from_slice(&v.to_le_bytes());
    val
}

/// A `Summary.Value` with an `image` (PNG, RGB).
fn image_value(tag: &str, png: &[u8], height: u32, width: u32) -> Vec<u8> {
    let mut img = Vec::with_capacity(png.len() + 16);
    int_field(&mut img, 1, height as i64);
    int_field(&mut img, 2, width as i64);
    int_field(&mut img, 3, 3); // colorspace: RGB
    bytes_field(&mut img, 4, png);
    let mut val = Vec::with_capacity(img.len() + tag.len() + 8);
    bytes_field(&mut val, 1, tag.as_bytes());
    bytes_field(&mut val, 4, &img);
    val
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is writable for its whole length; gethostname NUL-terminates within it
    // (or truncates, and the last byte is set to 0 below).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len() - 1) };
    buf[255] = 0;
    let name = if rc == 0 {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(0);
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        String::new()
    };
    // A file name: no separators.
    let name: String = name
        .chars()
        .map(|c| {
            if c == '/' || c.is_whitespace() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

/// One event file of a run.
#[derive(Debug)]
pub struct TbWriter {
    path: PathBuf,
    file: std::io::BufWriter<std::fs::File>,
}

impl TbWriter {
    /// A new event file in `dir` (created), starting with the file-version event, and for a
    /// resumed run a `SessionLog START` at `resumed_at`, the first step it runs.
    pub fn create(dir: &Path, resumed_at: Option<u64>) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let t = now();
        let base = format!(
            "events.out.tfevents.{}.{}.{}",
            t as u64,
            hostname(),
            std::process::id()
        );
        // Two writers of one process in the same second (tests) get distinct files.
        let mut path = dir.join(&base);
        let mut i = 1;
        while path.exists() {
            path = dir.join(format!("{base}.{i}"));
            i += 1;
        }
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        let mut w = Self {
            path,
            file: std::io::BufWriter::new(file),
        };
        w.record(&event(t, 0, 3, b"brain.Event:2"))?;
        if let Some(step) = resumed_at {
            let mut log = Vec::new();
            int_field(&mut log, 1, 1); // SessionLog.status = START
            w.record(&event(t, step as i64, 7, &log))?;
        }
        w.flush()?;
        Ok(w)
    }

    /// The event file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let path = &self.path;
        self.file
            .write_all(&tfrecord(data))
            .map_err(|e| Error::io(path, e))
    }

    /// Scalars at `step`, one event holding all of them (non-finite values are written too:
    /// TensorBoard shows them as such).
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let mut summary = Vec::new();
        for (tag, v) in values {
            bytes_field(&mut summary, 1, &scalar_value(tag, *v as f32));
        }
        self.record(&event(now(), step as i64, 5, &summary))
    }

    /// An RGB PNG image (`height` x `width`) at `step`.
    pub fn image(
        &mut self,
        step: u64,
        tag: &str,
        png: &[u8],
        height: u32,
        width: u32,
    ) -> Result<()> {
        let mut summary = Vec::new();
        bytes_field(&mut summary, 1, &image_value(tag, png, height, width));
        self.record(&event(now(), step as i64, 5, &summary))
    }

    /// Everything written so far on disk.
    pub fn flush(&mut self) -> Result<()> {
        let path = &self.path;
        self.file.flush().map_err(|e| Error::io(path, e))
    }
}
