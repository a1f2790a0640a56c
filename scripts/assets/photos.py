"""Real photographs from Debian and PyPI packages, with per-file licenses.

Outputs (under --out):
  photos/<source>__<name>.<ext>   original bytes, unchanged
  photos/manifest.json            one entry per file: source package + version, original path,
                                  license, copyright/credit, sha256, width, height, mode

Selection (see ../../docs/assets.md and /work/shared/research/offline-assets.md):
  lomiri   lomiri-wallpapers-16.04  /usr/share/backgrounds/*.jpg (all photos), license per file
           from the package's debian/copyright
  mate     mate-backgrounds         /usr/share/backgrounds/mate/nature/*.jpg
  plasma   plasma-workspace-wallpapers  the 11 photo themes; one file per theme (the largest),
           size variants are copies or symlinks of each other
  opencv   opencv-doc               25 colour photos of examples/data, picked by name
  skimage  scikit-image             the colour photos bundled in skimage/data
"""

import fnmatch
import glob
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import copy, die, parse_args, pkg, sha256, write_json  # noqa: E402

PLASMA_THEMES = [
    "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
    "Grey", "Kite", "OneStandsOut", "Path", "summer_1am",
]
OPENCV_PHOTOS = [
    "aero1.jpg", "aero3.jpg", "aloeL.jpg", "aloeR.jpg", "apple.jpg", "baboon.jpg", "board.jpg",
    "building.jpg", "butterfly.jpg", "chicky_512.png", "ela_original.jpg", "fruits.jpg",
    "graf1.png", "graf3.png", "home.jpg", "leuvenA.jpg", "leuvenB.jpg", "licenseplate_motion.jpg",
    "messi5.jpg", "orange.jpg", "rubberwhale1.png", "rubberwhale2.png", "smarties.png",
    "squirrel_cls.jpg", "stuff.jpg",
]
OPENCV_LICENSE = "Apache-2.0 AND BSD-3-Clause"  # debian/copyright `Files: *`; no per-image provenance
# (file, license, credit) from the docstrings of skimage/data/_fetchers.py
SKIMAGE_PHOTOS = [
    ("astronaut.png", "public-domain", "NASA (Eileen Collins), NASA Great Images database"),
    ("chelsea.png", "CC0-1.0", "Stefan van der Walt"),
    ("coffee.png", "CC0-1.0", "Rachel Michetti"),
    ("hubble_deep_field.jpg", "public-domain", "NASA / HubbleSite"),
    ("ihc.png", "public-domain", "Kilbad (Wikipedia)"),
    ("motorcycle_left.png", "research-use (Middlebury 2014 stereo benchmark, bundled in BSD-3-Clause scikit-image)",
     "Scharstein et al., Middlebury College"),
    ("motorcycle_right.png", "research-use (Middlebury 2014 stereo benchmark, bundled in BSD-3-Clause scikit-image)",
     "Scharstein et al., Middlebury College"),
    ("retina.jpg", "CC0-1.0", "Mikael Haggstrom (Wikimedia Commons)"),
    ("rocket.jpg", "public-domain", "SpaceX"),
]


def parse_dep5(path):
    """Debian machine-readable copyright -> list of (patterns, license, copyright)."""
    stanzas, cur, key = [], {}, None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                if cur:
                    stanzas.append(cur)
                cur, key = {}, None
                continue
            if line[0] in " \t" and key:
                cur[key] += "\n" + line.strip()
            elif ":" in line:
                key, val = line.split(":", 1)
                cur[key] = val.strip()
    if cur:
        stanzas.append(cur)
    out = []
    for s in stanzas:
        if "Files" in s and "License" in s:
            pats = s["Files"].split()
            lic = s["License"].split("\n")[0].strip()
            cr = " ".join(x.strip() for x in s.get("Copyright", "").split("\n") if x.strip())
            out.append((pats, lic, cr))
    return out


def dep5_lookup(stanzas, basename, subdir=None):
    """Last matching stanza wins (DEP-5). Patterns are matched on their last path component,
    restricted to patterns whose directory part is `subdir` when given (or `*`)."""
    hit = None
    for pats, lic, cr in stanzas:
        for p in pats:
            pdir, _, pbase = p.rpartition("/")
            if p == "*" or (fnmatch.fnmatch(basename, pbase) and (subdir is None or pdir in ("", subdir))):
                hit = (lic, cr)
    return hit


def image_info(path):
    from PIL import Image

    with Image.open(path) as im:
        return im.size[0], im.size[1], im.mode


