//! Integration tests of semhitok-nn (one test binary for the crate; modules per topic).

mod device {
    use semhitok_nn::test_device;
    use tch::{Kind, Tensor};

    fn matmul_runs(dev: tch::Device) -> Result<(), tch::TchError> {
        let a = Tensor::f_ones([4, 8], (Kind::Float, dev))?;
        let b = a.f_matmul(&a.f_tr()?)?;
        let v = b.f_sum(Kind::Float)?.double_value(&[]);
        assert_eq!(v, 4.0 * 4.0 * 8.0);
        Ok(())
    }
    test_device!(matmul_runs, matmul_runs_cpu, matmul_runs_cuda);
}

#[path = "nn/discriminator.rs"]
mod discriminator;
#[path = "nn/efficientnet.rs"]
mod efficientnet;
#[path = "nn/fid.rs"]
mod fid;
#[path = "nn/lpips.rs"]
mod lpips;
#[path = "nn/model.rs"]
mod model;
#[path = "nn/pretrained.rs"]
mod pretrained;
#[path = "nn/search.rs"]
mod search;
#[path = "nn/sghc.rs"]
mod sghc;
#[path = "nn/siglip.rs"]
mod siglip;
#[path = "nn/spc.rs"]
mod spc;
#[path = "nn/teach_util.rs"]
mod teach_util;
#[path = "nn/vit.rs"]
mod vit;
