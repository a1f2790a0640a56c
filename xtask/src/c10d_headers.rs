//! Part of `cargo xtask setup`: the headers the c10d shim of `semhitok-sys` compiles against
//! beyond LibTorch's own (the wheel ships the c10d headers but not these):
//!
//! - Gloo (`ProcessGroupGloo.hpp` includes `<gloo/...>`): Debian's `libgloo-dev`, a 2022
//!   snapshot; the shim only uses the `Options` / device-factory calls, LibTorch's own code builds
//!   the Gloo objects.
//! - CUDA, for the NCCL backend (`ProcessGroupNCCL.hpp` needs `crt/host_config.h` and
//!   `<nv/target>`): PyPI `nvidia-cuda-crt` and `nvidia-cuda-cccl`, matching the CUDA 13 of torch's
//!   other `nvidia-*` dependencies already in `.libtorch/nvidia/`.
//!
//! Each package file is pinned and checked against its sha256 (downloads kept and re-verified in
//! `.assets/downloads/`, as `cargo xtask assets` does), unpacked into `.libtorch/c10d.tmp/` and
//! moved to `.libtorch/c10d/` (`gloo/include`, `cuda/include`) with a stamp naming the packages,
//! so a second run is a no-op.

use crate::assets::{self, Package, RegistryFetcher, Source, Store};
use crate::libtorch::Libtorch;
use anyhow::{Context, Result};
use std::fs;
use std::path::Path;

const STAMP: &str = ".semhitok-c10d-headers.json";

/// The pinned packages: (source, name, version, license, file, size, sha256).
const PACKAGES: &[(Source, &str, &str, &str, &str, u64, &str)] = &[
    (
        Source::Apt,
        "libgloo-dev",
        "0.0~git20220518.5b14351-3",
        "BSD-3-Clause",
        "libgloo-dev_0.0~git20220518.5b14351-3_amd64.deb",
        49080,
        "80529c9fd8af452faf489e686b94bf87075965c40673803810c4f41634b1e299",
    ),
    (
        Source::Pypi,
        "nvidia-cuda-crt",
        "13.0.88",
        "NVIDIA CUDA EULA (redistributable headers)",
        "nvidia_cuda_crt-13.0.88-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        134086,
        "2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4",
    ),
    (
        Source::Pypi,
        "nvidia-cuda-cccl",
        "13.0.85",
        "Apache-2.0 WITH LLVM-exception (CCCL)",
        "nvidia_cuda_cccl-13.0.85-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        3120526,
        "e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649",
    ),
];

fn packages() -> Vec<Package> {
    PACKAGES
        .iter()
        .map(
            |&(source, name, version, license, file, size, sha256)| Package {
                source,
                name: name.into(),
                version: version.into(),
                license: license.into(),
                file: file.into(),
                pip_args: vec![],
                size,
                sha256: sha256.into(),
            },
        )
        .collect()
}

fn stamp_contents() -> String {
    let specs: Vec<String> = PACKAGES
        .iter()
        .map(|p| format!("{} {} {}", p.1, p.2, p.6))
        .collect();
    serde_json::json!({ "c10d_headers": specs }).to_string()
}

/// Install the headers into `.libtorch/c10d/` unless the stamp says they are there.
pub fn ensure(root: &Path, lt: &Libtorch, force: bool) -> Result<()> {
    let dest = lt.site.join("c10d");
    let stamp = dest.join(STAMP);
    let present = dest.join("gloo/include/gloo/algorithm.h").exists()
        && dest.join("cuda/include/crt/host_config.h").exists()
        && dest.join("cuda/include/nv/target").exists();
    if !force && present && fs::read_to_string(&stamp).ok().as_deref() == Some(&stamp_contents()) {
        eprintln!("c10d headers already set up in {}", dest.display());
        return Ok(());
    }
    let mut store = Store::open(root, &root.join(assets::DIR), false)?;
    let fetcher = RegistryFetcher::default();
    let tmp = lt.site.join("c10d.tmp");
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    for mut pkg in packages() {
        let file = assets::fetch_package(&mut store, &mut pkg, &fetcher, false)?;
        let unpacked = tmp.join("unpacked").join(&pkg.name);
        assets::unpack(&file, &unpacked)?;
        let (from, to) = match pkg.source {
            Source::Apt => (unpacked.join("usr/include"), tmp.join("gloo/include")),
            _ => (
                unpacked.join("nvidia/cu13/include"),
                tmp.join("cuda/include"),
            ),
        };
        copy_tree(&from, &to)
            .with_context(|| format!("{}: expected headers under {}", pkg.file, from.display()))?;
    }
    store.save()?;
    fs::remove_dir_all(tmp.join("unpacked"))?;
    fs::write(tmp.join(STAMP), stamp_contents())?;
    let _ = fs::remove_dir_all(&dest);
    fs::rename(&tmp, &dest)
        .with_context(|| format!("moving {} to {}", tmp.display(), dest.display()))?;
    eprintln!(
        "c10d headers (libgloo-dev, nvidia-cuda-crt, nvidia-cuda-cccl) ready in {}",
        dest.display()
    );
    Ok(())
}

/// Copy the regular files under `from` into `to`, keeping relative paths (merging folders).
fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    fs::create_dir_all(to)?;
    for e in fs::read_dir(from).with_context(|| format!("listing {}", from.display()))? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ty = e.file_type()?;
        if ty.is_dir() {
            copy_tree(&src, &dst)?;
        } else if ty.is_file() {
            fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_are_pinned_and_checksummed() {
        for p in packages() {
            assert_eq!(p.sha256.len(), 64, "{}", p.name);
            assert!(p.size > 0 && p.file.contains(&p.version), "{}", p.name);
        }
        assert!(stamp_contents().contains("libgloo-dev 0.0~git20220518.5b14351-3"));
    }
}
