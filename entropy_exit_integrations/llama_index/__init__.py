"""LlamaIndex integration: ``EntropyExitLLM`` (stops generations) and ``EntropyExitEventHandler``
(reports entropy and savings of any LLM call through ``llama_index.core.instrumentation``)."""

from ..engine import REPORT_KEY
from .closing import ResponseCapture, http_clients
from .events import EntropyExitEventHandler, EntropyExitReportEvent, LLMCallRecord
from .llms import EntropyExitLLM

__all__ = [
    "REPORT_KEY",
    "EntropyExitEventHandler",
    "EntropyExitLLM",
    "EntropyExitReportEvent",
    "LLMCallRecord",
    "ResponseCapture",
    "http_clients",
]
