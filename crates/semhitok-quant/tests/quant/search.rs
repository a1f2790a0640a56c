//! Fused nearest-code search == brute force (both metrics, both kernels, ties to the lowest index).

use ndarray::{Array2, ArrayView2};
use proptest::prelude::*;
use semhitok_quant::{nearest, Error, Kernel, Metric, PackedCodebook};

/// Exact score of every code for one query, in f64: cosine similarity or squared distance.
fn brute_scores(q: &[f32], codes: ArrayView2<'_, f32>, metric: Metric) -> Vec<f64> {
    let norm = |v: &[f32]| {
        v.iter()
            .map(|&x| f64::from(x).powi(2))
            .sum::<f64>()
            .sqrt()
            .max(1e-12)
    };
    codes
        .rows()
        .into_iter()
        .map(|c| {
            let c = c.to_vec();
            match metric {
                Metric::Cosine => {
                    let dot: f64 = q
                        .iter()
                        .zip(&c)
                        .map(|(&a, &b)| f64::from(a) * f64::from(b))
                        .sum();
                    dot / (norm(q) * norm(&c))
                }
                Metric::SquaredL2 => q
                    .iter()
                    .zip(&c)
                    .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                    .sum(),
            }
        })
        .collect()
}

/// Larger is better for both metrics after this sign flip.
fn goodness(s: f64, metric: Metric) -> f64 {
    match metric {
        Metric::Cosine => s,
        Metric::SquaredL2 => -s,
    }
}

/// Tolerance for float rounding at these magnitudes (values in [-2, 2], D <= 40).
fn tol(metric: Metric, q: &[f32]) -> f64 {
    match metric {
        Metric::Cosine => 1e-5,
        Metric::SquaredL2 => 1e-4 * (1.0 + q.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>()),
    }
}

/// Checks one search answer against brute force; `codes` may contain exact duplicate rows.
pub fn check_answer(q: &[f32], codes: ArrayView2<'_, f32>, metric: Metric, id: u32, score: f32) {
    let exact = brute_scores(q, codes, metric);
    let t = tol(metric, q);
    let id = id as usize;
    assert!(id < exact.len(), "id {id} out of range");
    let best = exact
        .iter()
        .map(|&s| goodness(s, metric))
        .fold(f64::NEG_INFINITY, f64::max);
    let got = goodness(exact[id], metric);
    assert!(
        got >= best - t,
        "picked {id} with {got}, best is {best} (tol {t})"
    );
    assert!(
        (f64::from(score) - exact[id]).abs() <= t,
        "score {score} vs exact {} for code {id}",
        exact[id]
    );
    // Ties to the lowest index: no identical code sits before the chosen one.
    let row = codes.row(id);
    for lower in 0..id {
        assert_ne!(
            codes.row(lower),
            row,
            "code {lower} duplicates the chosen code {id}: ties must go to the lowest index"
        );
    }
    // When the best code is clearly separated, the answer is exactly the brute-force argmax.
    let first_best = (0..exact.len())
        .find(|&i| goodness(exact[i], metric) >= best - t)
        .expect("some code is best");
    let clear = exact.iter().enumerate().all(|(i, &s)| {
        i == first_best
            || codes.row(i) == codes.row(first_best)
            || goodness(s, metric) < best - 2.0 * t
    });
    if clear {
        assert_eq!(id, first_best, "brute force picks {first_best}");
    }
}

/// Codes `[K, D]` in [-2, 2) with some rows duplicated (exact ties).
pub fn codes_strategy(max_k: usize, max_d: usize) -> impl Strategy<Value = Array2<f32>> {
    (1..=max_k, 1..=max_d).prop_flat_map(|(k, d)| {
        (
            proptest::collection::vec(-2.0f32..2.0, k * d),
            proptest::collection::vec((0..k, 0..k), 0..=k / 2),
        )
            .prop_map(move |(v, dups)| {
                let mut a = Array2::from_shape_vec((k, d), v).expect("shape");
                for (src, dst) in dups {
                    let row = a.row(src).to_owned();
                    a.row_mut(dst).assign(&row);
                }
                a
            })
    })
}

fn metric_strategy() -> impl Strategy<Value = Metric> {
    prop_oneof![Just(Metric::Cosine), Just(Metric::SquaredL2)]
}

