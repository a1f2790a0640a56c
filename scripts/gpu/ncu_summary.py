"""Summarise `ncu --csv --metrics gpu__time_duration.sum` outputs: kernel count and total time,
then the top kernels by total time, per file. Usage: python3 ncu_summary.py A.csv [B.csv ...]"""
import csv
import io
import sys
from collections import defaultdict


def load(path):
    text = open(path, errors="replace").read()
    start = text.find('"ID"')
    if start < 0:
        return []
    rows = []
    for r in csv.DictReader(io.StringIO(text[start:])):
        if r.get("Metric Name") == "gpu__time_duration.sum":
            try:
                rows.append((r["Kernel Name"], float(r["Metric Value"].replace(",", ""))))
            except (KeyError, ValueError):
                pass
    return rows


for path in sys.argv[1:]:
    rows = load(path)
    agg = defaultdict(lambda: [0, 0.0])
    for name, ns in rows:
        short = name.split("(")[0][:90]
        agg[short][0] += 1
        agg[short][1] += ns
    total = sum(v[1] for v in agg.values())
    print(f"== {path}: {len(rows)} kernels, {total / 1e6:.2f} ms kernel time")
    for name, (n, ns) in sorted(agg.items(), key=lambda kv: -kv[1][1])[:40]:
        print(f"{ns / 1e6:9.3f} ms {n:5d}x  {name}")
