"""Convert a Hugging Face checkpoint that ships only `pytorch_model*.bin` pickles (Vicuna-7B v1.5
does) into safetensors that `semhitok-mllm` loads (`Weights::from_hf_dir`).

    PYTHONPATH=.libtorch python3 scripts/convert_pickle_to_safetensors.py IN_DIR [OUT_DIR]

IN_DIR holds `pytorch_model.bin`, or shards `pytorch_model-0000k-of-0000n.bin` named by
`pytorch_model.bin.index.json`. Each pickle is read with `torch.load(weights_only=True)` (no code
from the file is run). The output (OUT_DIR, default IN_DIR) gets one `model.safetensors` per input
file (`model-0000k-of-0000n.safetensors` + `model.safetensors.index.json` for shards), tensors kept
in their stored dtype, made contiguous, and tensors that share storage (a tied `lm_head.weight`)
written as separate copies (safetensors forbids shared storage). Files are written to a temporary
name and renamed. Every written tensor is read back and compared bit for bit. Other files
(config.json, tokenizer files) are copied when OUT_DIR differs.
(torch 2.11.0, safetensors 0.5.3 from .libtorch)
"""
import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file, save_file


def convert_file(src, dst):
    sd = torch.load(src, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        sys.exit(f"{src}: not a state dict of tensors")
    out = {k: v.detach().clone().contiguous() for k, v in sd.items()}
    tmp = dst + ".tmp"
    save_file(out, tmp, metadata={"format": "pt"})
    back = load_file(tmp)
    assert back.keys() == out.keys(), f"{dst}: keys differ after writing"
    for k, v in out.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), f"{dst}: {k} differs"
    os.replace(tmp, dst)
    return list(out.keys())


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    src_dir = sys.argv[1]
    dst_dir = sys.argv[2] if len(sys.argv) == 3 else src_dir
    os.makedirs(dst_dir, exist_ok=True)
    index = os.path.join(src_dir, "pytorch_model.bin.index.json")
    if os.path.exists(index):
        with open(index) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        n = len(shards)
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{n:05d}.safetensors"
            for k in convert_file(os.path.join(src_dir, shard), os.path.join(dst_dir, name)):
                weight_map[k] = name
            print(f"{shard} -> {name}")
        tmp = os.path.join(dst_dir, "model.safetensors.index.json.tmp")
        with open(tmp, "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f, indent=2)
        os.replace(tmp, os.path.join(dst_dir, "model.safetensors.index.json"))
    elif os.path.exists(os.path.join(src_dir, "pytorch_model.bin")):
        convert_file(os.path.join(src_dir, "pytorch_model.bin"), os.path.join(dst_dir, "model.safetensors"))
        print("pytorch_model.bin -> model.safetensors")
    else:
        sys.exit(f"{src_dir}: no pytorch_model.bin or pytorch_model.bin.index.json")
    if os.path.abspath(dst_dir) != os.path.abspath(src_dir):
        for f in os.listdir(src_dir):
            if f.endswith(".json") and not f.startswith("pytorch_model") or f in ("tokenizer.model",):
                shutil.copy(os.path.join(src_dir, f), os.path.join(dst_dir, f))


if __name__ == "__main__":
    main()
