"""The lab: what proves and demonstrates the library, installed with the ``lab`` extra.

* ``lab.bench``: datasets (GSM8K, MATH-500, AIME-24 as package data), graders, a runner for any
  OpenAI-compatible endpoint, offline replay of exit rules, peers' rules, reports and plots.
* ``lab.local``: the embedded llama.cpp server (``LocalServer``), its one-time setup
  (``entropy-exit setup``) and ``ChatSchemaToolCalls`` for small models without tool calling.
* ``lab.cli``: the ``entropy-exit`` command; ``lab.demo``: ``entropy-exit demo``.

The lab imports the library (``entropy_exit_integrations`` outside ``lab``); the library never
imports the lab. Modules are imported on use.
"""
