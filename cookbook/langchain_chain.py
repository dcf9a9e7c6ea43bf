"""An LCEL chain with early exit: ``prompt | ChatEntropyExit(ChatOpenAI) | StrOutputParser``.

Runs against the embedded llama.cpp server (started here) or ``--base-url http://host:port/v1``
(with ``--model NAME``). Shows both ways in:

1. ``ChatEntropyExit`` wraps the model: the chain goes on with the cut (or forced) answer, and the
   savings report rides on the message (``response_metadata["entropy_exit"]``).
2. ``EntropyExitCallbackHandler`` watches a plain ChatOpenAI: it aborts the chain with
   ``EntropyExit``, which carries the partial text and the report.

Exits non-zero unless an exit happened and a report was produced (it runs in CI).
"""

from __future__ import annotations

import argparse

from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

from entropy_exit_integrations import EntropyExit, ExitPolicy, SavingsLedger
from entropy_exit_integrations.lab.local import LocalServer
from entropy_exit_integrations.langchain import ChatEntropyExit, EntropyExitCallbackHandler

PROMPT = ChatPromptTemplate.from_messages(
    [("system", "You are a helpful assistant."), ("user", "Write a long, detailed story about {topic}.")]
)


def run(base_url: str, model: str) -> None:
    inner = ChatOpenAI(base_url=base_url, api_key="sk-no-key", model=model, temperature=0, max_tokens=256)
    policy = ExitPolicy(threshold=1.5, min_tokens=8)  # hand-set for the demo (uncalibrated)
    ledger = SavingsLedger()

    # 1. The wrapper: the chain continues with the truncated answer.
    llm = ChatEntropyExit(model=inner, policy=policy, ledger=ledger)
    message = (PROMPT | llm).invoke({"topic": "a lighthouse keeper"})
    report = message.response_metadata["entropy_exit"]
    print("wrapper answer:", message.content.strip())
    print(
        f"  exited={report['exited']} generated={report['tokens_generated']} "
        f"saved={report['tokens_saved_vs_budget']} of {report['max_tokens']}"
    )
    texts = (PROMPT | llm | StrOutputParser()).batch([{"topic": "a cat"}, {"topic": "the sea"}])
    print("batch answers:", [t.strip() for t in texts])
    print("ledger:", ledger)

    # 2. The callback handler: abort a plain ChatOpenAI chain mid-generation.
    handler = EntropyExitCallbackHandler(policy)
    chain = PROMPT | inner.bind(logprobs=True, top_logprobs=20, stream=True) | StrOutputParser()
    try:
        chain.invoke({"topic": "a lighthouse keeper"}, config={"callbacks": [handler]})
        raise SystemExit("the handler did not abort the chain")
    except EntropyExit as exit_:
        print("handler partial answer:", exit_.partial_text.strip())
        print("  report:", exit_.report)
        saved = exit_.report.tokens_saved_vs_budget

    assert report["exited"] and ledger.summary()["exits"] >= 1, "no early exit happened"
    print(
        f"saved tokens: wrapper {report['tokens_saved_vs_budget']}, handler {saved}, "
        f"ledger total {ledger.summary()['tokens_saved_vs_budget']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="an OpenAI-compatible server (default: start the embedded one)")
    parser.add_argument("--model", help="model id (default: the server's)")
    args = parser.parse_args()
    server = LocalServer(base_url=args.base_url, model_id=args.model, parallel=2)
    with server:
        run(server.base_url, server.model)


if __name__ == "__main__":
    main()
