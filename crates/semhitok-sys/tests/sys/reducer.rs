//! [`GradReducer`] on 2 Gloo ranks: the bucketed all-reduce, with and without overlapping the
//! backward pass, gives bit for bit the gradient of one all-reduce of the whole flat buffer; a
//! parameter without a gradient is reduced at `finish`; misuse is an error, not a hang.

use super::common::on_ranks;
use super::common::{env, free_port};
use semhitok_sys::{bucket_starts, Backend, GradReducer, ProcessGroup, ReduceOp};
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

const T: Duration = Duration::from_secs(60);

/// A 3-layer MLP (+ one unused vector) whose parameters and gradients are views of two flat
/// buffers, as the trainer's optimizer lays them out (not in forward order).
struct Model {
    g: Tensor,
    params: Vec<(Tensor, i64)>,
}

const SHAPES: [(&str, &[i64]); 6] = [
    ("b2", &[16]),
    ("unused", &[5]),
    ("w1", &[8, 16]),
    ("b1", &[16]),
    ("w3", &[16, 4]),
    ("w2", &[16, 16]),
];

fn var(m: &Model, name: &str) -> Tensor {
    let i = SHAPES.iter().position(|s| s.0 == name).unwrap();
    m.params[i].0.shallow_clone()
}

impl Model {
    fn new() -> Self {
        Self::on(Device::Cpu)
    }

    fn on(dev: Device) -> Self {
        let total: i64 = SHAPES.iter().map(|s| s.1.iter().product::<i64>()).sum();
        let p = Tensor::zeros([total], (Kind::Float, dev));
        let mut params = vec![];
        let mut off = 0;
        for (k, (_, shape)) in SHAPES.iter().enumerate() {
            let n: i64 = shape.iter().product();
            let init = (Tensor::arange(n, (Kind::Float, dev)) * (0.7 + k as f64)).sin() * 0.3;
            let mut v = Tensor::zeros(*shape, (Kind::Float, dev)).set_requires_grad(true);
            tch::no_grad(|| {
                p.narrow(0, off, n).copy_(&init.reshape([n]));
                let stride = v.stride();
                let _ = v.set_source_tensor_storage_offset_(&p, off, *shape, stride.as_slice());
            });
            params.push((v, off));
            off += n;
        }
        let g = p.zeros_like();
        let m = Self { g, params };
        // Define every gradient, then make each the view of its slice of `g`.
        (m.loss(0) + var(&m, "unused").sum(Kind::Float) * 0.0).backward();
        tch::no_grad(|| {
            for (v, off) in &m.params {
                let mut gr = v.grad();
                let n = gr.numel() as i64;
                m.g.narrow(0, *off, n).copy_(&gr.reshape([n]));
                let (size, stride) = (gr.size(), gr.stride());
                let _ = gr.set_source_tensor_storage_offset_(
                    &m.g,
                    *off,
                    size.as_slice(),
                    stride.as_slice(),
                );
            }
            let _ = m.g.shallow_clone().zero_();
        });
        m
    }

    /// A loss on rank-dependent inputs (`unused` takes no part).
    fn loss(&self, rank: usize) -> Tensor {
        let x = (Tensor::arange(48, (Kind::Float, self.g.device())) * (0.37 * (rank as f64 + 1.0)))
            .cos()
            .view([6, 8]);
        let h = (x.matmul(&var(self, "w1")) + var(self, "b1")).tanh();
        let h = (h.matmul(&var(self, "w2")) + var(self, "b2")).tanh();
        h.matmul(&var(self, "w3"))
            .pow_tensor_scalar(2)
            .mean(Kind::Float)
    }

    fn layout(&self) -> Vec<(i64, i64)> {
        self.params
            .iter()
            .map(|(v, o)| (*o, v.numel() as i64))
            .collect()
    }
}

fn grads(m: &Model) -> Vec<f32> {
    Vec::<f32>::try_from(m.g.to_device(Device::Cpu)).unwrap()
}

