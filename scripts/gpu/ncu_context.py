"""Where in one step a kernel runs: for every launch whose name matches PATTERN (a Python regex), print the kernels
launched just before and after it (name, grid and block size, time), from an `ncu --csv` file made
with `--metrics gpu__time_duration.sum,launch__grid_size,launch__block_size` (scripts/gpu/ncu_step.sh).
Launches with the same neighbourhood are printed once, with a count.
Usage: python3 ncu_context.py FILE.csv PATTERN [--before 4] [--after 2]"""
import argparse
import csv
import io
import re
from collections import OrderedDict


def load(path):
    text = open(path, errors="replace").read()
    start = text.find('"ID"')
    launches = OrderedDict()
    for r in csv.DictReader(io.StringIO(text[start:] if start >= 0 else "")):
        k = launches.setdefault(r["ID"], {"name": r["Kernel Name"]})
        k[r["Metric Name"]] = r["Metric Value"].replace(",", "")
    return list(launches.values())


def fmt(k):
    t = float(k.get("gpu__time_duration.sum", "nan")) / 1e3
    g, b = k.get("launch__grid_size", "?"), k.get("launch__block_size", "?")
    return f"{t:8.1f} us grid {g:>7} block {b:>4}  {k['name'][:150]}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("pattern")
    ap.add_argument("--before", type=int, default=4)
    ap.add_argument("--after", type=int, default=2)
    a = ap.parse_args()
    ks = load(a.csv)
    groups = OrderedDict()
    pat = re.compile(a.pattern)
    for i, k in enumerate(ks):
        if pat.search(k["name"]):
            ctx = ks[max(0, i - a.before): i + a.after + 1]
            key = tuple(c["name"][:120] for c in ctx)
            g = groups.setdefault(key, {"n": 0, "first": i, "ctx": ctx})
            g["n"] += 1
    print(f"== {a.csv}: {sum(g['n'] for g in groups.values())} launches matching {a.pattern!r} "
          f"of {len(ks)}, {len(groups)} distinct neighbourhoods")
    for g in groups.values():
        print(f"-- {g['n']}x, first at launch {g['first']}:")
        for c in g["ctx"]:
            mark = ">>" if pat.search(c["name"]) else "  "
            print(f"  {mark} {fmt(c)}")


if __name__ == "__main__":
    main()
