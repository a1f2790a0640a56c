//! The batch-stream interface: exactly once per epoch across world sizes 1, 2 and 3 (simulated
//! in one process), resume with the same and with a different world size, hostile shards, shard
//! patterns, packing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rand_chacha::ChaCha8Rng;
use semhitok_data::*;

use super::common::*;

/// Sample i: a 2x2 image; every 7th sample is undecodable.
struct Numbers(usize);

impl IndexedSource for Numbers {
    fn len(&self) -> usize {
        self.0
    }
    fn key(&self, i: usize) -> String {
        i.to_string()
    }
    fn output_size(&self) -> (u32, u32) {
        (2, 2)
    }
    fn get(&self, i: usize, _: &mut ChaCha8Rng) -> std::result::Result<Item, SkipReason> {
        if i % 7 == 6 {
            return Err(SkipReason::Corrupt("synthetic".into()));
        }
        Ok(Item {
            key: i.to_string(),
            image: image::Rgb8Image::new(2, 2, vec![(i % 256) as u8; 12]).unwrap(),
            label: Some(i as i64),
            caption: None,
        })
    }
}

const N: usize = 101;

fn good() -> Vec<String> {
    let mut v: Vec<String> = (0..N)
        .filter(|i| i % 7 != 6)
        .map(|i| i.to_string())
        .collect();
    v.sort();
    v
}

fn lc(rank: usize, world: usize, workers: usize) -> LoaderConfig {
    LoaderConfig {
        rank,
        world,
        workers,
        epochs: Some(2),
        drop_last: false,
        even_shards: false,
        ..LoaderConfig::train(4, 3)
    }
}

fn indexed(rank: usize, world: usize) -> Box<dyn BatchStream> {
    Box::new(Loader::new(Arc::new(Numbers(N)), lc(rank, world, 2)).unwrap())
}

/// Keys seen per epoch.
type Seen = BTreeMap<u64, Vec<String>>;

fn take(s: &mut dyn BatchStream, n: usize, seen: &mut Seen) {
    for _ in 0..n {
        let Some(b) = s.next_batch() else { return };
        seen.entry(b.epoch).or_default().extend(b.keys);
    }
}

fn drain(s: &mut dyn BatchStream, seen: &mut Seen) {
    take(s, usize::MAX, seen)
}

fn assert_exactly_once(seen: &Seen, want: &[String], what: &str) {
    for e in 0..2 {
        let mut got = seen.get(&e).cloned().unwrap_or_default();
        got.sort();
        assert_eq!(
            got, want,
            "{what}: epoch {e} holds every sample exactly once"
        );
    }
}

/// Runs `world` ranks for `steps[r]` batches each, merges their states through JSON, restores
/// `new_world` ranks from it and runs them to the end; returns what everyone saw.
fn change_world(
    make: &dyn Fn(usize, usize) -> Box<dyn BatchStream>,
    world: usize,
    steps: &[usize],
    new_world: usize,
) -> Seen {
    let mut seen = Seen::new();
    let mut states = Vec::new();
    for r in 0..world {
        let mut s = make(r, world);
        take(s.as_mut(), steps[r], &mut seen);
        states.push(s.state());
    }
    let merged = StreamState::merge(&states).unwrap();
    let merged: StreamState =
        serde_json::from_str(&serde_json::to_string(&merged).unwrap()).unwrap();
    for r in 0..new_world {
        let mut s = make(r, new_world);
        s.restore(&merged).unwrap();
        drain(s.as_mut(), &mut seen);
    }
    seen
}

#[test]
fn indexed_exactly_once_per_epoch_across_world_sizes() {
    for world in 1..=3 {
        let mut seen = Seen::new();
        for r in 0..world {
            drain(indexed(r, world).as_mut(), &mut seen);
        }
        assert_exactly_once(&seen, &good(), &format!("world {world}"));
    }
}

