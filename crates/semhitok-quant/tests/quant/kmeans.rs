//! Spherical k-means++ initialisation.

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use semhitok_quant::{kmeans_plus_plus, spherical_kmeans, KMeansConfig, Metric, PackedCodebook};

/// `per` noisy points around each of `k` well-separated unit directions in D = 16.
fn clustered(k: usize, per: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
    let d = 16;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x = Array2::zeros((k * per, d));
    let mut label = Vec::new();
    for c in 0..k {
        for p in 0..per {
            let r = c * per + p;
            for j in 0..d {
                x[[r, j]] = if j == c { 1.0 } else { 0.0 } + rng.gen_range(-0.05f32..0.05);
            }
            x[[r, c]] *= rng.gen_range(0.5f32..3.0); // scale does not matter for cosine
            label.push(c);
        }
    }
    (x, label)
}

#[test]
fn kmeans_recovers_separated_clusters_with_unit_centres() {
    let (x, label) = clustered(8, 30, 1);
    let centres = spherical_kmeans(x.view(), &KMeansConfig::vqkd(8, 3)).unwrap();
    assert_eq!(centres.dim(), (8, 16));
    for row in centres.rows() {
        assert!((row.dot(&row) - 1.0).abs() < 1e-5);
    }
    // Points of one true cluster share one centre, and different clusters get different centres.
    let ids = PackedCodebook::new(centres.view(), Metric::Cosine)
        .unwrap()
        .nearest(x.view())
        .unwrap()
        .ids;
    let mut owner = vec![None; 8];
    for (r, &c) in ids.iter().enumerate() {
        let o = owner[label[r]].get_or_insert(c);
        assert_eq!(*o, c, "cluster {} split", label[r]);
    }
    let mut owners: Vec<u32> = owner.into_iter().map(|o| o.unwrap()).collect();
    owners.sort_unstable();
    owners.dedup();
    assert_eq!(owners.len(), 8, "two clusters merged");
}

#[test]
fn kmeans_plus_plus_is_seeded_and_spreads_out() {
    let (x, _) = clustered(6, 20, 2);
    let a = kmeans_plus_plus(x.view(), 6, 11).unwrap();
    let b = kmeans_plus_plus(x.view(), 6, 11).unwrap();
    assert_eq!(a, b, "same seed, same centres");
    // D^2 sampling on well-separated clusters picks one point per cluster with high probability.
    let mut dominant: Vec<usize> = a
        .rows()
        .into_iter()
        .map(|r| (0..16).max_by(|&i, &j| r[i].total_cmp(&r[j])).unwrap())
        .collect();
    dominant.sort_unstable();
    dominant.dedup();
    assert_eq!(dominant.len(), 6, "{a}");
    // Duplicated data (all points equal) still yields k centres.
    let same = Array2::from_elem((5, 3), 1.0f32);
    assert_eq!(kmeans_plus_plus(same.view(), 4, 0).unwrap().nrows(), 4);
    let e = spherical_kmeans(x.view(), &KMeansConfig::vqkd(1000, 0)).unwrap_err();
    assert!(e.to_string().contains("1000"), "{e}");
}