def main():
    args = parse_args(__doc__)
    entries = []

    def add(source, package, src, name, license, credit):
        rel = f"photos/{source}__{name}"
        dst = copy(src, args.out, rel)
        w, h, mode = image_info(dst)
        p = pkg(args, package)
        entries.append({
            "file": os.path.basename(rel),
            "source": source,
            "package": package,
            "version": p["version"],
            "original_path": "/" + os.path.relpath(src, p["dir"]),
            "license": license,
            "copyright": credit,
            "sha256": sha256(dst),
            "width": w,
            "height": h,
            "mode": mode,
        })

    # lomiri-wallpapers-16.04: every jpg, license per file from debian/copyright ("16.04/<name>")
    d = pkg(args, "lomiri-wallpapers-16.04")["dir"]
    dep5 = parse_dep5(os.path.join(d, "usr/share/doc/lomiri-wallpapers-16.04/copyright"))
    files = sorted(glob.glob(os.path.join(d, "usr/share/backgrounds/*.jpg")))
    if len(files) < 10:
        die(f"lomiri-wallpapers-16.04: only {len(files)} jpg files found")
    for f in files:
        hit = dep5_lookup(dep5, os.path.basename(f), subdir="16.04")
        if hit is None:
            die(f"lomiri-wallpapers-16.04: no license stanza for {os.path.basename(f)}")
        add("lomiri", "lomiri-wallpapers-16.04", f, os.path.basename(f), *hit)

    # mate-backgrounds: nature/ only
    d = pkg(args, "mate-backgrounds")["dir"]
    dep5 = parse_dep5(os.path.join(d, "usr/share/doc/mate-backgrounds/copyright"))
    files = sorted(glob.glob(os.path.join(d, "usr/share/backgrounds/mate/nature/*.jpg")))
    if len(files) < 10:
        die(f"mate-backgrounds: only {len(files)} nature photos found")
    for f in files:
        hit = dep5_lookup(dep5, os.path.basename(f), subdir="nature")
        if hit is None:
            die(f"mate-backgrounds: no license stanza for {os.path.basename(f)}")
        add("mate", "mate-backgrounds", f, os.path.basename(f), *hit)

    # plasma-workspace-wallpapers: one file per photo theme, the largest regular file
    d = pkg(args, "plasma-workspace-wallpapers")["dir"]
    dep5 = parse_dep5(os.path.join(d, "usr/share/doc/plasma-workspace-wallpapers/copyright"))
    for theme in PLASMA_THEMES:
        tdir = os.path.join(d, "usr/share/wallpapers", theme)
        cands = [f for f in glob.glob(os.path.join(tdir, "contents/images/*"))
                 if os.path.isfile(f) and not os.path.islink(f)]
        if not cands:
            die(f"plasma-workspace-wallpapers: theme {theme} has no images")
        best = max(cands, key=lambda f: (os.path.getsize(f), os.path.basename(f)))
        lic, cr = dep5_lookup(dep5, "x", subdir=None) or ("GPL-2+", "")
        meta = os.path.join(tdir, "metadata.json")
        if os.path.isfile(meta):
            with open(meta, encoding="utf-8") as f:
                k = json.load(f).get("KPlugin", {})
            authors = [a.get("Name", "") for a in k.get("Authors", [])]
            if authors:
                cr = ", ".join(authors)
            if k.get("License"):
                lic = f"{k['License']} (theme metadata.json); {lic} (debian/copyright)"
        ext = os.path.splitext(best)[1]
        add("plasma", "plasma-workspace-wallpapers", best, theme + ext, lic, cr)

    # opencv-doc: the colour photos of examples/data, by name
    d = pkg(args, "opencv-doc")["dir"]
    for name in OPENCV_PHOTOS:
        f = os.path.join(d, "usr/share/doc/opencv-doc/examples/data", name)
        add("opencv", "opencv-doc", f, name, OPENCV_LICENSE, "OpenCV samples/data")

    # scikit-image: bundled colour photos
    d = pkg(args, "scikit-image")["dir"]
    for name, lic, credit in SKIMAGE_PHOTOS:
        add("skimage", "scikit-image", os.path.join(d, "skimage/data", name), name, lic, credit)

    # deduplicate by content across sources (keep the first)
    seen, kept = {}, []
    for e in entries:
        if e["sha256"] in seen:
            print(f"duplicate {e['file']} == {seen[e['sha256']]}: dropped")
            os.remove(os.path.join(args.out, "photos", e["file"]))
            continue
        seen[e["sha256"]] = e["file"]
        kept.append(e)
    kept.sort(key=lambda e: e["file"])
    write_json(os.path.join(args.out, "photos", "manifest.json"), {
        "description": "Real photographs extracted by `cargo xtask assets` (scripts/assets/photos.py)",
        "count": len(kept),
        "photos": kept,
    })
    print(f"photos: {len(kept)} files")


if __name__ == "__main__":
    main()
