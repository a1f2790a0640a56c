//! SGHC search == brute force restricted to the right sub-codebook; unified ids; lookups.

use super::search::check_answer;
use ndarray::{Array2, Array3, Axis};
use proptest::prelude::*;
use semhitok_quant::{
    lookup_pixel, lookup_semantic, lookup_unified, lookup_unified_pixel, sghc_nearest,
    sghc_nearest_with, Error, Kernel, Metric, PackedPixelCodebook, UnifiedIndex,
};

/// Pixel codebook `[K_sem, m, D]` with duplicated sub-codes inside some sub-codebooks.
fn pixel_strategy() -> impl Strategy<Value = Array3<f32>> {
    // D from 1..=33 covers odd sizes and the multiples of 8 that take the AVX2 kernel.
    (
        1usize..8,
        1usize..20,
        prop_oneof![1usize..=33, Just(8), Just(16), Just(32)],
    )
        .prop_flat_map(|(k, m, d)| {
            (
                proptest::collection::vec(-2.0f32..2.0, k * m * d),
                proptest::collection::vec((0..k, 0..m, 0..m), 0..=m),
            )
                .prop_map(move |(v, dups)| {
                    let mut a = Array3::from_shape_vec((k, m, d), v).expect("shape");
                    for (g, src, dst) in dups {
                        let row = a.index_axis(Axis(0), g).row(src).to_owned();
                        a.index_axis_mut(Axis(0), g).row_mut(dst).assign(&row);
                    }
                    a
                })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn sghc_matches_brute_force_in_the_semantic_sub_codebook(
        pixel in pixel_strategy(),
        n in 1usize..40,
        picks in proptest::collection::vec((any::<u32>(), any::<u32>(), any::<bool>()), 40),
        noise in proptest::collection::vec(-2.0f32..2.0, 40 * 33),
        metric in prop_oneof![Just(Metric::Cosine), Just(Metric::SquaredL2)],
        kernel in prop_oneof![Just(Kernel::Avx2Fma), Just(Kernel::Portable)],
    ) {
        let (k_sem, m, d) = pixel.dim();
        let sem: Vec<u32> = picks[..n].iter().map(|p| p.0 % k_sem as u32).collect();
        // Some queries copy a code of their own sub-codebook (exact ties with its duplicates).
        let q = Array2::from_shape_fn((n, d), |(i, j)| {
            let (_, sub, copy) = picks[i];
            if copy { pixel[[sem[i] as usize, sub as usize % m, j]] } else { noise[i * d + j] }
        });
        let found = sghc_nearest_with(kernel, q.view(), &sem, pixel.view(), metric).unwrap();
        let index = UnifiedIndex::new(k_sem, m).unwrap();
        for i in 0..n {
            let sub_codebook = pixel.index_axis(Axis(0), sem[i] as usize);
            check_answer(q.row(i).as_slice().unwrap(), sub_codebook, metric, found.sub_ids[i], found.scores[i]);
            prop_assert_eq!(found.unified[i], sem[i] * m as u32 + found.sub_ids[i]);
            prop_assert_eq!(index.decode(found.unified[i]).unwrap(), (sem[i], found.sub_ids[i]));
        }
        // The packed codebook (transposed blocks) obeys the same contract.
        let packed = PackedPixelCodebook::new(pixel.view(), metric).unwrap().with_kernel(kernel);
        let p = packed.nearest(q.view(), &sem).unwrap();
        for i in 0..n {
            let sub_codebook = pixel.index_axis(Axis(0), sem[i] as usize);
            check_answer(q.row(i).as_slice().unwrap(), sub_codebook, metric, p.sub_ids[i], p.scores[i]);
            prop_assert_eq!(p.unified[i], sem[i] * m as u32 + p.sub_ids[i]);
        }
        // Both kernels give the same ids (identical arithmetic is not required, so compare scores loosely).
        let other = sghc_nearest_with(Kernel::Portable, q.view(), &sem, pixel.view(), metric).unwrap();
        for i in 0..n {
            prop_assert!((other.scores[i] - found.scores[i]).abs() <= 1e-3 * (1.0 + found.scores[i].abs()));
        }
    }

    /// Round trip over the whole id range, rejection just outside it.
    #[test]
    fn unified_index_round_trip_and_rejection(k_sem in 1usize..300, m in 1usize..40) {
        let index = UnifiedIndex::new(k_sem, m).unwrap();
        let v = index.vocab_size() as u32;
        for u in 0..v {
            let (k, j) = index.decode(u).unwrap();
            prop_assert!((k as usize) < k_sem && (j as usize) < m);
            prop_assert_eq!(index.encode(k, j).unwrap(), u);
        }
        prop_assert!(index.decode(v).is_err());
        prop_assert!(index.encode(k_sem as u32, 0).is_err());
        prop_assert!(index.encode(0, m as u32).is_err());
        let all: Vec<u32> = (0..v).collect();
        let (s, j) = index.decode_all(&all).unwrap();
        prop_assert_eq!(index.encode_all(&s, &j).unwrap(), all);
    }
}

#[test]
fn paper_vocabulary_round_trips_every_id() {
    let index = UnifiedIndex::paper();
    assert_eq!(index.vocab_size(), 196_608);
    for u in 0..196_608u32 {
        let (k, j) = index.decode(u).unwrap();
        assert_eq!(index.encode(k, j).unwrap(), u);
    }
    let e = index.decode(196_608).unwrap_err();
    assert!(
        e.to_string().contains("196608") && e.to_string().contains("unified id"),
        "{e}"
    );
    let e = index.encode(16_384, 0).unwrap_err();
    assert!(e.to_string().contains("16384"), "{e}");
    let e = index.encode(0, 12).unwrap_err();
    assert!(e.to_string().contains("sub-code id: id 12"), "{e}");
    let e = index.encode_all(&[1, 2, 3], &[0, 12, 0]).unwrap_err();
    assert!(
        e.to_string().contains("[1]") && e.to_string().contains("12"),
        "{e}"
    );
    assert!(UnifiedIndex::new(0, 12).is_err());
    assert!(
        UnifiedIndex::new(1 << 20, 1 << 13).is_err(),
        "2^33 ids do not fit in u32"
    );
}

#[test]
fn lookups_return_the_code_vectors() {
    let semantic = Array2::from_shape_fn((5, 3), |(k, d)| (k * 10 + d) as f32);
    let pixel = Array3::from_shape_fn((5, 4, 2), |(k, j, d)| (k * 100 + j * 10 + d) as f32);
    let s = lookup_semantic(semantic.view(), &[4, 0]).unwrap();
    assert_eq!(s.row(0).to_vec(), vec![40.0, 41.0, 42.0]);
    let p = lookup_pixel(pixel.view(), &[2, 4], &[3, 1]).unwrap();
    assert_eq!(p.row(0).to_vec(), vec![230.0, 231.0]);
    assert_eq!(p.row(1).to_vec(), vec![410.0, 411.0]);
    let u = UnifiedIndex::new(5, 4)
        .unwrap()
        .encode_all(&[2, 4], &[3, 1])
        .unwrap();
    assert_eq!(lookup_unified_pixel(pixel.view(), &u).unwrap(), p);
    let both = lookup_unified(semantic.view(), pixel.view(), &u).unwrap();
    assert_eq!(both.row(1).to_vec(), vec![40.0, 41.0, 42.0, 410.0, 411.0]);
    // Non-contiguous views work: the same codebook stored [D, m, K_sem] and viewed transposed.
    let stored = pixel.t().as_standard_layout().into_owned();
    assert_eq!(lookup_unified_pixel(stored.t(), &u).unwrap(), p);
    // Errors name the bad id and its position.
    let e = lookup_semantic(semantic.view(), &[0, 5]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::IdOutOfRange {
                id: 5,
                bound: 5,
                ..
            }
        ),
        "{e}"
    );
    let e = lookup_unified(semantic.view(), pixel.view(), &[20]).unwrap_err();
    assert!(e.to_string().contains("20"), "{e}");
    let e = lookup_pixel(pixel.view(), &[0], &[4]).unwrap_err();
    assert!(e.to_string().contains("sub-code"), "{e}");
    let e = lookup_unified(semantic.slice(ndarray::s![..4, ..]), pixel.view(), &[0]).unwrap_err();
    assert!(e.to_string().contains("K = 4"), "{e}");
}

#[test]
fn sghc_bad_inputs_are_errors() {
    let pixel = Array3::from_shape_fn((3, 4, 8), |(k, j, d)| (k + j + d) as f32);
    let q = Array2::<f32>::ones((2, 8));
    let e = sghc_nearest(q.view(), &[0, 3], pixel.view(), Metric::SquaredL2).unwrap_err();
    assert!(
        matches!(
            e,
            Error::IdOutOfRange {
                id: 3,
                bound: 3,
                ..
            }
        ),
        "{e}"
    );
    let e = sghc_nearest(q.view(), &[0], pixel.view(), Metric::SquaredL2).unwrap_err();
    assert!(e.to_string().contains("semantic ids"), "{e}");
    let e = sghc_nearest(
        Array2::<f32>::ones((2, 7)).view(),
        &[0, 1],
        pixel.view(),
        Metric::Cosine,
    )
    .unwrap_err();
    assert!(e.to_string().contains("[2, 7]"), "{e}");
    // A NaN inside a searched sub-codebook is found and named by its [k, j, d] position.
    for kernel in [Kernel::Avx2Fma, Kernel::Portable] {
        for metric in [Metric::Cosine, Metric::SquaredL2] {
            let mut bad = pixel.clone();
            bad[[2, 1, 5]] = f32::NAN;
            let e = sghc_nearest_with(kernel, q.view(), &[0, 2], bad.view(), metric).unwrap_err();
            assert!(
                e.to_string().contains("[2, 1, 5]"),
                "{kernel:?} {metric:?}: {e}"
            );
            // Sub-codebooks that no query uses are not read.
            assert!(sghc_nearest_with(kernel, q.view(), &[0, 1], bad.view(), metric).is_ok());
        }
    }
    let mut bad = pixel.clone();
    bad[[1, 3, 7]] = f32::INFINITY;
    let e = PackedPixelCodebook::new(bad.view(), Metric::SquaredL2).unwrap_err();
    assert!(e.to_string().contains("[1, 3, 7]"), "{e}");
    let packed = PackedPixelCodebook::new(pixel.view(), Metric::Cosine).unwrap();
    let e = packed.nearest(q.view(), &[0, 3]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::IdOutOfRange {
                id: 3,
                bound: 3,
                ..
            }
        ),
        "{e}"
    );
    let e = packed
        .nearest(Array2::<f32>::ones((2, 7)).view(), &[0, 1])
        .unwrap_err();
    assert!(e.to_string().contains("[2, 7]"), "{e}");
    let mut qn = q.clone();
    qn[[1, 0]] = f32::NEG_INFINITY;
    let e = sghc_nearest(qn.view(), &[0, 1], pixel.view(), Metric::Cosine).unwrap_err();
    assert!(e.to_string().contains("[1, 0]"), "{e}");
}
