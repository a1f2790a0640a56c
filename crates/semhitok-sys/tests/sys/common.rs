//! Helpers: a free port, and N ranks on N threads.

use semhitok_sys::{Backend, DistEnv, ProcessGroup};
use std::time::Duration;

/// A TCP port that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free localhost port")
}

pub fn env(port: u16, rank: usize, world_size: usize) -> DistEnv {
    DistEnv {
        master_addr: "127.0.0.1".into(),
        master_port: port,
        rank,
        world_size,
        local_rank: rank,
        agent_store: false,
        restart_count: 0,
    }
}

/// Run `f(group)` on `world` threads, one Gloo rank each; results in rank order.
pub fn on_ranks<T: Send + 'static>(
    world: usize,
    timeout: Duration,
    f: impl Fn(ProcessGroup) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let port = free_port();
    let f = std::sync::Arc::new(f);
    let handles: Vec<_> = (0..world)
        .map(|r| {
            let f = f.clone();
            std::thread::spawn(move || {
                let pg = ProcessGroup::new(&env(port, r, world), Backend::Gloo, timeout)
                    .unwrap_or_else(|e| panic!("rank {r}: {e}"));
                f(pg)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("rank thread panicked"))
        .collect()
}
