//! The NCCL backend: a clear error without a GPU; on a CUDA host (the bundle's tests on the
//! H200), a world-size-1 group runs every collective on CUDA tensors.

use super::common::{env, free_port};
use semhitok_sys::{Backend, Error, ProcessGroup, ReduceOp};
use std::time::Duration;
use tch::{Device, Tensor};

#[test]
fn nccl_without_a_gpu_is_a_clear_error() {
    if tch::Cuda::is_available() {
        return; // covered by nccl_world_size_one_on_cuda
    }
    let e = ProcessGroup::new(
        &env(free_port(), 0, 1),
        Backend::Nccl,
        Duration::from_secs(5),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Error::Init {
                backend: "nccl",
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn nccl_world_size_one_on_cuda() {
    if !tch::Cuda::is_available() {
        eprintln!("no CUDA device: NCCL collectives not run here");
        return;
    }
    let pg = ProcessGroup::new(
        &env(free_port(), 0, 1),
        Backend::Nccl,
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let dev = Device::Cuda(0);
    let v = |t: &Tensor| Vec::<f32>::try_from(t.to_device(Device::Cpu)).unwrap();
    let mut x = Tensor::from_slice(&[1f32, 2.0, 3.0]).to_device(dev);
    pg.all_reduce("x", &mut x, ReduceOp::Avg).unwrap();
    pg.all_reduce("x", &mut x, ReduceOp::Sum).unwrap();
    assert_eq!(v(&x), [1.0, 2.0, 3.0]);
    pg.broadcast("x", &mut x, 0).unwrap();
    let g = pg.all_gather("x", &x).unwrap();
    assert_eq!(g.device(), dev);
    assert_eq!(v(&g), [1.0, 2.0, 3.0]);
    pg.barrier("end").unwrap();
}
