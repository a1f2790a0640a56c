//! `parallel_for`: LibTorch's intra-op threads run the chunks; together they cover the range once.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

#[test]
fn parallel_for_covers_the_range_once_on_libtorchs_threads() {
    // LibTorch's default thread count (the cores), not changed here: the other tests of this
    // binary run LibTorch ops on other threads meanwhile.
    let n = tch::get_num_threads().max(1) as usize;
    let hits: Vec<AtomicUsize> = (0..1000).map(|_| AtomicUsize::new(0)).collect();
    let threads = Mutex::new(HashSet::new());
    semhitok_sys::parallel_for(0, 1000, 100, &|b, e| {
        threads.lock().unwrap().insert(std::thread::current().id());
        for h in &hits[b as usize..e as usize] {
            h.fetch_add(1, Ordering::Relaxed);
        }
    })
    .unwrap();
    assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    // One OpenMP thread per chunk up to LibTorch's thread count (the shim is built with -fopenmp
    // against LibTorch's libgomp): on more than one core the chunks do not all run on one thread.
    assert_eq!(
        threads.lock().unwrap().len(),
        n.min(10),
        "at::parallel_for did not use LibTorch's {n} threads"
    );
    // An empty range calls nothing; a range of one grain runs on the caller.
    semhitok_sys::parallel_for(5, 5, 1, &|_, _| panic!("called on an empty range")).unwrap();
    let here = std::thread::current().id();
    semhitok_sys::parallel_for(0, 10, 100, &|_, _| {
        assert_eq!(std::thread::current().id(), here)
    })
    .unwrap();
}
