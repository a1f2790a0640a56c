//! Shuffling and sharding partition every epoch exactly; loaders resume exactly.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use semhitok_data::loader::{epoch_order, shard};
use semhitok_data::*;

/// A synthetic source: sample i is a flat image of value i % 256; every 5th sample is bad.
struct Synthetic(usize);

impl IndexedSource for Synthetic {
    fn len(&self) -> usize {
        self.0
    }
    fn key(&self, i: usize) -> String {
        i.to_string()
    }
    fn output_size(&self) -> (u32, u32) {
        (2, 2)
    }
    fn get(&self, i: usize, rng: &mut ChaCha8Rng) -> std::result::Result<Item, SkipReason> {
        use rand::Rng;
        if i % 5 == 4 {
            return Err(SkipReason::Corrupt("synthetic".into()));
        }
        let v = rng.gen::<u8>();
        Ok(Item {
            key: i.to_string(),
            image: image::Rgb8Image::new(2, 2, vec![v; 12]).unwrap(),
            label: Some(i as i64),
            caption: None,
        })
    }
}

proptest! {
    #[test]
    fn shards_partition_the_epoch(n in 0usize..300, world in 1usize..9, seed in any::<u64>(), epoch in 0u64..5) {
        let order = epoch_order(n, seed, epoch, true);
        let mut all: Vec<usize> = (0..world).flat_map(|r| shard(&order, r, world, false)).collect();
        all.sort();
        prop_assert_eq!(all, (0..n).collect::<Vec<_>>());
        let even: Vec<Vec<usize>> = (0..world).map(|r| shard(&order, r, world, true)).collect();
        prop_assert!(even.iter().all(|s| s.len() == n / world));
    }
}

#[test]
fn loader_ranks_and_workers_partition_and_epochs_reshuffle() {
    let src: Arc<dyn IndexedSource> = Arc::new(Synthetic(103));
    let mut per_epoch = [Vec::new(), Vec::new()];
    let mut skipped = 0;
    for rank in 0..3 {
        for workers in [0, 1, 4] {
            let lc = LoaderConfig {
                rank,
                world: 3,
                workers,
                epochs: Some(2),
                drop_last: false,
                even_shards: false,
                ..LoaderConfig::train(6, 4)
            };
            let mut l = Loader::new(Arc::clone(&src), lc).unwrap();
            let batches: Vec<Batch> = l.by_ref().collect();
            assert!(!batches.is_empty());
            if workers == 4 {
                for b in &batches {
                    per_epoch[b.epoch as usize]
                        .extend(b.labels.iter().map(|l| l.unwrap() as usize));
                }
                skipped += l.skip_stats().skipped;
            }
        }
    }
    let good: Vec<usize> = (0..103).filter(|i| i % 5 != 4).collect();
    for e in 0..2 {
        let mut v = per_epoch[e].clone();
        v.sort();
        assert_eq!(
            v, good,
            "epoch {e}: every good sample exactly once over the ranks"
        );
    }
    assert_ne!(per_epoch[0], per_epoch[1], "epochs are reshuffled");
    assert_eq!(skipped, 2 * (103 - good.len()) as u64);
    let set: BTreeSet<usize> = per_epoch[0].iter().copied().collect();
    assert_eq!(set.len(), good.len());
}

#[test]
fn batches_are_full_despite_skips_and_independent_of_workers() {
    let src: Arc<dyn IndexedSource> = Arc::new(Synthetic(50));
    let run = |workers| {
        let lc = LoaderConfig {
            workers,
            epochs: Some(3),
            ..LoaderConfig::train(7, 11)
        };
        Loader::new(Arc::clone(&src), lc)
            .unwrap()
            .map(|b| {
                let v = b.as_f32().unwrap().to_vec();
                (b.keys, v)
            })
            .collect::<Vec<_>>()
    };
    let a = run(0);
    assert_eq!(a, run(3));
    // 40 good per epoch, batch 7, drop_last: 5 full batches per epoch.
    assert_eq!(a.len(), 15);
    assert!(a.iter().all(|(k, _)| k.len() == 7));
}

#[test]
fn loader_resume_is_exact_at_every_batch() {
    let src: Arc<dyn IndexedSource> = Arc::new(Synthetic(61));
    let lc = LoaderConfig {
        workers: 2,
        epochs: Some(3),
        drop_last: false,
        ..LoaderConfig::train(8, 2)
    };
    let full: Vec<Vec<String>> = Loader::new(Arc::clone(&src), lc.clone())
        .unwrap()
        .map(|b| b.keys)
        .collect();
    for stop in 0..full.len() {
        let mut a = Loader::new(Arc::clone(&src), lc.clone()).unwrap();
        let mut got: Vec<Vec<String>> = a.by_ref().take(stop).map(|b| b.keys).collect();
        let st: LoaderState =
            serde_json::from_str(&serde_json::to_string(&a.state()).unwrap()).unwrap();
        let mut b = Loader::new(
            Arc::clone(&src),
            LoaderConfig {
                workers: 1,
                ..lc.clone()
            },
        )
        .unwrap();
        b.restore(&st).unwrap();
        got.extend(b.map(|b| b.keys));
        assert_eq!(got, full, "resume after {stop} batches");
    }
}

#[test]
fn all_bad_source_ends_instead_of_hanging() {
    struct Bad;
    impl IndexedSource for Bad {
        fn len(&self) -> usize {
            10
        }
        fn key(&self, i: usize) -> String {
            i.to_string()
        }
        fn output_size(&self) -> (u32, u32) {
            (2, 2)
        }
        fn get(&self, _: usize, _: &mut ChaCha8Rng) -> std::result::Result<Item, SkipReason> {
            Err(SkipReason::Empty)
        }
    }
    let mut l = Loader::new(Arc::new(Bad), LoaderConfig::train(4, 0)).unwrap();
    assert!(l.next().is_none());
    assert_eq!(l.skip_stats().reasons.get("empty_file"), Some(&20));
}
