"""Carry several SemHiTok model folders that share one frozen teacher with one copy of it.

Each exported folder's model.safetensors holds the whole frozen teacher (`teacher.*`, 18.8 MB for
EfficientNet-Lite0) next to a few MB of tokenizer weights. Here: `split OUT DIR...` writes
OUT/<name>/{config.json,README.md,student.safetensors} per folder and one OUT/teacher.safetensors
(after checking that every folder's teacher tensors are bit-identical); on the GPU host,
`join OUT DEST` rebuilds DEST/<name>/model.safetensors (same tensors, same names).
"""
import os, shutil, sys
import torch
from safetensors.torch import load_file, save_file

def split(out, dirs):
    os.makedirs(out, exist_ok=True)
    teacher = None
    for d in dirs:
        name = os.path.basename(os.path.dirname(os.path.normpath(d))) if os.path.basename(os.path.normpath(d)) == "model" else os.path.basename(os.path.normpath(d))
        t = load_file(os.path.join(d, "model.safetensors"))
        tea = {k: v for k, v in t.items() if k.startswith("teacher.")}
        stu = {k: v for k, v in t.items() if not k.startswith("teacher.")}
        if teacher is None:
            teacher = tea
        elif teacher.keys() != tea.keys() or any(not torch.equal(teacher[k], tea[k]) for k in tea):
            sys.exit(f"{d}: teacher tensors differ from the first folder's")
        o = os.path.join(out, name)
        os.makedirs(o, exist_ok=True)
        save_file(stu, os.path.join(o, "student.safetensors"))
        for f in ("config.json", "README.md"):
            if os.path.exists(os.path.join(d, f)):
                shutil.copy(os.path.join(d, f), o)
        print(f"{name}: {len(stu)} tensors + {len(tea)} teacher tensors")
    save_file(teacher, os.path.join(out, "teacher.safetensors"))

def join(src, dest):
    teacher = load_file(os.path.join(src, "teacher.safetensors"))
    for name in sorted(os.listdir(src)):
        s = os.path.join(src, name)
        if not os.path.isdir(s):
            continue
        o = os.path.join(dest, name, "model")
        os.makedirs(o, exist_ok=True)
        t = load_file(os.path.join(s, "student.safetensors"))
        t.update(teacher)
        save_file(t, os.path.join(o, "model.safetensors"))
        for f in ("config.json", "README.md"):
            if os.path.exists(os.path.join(s, f)):
                shutil.copy(os.path.join(s, f), o)
        print(f"joined {o}")

if __name__ == "__main__":
    if sys.argv[1] == "split":
        split(sys.argv[2], sys.argv[3:])
    elif sys.argv[1] == "join":
        join(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: split_teacher.py split OUT DIR... | join SRC DEST")
