//! The nearest-code search (`quantizer::nearest_l2`): on CUDA the fused NVRTC kernel, on the
//! CPU the GEMM path. Both are checked against an fp64 argmin: wherever the fp64 gap between
//! the best code and the best code that is not bit-identical to it exceeds the fp32 rounding
//! bound, the ids must be the fp64 argmin; exact duplicates must go to the lowest index. The
//! number of rows inside the bound is printed.

use semhitok_nn::cuda::kernel::spills;
use semhitok_nn::cuda::nearest::{self, Kernel};
use semhitok_nn::cuda::sghc;
use semhitok_nn::quantizer::nearest_l2;
use semhitok_nn::test_device;
use tch::{Device, Kind, Tensor};

/// The kernel sources compile with the NVRTC of the PyTorch wheel (no GPU needed), without
/// register spills at the SPC's D = 32 (a spill would cost more than the kernel's whole margin).
/// The spill check reads ptxas's report from every compile of that D (v2 and v3 share one
/// module, so each compile of it reports both); an NVRTC that returns no report for an entry
/// (the H200 host's returned an empty log for the second compile of the same module) is noted,
/// not failed.
#[test]
fn fused_search_kernels_compile_with_the_wheels_nvrtc() {
    // The report parser on ptxas's own wording.
    let r = "ptxas info    : Function properties for k\nptxas         .     16 bytes stack frame, 16 bytes spill stores, 16 bytes spill loads";
    assert_eq!(spills(r, "k"), Some(true));
    assert_eq!(
        spills(
            &r.replace("16 bytes spill stores", "0 bytes spill stores"),
            "k"
        ),
        Some(false)
    );
    assert_eq!(spills(r, "other"), None);
    let mut logs32 = String::new();
    for kernel in Kernel::ALL {
        for (dim, arch) in [(32, 90), (8, 90), (3, 80), (44, 90), (17, 90)] {
            if !kernel.supports(dim, arch) {
                continue;
            }
            let (cubin, log) = nearest::compile(kernel, dim, arch)
                .unwrap_or_else(|e| panic!("{} D={dim}: {e}", kernel.name()));
            assert_eq!(&cubin[..4], b"\x7fELF", "D={dim}: not a cubin");
            eprintln!("{} D={dim} sm_{arch}: {log}", kernel.name());
            if dim == 32 {
                logs32.push_str(&log);
                logs32.push('\n');
            }
        }
    }
    for entry in ["nearest_v3", "nearest_tc", "nearest_tc256", "nearest_tc1"] {
        match spills(&logs32, entry) {
            Some(spill) => assert!(!spill, "{entry} D=32 spills registers:\n{logs32}"),
            None => eprintln!("{entry} D=32: NVRTC gave no ptxas report; spill check skipped"),
        }
    }
    for dim in [8, 3, 32] {
        let (cubin, log) = sghc::compile(dim, 90).unwrap_or_else(|e| panic!("sghc D={dim}: {e}"));
        assert_eq!(&cubin[..4], b"\x7fELF");
        eprintln!("sghc D={dim}: {log}");
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
        // Each score's fp32 error, in units of cc - 2 z.c: |c|^2 (<= gamma_D |c|^2) and the
        // dot-product chain, whatever its start value (v2: z.c then cc - 2 z.c; v3 / tc: one
        // FMA chain from -cc/2), <= gamma_{D+1} (|c|^2 + 2 sum |z_d c_d|) + 2 u (..); two
        // scores compared: twice that (nearest.rs).
        let g = gamma(d as f64 + 1.0);
        let bound = 4.0 * g * (cnorm_max + zmax * cmax) + 8.0 * u * (cnorm_max + zmax * cmax);
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

/// The searches to check on `dev`: the GEMM path on the CPU; on CUDA the default
/// (`nearest_l2`) and every kernel that supports `d` (no fallback).
fn searches(dev: Device, z: &Tensor, c: &Tensor) -> Vec<(String, Tensor)> {
    let mut out = vec![("default".to_string(), nearest_l2(z, c).unwrap())];
    if let Device::Cuda(o) = dev {
        let arch = nearest::compute_capability(o as i32).unwrap();
        for k in Kernel::ALL {
            if k.supports(c.size()[1], arch) {
                let ids = nearest::nearest_l2_fused_with(z, c, k, false)
                    .unwrap_or_else(|e| panic!("kernel {}: {e}", k.name()));
                out.push((k.name().to_string(), ids));
            }
        }
    }
    out
}

/// Every search's ids against fp64; on CUDA also: `tc`, `tc256` and `tc1` return exactly `v3`'s
/// ids.
fn check_all(dev: Device, z: &Tensor, c: &Tensor, what: &str, inside: &mut Vec<String>) {
    let all = searches(dev, z, c);
    for (name, ids) in &all {
        let n = check_against_f64(z, c, ids, &format!("{what} [{name}]"));
        inside.push(format!("{what} [{name}]: {n}"));
    }
    let get = |n: &str| all.iter().find(|(k, _)| k == n).map(|(_, t)| t);
    if let Some(v3) = get("v3") {
        for name in ["tc", "tc256", "tc1"] {
            if let Some(tc) = get(name) {
                let differ = v3.ne_tensor(tc).sum(Kind::Int64).int64_value(&[]);
                assert_eq!(differ, 0, "{what}: {name} differs from v3 on {differ} rows");
            }
        }
    }
}

fn search_matches_f64(dev: Device) -> Result<(), tch::TchError> {
    tch::manual_seed(3);
    let mut inside = vec![];
    // Random: the SPC's case (unit codes, unit inputs), and odd sizes that are no multiple of
    // the tiles.
    for (m, k, d, normalized) in [
        (2000, 1000, 32, true),
        (257, 131, 8, false),
        (130, 129, 3, false),
        (300, 200, 44, false),
    ] {
        let mut z = Tensor::randn([m, d], (Kind::Float, dev));
        let mut c = Tensor::randn([k, d], (Kind::Float, dev));
        if normalized {
            z = unit(z);
            c = unit(c);
        }
        check_all(dev, &z, &c, &format!("random {m}x{k}x{d}"), &mut inside);
    }
    // Near-ties (tc's re-check): unit codes in tight clusters of 8 around 64 centres, unit
    // inputs near the centres; many codes within the tensor-core window of the best.
    {
        let centres = unit(Tensor::randn([64, 32], (Kind::Float, dev)));
        let c = unit(
            centres.repeat_interleave_self_int(8, Some(0), None)
                + Tensor::randn([512, 32], (Kind::Float, dev)) * 1e-3,
        );
        let z =
            unit(centres.repeat([20, 1]) + Tensor::randn([1280, 32], (Kind::Float, dev)) * 1e-3);
        check_all(dev, &z, &c, "clustered 1280x512x32", &mut inside);
    }
    // Zero rows against unit codes: every code is within tc's window of the best, so its
    // candidate list overflows and the inline re-check runs (same ids as v3 still).
    {
        let c = unit(Tensor::randn([1000, 32], (Kind::Float, dev)));
        let z = Tensor::zeros([200, 32], (Kind::Float, dev));
        check_all(dev, &z, &c, "zero rows 200x1000x32", &mut inside);
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
    for (name, ids) in searches(dev, &z, &c) {
        let got: Vec<i64> = Vec::try_from(ids.narrow(0, 0, 6).to_device(Device::Cpu)).unwrap();
        assert_eq!(
            got,
            vec![5, 5, 5, 149, 149, 3],
            "[{name}] duplicates resolve to the lowest index"
        );
    }
    check_all(dev, &z, &c, "adversarial", &mut inside);
    // Exact ties of distinct codes: all codes equidistant from the zero row (unit codes of
    // equal norm up to rounding are not exact ties; these are: +-e_i).
    let eye = Tensor::eye(8, (Kind::Float, dev));
    let c = Tensor::cat(&[&eye, &(-&eye)], 0);
    let z = Tensor::zeros([3, 8], (Kind::Float, dev));
    for (name, ids) in searches(dev, &z, &c) {
        let got: Vec<i64> = Vec::try_from(ids.to_device(Device::Cpu)).unwrap();
        assert_eq!(
            got,
            vec![0, 0, 0],
            "[{name}] exact ties go to the lowest index"
        );
    }
    eprintln!("{dev:?}: rows within the rounding bound (not compared): {inside:?}");
    Ok(())
}
test_device!(
    search_matches_f64,
    search_matches_f64_cpu,
    search_matches_f64_cuda
);

/// SGHC's sub-codebook search (`sghc::search`: the fused kernel on CUDA, the gather path on
/// the CPU; on CUDA both) against an fp64 argmin over each token's m candidates: ids equal it
/// wherever the gap exceeds `gamma_{D+2} (d1 + d2)`, exact duplicates go to the lowest j.
fn sghc_search_matches_f64(dev: Device) -> Result<(), tch::TchError> {
    use semhitok_nn::sghc::{search, search_gather};
    tch::manual_seed(5);
    let (ks, m, d, n) = (97i64, 12i64, 8i64, 3000i64);
    let codes = unit(Tensor::randn([ks, m, d], (Kind::Float, dev)));
    // Duplicates inside sub-codebook 0 and 1: j = 7 copies j = 2, j = 11 copies j = 0.
    for (s, dst, src) in [(0i64, 7i64, 2i64), (1, 11, 0)] {
        let row = codes.get(s).get(src).copy();
        codes.get(s).get(dst).copy_(&row);
    }
    let sem = Tensor::randint(ks, [n], (Kind::Int64, dev));
    let _ = sem
        .narrow(0, 0, 2)
        .copy_(&Tensor::from_slice(&[0i64, 1]).to_device(dev));
    let z = unit(Tensor::randn([n, d], (Kind::Float, dev)));
    // Token 0 is sub-code (0, 2) exactly, token 1 is (1, 0): their duplicates tie.
    let _ = z.get(0).copy_(&codes.get(0).get(2));
    let _ = z.get(1).copy_(&codes.get(1).get(0));
    let mut runs = vec![("search", search(&z, &codes, &sem).unwrap().0)];
    if dev.is_cuda() {
        runs.push(("gather", search_gather(&z, &codes, &sem).unwrap().0));
    }
    let z64: Vec<f64> =
        Vec::try_from(z.to_device(Device::Cpu).to_kind(Kind::Double).reshape([-1])).unwrap();
    let c64: Vec<f64> = Vec::try_from(
        codes
            .to_device(Device::Cpu)
            .to_kind(Kind::Double)
            .reshape([-1]),
    )
    .unwrap();
    let semv: Vec<i64> = Vec::try_from(sem.to_device(Device::Cpu)).unwrap();
    let u = f64::powi(2.0, -24);
    let gamma = (d as f64 + 2.0) * u / (1.0 - (d as f64 + 2.0) * u);
    for (name, j) in runs {
        let j: Vec<i64> = Vec::try_from(j.to_device(Device::Cpu)).unwrap();
        assert_eq!(&j[..2], &[2, 0], "[{name}] duplicates go to the lowest j");
        let mut inside = 0;
        for i in 0..n as usize {
            let zi = &z64[i * d as usize..(i + 1) * d as usize];
            let code = |jj: usize| {
                let o = ((semv[i] * m) as usize + jj) * d as usize;
                &c64[o..o + d as usize]
            };
            let dist: Vec<f64> = (0..m as usize)
                .map(|jj| zi.iter().zip(code(jj)).map(|(a, b)| (a - b).powi(2)).sum())
                .collect();
            let best = (0..m as usize)
                .min_by(|&a, &b| dist[a].total_cmp(&dist[b]).then(a.cmp(&b)))
                .unwrap();
            let g = j[i] as usize;
            assert!(g < m as usize, "[{name}] token {i}: j {g} out of range");
            if code(g) == code(best) {
                let lowest = (0..m as usize).find(|&x| code(x) == code(best)).unwrap();
                assert_eq!(g, lowest, "[{name}] token {i}: tie not to the lowest j");
                continue;
            }
            let second = (0..m as usize)
                .filter(|&x| code(x) != code(best))
                .map(|x| dist[x])
                .fold(f64::INFINITY, f64::min);
            if second - dist[best] > gamma * (dist[best] + second) * 1.01 {
                panic!(
                    "[{name}] token {i}: j {g}, fp64 argmin {best}, gap {}",
                    second - dist[best]
                );
            }
            inside += 1;
        }
        eprintln!("{dev:?} sghc [{name}]: tokens within the rounding bound: {inside}");
    }
    Ok(())
}
test_device!(
    sghc_search_matches_f64,
    sghc_search_matches_f64_cpu,
    sghc_search_matches_f64_cuda
);

/// `amp::autocast` turns CUDA autocast on inside and restores the previous state after
/// (nested too); without CUDA it only runs the closure.
#[test]
fn autocast_region_sets_and_restores() {
    use semhitok_nn::amp::{autocast, is_cuda_autocast_enabled};
    if !tch::Cuda::is_available() {
        assert_eq!(autocast(true, || 7), 7);
        return;
    }
    assert!(!is_cuda_autocast_enabled());
    let inner = autocast(true, || {
        let on = is_cuda_autocast_enabled();
        let off = autocast(false, is_cuda_autocast_enabled);
        (on, off, is_cuda_autocast_enabled())
    });
    assert_eq!(inner, (true, false, true));
    assert!(!is_cuda_autocast_enabled());
    // Autocast (fp16 or bf16, whichever dtype is set) reaches a CUDA matmul inside only.
    let a = Tensor::ones([4, 4], (Kind::Float, Device::Cuda(0)));
    assert_ne!(autocast(true, || a.matmul(&a)).kind(), Kind::Float);
    assert_eq!(a.matmul(&a).kind(), Kind::Float);
}
