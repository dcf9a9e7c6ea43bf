"""Benchmarks: datasets, graders, a runner for any OpenAI-compatible endpoint, offline replay of exit
rules over recorded traces, the peers' rules, reports and plots (``entropy-exit calibrate | bench``).

Needs the ``lab`` extra (openai, matplotlib, rich). Modules are imported on use; nothing here is
imported by the core or the integrations.
"""