#[test]
fn indexed_world_size_change_rederives_positions() {
    // Uneven progress: in 2 -> 3, rank 1 has crossed into epoch 1 (12 batches of 4 > 50 samples)
    // while rank 0 is in the middle of epoch 0.
    for (world, steps, new_world) in [
        (2, vec![3, 14], 3),
        (3, vec![1, 4, 2], 2),
        (1, vec![5], 3),
        (3, vec![0, 0, 0], 1),
    ] {
        let seen = change_world(&indexed, world, &steps, new_world);
        assert_exactly_once(
            &seen,
            &good(),
            &format!("{world} -> {new_world} after {steps:?}"),
        );
    }
}

#[test]
fn indexed_state_of_one_rank_cannot_restore_another() {
    let mut a = indexed(0, 2);
    take(a.as_mut(), 2, &mut Seen::new());
    let st = a.state();
    let mut b = indexed(1, 2);
    let e = b.restore(&st).unwrap_err().to_string();
    assert!(e.contains("merge"), "{e}");
    let mut c = indexed(0, 3);
    assert!(
        c.restore(&st).is_err(),
        "an incomplete state cannot re-derive"
    );
}

fn wds(dir: &Path, workers: usize) -> impl Fn(usize, usize) -> Box<dyn BatchStream> + '_ {
    move |rank, world| {
        let shards = resolve_shards(&dir.to_string_lossy()).unwrap().paths;
        let cfg = WdsConfig {
            shuffle_buffer: 5,
            require_caption: false,
            ..WdsConfig::train(8)
        };
        Box::new(WdsLoader::new(shards, cfg, lc(rank, world, workers)).unwrap())
    }
}

#[test]
fn wds_exactly_once_per_epoch_across_world_sizes_and_layout_changes() {
    let dir = tempfile::tempdir().unwrap();
    let mut keys = clean_shards(dir.path(), 7, 9);
    keys.sort();
    for world in 1..=3 {
        let make = wds(dir.path(), 2);
        let mut seen = Seen::new();
        for r in 0..world {
            drain(make(r, world).as_mut(), &mut seen);
        }
        assert_exactly_once(&seen, &keys, &format!("world {world}"));
    }
    // Mid-shard and across an epoch boundary, also changing the worker count.
    let two = wds(dir.path(), 2);
    for (world, steps, new_world) in [(2, vec![3, 9], 3), (3, vec![2, 0, 5], 1), (1, vec![4], 2)] {
        let seen = change_world(&two, world, &steps, new_world);
        assert_exactly_once(
            &seen,
            &keys,
            &format!("{world} -> {new_world} after {steps:?}"),
        );
    }
    let mut seen = Seen::new();
    let mut a = two(0, 1);
    take(a.as_mut(), 5, &mut seen);
    let st = a.state();
    let mut b = wds(dir.path(), 3)(0, 1);
    b.restore(&st).unwrap();
    drain(b.as_mut(), &mut seen);
    assert_exactly_once(&seen, &keys, "2 workers -> 3 workers");
}

#[test]
fn wds_resume_mid_shard_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    clean_shards(dir.path(), 4, 11);
    let make = wds(dir.path(), 2);
    let full: Vec<Vec<String>> = {
        let mut s = make(0, 1);
        std::iter::from_fn(|| s.next_batch().map(|b| b.keys)).collect()
    };
    for stop in [1, 4, 9, full.len() - 1] {
        let mut a = make(0, 1);
        let mut got: Vec<Vec<String>> = (0..stop).map(|_| a.next_batch().unwrap().keys).collect();
        let st: StreamState =
            serde_json::from_str(&serde_json::to_string(&a.state()).unwrap()).unwrap();
        let mut b = make(0, 1);
        b.restore(&st).unwrap();
        got.extend(std::iter::from_fn(|| b.next_batch().map(|b| b.keys)));
        assert_eq!(got, full, "resume after {stop} batches");
    }
    let mut ix = indexed(0, 1);
    assert!(ix.restore(&make(0, 1).state()).is_err(), "kinds do not mix");
}

