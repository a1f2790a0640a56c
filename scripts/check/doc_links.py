#!/usr/bin/env python3
"""Every relative `](target)` in README.md, ARCHITECTURE.md and docs/**/*.md points to an existing
file, and every `#anchor` to a heading of it (GitHub slugs). Code spans and fenced blocks are
skipped. Usage: python3 scripts/check/doc_links.py [ROOT]; exit 1 naming each broken link."""
import re, sys, pathlib
root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else '.').resolve()
files = [root/'README.md', root/'ARCHITECTURE.md'] + sorted((root/'docs').rglob('*.md'))
def slug(h):
    h = h.strip().lower()
    h = re.sub(r'[^\w\- ]', '', h)
    return h.replace(' ', '-')
def anchors(p):
    out=set(); fence=False
    for l in p.read_text().splitlines():
        if l.startswith('```'): fence = not fence; continue
        if not fence and l.startswith('#'):
            out.add(slug(l.lstrip('#')))
    return out
bad = 0; n = 0
for f in files:
    text = f.read_text(); fence = False
    for i, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith('```'): fence = not fence; continue
        if fence: continue
        line = re.sub(r'`[^`]*`', '', line)
        for m in re.finditer(r'\]\(([^)\s]+)\)', line):
            t = m.group(1)
            if re.match(r'^[a-z]+:', t): continue
            n += 1
            path, _, anc = t.partition('#')
            tp = (f.parent / path).resolve() if path else f
            if not tp.exists():
                print(f'{f.relative_to(root)}:{i}: {t}: no such file'); bad += 1
            elif anc and tp.suffix == '.md' and anc not in anchors(tp):
                print(f'{f.relative_to(root)}:{i}: {t}: no heading #{anc}'); bad += 1
print(f'{n} relative links checked, {bad} broken')
sys.exit(1 if bad else 0)
