//! An ordered parallel map, the decoding engine of both loaders: one producer thread cuts the
//! sequence of work into chunks, any idle worker of the pool decodes the next chunk, and the
//! consumer receives the chunks in production order. Load is balanced per chunk (a slow image
//! delays only its chunk), the output never depends on thread timing, and at most `in_flight`
//! chunks exist at once (produced and not yet taken by the consumer), which bounds memory.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

/// Chunks of `O` in production order, decoded by a pool of threads.
pub(crate) struct OrderedPool<O> {
    chans: Option<(Receiver<(u64, Vec<O>)>, Sender<()>)>,
    reorder: BTreeMap<u64, Vec<O>>,
    next: u64,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl<O: Send + 'static> OrderedPool<O> {
    /// Starts the producer (`produce` until it returns `None`) and `workers` (>= 1) threads
    /// mapping every element with `map`, which must not panic (wrap decoders in
    /// `catch_unwind`).
    pub fn spawn<I, P, M>(
        name: &str,
        workers: usize,
        in_flight: usize,
        mut produce: P,
        map: M,
    ) -> Self
    where
        I: Send + 'static,
        P: FnMut() -> Option<Vec<I>> + Send + 'static,
        M: Fn(I) -> O + Send + Sync + 'static,
    {
        let in_flight = in_flight.max(1);
        let (permit_tx, permit_rx) = bounded::<()>(in_flight);
        for _ in 0..in_flight {
            let _ = permit_tx.send(());
        }
        let (work_tx, work_rx) = unbounded::<(u64, Vec<I>)>();
        let (res_tx, res_rx) = unbounded::<(u64, Vec<O>)>();
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::new();
        let stop_p = Arc::clone(&stop);
        handles.push(
            std::thread::Builder::new()
                .name(format!("{name}-seq"))
                .spawn(move || {
                    let mut seq = 0u64;
                    // A permit per chunk: blocks while `in_flight` chunks are out; ends when
                    // the consumer is gone.
                    while permit_rx.recv().is_ok() && !stop_p.load(Ordering::Relaxed) {
                        let Some(chunk) = produce() else { return };
                        if work_tx.send((seq, chunk)).is_err() {
                            return;
                        }
                        seq += 1;
                    }
                })
                .expect("spawning a loader thread"),
        );
        let map = Arc::new(map);
        for w in 0..workers.max(1) {
            let (rx, tx, map) = (work_rx.clone(), res_tx.clone(), Arc::clone(&map));
            let stop = Arc::clone(&stop);
            handles.push(
                std::thread::Builder::new()
                    .name(format!("{name}-{w}"))
                    .spawn(move || {
                        while let Ok((seq, chunk)) = rx.recv() {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            let out: Vec<O> = chunk.into_iter().map(|x| map(x)).collect();
                            if tx.send((seq, out)).is_err() {
                                return;
                            }
                        }
                    })
                    .expect("spawning a loader thread"),
            );
        }
        Self {
            chans: Some((res_rx, permit_tx)),
            reorder: BTreeMap::new(),
            next: 0,
            stop,
            handles,
        }
    }

    /// The next chunk in production order; `None` once the producer has ended and every chunk
    /// was taken (or a thread died).
    pub fn next(&mut self) -> Option<Vec<O>> {
        let (rx, permit) = self.chans.as_ref()?;
        loop {
            if let Some(c) = self.reorder.remove(&self.next) {
                self.next += 1;
                let _ = permit.send(());
                return Some(c);
            }
            let (seq, c) = rx.recv().ok()?;
            self.reorder.insert(seq, c);
        }
    }
}

impl<O> Drop for OrderedPool<O> {
    fn drop(&mut self) {
        // The producer sees no permits, the workers a closed queue: all stop.
        self.stop.store(true, Ordering::Relaxed);
        self.chans = None;
        self.reorder.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
