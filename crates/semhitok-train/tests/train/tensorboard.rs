//! TensorBoard event files: an independent reader (bitwise CRC32C, a minimal protobuf decoder)
//! checks the framing and both checksums of every record and decodes the events the trainer's
//! writer produced; CRC32C against published check values.

use semhitok_train::trainer::{crc32c, masked_crc32c, TbWriter};
use std::path::Path;

/// CRC32C bit by bit (the writer's is table-driven).
fn crc32c_bitwise(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= b as u32;
        for _ in 0..8 {
            let mask = (c & 1).wrapping_neg();
            c = (c >> 1) ^ (0x82F6_3B78 & mask);
        }
    }
    !c
}

fn masked(data: &[u8]) -> u32 {
    let c = crc32c_bitwise(data);
    c.rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// One summary value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Simple(f32),
    Image {
        height: u32,
        width: u32,
        png: Vec<u8>,
    },
}

/// The fields of an `Event` this project writes.
#[derive(Debug, Default)]
pub struct Event {
    pub wall_time: f64,
    pub step: i64,
    pub file_version: Option<String>,
    pub values: Vec<(String, Value)>,
    pub session_start: bool,
}

fn varint(b: &[u8], at: &mut usize) -> u64 {
    let (mut v, mut shift) = (0u64, 0);
    loop {
        let byte = b[*at];
        *at += 1;
        v |= ((byte & 0x7F) as u64) << shift;
        if byte & 0x80 == 0 {
            return v;
        }
        shift += 7;
        assert!(shift < 64, "varint too long");
    }
}

/// (field, wire type, payload) of every field of a message; varints as 8 LE bytes.
fn fields(b: &[u8]) -> Vec<(u64, u64, Vec<u8>)> {
    let mut out = vec![];
    let mut at = 0;
    while at < b.len() {
        let k = varint(b, &mut at);
        let (field, wire) = (k >> 3, k & 7);
        let payload = match wire {
            0 => varint(b, &mut at).to_le_bytes().to_vec(),
            1 => {
                at += 8;
                b[at - 8..at].to_vec()
            }
            2 => {
                let n = varint(b, &mut at) as usize;
                at += n;
                b[at - n..at].to_vec()
            }
            5 => {
                at += 4;
                b[at - 4..at].to_vec()
            }
            w => panic!("wire type {w}"),
        };
        out.push((field, wire, payload));
    }
    out
}

fn u64_of(p: &[u8]) -> u64 {
    u64::from_le_bytes(p.try_into().unwrap())
}

fn value(b: &[u8]) -> (String, Value) {
    let mut tag = String::new();
    let mut v = None;
    for (f, _, p) in fields(b) {
        match f {
            1 => tag = String::from_utf8(p).unwrap(),
            2 => v = Some(Value::Simple(f32::from_le_bytes(p.try_into().unwrap()))),
            4 => {
                let (mut height, mut width, mut png, mut cs) = (0, 0, vec![], 0);
                for (f, _, p) in fields(&p) {
                    match f {
                        1 => height = u64_of(&p) as u32,
                        2 => width = u64_of(&p) as u32,
                        3 => cs = u64_of(&p),
                        4 => png = p,
                        _ => {}
                    }
                }
                assert_eq!(cs, 3, "colorspace RGB");
                v = Some(Value::Image { height, width, png });
            }
            _ => {}
        }
    }
    (tag, v.expect("a value"))
}

/// Every event of an event file; panics on a bad length CRC, data CRC or a cut record.
pub fn read_events(path: &Path) -> Vec<Event> {
    let b = std::fs::read(path).unwrap();
    let mut at = 0;
    let mut out = vec![];
    while at < b.len() {
        assert!(b.len() - at >= 12, "cut record header at {at}");
        let len_bytes = &b[at..at + 8];
        let n = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
        let crc_len = u32::from_le_bytes(b[at + 8..at + 12].try_into().unwrap());
        assert_eq!(
            crc_len,
            masked(len_bytes),
            "length CRC of the record at {at}"
        );
        let data = &b[at + 12..at + 12 + n];
        let crc = u32::from_le_bytes(b[at + 12 + n..at + 16 + n].try_into().unwrap());
        assert_eq!(crc, masked(data), "data CRC of the record at {at}");
        at += 16 + n;
        let mut e = Event::default();
        for (f, _, p) in fields(data) {
            match f {
                1 => e.wall_time = f64::from_le_bytes(p.try_into().unwrap()),
                2 => e.step = u64_of(&p) as i64,
                3 => e.file_version = Some(String::from_utf8(p).unwrap()),
                5 => {
                    for (f, _, v) in fields(&p) {
                        assert_eq!(f, 1, "Summary.value");
                        e.values.push(value(&v));
                    }
                }
                7 => e.session_start = fields(&p).iter().any(|(f, _, v)| *f == 1 && u64_of(v) == 1),
                f => panic!("unexpected Event field {f}"),
            }
        }
        out.push(e);
    }
    out
}

#[test]
fn crc32c_matches_check_values() {
    // The CRC-32C check value (RFC 3720 B.4 / the CRC catalogue) and iSCSI test vectors.
    assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
    assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
    let inc: Vec<u8> = (0..32).collect();
    assert_eq!(crc32c(&inc), 0x46DD_794E);
    for n in [0usize, 1, 7, 300] {
        let d: Vec<u8> = (0..n).map(|i| (i * 31 + 7) as u8).collect();
        assert_eq!(crc32c(&d), crc32c_bitwise(&d));
        assert_eq!(masked_crc32c(&d), masked(&d));
    }
}

#[test]
fn event_file_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tb");
    let mut w = TbWriter::create(&dir, None).unwrap();
    w.scalars(3, &[("train/loss".into(), 0.25), ("train/lr".into(), 1e-4)])
        .unwrap();
    let img = image::RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7]));
    let mut png = vec![];
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    w.image(7, "val/reconstructions", &png, 3, 5).unwrap();
    w.flush().unwrap();
    let path = w.path().to_path_buf();
    drop(w);
    let ev = read_events(&path);
    assert_eq!(ev.len(), 3);
    assert_eq!(ev[0].file_version.as_deref(), Some("brain.Event:2"));
    assert!(ev[0].wall_time > 1.6e9);
    assert_eq!(ev[1].step, 3);
    assert_eq!(
        ev[1].values,
        vec![
            ("train/loss".to_string(), Value::Simple(0.25)),
            ("train/lr".to_string(), Value::Simple(1e-4)),
        ]
    );
    assert_eq!(ev[2].step, 7);
    assert_eq!(
        ev[2].values,
        vec![(
            "val/reconstructions".to_string(),
            Value::Image {
                height: 3,
                width: 5,
                png: png.clone()
            }
        )]
    );
    // A second writer of the same second gets its own file; a resumed one starts a session.
    let w2 = TbWriter::create(&dir, Some(40)).unwrap();
    assert_ne!(w2.path(), path.as_path());
    let ev = read_events(w2.path());
    assert_eq!(ev.len(), 2);
    assert!(ev[1].session_start && ev[1].step == 40);
}
