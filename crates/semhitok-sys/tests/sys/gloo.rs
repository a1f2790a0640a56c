//! Gloo collectives across ranks on threads: values, ordering, timeouts, a dead peer.

use super::common::{env, free_port, on_ranks};
use semhitok_sys::{Backend, Error, ProcessGroup, ReduceOp};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

const T: Duration = Duration::from_secs(60);

fn vec(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.reshape([-1])).unwrap()
}

#[test]
fn all_reduce_broadcast_all_gather_barrier_on_3_ranks() {
    let out = on_ranks(3, T, |pg| {
        // c10d's flight recorder is off unless asked for (its status map races when several
        // process groups of one process enqueue at once, as these ranks on threads do).
        let fr = std::env::var("TORCH_FR_BUFFER_SIZE").ok();
        assert!(
            fr.as_deref() == Some("0")
                || std::env::var_os("TORCH_NCCL_TRACE_BUFFER_SIZE").is_some(),
            "TORCH_FR_BUFFER_SIZE = {fr:?}"
        );
        let r = pg.rank() as f32;
        assert_eq!(pg.world_size(), 3);
        // sum and average of [r, 10 r] (in place)
        let mut s = Tensor::from_slice(&[r, 10.0 * r]);
        pg.all_reduce("s", &mut s, ReduceOp::Sum).unwrap();
        let mut a = Tensor::from_slice(&[r + 1.0, 2.0]);
        pg.all_reduce("a", &mut a, ReduceOp::Avg).unwrap();
        // a non-contiguous 2-d view is refused by name
        let t2 = Tensor::zeros([3, 2], (Kind::Float, tch::Device::Cpu)).tr();
        let e = pg.all_reduce("transposed", &mut t2.shallow_clone(), ReduceOp::Sum);
        assert!(matches!(e, Err(Error::Tensor { .. })), "{e:?}");
        // broadcast from rank 1
        let mut b = Tensor::from_slice(&[r, r, r]);
        pg.broadcast("b", &mut b, 1).unwrap();
        // all_gather in rank order, 2-d rows
        let g = pg
            .all_gather("g", &Tensor::from_slice(&[r, r + 0.5]).reshape([1, 2]))
            .unwrap();
        assert_eq!(g.size(), [3, 2]);
        pg.barrier("end").unwrap();
        (vec(&s), vec(&a), vec(&b), vec(&g))
    });
    for (s, a, b, g) in out {
        assert_eq!(s, [3.0, 30.0]);
        assert_eq!(a, [2.0, 2.0]);
        assert_eq!(b, [1.0, 1.0, 1.0]);
        assert_eq!(g, [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]);
    }
}

#[test]
fn large_f64_and_int_tensors() {
    let out = on_ranks(2, T, |pg| {
        let n = 1 << 20;
        let mut x = Tensor::ones([n], (Kind::Double, tch::Device::Cpu)) * (pg.rank() as f64 + 1.0);
        pg.all_reduce("x", &mut x, ReduceOp::Avg).unwrap();
        let mut i = Tensor::from_slice(&[pg.rank() as i64 + 5]);
        pg.all_reduce("i", &mut i, ReduceOp::Sum).unwrap();
        (
            x.min().double_value(&[]),
            x.max().double_value(&[]),
            i.int64_value(&[0]),
        )
    });
    for o in out {
        assert_eq!(o, (1.5, 1.5, 11));
    }
}

/// Rank 1 never joins the all-reduce: rank 0 stops with the timeout error, naming the
/// collective, the tensor, its rank and the step, after about the timeout (not forever).
#[test]
fn a_missing_peer_is_a_timeout_error_naming_collective_rank_and_step() {
    let timeout = Duration::from_secs(2);
    let out = on_ranks(2, timeout, move |pg| {
        pg.set_step(17);
        if pg.rank() == 1 {
            std::thread::sleep(timeout * 3);
            return None;
        }
        let t0 = Instant::now();
        let mut x = Tensor::from_slice(&[1f32]);
        let e = pg
            .all_reduce("generator gradients", &mut x, ReduceOp::Avg)
            .unwrap_err();
        Some((e, t0.elapsed()))
    });
    let (e, took) = out.into_iter().next().unwrap().unwrap();
    let msg = e.to_string();
    assert!(
        matches!(
            &e,
            Error::Collective {
                op: "all_reduce",
                rank: 0,
                step: 17,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("generator gradients") && msg.contains("step 17"),
        "{msg}"
    );
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(5),
        "timed out after {took:?} (limit 2 s)"
    );
}

/// A peer that goes away (its group destroyed, its sockets closed) makes the waiting rank fail
/// well within the timeout instead of hanging.
#[test]
fn a_departed_peer_fails_the_collective() {
    let out = on_ranks(2, Duration::from_secs(30), |pg| {
        pg.barrier("start").unwrap();
        if pg.rank() == 1 {
            drop(pg);
            return None;
        }
        std::thread::sleep(Duration::from_millis(300));
        let t0 = Instant::now();
        let mut x = Tensor::from_slice(&[1f32]);
        let e = pg.all_reduce("x", &mut x, ReduceOp::Sum).unwrap_err();
        Some((e.to_string(), t0.elapsed()))
    });
    let (msg, took) = out.into_iter().next().unwrap().unwrap();
    assert!(
        msg.contains("all_reduce") && msg.contains("rank 0 of 2"),
        "{msg}"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
}

#[test]
fn rendezvous_without_peers_times_out_with_the_store_address() {
    let port = free_port();
    let t0 = Instant::now();
    let e = ProcessGroup::new(&env(port, 0, 2), Backend::Gloo, Duration::from_secs(2)).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Init { .. }), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(20), "{:?}", t0.elapsed());
}
