"""Write the two wire fixtures that are built by hand, not recorded: no such server runs here.

    python tests/data/recordings/hand_built.py    (rewrites wire/ollama_reasoning.* and
                                                   wire/llamacpp_gptoss_harmony.*)

- ``ollama_reasoning``: Ollama's OpenAI-compatible ``/v1/chat/completions`` streaming a thinking
  model. The chunk shape follows Ollama's own code (``openai/openai.go``: ``ToChunk`` puts the
  thinking text in ``delta.reasoning``, always sends ``delta.content`` (``""`` while thinking),
  ``system_fingerprint: "fp_ollama"``, ``logprobs.content`` as ``api.Logprob`` entries: token,
  logprob, bytes, top_logprobs), and the usage arrives in a last chunk with no choices when
  ``stream_options.include_usage`` is set. One token per chunk; the tag tokens are consumed by
  Ollama's thinking parser and are not streamed.
- ``llamacpp_gptoss_harmony``: GPT-OSS on llama.cpp with ``--reasoning-format none``: the harmony
  channels arrive as raw text in ``delta.content`` (``<|channel|>analysis<|message|>...<|end|>
  <|start|>assistant<|channel|>final<|message|>...``), each special token one token with its own
  logprobs, in llama.cpp's chunk shape (as in the recorded ``llamacpp_think_none``); the
  end-of-generation token ``<|return|>`` is not streamed, the usage comes last.

The logprobs are invented (each token near-certain, four runners-up); the replay tests read the
stream's mechanics, never the values. Each ``.meta.json`` says "hand-built" in ``server``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

WIRE = Path(__file__).parent / "wire"
CREATED = 1796540000
QUESTION = [{"role": "user", "content": "What is 7 + 5?"}]


def _logprob(token: str, value: float = -0.02) -> dict[str, Any]:
    """One ``api.Logprob`` / llama.cpp entry: the token, then four runners-up."""
    top = [{"token": token, "logprob": value, "bytes": list(token.encode())}]
    top += [{"token": alt, "logprob": -5.0 - i, "bytes": list(alt.encode())} for i, alt in enumerate("wxyz")]
    return {"token": token, "logprob": value, "bytes": list(token.encode()), "top_logprobs": top}


def ollama() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    reasoning = ["Okay", ",", " 7", " plus", " 5", " is", " 12", "."]
    answer = ["7", " +", " 5", " =", " ", "12", "."]
    head = {
        "id": "chatcmpl-386",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "qwen3:0.6b",
        "system_fingerprint": "fp_ollama",
    }

    def chunk(
        delta: dict[str, Any], logprobs: list[dict[str, Any]] | None, finish: str | None
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {
            "index": 0,
            "delta": {"role": "assistant", **delta},
            "finish_reason": finish,
        }
        if logprobs:
            choice["logprobs"] = {"content": logprobs}
        return {**head, "choices": [choice]}

    chunks = [chunk({"content": "", "reasoning": t}, [_logprob(t)], None) for t in reasoning]
    chunks += [chunk({"content": t}, [_logprob(t)], None) for t in answer]
    chunks.append(chunk({"content": ""}, None, "stop"))
    n = len(reasoning) + len(answer) + 2  # the two tag tokens are generated, not streamed
    chunks.append(
        {
            **head,
            "choices": [],
            "usage": {"prompt_tokens": 15, "completion_tokens": n, "total_tokens": 15 + n},
        }
    )
    meta = {
        "server": "Ollama /v1 (HAND-BUILT from Ollama's openai/openai.go ToChunk and api.Logprob, "
        "not recorded: no Ollama server on this machine)",
        "version": "the chunk shape of Ollama releases whose /v1 chunks carry logprobs",
        "flags": "ollama serve; a thinking model (qwen3), think on by default",
        "model": "qwen3:0.6b (the name only; the tokens and logprobs are invented)",
        "date": "2026-12-06",
        "request": {
            "model": "qwen3:0.6b",
            "messages": QUESTION,
            "stream": True,
            "logprobs": True,
            "top_logprobs": 5,
            "stream_options": {"include_usage": True},
        },
        "replay": {"reasoning_format": "auto"},
    }
    return chunks, meta


def harmony() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    analysis = [
        "<|channel|>",
        "analysis",
        "<|message|>",
        "We",
        " need",
        " 7",
        "+",
        "5",
        ".",
        " That's",
        " 12",
        ".",
        "<|end|>",
    ]
    final = [
        "<|start|>",
        "assistant",
        "<|channel|>",
        "final",
        "<|message|>",
        "7",
        " +",
        " 5",
        " =",
        " ",
        "12",
        ".",
    ]
    head = {
        "created": CREATED,
        "id": "chatcmpl-gptoss",
        "model": "gpt-oss-20b",
        "system_fingerprint": "b1-0c1e570",
        "object": "chat.completion.chunk",
    }
    chunks: list[dict[str, Any]] = [
        {
            "choices": [{"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}],
            **head,
        }
    ]
    for t in analysis + final:
        delta = {"content": t}
        chunks.append(
            {
                "choices": [
                    {
                        "finish_reason": None,
                        "index": 0,
                        "delta": delta,
                        "logprobs": {"content": [_logprob(t)]},
                    }
                ],
                **head,
            }
        )
    chunks.append({"choices": [{"finish_reason": "stop", "index": 0, "delta": {}}], **head})
    n = len(analysis) + len(final) + 1  # <|return|> ends the generation, not streamed
    chunks.append(
        {
            "choices": [],
            **head,
            "usage": {"completion_tokens": n, "prompt_tokens": 70, "total_tokens": 70 + n},
        }
    )
    meta = {
        "server": "llama.cpp llama-server (HAND-BUILT from the harmony format's documentation and "
        "llama.cpp's chunk shape, not recorded: no GPT-OSS model on this machine)",
        "version": "the chunk shape of the recorded llamacpp_think_none (build b1-0c1e570)",
        "flags": "--model gpt-oss-20b.gguf --jinja --reasoning-format none",
        "model": "gpt-oss-20b (the name only; the tokens and logprobs are invented)",
        "date": "2026-12-06",
        "request": {
            "model": "gpt-oss-20b",
            "messages": QUESTION,
            "stream": True,
            "logprobs": True,
            "top_logprobs": 5,
            "stream_options": {"include_usage": True},
        },
        "replay": {
            "reasoning_format": "auto",
            "expected": {"reasoning": "We need 7+5. That's 12.", "answer": "7 + 5 = 12."},
        },
    }
    return chunks, meta


def main() -> None:
    for name, (chunks, meta) in {"ollama_reasoning": ollama(), "llamacpp_gptoss_harmony": harmony()}.items():
        (WIRE / f"{name}.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chunks))
        (WIRE / f"{name}.meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        print(f"wrote {WIRE / name}.jsonl ({len(chunks)} chunks) and its .meta.json")


if __name__ == "__main__":
    main()
