//! EMA update, mergeable statistics, dead codes and restart.

use ndarray::{Array2, Axis};
use proptest::prelude::*;
use semhitok_quant::{dead_codes, restart_codes, CodeStats, EmaConfig, EmaState};

fn batch() -> impl Strategy<Value = (Array2<f32>, Array2<f32>, Vec<u32>)> {
    (1usize..12, 1usize..9, 1usize..40).prop_flat_map(|(k, d, n)| {
        (
            proptest::collection::vec(-1.0f32..1.0, k * d),
            proptest::collection::vec(-1.0f32..1.0, n * d),
            proptest::collection::vec(0..k as u32, n),
        )
            .prop_map(move |(c, x, ids)| {
                (
                    Array2::from_shape_vec((k, d), c).unwrap(),
                    Array2::from_shape_vec((n, d), x).unwrap(),
                    ids,
                )
            })
    })
}

fn normalized(v: &[f64]) -> Vec<f64> {
    let n = v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    v.iter().map(|x| x / n).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// decay 0: every code that received inputs becomes the normalized batch mean of them;
    /// the others keep their vector.
    #[test]
    fn ema_with_decay_zero_is_the_normalized_batch_mean((codes, x, ids) in batch()) {
        let (k, d) = codes.dim();
        let stats = CodeStats::from_batch(k, x.view(), &ids).unwrap();
        let mut state = EmaState::new(codes.view());
        let mut book = codes.clone();
        let cfg = EmaConfig { decay: 0.0, ..EmaConfig::vqkd() };
        let moved = state.update(&cfg, &stats, book.view_mut()).unwrap();
        let mut hits = 0;
        for c in 0..k {
            let rows: Vec<usize> = (0..ids.len()).filter(|&r| ids[r] as usize == c).collect();
            if rows.is_empty() {
                prop_assert_eq!(book.row(c), codes.row(c));
                continue;
            }
            hits += 1;
            let mean: Vec<f64> = (0..d)
                .map(|j| rows.iter().map(|&r| f64::from(x[[r, j]])).sum::<f64>() / rows.len() as f64)
                .collect();
            let want = normalized(&mean);
            let norm_mean = mean.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm_mean < 1e-3 {
                continue; // direction undefined when the inputs cancel out
            }
            for j in 0..d {
                prop_assert!((f64::from(book[[c, j]]) - want[j]).abs() < 1e-4, "code {} dim {}: {} vs {}", c, j, book[[c, j]], want[j]);
            }
        }
        prop_assert_eq!(moved, hits);
    }

    /// Statistics of a split batch, merged, equal the statistics of the whole batch.
    #[test]
    fn code_stats_merge_equals_the_whole_batch((codes, x, ids) in batch(), cut in 0usize..40) {
        let k = codes.nrows();
        let cut = cut.min(ids.len());
        let whole = CodeStats::from_batch(k, x.view(), &ids).unwrap();
        let mut a = CodeStats::from_batch(k, x.slice(ndarray::s![..cut, ..]), &ids[..cut]).unwrap();
        let b = CodeStats::from_batch(k, x.slice(ndarray::s![cut.., ..]), &ids[cut..]).unwrap();
        a.merge(&b).unwrap();
        prop_assert_eq!(&a.counts, &whole.counts);
        for (p, q) in a.sums.iter().zip(whole.sums.iter()) {
            prop_assert!((p - q).abs() < 1e-9);
        }
    }
}

#[test]
fn ema_blends_towards_the_batch_and_keeps_unit_norm() {
    let codes = ndarray::array![[1.0f32, 0.0], [0.0, 1.0], [0.6, 0.8]];
    let x = ndarray::array![[0.0f32, 1.0], [0.0, 1.0]];
    let stats = CodeStats::from_batch(3, x.view(), &[0, 0]).unwrap();
    let mut state = EmaState::new(codes.view());
    let mut book = codes.clone();
    let cfg = EmaConfig::vqkd();
    state.update(&cfg, &stats, book.view_mut()).unwrap();
    // cluster_size = 0.01 * 2; embed_avg = 0.99 * [1, 0] + 0.01 * [0, 2] -> direction [0.99, 0.02].
    assert!((state.cluster_size[0] - 0.02).abs() < 1e-7);
    let want = [
        0.99f32 / (0.99f32.hypot(0.02)),
        0.02 / (0.99f32.hypot(0.02)),
    ];
    assert!(
        (book[[0, 0]] - want[0]).abs() < 1e-6 && (book[[0, 1]] - want[1]).abs() < 1e-6,
        "{book}"
    );
    assert_eq!(
        book.row(1),
        codes.row(1),
        "zero-hit codes keep their vector"
    );
    for row in book.rows() {
        assert!((row.dot(&row) - 1.0).abs() < 1e-5);
    }
    // Many identical steps converge to the batch direction.
    for _ in 0..2000 {
        state.update(&cfg, &stats, book.view_mut()).unwrap();
    }
    assert!(book[[0, 1]] > 0.999, "{book}");
    // Bad configs and shapes are errors naming the value.
    let e = state
        .update(&EmaConfig { decay: 1.0, ..cfg }, &stats, book.view_mut())
        .unwrap_err();
    assert!(e.to_string().contains("decay = 1"), "{e}");
    let e = state
        .update(&cfg, &CodeStats::new(4, 2), book.view_mut())
        .unwrap_err();
    assert!(e.to_string().contains("[4, 2]"), "{e}");
    let e = CodeStats::from_batch(3, x.view(), &[0, 3]).unwrap_err();
    assert!(e.to_string().contains("id 3"), "{e}");
}

#[test]
fn dead_codes_are_found_and_restarted_from_recent_inputs() {
    let mut book = Array2::from_shape_fn((6, 4), |(i, j)| if i == j % 6 { 1.0 } else { 0.0 });
    let cluster = [3.0f32, 0.0, 0.5, 2.0, 1e-4, 9.0];
    let dead = dead_codes(&cluster, 1.0);
    assert_eq!(dead, vec![1, 2, 4]);
    let recent = Array2::from_shape_fn((10, 4), |(i, j)| (i * 4 + j) as f32 + 1.0);
    let before = book.clone();
    restart_codes(book.view_mut(), &dead, recent.view(), true, 7).unwrap();
    for c in 0..6 {
        let row = book.row(c);
        if dead.contains(&(c as u32)) {
            assert!((row.dot(&row) - 1.0).abs() < 1e-5);
            // The new vector is one of the (normalized) recent inputs.
            assert!(recent.axis_iter(Axis(0)).any(|r| {
                let n = r.dot(&r).sqrt();
                r.iter().zip(row).all(|(a, b)| (a / n - b).abs() < 1e-6)
            }));
        } else {
            assert_eq!(row, before.row(c));
        }
    }
    // Distinct picks while there are enough recent rows, deterministic per seed.
    let picked: Vec<Vec<f32>> = dead
        .iter()
        .map(|&c| book.row(c as usize).to_vec())
        .collect();
    assert!(picked[0] != picked[1] && picked[1] != picked[2] && picked[0] != picked[2]);
    let mut again = before.clone();
    restart_codes(again.view_mut(), &dead, recent.view(), true, 7).unwrap();
    assert_eq!(again, book);
    let mut state = EmaState::new(before.view());
    state.reset_codes(&dead, book.view(), 1.0).unwrap();
    assert_eq!(state.cluster_size[1], 1.0);
    assert_eq!(state.embed_avg.row(4), book.row(4));
    let e = restart_codes(book.view_mut(), &[6], recent.view(), true, 0).unwrap_err();
    assert!(e.to_string().contains("id 6"), "{e}");
}