#[test]
fn hostile_shards_are_skipped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut keys = clean_shards(d, 2, 6);
    // A corrupt member (undecodable image) among good ones.
    let good_img = jpeg_bytes(&pattern(20, 16, 99), 80);
    write(
        &d.join("00002.tar"),
        &tar_of(&[
            ("bad.jpg".into(), b"not a jpeg at all".to_vec()),
            ("ok.jpg".into(), good_img.clone()),
        ]),
    );
    keys.push("ok".into());
    // An empty shard (0 bytes) and one with only end-of-archive blocks.
    write(&d.join("00003.tar"), b"");
    write(&d.join("00004.tar"), &[0u8; 1024]);
    // A shard cut in the middle of its second member.
    let cut = tar_of(&[
        ("c0.jpg".into(), good_img.clone()),
        ("c1.jpg".into(), good_img.clone()),
    ]);
    write(
        &d.join("00005.tar"),
        &cut[..512 + good_img.len().div_ceil(512) * 512 + 600],
    );
    keys.push("c0".into());
    // Unreadable: a directory under a shard name.
    std::fs::create_dir(d.join("00006.tar")).unwrap();
    keys.sort();
    let make = wds(d, 2);
    let mut seen = Seen::new();
    let mut s = make(0, 1);
    drain(s.as_mut(), &mut seen);
    assert_exactly_once(&seen, &keys, "hostile shards");
    let r = &s.skip_stats().reasons;
    assert_eq!(
        r.get("corrupt_image").copied().unwrap_or(0) + r.get("not_an_image").copied().unwrap_or(0),
        2,
        "{r:?}"
    );
    assert_eq!(
        r.get("empty_file"),
        Some(&4),
        "two empty shards, two epochs: {r:?}"
    );
    assert_eq!(r.get("broken_tar"), Some(&2), "{r:?}");
    assert_eq!(r.get("unreadable"), Some(&2), "{r:?}");
}

