"""The cost of ``AuditRule(rate=0)`` on the hot path: the same 20,000-token local stream through
``stream_chat`` without an audit rule and with ``AuditRule(rate=0)``, best of 5, interleaved.

    python benchmarks/audit_rate_zero.py
"""

import sys
import time
from pathlib import Path

import openai

from entropy_exit_integrations import AuditRule, ExitPolicy
from entropy_exit_integrations.openai import iter_chat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import integration_overhead as io  # noqa: E402 - the local stream of the overhead benchmark

n = 20000
url = io.serve(io.sse_body(n))
client = openai.OpenAI(base_url=url, api_key="x")
kw = {
    "model": "m",
    "messages": [{"role": "user", "content": "go"}],
    "max_tokens": n,
    "logprobs": True,
    "top_logprobs": 20,
}


def run(audit: AuditRule | None) -> None:
    with iter_chat(client, policy=ExitPolicy(threshold=0.0), audit=audit, keep_tokens=False, **kw) as stream:
        for _ in stream:
            pass


best = {"no audit": 1e9, "AuditRule(rate=0)": 1e9}
for _ in range(5):
    for name, audit in (("no audit", None), ("AuditRule(rate=0)", AuditRule(rate=0.0))):
        t = time.perf_counter()
        run(audit)
        best[name] = min(best[name], time.perf_counter() - t)
for name, t in best.items():
    print(f"{name}: {t / n * 1e6:.1f} us/token")
print(f"ratio {best['AuditRule(rate=0)'] / best['no audit']:.3f}")
