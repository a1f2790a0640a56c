//! Exact usage statistics: merge is associative and equals the usage of the concatenated stream.

use proptest::prelude::*;
use semhitok_quant::{CodeUsage, SghcUsage, UnifiedIndex};

fn usage_of(k: usize, ids: &[u32]) -> CodeUsage {
    let mut u = CodeUsage::new(k);
    u.record(ids).unwrap();
    u
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn usage_merge_is_associative_and_equals_the_concatenated_stream(
        k in 1usize..50,
        a in proptest::collection::vec(any::<u32>(), 0..60),
        b in proptest::collection::vec(any::<u32>(), 0..60),
        c in proptest::collection::vec(any::<u32>(), 0..60),
    ) {
        let (a, b, c): (Vec<u32>, Vec<u32>, Vec<u32>) = (
            a.iter().map(|x| x % k as u32).collect(),
            b.iter().map(|x| x % k as u32).collect(),
            c.iter().map(|x| x % k as u32).collect(),
        );
        let (ua, ub, uc) = (usage_of(k, &a), usage_of(k, &b), usage_of(k, &c));
        let mut left = ua.clone();
        left.merge(&ub).unwrap();
        left.merge(&uc).unwrap();
        let mut bc = ub.clone();
        bc.merge(&uc).unwrap();
        let mut right = ua.clone();
        right.merge(&bc).unwrap();
        let all: Vec<u32> = a.iter().chain(&b).chain(&c).copied().collect();
        let whole = usage_of(k, &all);
        prop_assert_eq!(&left, &right);
        prop_assert_eq!(&left, &whole);
        // Summary numbers from plain definitions.
        let distinct = { let mut s = all.clone(); s.sort_unstable(); s.dedup(); s.len() };
        prop_assert_eq!(whole.used(), distinct);
        prop_assert_eq!(whole.total(), all.len() as u64);
        prop_assert!((whole.fraction() - distinct as f64 / k as f64).abs() < 1e-12);
        if !all.is_empty() {
            let h: f64 = (0..k as u32)
                .map(|i| all.iter().filter(|&&x| x == i).count() as f64 / all.len() as f64)
                .filter(|&p| p > 0.0)
                .map(|p| -p * p.ln())
                .sum();
            prop_assert!((whole.perplexity() - h.exp()).abs() < 1e-9 * h.exp().max(1.0));
            prop_assert!(whole.perplexity() >= 1.0 - 1e-12 && whole.perplexity() <= distinct as f64 + 1e-9);
        }
    }

    #[test]
    fn sghc_usage_merges_and_derives_semantic_and_group_counts(
        k_sem in 1usize..20,
        m in 1usize..13,
        a in proptest::collection::vec(any::<u32>(), 0..80),
        b in proptest::collection::vec(any::<u32>(), 0..80),
    ) {
        let index = UnifiedIndex::new(k_sem, m).unwrap();
        let v = index.vocab_size() as u32;
        let (a, b): (Vec<u32>, Vec<u32>) = (a.iter().map(|x| x % v).collect(), b.iter().map(|x| x % v).collect());
        let mut ua = SghcUsage::new(index);
        ua.record_unified(&a).unwrap();
        let mut ub = SghcUsage::new(index);
        let (s, j) = index.decode_all(&b).unwrap();
        ub.record(&s, &j).unwrap();
        ua.merge(&ub).unwrap();
        let all: Vec<u32> = a.iter().chain(&b).copied().collect();
        let mut whole = SghcUsage::new(index);
        whole.record_unified(&all).unwrap();
        prop_assert_eq!(&ua, &whole);
        // Semantic usage == usage of the semantic parts of the stream.
        let sem: Vec<u32> = all.iter().map(|u| u / m as u32).collect();
        prop_assert_eq!(whole.semantic(), usage_of(k_sem, &sem));
        // Group histogram from its definition.
        let mut hist = vec![0u64; m + 1];
        for k in 0..k_sem as u32 {
            let used = (0..m as u32).filter(|&j| all.contains(&(k * m as u32 + j))).count();
            hist[used] += 1;
        }
        prop_assert_eq!(whole.group_histogram(), hist);
    }
}

#[test]
fn full_unified_vocabulary_usage_is_exact_beyond_any_window() {
    let index = UnifiedIndex::paper();
    let mut usage = SghcUsage::new(index);
    // Every id once: a 65,536-entry window would report at most a third of this.
    let all: Vec<u32> = (0..index.vocab_size() as u32).collect();
    usage.record_unified(&all).unwrap();
    assert_eq!(usage.unified().used(), 196_608);
    assert!((usage.unified().perplexity() - 196_608.0).abs() < 1e-3);
    assert_eq!(usage.group_histogram()[12], 16_384);
    assert_eq!(usage.semantic().fraction(), 1.0);
    let e = usage.record_unified(&[5, 196_608]).unwrap_err();
    assert!(
        e.to_string().contains("[1]") && e.to_string().contains("196608"),
        "{e}"
    );
    assert_eq!(
        usage.unified().total(),
        196_608,
        "a failed record leaves counts unchanged"
    );
    let e = CodeUsage::new(3).merge(&CodeUsage::new(4)).unwrap_err();
    assert!(e.to_string().contains("K = 4"), "{e}");
    assert_eq!(CodeUsage::new(5).perplexity(), 0.0);
}