#[test]
fn shard_patterns_resolve_or_name_the_pattern() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    clean_shards(d, 3, 1);
    let ds = d.display();
    let brace = resolve_shards(&format!("{ds}/{{00000..00004}}.tar")).unwrap();
    assert_eq!((brace.paths.len(), brace.missing), (3, 2));
    let alt = resolve_shards(&format!("{ds}/{{00000,00002}}.tar")).unwrap();
    assert_eq!(alt.paths, vec![d.join("00000.tar"), d.join("00002.tar")]);
    assert_eq!(
        resolve_shards(&format!("{ds}/0000?.tar"))
            .unwrap()
            .paths
            .len(),
        3
    );
    assert_eq!(
        resolve_shards(&format!("{ds}/*1.tar")).unwrap().paths,
        vec![d.join("00001.tar")]
    );
    write(
        &d.join("list.txt"),
        b"# shards\n00002.tar\n\n00000.tar\nmissing.tar\n",
    );
    let l = resolve_shards(&d.join("list.txt").to_string_lossy()).unwrap();
    assert_eq!((l.paths.len(), l.missing), (2, 1));
    assert_eq!(resolve_shards(&ds.to_string()).unwrap().paths.len(), 3);
    for bad in [format!("{ds}/*.tgz"), format!("{ds}/{{7..9}}.tar")] {
        let e = resolve_shards(&bad).unwrap_err().to_string();
        assert!(e.contains(&bad), "{e}");
    }
    let e = resolve_shards(&format!("{ds}/nope"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
}

#[test]
fn pack_writes_shards_the_loader_reads_back() {
    let src = tempfile::tempdir().unwrap();
    for (c, class) in ["n01", "n02"].iter().enumerate() {
        for i in 0..4 {
            let p = src.path().join(class).join(format!("x{i}.JPEG"));
            write(&p, &jpeg_bytes(&pattern(30, 20, (c * 4 + i) as u32), 85));
            if i == 0 {
                write(
                    &p.with_extension("txt"),
                    format!("photo {class} {i}").as_bytes(),
                );
            }
        }
    }
    write(&src.path().join("n02/broken.jpg"), b"garbage");
    let out = tempfile::tempdir().unwrap();
    let rep = pack(
        src.path(),
        out.path(),
        &PackOptions {
            shard_size: 3,
            limits: DecodeLimits::default(),
        },
    )
    .unwrap();
    assert_eq!((rep.samples, rep.shards.len(), rep.with_caption), (8, 3, 2));
    assert_eq!(rep.skipped.reasons.get("not_an_image"), Some(&1));
    let mut s = wds(out.path(), 1)(0, 1);
    let mut labels = BTreeMap::new();
    let mut captions = 0;
    for _ in 0..8 {
        let b = s.next_batch().unwrap();
        assert_eq!(b.epoch, 0);
        for (k, (l, c)) in b.keys.iter().zip(b.labels.iter().zip(&b.captions)) {
            labels.insert(k.clone(), l.unwrap());
            captions += usize::from(c.is_some());
        }
        if labels.len() == 8 {
            break;
        }
    }
    assert_eq!(labels.len(), 8);
    assert_eq!(labels.values().filter(|&&l| l == 1).count(), 4);
    assert_eq!(captions, 2);
}

#[test]
fn rank_and_world_come_from_torchrun_variables() {
    assert_eq!(RankWorld::from_vars(None, None).unwrap(), RankWorld::SINGLE);
    assert_eq!(
        RankWorld::from_vars(Some("2"), Some("4")).unwrap(),
        RankWorld { rank: 2, world: 4 }
    );
    for (r, w, named) in [
        (Some("4"), Some("4"), "rank 4"),
        (Some("x"), Some("4"), "RANK"),
        (Some("0"), None, "WORLD_SIZE"),
    ] {
        let e = RankWorld::from_vars(r, w).unwrap_err().to_string();
        assert!(e.contains(named), "{e}");
    }
    assert!(default_workers() >= 1);
}

/// Many streams on small shards: the streams are interleaved into one sequence and batches are
/// cut from it, so only the last batch of an epoch is short (each stream once filled its own
/// batches: 8 streams of 5 samples gave no batch of 6 at all). The output does not depend on the
/// number of decoding threads' timing: two runs agree.
#[test]
fn wds_many_streams_on_small_shards_cut_full_batches() {
    let dir = tempfile::tempdir().unwrap();
    let keys = clean_shards(dir.path(), 8, 5);
    let run = |drop_last: bool| -> Vec<Vec<String>> {
        let shards = resolve_shards(&dir.path().to_string_lossy()).unwrap().paths;
        let cfg = WdsConfig {
            shuffle_buffer: 3,
            require_caption: false,
            ..WdsConfig::train(8)
        };
        let lc = LoaderConfig {
            workers: 8,
            epochs: Some(1),
            drop_last,
            ..LoaderConfig::train(6, 1)
        };
        WdsLoader::new(shards, cfg, lc)
            .unwrap()
            .map(|b| b.keys)
            .collect()
    };
    let kept = run(true);
    assert_eq!(
        kept.len(),
        6,
        "40 samples in batches of 6, the short one dropped"
    );
    assert!(kept.iter().all(|b| b.len() == 6));
    let all = run(false);
    assert_eq!(
        all.iter().map(Vec::len).collect::<Vec<_>>(),
        [6, 6, 6, 6, 6, 6, 4]
    );
    assert_eq!(all[..6], kept[..], "same order with and without drop_last");
    let mut seen: Vec<String> = all.concat();
    seen.sort();
    let mut want = keys;
    want.sort();
    assert_eq!(seen, want, "every sample once");
    assert_eq!(run(false), all, "deterministic");
}

/// The indexed loader's output is the same for any number of decoding threads (the pool hands
/// chunks to whichever thread is idle; the order is restored on the consumer side).
#[test]
fn indexed_output_does_not_depend_on_worker_count() {
    let run = |workers: usize| -> Vec<Vec<String>> {
        let lc = LoaderConfig {
            workers,
            prefetch: 1,
            ..lc(0, 1, workers)
        };
        Loader::new(Arc::new(Numbers(N)), lc)
            .unwrap()
            .map(|b| b.keys)
            .collect()
    };
    let inline = run(0);
    assert!(!inline.is_empty());
    for w in [1, 3, 7] {
        assert_eq!(run(w), inline, "{w} workers");
    }
}