#[test]
fn bucketed_and_overlapped_all_reduce_equal_one_flat_all_reduce_bit_for_bit() {
    let out = on_ranks(2, T, |pg| {
        let pg = Arc::new(pg);
        let rank = pg.rank();
        let m = Model::new();
        // Buckets of at most 40 elements: b2 | unused w1 (128) | b1 | w3 w2 ...
        let starts = bucket_starts(&m.layout(), 40);
        assert!(starts.len() >= 4, "{starts:?}");
        let r =
            GradReducer::new(pg.clone(), "grads", &m.g, &m.params, &starts, ReduceOp::Avg).unwrap();
        let step = |mode: &str| -> (Vec<f32>, Vec<i64>) {
            let _ = m.g.shallow_clone().zero_();
            let loss = m.loss(rank);
            let done = match mode {
                "flat" => {
                    loss.backward();
                    pg.all_reduce("grads", &mut m.g.shallow_clone(), ReduceOp::Avg)
                        .unwrap();
                    vec![]
                }
                "bucketed" => {
                    loss.backward();
                    r.finish().unwrap()
                }
                _ => {
                    r.arm();
                    loss.backward();
                    r.finish().unwrap()
                }
            };
            (grads(&m), done)
        };
        let (flat, _) = step("flat");
        let (bucketed, none) = step("bucketed");
        let (overlapped, order) = step("overlapped");
        // A learned order (completion order, then the rest) is accepted and changes nothing.
        let mut learned = order.clone();
        learned.extend((0..r.n_buckets() as i64).filter(|b| !order.contains(b)));
        r.set_order(&learned).unwrap();
        let (relaunched, _) = step("overlapped");
        assert!(r.set_order(&[0, 0]).is_err());
        (
            flat,
            bucketed,
            overlapped,
            relaunched,
            none,
            order,
            r.n_buckets(),
        )
    });
    for (rank, (flat, bucketed, overlapped, relaunched, none, order, nb)) in out.iter().enumerate()
    {
        assert!(flat.iter().any(|v| *v != 0.0));
        assert_eq!(flat, bucketed, "rank {rank}");
        assert_eq!(flat, overlapped, "rank {rank}");
        assert_eq!(flat, relaunched, "rank {rank}");
        assert!(none.is_empty());
        // Every bucket but `unused`'s own completed during the backward.
        assert!(!order.is_empty() && order.len() < *nb, "{order:?} of {nb}");
    }
    assert_eq!(out[0].0, out[1].0, "both ranks hold the average");
    // The average really mixes the ranks (not a rank's own gradient).
    let own = on_ranks(1, T, |_pg| {
        let m = Model::new();
        m.loss(0).backward();
        grads(&m)
    });
    assert_ne!(own[0], out[0].0);
}

#[test]
fn two_backwards_in_one_armed_step_are_an_error_on_every_rank() {
    let out = on_ranks(2, T, |pg: ProcessGroup| {
        let pg = Arc::new(pg);
        let m = Model::new();
        let starts = bucket_starts(&m.layout(), 40);
        let r =
            GradReducer::new(pg.clone(), "grads", &m.g, &m.params, &starts, ReduceOp::Avg).unwrap();
        r.arm();
        m.loss(pg.rank()).backward();
        m.loss(pg.rank()).backward();
        let e = r.finish().unwrap_err().to_string();
        // The group is still usable afterwards (every rank launched the same collectives).
        let mut x = Tensor::from_slice(&[1f32]);
        pg.all_reduce("after", &mut x, ReduceOp::Sum).unwrap();
        (e, x.double_value(&[0]))
    });
    for (e, x) in out {
        assert!(
            e.contains("accumulated twice") && e.contains("dist.overlap"),
            "{e}"
        );
        assert_eq!(x, 2.0);
    }
}

/// On a CUDA host (the bundle's tests on the H200): NCCL, world size 1; the hooks run on
/// autograd's CUDA thread and launch asynchronous NCCL work on its stream; the result is the
/// local gradient (the average over one rank), bit for bit.
#[test]
fn nccl_overlapped_reducer_world_size_one_on_cuda() {
    if !tch::Cuda::is_available() {
        eprintln!("no CUDA device: the NCCL reducer is not run here");
        return;
    }
    let pg = ProcessGroup::new(&env(free_port(), 0, 1), Backend::Nccl, T)
        .unwrap_or_else(|e| panic!("{e}"));
    let pg = Arc::new(pg);
    let m = Model::on(Device::Cuda(0));
    let _ = m.g.shallow_clone().zero_();
    m.loss(0).backward();
    let local = grads(&m);
    let starts = bucket_starts(&m.layout(), 40);
    let r = GradReducer::new(pg.clone(), "grads", &m.g, &m.params, &starts, ReduceOp::Avg).unwrap();
    for _ in 0..3 {
        let _ = m.g.shallow_clone().zero_();
        r.arm();
        m.loss(0).backward();
        let done = r.finish().unwrap();
        assert!(
            !done.is_empty(),
            "no bucket completed during the backward pass"
        );
        assert_eq!(grads(&m), local);
    }
}
