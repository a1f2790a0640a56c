//! The nearest-code search (`quantizer::nearest_l2`): on CUDA the fused NVRTC kernel, on the
//! CPU the GEMM path. Both are checked against an fp64 argmin: wherever the fp64 gap between
//! the best code and the best code that is not bit-identical to it exceeds the fp32 rounding
//! bound, the ids must be the fp64 argmin; exact duplicates must go to the lowest index. The
//! number of rows inside the bound is printed.

use semhitok_nn::cuda::nearest;
use semhitok_nn::quantizer::nearest_l2;
use semhitok_nn::test_device;
use tch::{Device, Kind, Tensor};

/// The kernel source compiles with the NVRTC of the PyTorch wheel (no GPU needed).
#[test]
fn fused_search_kernel_compiles_with_the_wheels_nvrtc() {
    for (dim, arch) in [(32, 90), (8, 90), (3, 80)] {
        let (cubin, log) = nearest::compile(dim, arch).unwrap_or_else(|e| panic!("D={dim}: {e}"));
        assert_eq!(&cubin[..4], b"\x7fELF", "D={dim}: not a cubin");
        eprintln!("D={dim} sm_{arch}: {log}");
        // The 8 x 8 accumulators must stay in registers (a spill would cost more than the
        // matrix the kernel avoids).
        if dim == 32 {
            assert!(log.contains("0 bytes spill stores"), "D={dim}: {log}");
        }
    }
}

/// fp64 check of `ids` for z `[M, D]`, codes `[K, D]`; returns the rows inside the bound.
fn check_against_f64(z: &Tensor, c: &Tensor, ids: &Tensor, what: &str) -> usize {
    let z64 = z.to_device(Device::Cpu).to_kind(Kind::Double);
    let c64 = c.to_device(Device::Cpu).to_kind(Kind::Double);
    let (m, d) = z64.size2().unwrap();
    let k = c64.size()[0];
    let cc = c64
        .square()
        .sum_dim_intlist([-1i64].as_slice(), false, Kind::Double);
    let s = cc.unsqueeze(0) - z64.matmul(&c64.tr()) * 2.0;
    let s: Vec<f64> = Vec::try_from(s.reshape([-1])).unwrap();
    let cv: Vec<f32> = Vec::try_from(c.to_device(Device::Cpu).reshape([-1])).unwrap();
    let zv: Vec<f64> = Vec::try_from(z64.reshape([-1])).unwrap();
    let got: Vec<i64> = Vec::try_from(ids.to_device(Device::Cpu)).unwrap();
    assert_eq!(got.len() as i64, m, "{what}: ids length");
    let code = |j: usize| &cv[j * d as usize..(j + 1) * d as usize];
    let cmax = (0..k as usize)
        .map(|j| code(j).iter().map(|x| (*x as f64).abs()).sum::<f64>())
        .fold(0f64, f64::max);
    let cnorm_max = (0..k as usize)
        .map(|j| code(j).iter().map(|x| (*x as f64).powi(2)).sum::<f64>())
        .fold(0f64, f64::max);
    let u = f64::powi(2.0, -24);
    let gamma = |n: f64| n * u / (1.0 - n * u);
    let mut inside = 0;
    for i in 0..m as usize {
        let row = &s[i * k as usize..(i + 1) * k as usize];
        let zmax = zv[i * d as usize..(i + 1) * d as usize]
            .iter()
            .map(|x| x.abs())
            .fold(0f64, f64::max);
        // Each score's fp32 error: the dot product (<= gamma_D * sum |z_d c_d|, doubled), |c|^2
        // (<= gamma_D * |c|^2) and the final subtraction; two scores compared: twice that.
        let bound = 2.0 * (2.0 * gamma(d as f64) * zmax * cmax + gamma(d as f64 + 1.0) * cnorm_max)
            + 4.0 * u * (cnorm_max + 2.0 * zmax * cmax);
        let best = (0..k as usize)
            .min_by(|&a, &b| row[a].total_cmp(&row[b]).then(a.cmp(&b)))
            .unwrap();
        let second = (0..k as usize)
            .filter(|&j| code(j) != code(best))
            .map(|j| row[j])
            .fold(f64::INFINITY, f64::min);
        let g = got[i] as usize;
        assert!(g < k as usize, "{what}: row {i}: id {g} out of range");
        if code(g) == code(best) {
            // The same code vector: ties go to the lowest index.
            let lowest = (0..k as usize).find(|&j| code(j) == code(best)).unwrap();
            assert_eq!(
                g, lowest,
                "{what}: row {i}: tie not resolved to the lowest index"
            );
        } else if second - row[best] > bound {
            panic!(
                "{what}: row {i}: id {g} (score {}), fp64 argmin {best} (score {}), gap {} > bound {bound}",
                row[g],
                row[best],
                second - row[best]
            );
        } else {
            inside += 1;
        }
    }
    inside
}

fn unit(t: Tensor) -> Tensor {
    let n = t
        .square()
        .sum_dim_intlist([-1i64].as_slice(), true, Kind::Float)
        .sqrt();
    t / n.clamp_min(1e-12)
}

fn search_matches_f64(dev: Device) -> Result<(), tch::TchError> {
    tch::manual_seed(3);
    let mut inside = vec![];
    // Random: the SPC's case (unit codes), and odd sizes that are no multiple of the tiles.
    for (m, k, d, normalized) in [
        (2000, 1000, 32, true),
        (257, 131, 8, false),
        (130, 129, 3, false),
    ] {
        let z = Tensor::randn([m, d], (Kind::Float, dev));
        let mut c = Tensor::randn([k, d], (Kind::Float, dev));
        if normalized {
            c = unit(c);
        }
        let ids = nearest_l2(&z, &c).unwrap();
        inside.push(check_against_f64(
            &z,
            &c,
            &ids,
            &format!("random {m}x{k}x{d}"),
        ));
    }
    // Adversarial: duplicated codes (exact ties), rows equal to codes, zero rows, codes of
    // distinct norms.
    let k = 300;
    let c = Tensor::randn([k, 16], (Kind::Float, dev))
        * Tensor::arange(k, (Kind::Float, dev))
            .unsqueeze(1)
            .g_add_scalar(1.0)
            .sqrt();
    for (dst, src) in [(77, 5), (299, 5), (150, 149), (200, 3)] {
        let row = c.get(src).copy();
        c.get(dst).copy_(&row);
    }
    let z = Tensor::cat(
        &[
            c.index_select(
                0,
                &Tensor::from_slice(&[5i64, 77, 299, 149, 150, 3]).to_device(dev),
            ),
            Tensor::zeros([4, 16], (Kind::Float, dev)),
            Tensor::randn([60, 16], (Kind::Float, dev)) * 3.0,
        ],
        0,
    );
    let ids = nearest_l2(&z, &c).unwrap();
    let got: Vec<i64> = Vec::try_from(ids.narrow(0, 0, 6).to_device(Device::Cpu)).unwrap();
    assert_eq!(
        got,
        vec![5, 5, 5, 149, 149, 3],
        "duplicates resolve to the lowest index"
    );
    inside.push(check_against_f64(&z, &c, &ids, "adversarial"));
    eprintln!("{dev:?}: rows within the rounding bound (not compared): {inside:?}");
    Ok(())
}
test_device!(
    search_matches_f64,
    search_matches_f64_cpu,
    search_matches_f64_cuda
);