fn kernel_strategy() -> impl Strategy<Value = Kernel> {
    prop_oneof![Just(Kernel::Avx2Fma), Just(Kernel::Portable)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Random K (rarely a multiple of the 16-code panel), odd D, N down to 1, duplicated codes,
    /// some queries equal to codes (exact ties between duplicates).
    #[test]
    fn fused_search_matches_brute_force(
        codes in codes_strategy(70, 37),
        n in 1usize..20,
        seed_rows in proptest::collection::vec(any::<u32>(), 20),
        noise in proptest::collection::vec(-2.0f32..2.0, 20 * 37),
        metric in metric_strategy(),
        kernel in kernel_strategy(),
    ) {
        let (k, d) = codes.dim();
        // Half of the queries are copies of codes, the rest random.
        let q = Array2::from_shape_fn((n, d), |(i, j)| {
            if i % 2 == 0 { codes[[seed_rows[i] as usize % k, j]] } else { noise[i * d + j] }
        });
        let packed = PackedCodebook::new(codes.view(), metric).unwrap().with_kernel(kernel);
        let found = packed.nearest(q.view()).unwrap();
        prop_assert_eq!(found.ids.len(), n);
        for i in 0..n {
            check_answer(q.row(i).as_slice().unwrap(), codes.view(), metric, found.ids[i], found.scores[i]);
        }
        // The one-shot function agrees with the packed codebook.
        let again = nearest(q.view(), codes.view(), metric).unwrap();
        prop_assert_eq!(&again.ids, &PackedCodebook::new(codes.view(), metric).unwrap().nearest(q.view()).unwrap().ids);
    }

    /// top-k: best first, scores match brute force, first column equals `nearest`.
    #[test]
    fn top_k_matches_brute_force(
        codes in codes_strategy(40, 20),
        n in 1usize..8,
        noise in proptest::collection::vec(-2.0f32..2.0, 8 * 20),
        kk in 1usize..6,
        metric in metric_strategy(),
    ) {
        let (k, d) = codes.dim();
        let kk = kk.min(k);
        let q = Array2::from_shape_fn((n, d), |(i, j)| noise[i * d + j]);
        let packed = PackedCodebook::new(codes.view(), metric).unwrap();
        let top = packed.top_k(q.view(), kk).unwrap();
        let first = packed.nearest(q.view()).unwrap();
        for i in 0..n {
            let qi = q.row(i).to_vec();
            let mut exact: Vec<f64> = brute_scores(&qi, codes.view(), metric).into_iter().map(|s| goodness(s, metric)).collect();
            exact.sort_by(|a, b| b.total_cmp(a));
            let t = tol(metric, &qi);
            for j in 0..kk {
                let g = goodness(f64::from(top.scores[[i, j]]), metric);
                prop_assert!((g - exact[j]).abs() <= t, "rank {} score {} vs brute {}", j, g, exact[j]);
                if j > 0 {
                    prop_assert!(goodness(f64::from(top.scores[[i, j - 1]]), metric) >= g);
                }
            }
            let mut ids: Vec<u32> = top.ids.row(i).to_vec();
            ids.sort_unstable();
            ids.dedup();
            prop_assert_eq!(ids.len(), kk, "top-k ids are distinct");
            check_answer(&qi, codes.view(), metric, top.ids[[i, 0]], top.scores[[i, 0]]);
            prop_assert_eq!(top.ids[[i, 0]], first.ids[i]);
        }
    }
}

#[test]
fn ties_between_identical_codes_go_to_the_lowest_index_across_panels() {
    // Code 3 is duplicated at 20 and 37 (other panels) and at 5 (same panel, higher index).
    let mut codes = Array2::from_shape_fn((40, 9), |(i, j)| ((i * 7 + j * 3) % 11) as f32 - 5.0);
    for dst in [5, 20, 37] {
        let row = codes.row(3).to_owned();
        codes.row_mut(dst).assign(&row);
    }
    let q = codes.select(ndarray::Axis(0), &[3, 5, 20, 37]);
    for metric in [Metric::Cosine, Metric::SquaredL2] {
        for kernel in [Kernel::Avx2Fma, Kernel::Portable] {
            let packed = PackedCodebook::new(codes.view(), metric)
                .unwrap()
                .with_kernel(kernel);
            assert_eq!(
                packed.nearest(q.view()).unwrap().ids,
                vec![3, 3, 3, 3],
                "{metric:?} {kernel:?}"
            );
        }
    }
}

#[test]
fn large_shape_with_many_blocks_and_chunks_matches_brute_force() {
    // N spans several 96-query tasks; K spans several L2 chunks at D = 32.
    let (n, k, d) = (200, 2100, 32);
    let codes = Array2::from_shape_fn((k, d), |(i, j)| {
        (((i * 31 + j * 17) % 97) as f32 / 48.0) - 1.0
    });
    let q = Array2::from_shape_fn((n, d), |(i, j)| {
        (((i * 13 + j * 29) % 89) as f32 / 44.0) - 1.0
    });
    for metric in [Metric::Cosine, Metric::SquaredL2] {
        let found = PackedCodebook::new(codes.view(), metric)
            .unwrap()
            .nearest(q.view())
            .unwrap();
        for i in (0..n).step_by(7) {
            check_answer(
                q.row(i).as_slice().unwrap(),
                codes.view(),
                metric,
                found.ids[i],
                found.scores[i],
            );
        }
    }
}

#[test]
fn bad_inputs_are_errors_naming_the_value() {
    let codes = Array2::<f32>::ones((4, 3));
    let packed = PackedCodebook::new(codes.view(), Metric::Cosine).unwrap();
    let wrong = Array2::<f32>::ones((2, 5));
    let e = packed.nearest(wrong.view()).unwrap_err();
    assert!(
        matches!(e, Error::Shape { .. }) && e.to_string().contains("[2, 5]"),
        "{e}"
    );
    let mut nan = Array2::<f32>::ones((2, 3));
    nan[[1, 2]] = f32::NAN;
    let e = packed.nearest(nan.view()).unwrap_err();
    assert!(
        e.to_string().contains("[1, 2]") && e.to_string().contains("NaN"),
        "{e}"
    );
    let mut bad_codes = codes.clone();
    bad_codes[[3, 0]] = f32::INFINITY;
    let e = PackedCodebook::new(bad_codes.view(), Metric::SquaredL2).unwrap_err();
    assert!(
        e.to_string().contains("[3, 0]") && e.to_string().contains("inf"),
        "{e}"
    );
    let e = PackedCodebook::new(Array2::<f32>::zeros((0, 3)).view(), Metric::Cosine).unwrap_err();
    assert!(e.to_string().contains("[0, 3]"), "{e}");
    let e = packed.top_k(codes.view(), 5).unwrap_err();
    assert!(e.to_string().contains("= 5"), "{e}");
    // A non-contiguous (transposed) view is accepted and gives the same answer.
    let t = Array2::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f32);
    let a = packed.nearest(t.t()).unwrap();
    let b = packed.nearest(t.t().as_standard_layout().view()).unwrap();
    assert_eq!(a, b);
}
