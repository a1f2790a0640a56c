"""Why the frozen EfficientNet runs folded and channels-last on the CPU: PyTorch CPU time of the
perceptual-loss pattern (forward on a reconstruction with autograd, forward on the target without,
backward to the reconstruction) through an EfficientNet-Lite0-shaped network (random weights,
frozen, eval mode), batch 16 x 64 px (the demo's shapes), in four variants: with batch norms or
folded (conv + bias), NCHW or channels-last. Alternating rounds; prints ms per pass per variant.
Usage: PYTHONPATH=.libtorch python3 scripts/bench_effnet_layout_torch.py [--threads 2] [--rounds 3]"""
import argparse
import json
import time

import torch
import torch.nn as nn

# Lite0 stages: (expand, kernel, stride, out, repeats); 32-ch stem, ReLU6, no squeeze-excite.
STAGES = [(1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1)]


def conv(cin, cout, k, s, groups, bn):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=not bn)]
    return layers + ([nn.BatchNorm2d(cout, eps=1e-3)] if bn else [])


class Block(nn.Module):
    def __init__(self, cin, e, k, s, cout, bn):
        super().__init__()
        mid = cin * e
        layers = []
        if e != 1:
            layers += conv(cin, mid, 1, 1, 1, bn) + [nn.ReLU6()]
        layers += conv(mid, mid, k, s, mid, bn) + [nn.ReLU6()] + conv(mid, cout, 1, 1, 1, bn)
        self.f = nn.Sequential(*layers)
        self.skip = s == 1 and cin == cout

    def forward(self, x):
        y = self.f(x)
        return y + x if self.skip else y


def lite0(bn):
    layers, c = conv(3, 32, 3, 2, 1, bn) + [nn.ReLU6()], 32
    for e, k, s, o, n in STAGES:
        for i in range(n):
            layers.append(Block(c, e, k, s if i == 0 else 1, o, bn))
            c = o
    net = nn.Sequential(*layers).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def time_pass(net, channels_last, iters):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 64, 64, generator=g).contiguous(memory_format=fmt)
    y = torch.randn(16, 3, 64, 64, generator=g).contiguous(memory_format=fmt)

    def one():
        xx = x.clone().requires_grad_(True)
        a = net(xx)
        with torch.no_grad():
            b = net(y)
        ((a - b) ** 2).mean().backward()

    for _ in range(3):
        one()
    t = time.perf_counter()
    for _ in range(iters):
        one()
    return (time.perf_counter() - t) / iters * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    nets = {"bn": lite0(True), "folded": lite0(False)}
    res = {}
    for _ in range(a.rounds):
        for kind, net in nets.items():
            for cl in (False, True):
                key = f"{kind}/{'channels_last' if cl else 'nchw'}"
                res.setdefault(key, []).append(time_pass(net, cl, a.iters))
    base = min(res["bn/nchw"])
    print(json.dumps({
        "torch": torch.__version__, "threads": a.threads, "batch": 16, "size": 64,
        "ms_per_pass_best": {k: round(min(v), 1) for k, v in res.items()},
        "speedup_vs_bn_nchw": {k: round(base / min(v), 2) for k, v in res.items()},
        "ms_per_pass_all": {k: [round(t, 1) for t in v] for k, v in res.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
