"""Reasoning formats: where a model's reasoning is in what it streams, split from its answer.

``ReasoningFormat`` names every wire shape reasoning deployments send; ``ExitSession(
reasoning_format=...)`` (and so every integration) splits the stream with it:

==============  =========================================================  ====================
format          reasoning is                                               typical models
==============  =========================================================  ====================
``auto``        a separate field; ``<think>``, ``[THINK]`` or harmony      any (the default)
                markers opening the content; text before a bare
                ``</think>`` (re-labelled when it arrives)
``think``       ``<think>...</think>`` written by the model                Qwen3 (hybrid)
``think_open``  everything up to ``</think>``: the chat template           DeepSeek-R1 and
                opened ``<think>`` in the prompt                           distills, QwQ,
                                                                           Qwen3 *-Thinking
``mistral``     ``[THINK]...[/THINK]``                                     Magistral (2507 on)
``harmony``     the ``analysis`` channel of raw harmony text               GPT-OSS
                (``<|channel|>analysis<|message|>...<|end|>``)
``field``       only a separate field (``reasoning_content``,              a server that parses
                ``reasoning``, ``thinking``); the content is never parsed  reasoning itself
``none``        nothing: the field's text and the content are answer       non-reasoning models
==============  =========================================================  ====================

Every format but ``none`` also reads a separate reasoning field: a server with a reasoning parser
(vLLM ``--reasoning-parser``, llama.cpp ``--reasoning-format deepseek``, SGLang) sends the
reasoning there and the content without tags. Once such a field arrives before any content, a
template-opened tag (``think_open``, ``starts_in_reasoning``) counts as closed by the server: the
content is the answer.

Rules that hold for every format:

* A tag split over chunks reads exactly like the tag unsplit: text that could still be the start
  of a tag (``"<th"``, ``"[/TH"``, ``"<|chan"``) is held back until the next chunk decides it,
  and while it is held the chunk's tokens wait (``decided`` is False); leading whitespace before
  an opening tag at the very start is dropped.
* Tags and harmony markers are never text; the tokens that write an opening tag or a close tag
  belong to the reasoning; a harmony header (``<|start|>assistant<|channel|>final<|message|>``)
  belongs to the message it opens.
* ``auto`` and a bare ``</think>``: text before it cannot be known to be reasoning until the close
  arrives. ``auto`` streams it as the answer; when a bare ``</think>`` arrives (whole or split),
  everything before it is *re-labelled* reasoning (``relabel`` is set for that feed; the session
  moves its answer buffer into the reasoning and re-tags its kept tokens). What was already
  streamed as answer deltas, and what the monitor already observed as answer tokens, cannot be
  re-labelled after the fact: tell the session ``think_open`` (``format_for_model``,
  ``format_from_props``) when the template opens the tag and the server does not parse it.
* Mid-answer, ``auto`` parses no opening tag: an answer that writes ``<think>`` keeps it, and
  everything after it, as text. Only a bare ``</think>`` (no ``<think>`` before it) re-labels.

``format_for_model`` and ``format_from_props`` map a model name or a llama.cpp ``/props`` answer
to the format of the model's *raw* output (pure functions, no I/O).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal, cast, get_args

from ..core.tokens import Phase

ReasoningFormat = Literal["auto", "think", "think_open", "mistral", "harmony", "field", "none"]
"""Where the reasoning is in a stream; see the module docstring's table."""

REASONING_FORMATS: tuple[str, ...] = get_args(ReasoningFormat)

OPEN_TAG = "<think>"
CLOSE_TAG = "</think>"
MISTRAL_OPEN = "[THINK]"
MISTRAL_CLOSE = "[/THINK]"

HARMONY_START = "<|start|>"
HARMONY_CHANNEL = "<|channel|>"
HARMONY_MESSAGE = "<|message|>"
HARMONY_ENDS = ("<|end|>", "<|return|>", "<|call|>")
HARMONY_MARKERS = (HARMONY_START, HARMONY_CHANNEL, HARMONY_MESSAGE, *HARMONY_ENDS, "<|constrain|>")
HARMONY_REASONING_CHANNEL = "analysis"
_HEADER_OPENERS = (HARMONY_START, HARMONY_CHANNEL)
_HARMONY_HEADER_LIMIT = 256  # a "header" this long without <|message|> is text, not a header

_NEVER = "\x00"  # a "tag" no text contains: the content passes whole
_REASONING = Phase.REASONING
_ANSWER = Phase.ANSWER

# Internal modes of ReasoningSplitter.
_START = 0  # deciding whether the content opens with a tag or marker
_TAGS = 1  # open/close tags toggle the phase
_WATCH = 2  # auto: answer text, watching for a bare close tag
_BODY = 3  # harmony: a message's text
_HEADER = 4  # harmony: a message header, up to <|message|>


def check_reasoning_format(value: Any) -> ReasoningFormat:
    """``value`` when it names a reasoning format, else a ValueError listing them."""
    if value not in REASONING_FORMATS:
        raise ValueError(f"reasoning_format must be one of {', '.join(REASONING_FORMATS)}; got {value!r}")
    return cast(ReasoningFormat, value)


class ReasoningSplitter:
    """Splits streamed content into reasoning and answer text, per a ``ReasoningFormat``.

    ``feed(text)`` returns the ``(phase, text)`` pieces that became certain; ``flush()`` releases
    held-back text at the end. Formats ``field`` and ``none`` never parse the content (all of it
    is answer; the session handles them without a splitter).

    Attributes:
        format: the format asked for.
        detected: the inline format the content turned out to use (``"think"``, ``"think_open"``,
            ``"mistral"``, ``"harmony"``), or None while none has shown.
        inside: the next text is reasoning.
        decided: the phase of everything fed so far is known (False while a possible tag or a
            harmony header is held back: the tokens of those chunks wait).
        quiet: nothing is held back and text without ``mark`` passes whole in ``phase``, leaving
            the state as it is (the session's per-token fast path).
        mark: the first character of every tag or marker the splitter looks for now.
        saw_tags: reasoning arrived inline in the content (or the template opened it).
        relabel: the last ``feed`` found a bare ``</think>`` (``auto``): the content before it,
            already emitted as answer in earlier feeds, was reasoning.

    >>> s = ReasoningSplitter("think")
    >>> s.feed("<thi") + s.feed("nk>2+2</th") + s.feed("ink>4") + s.flush()
    [(<Phase.REASONING: 'reasoning'>, '2+2'), (<Phase.ANSWER: 'answer'>, '4')]
    """

    def __init__(
        self, reasoning_format: ReasoningFormat = "auto", *, starts_in_reasoning: bool = False
    ) -> None:
        self.format = check_reasoning_format(reasoning_format)
        self.relabel = False
        self._pending = ""
        self._header = ""
        self._fresh = True  # no content fed yet
        self._setup(opened=starts_in_reasoning or reasoning_format == "think_open")

    def _setup(self, *, opened: bool) -> None:
        """The state before any content; ``opened``: the prompt opened the reasoning."""
        fmt = self.format
        self.detected: ReasoningFormat | None = None
        self.inside = self.saw_tags = self._drop_open = self._header_open = False
        self._open, self._close = (MISTRAL_OPEN, MISTRAL_CLOSE) if fmt == "mistral" else (OPEN_TAG, CLOSE_TAG)
        self._mode = _START
        self._starts = _START_MARKERS.get(fmt, ())
        if fmt in ("field", "none"):
            self._mode = _TAGS
            self._open = self._close = _NEVER  # everything passes as answer
        elif opened and fmt == "harmony":
            self.detected, self.inside, self.saw_tags, self._mode = "harmony", True, True, _BODY
        elif opened:  # inside from the start; a leading opening tag is redundant and dropped
            self.detected = "mistral" if fmt == "mistral" else "think_open"
            self.inside = self.saw_tags = self._drop_open = True
            self._starts = (self._open,)
        self._settle()

    # -- state the session reads ----------------------------------------------------------

    @property
    def phase(self) -> Phase:
        """The phase the next text would belong to."""
        return _REASONING if self.inside else _ANSWER

    def _settle(self) -> None:
        """Derive ``decided``, ``quiet`` and ``mark`` from the state after a feed.

        Held-back text leaves the phase undecided only where it could go either way: at the
        start, outside the reasoning (``"<th"``: an opening tag, or answer text) and in ``auto``'s
        answer (``"</th"``: a bare close). Inside the reasoning (``"</th"``) or a harmony message
        (``"<|e"``), a tag or marker belongs to what it closes: the phase is known.
        """
        mode = self._mode
        pending = bool(self._pending)
        if mode == _TAGS:
            self.decided = not pending or self.inside
        elif mode == _BODY:
            self.decided = True
        elif mode == _HEADER:
            self.decided = not self._header_open
        else:  # _START, or _WATCH holding a possible bare close
            self.decided = mode == _WATCH and not pending
        if mode == _TAGS:
            self.mark = (self._close if self.inside else self._open)[0]
        else:
            self.mark = "<"
        self.quiet = not pending and mode in (_TAGS, _WATCH, _BODY)

    def field_reasoning(self) -> None:
        """A separate reasoning field arrived: before any content, the server has split the
        reasoning out, so a template-opened tag is closed and the content is the answer."""
        if self._fresh and self.inside:
            self._setup(opened=False)

    # -- feeding --------------------------------------------------------------------------

    def feed(self, text: str) -> list[tuple[Phase, str]]:
        """Take a content delta; return the ``(phase, text)`` pieces that are now certain."""
        self.relabel = False
        if not text:
            return []
        self._fresh = False
        buffer = self._pending + text if self._pending else text
        self._pending = ""
        pieces: list[tuple[Phase, str]] = []
        if self._mode == _START:
            buffer = self._start(buffer)
        if buffer:
            mode = self._mode
            if mode == _TAGS:
                self._tags(buffer, pieces)
            elif mode == _WATCH:
                self._watch(buffer, pieces)
            elif mode in (_BODY, _HEADER):
                self._harmony(buffer, pieces)
            # _START with text left: it is all held in _pending
        self._settle()
        return pieces

    def flush(self) -> list[tuple[Phase, str]]:
        """End of stream: release held-back text as it stands (an unfinished harmony header is
        metadata and is dropped)."""
        pieces: list[tuple[Phase, str]] = []
        if self._pending:
            if self._mode == _START:  # never decided: the fallback's phase
                self._mode = self._fallback()
            self._emit(pieces, self._pending)
            self._pending = ""
        self._header = ""
        self._settle()
        return pieces

    def _emit(self, pieces: list[tuple[Phase, str]], text: str) -> None:
        if text:
            pieces.append((_REASONING if self.inside else _ANSWER, text))

    def _fallback(self) -> int:
        """The mode when the content opens with none of the start markers."""
        if self.format == "auto" and not self.inside:
            return _WATCH
        if self.format == "harmony":
            return _BODY
        return _TAGS

    def _start(self, buffer: str) -> str:
        """Decide how the content opens; returns the text left to parse (all of it held: "")."""
        stripped = buffer.lstrip()
        for marker in self._starts:
            if stripped.startswith(marker):
                self._begin(marker)
                return stripped[len(marker) :] if marker in (OPEN_TAG, MISTRAL_OPEN) else stripped
            if marker.startswith(stripped):  # empty, whitespace, or a marker's beginning
                self._pending = buffer
                return ""
        self._mode = self._fallback()
        self._drop_open = False
        return buffer

    def _begin(self, marker: str) -> None:
        self.saw_tags = True
        if marker in (OPEN_TAG, MISTRAL_OPEN):
            self._mode = _TAGS
            if marker == MISTRAL_OPEN:
                self._open, self._close = MISTRAL_OPEN, MISTRAL_CLOSE
                self.detected = "mistral"
            elif not self._drop_open:
                self.detected = "think"
            self.inside = True
            self._drop_open = False
        else:
            self._mode = _BODY  # the marker itself is parsed by _harmony
            self.detected = "harmony"

    def _tags(self, buffer: str, pieces: list[tuple[Phase, str]]) -> None:
        """Open and close tags toggle the phase, anywhere in the content."""
        if self._open is _NEVER:  # nothing to look for (even a NUL in the text is text)
            self._emit(pieces, buffer)
            return
        while buffer:
            tag = self._close if self.inside else self._open
            at = buffer.find(tag)
            if at >= 0:
                self._emit(pieces, buffer[:at])
                buffer = buffer[at + len(tag) :]
                self.inside = not self.inside
                self.saw_tags = True
                if self.detected is None:
                    self.detected = "mistral" if tag[0] == "[" else "think"
                continue
            keep = _partial_suffix(buffer, (tag,))
            self._emit(pieces, buffer[: len(buffer) - keep])
            self._pending = buffer[len(buffer) - keep :]
            return

    def _watch(self, buffer: str, pieces: list[tuple[Phase, str]]) -> None:
        """``auto`` in the answer: a bare ``</think>`` re-labels everything before it.

        A ``<think>`` written in the answer is text, and so is everything after it (a close
        that follows it is not bare): the splitter stops looking.
        """
        at = buffer.find(CLOSE_TAG)
        opened = buffer.find(OPEN_TAG, 0, at if at >= 0 else len(buffer))
        if opened >= 0:
            self._mode, self._open, self._close = _TAGS, _NEVER, _NEVER
            self._emit(pieces, buffer)
            return
        if at < 0:
            keep = _partial_suffix(buffer, (CLOSE_TAG, OPEN_TAG)) if "<" in buffer else 0
            self._emit(pieces, buffer[: len(buffer) - keep])
            self._pending = buffer[len(buffer) - keep :]
            return
        self.relabel = self.saw_tags = True
        self.detected = "think_open"
        if buffer[:at]:
            pieces.append((_REASONING, buffer[:at]))
        self._mode = _TAGS  # from here on, tags toggle (the reasoning is closed)
        self.inside = False
        self._tags(buffer[at + len(CLOSE_TAG) :], pieces)

    def _harmony(self, buffer: str, pieces: list[tuple[Phase, str]]) -> None:
        """Harmony: headers up to ``<|message|>`` are metadata; a message's channel is its phase."""
        while buffer:
            if self._mode == _HEADER:
                header = self._header + buffer
                if not self._header_open and (
                    HARMONY_START in header
                    or HARMONY_CHANNEL in header
                    or _partial_suffix(header, _HEADER_OPENERS)
                ):  # after <|end|>: the next message's header (or its split beginning)
                    self._header_open, self.inside = True, False
                at = header.find(HARMONY_MESSAGE)
                if at < 0:
                    if len(header) > _HARMONY_HEADER_LIMIT:  # not a header after all: text
                        self._header, self._mode, self._header_open, self.inside = "", _BODY, False, False
                        self._emit(pieces, header)
                    else:
                        self._header = header
                    return
                channel = header[:at].rpartition(HARMONY_CHANNEL)[2].split("<|")[0].split()
                self.inside = bool(channel) and channel[0] == HARMONY_REASONING_CHANNEL
                self.saw_tags = self.saw_tags or self.inside
                self._header, self._mode, self._header_open = "", _BODY, False
                buffer = header[at + len(HARMONY_MESSAGE) :]
                continue
            at = buffer.find("<|")
            if at < 0:
                keep = 1 if buffer[-1] == "<" else 0
                self._emit(pieces, buffer[: len(buffer) - keep])
                self._pending = buffer[len(buffer) - keep :]
                return
            self._emit(pieces, buffer[:at])
            rest = buffer[at:]
            marker = next((m for m in HARMONY_MARKERS if rest.startswith(m)), None)
            if marker is None:
                if any(m.startswith(rest) for m in HARMONY_MARKERS):  # a marker split over chunks
                    self._pending = rest
                    return
                self._emit(pieces, "<|")  # not a marker: text
                buffer = rest[2:]
                continue
            buffer = rest[len(marker) :]
            if marker in (HARMONY_START, HARMONY_CHANNEL):  # a header opens: its tokens wait
                self._mode, self._header_open, self.inside = _HEADER, True, False
                self._header = marker
            elif marker in HARMONY_ENDS:  # the message is over; the next header decides
                self._mode, self._header_open, self._header = _HEADER, False, ""
            # <|message|> or <|constrain|> outside a header: dropped


_START_MARKERS: dict[str, tuple[str, ...]] = {
    "auto": (OPEN_TAG, MISTRAL_OPEN, HARMONY_CHANNEL, HARMONY_START),
    "think": (OPEN_TAG,),
    "think_open": (OPEN_TAG,),  # (once a reasoning field has closed the template's tag)
    "mistral": (MISTRAL_OPEN,),
    "harmony": (HARMONY_CHANNEL, HARMONY_START),
}


def _partial_suffix(text: str, tags: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that could be the start of one of ``tags``."""
    longest = max(len(tag) for tag in tags) - 1
    for size in range(min(longest, len(text)), 0, -1):
        end = text[-size:]
        if any(tag.startswith(end) for tag in tags):
            return size
    return 0


class ThinkTagSplitter(ReasoningSplitter):
    """``<think>`` tags only, by the older mode names: ``"on"`` is ``think``, ``"off"`` is
    ``field`` (content never parsed), ``"auto"`` is ``auto``. ``start_inside``: the template
    opened the tag. Kept for callers of the first API; ``ReasoningSplitter`` is the general one.

    >>> s = ThinkTagSplitter("on")
    >>> s.feed("<thi") + s.feed("nk>2+2</th") + s.feed("ink>4") + s.flush()
    [(<Phase.REASONING: 'reasoning'>, '2+2'), (<Phase.ANSWER: 'answer'>, '4')]
    """

    _MODES: dict[str, ReasoningFormat] = {"auto": "auto", "on": "think", "off": "field"}

    def __init__(self, mode: str = "auto", *, start_inside: bool = False) -> None:
        if mode not in self._MODES:
            raise ValueError(f"think-tag mode must be 'auto', 'on' or 'off', got {mode!r}")
        self.mode = mode
        super().__init__(self._MODES[mode], starts_in_reasoning=start_inside)


# -- which format a model or server uses -----------------------------------------------------

MODEL_FORMATS: tuple[tuple[str, ReasoningFormat | None], ...] = (
    # (regular expression searched in the lower-cased model name, format); the first match wins.
    (r"gpt-?oss", "harmony"),  # GPT-OSS 20B/120B: harmony channels
    (r"magistral.*2506", "think"),  # the first Magistral wrote <think> tags as text
    (r"magistral", "mistral"),  # Magistral 2507 on: [THINK]...[/THINK]
    (r"qwq.*preview", None),  # QwQ-32B-Preview: no tags
    (r"qwq", "think_open"),  # QwQ-32B: the template ends with "<think>\n"
    (r"qwen3.*thinking", "think_open"),  # Qwen3-*-Thinking-2507: the template opens <think>
    (r"qwen3.*instruct-2507", None),  # Qwen3-*-Instruct-2507: no thinking
    (r"qwen3", "think"),  # Qwen3 hybrid: the model writes <think>...</think>
    (r"deepseek-?r1|r1-distill", "think_open"),  # R1 and its distills: "<think>\n" in the prompt
)
"""Model-name patterns and the format of the model's *raw* output (no server-side parser).

A server with a reasoning parser sends the reasoning in a field instead, which every format but
``none`` reads; ``think_open`` then closes itself when that field arrives before the content."""


def format_for_model(model_name: str | None) -> ReasoningFormat | None:
    """The reasoning format of a model's raw output, from its name; None when not known.

    >>> format_for_model("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B")
    'think_open'
    >>> format_for_model("openai/gpt-oss-20b"), format_for_model("Magistral-Small-2509")
    ('harmony', 'mistral')
    >>> format_for_model("Qwen/Qwen3-30B-A3B-Thinking-2507"), format_for_model("Qwen3-8B")
    ('think_open', 'think')
    >>> format_for_model("llama-3.3-70b") is None
    True
    """
    if not model_name:
        return None
    name = model_name.lower()
    for pattern, fmt in MODEL_FORMATS:
        if re.search(pattern, name):
            return fmt
    return None


def format_from_props(props: Mapping[str, Any]) -> ReasoningFormat | None:
    """The reasoning format of a llama.cpp server's raw output, from its ``GET /props`` answer.

    Reads ``chat_template``: a generation prompt (the ``add_generation_prompt`` branch) that
    writes an opening ``<think>`` it does not close means the output starts inside the
    reasoning (``think_open``: DeepSeek-R1, QwQ, Qwen3-Thinking); harmony markers mean
    ``harmony``; ``[THINK]`` means ``mistral``; ``<think>`` elsewhere means ``think``. Without a
    template, the model name (``model_alias``, else ``model_path``) is looked up with
    ``format_for_model``. None: nothing says.

    This describes the raw output: llama.cpp started with ``--reasoning-format deepseek`` (or
    ``auto`` on recent builds) parses the reasoning into ``reasoning_content`` itself.

    >>> template = "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\\\n<think>\\\\n' }}{% endif %}"
    >>> format_from_props({"chat_template": template})
    'think_open'
    """
    template = props.get("chat_template")
    if isinstance(template, str) and template:
        found = _format_from_template(template)
        if found is not None:
            return found
    for key in ("model_alias", "model_path"):
        name = props.get(key)
        if isinstance(name, str) and name:
            found = format_for_model(name.replace("\\", "/").rsplit("/", 1)[-1])
            if found is not None:
                return found
    return None


def _format_from_template(template: str) -> ReasoningFormat | None:
    if HARMONY_CHANNEL in template and HARMONY_MESSAGE in template:
        return "harmony"
    if MISTRAL_OPEN in template:
        return "mistral"
    at = template.rfind("add_generation_prompt")
    if at >= 0:
        prompt = template[at:]
        opened = prompt.rfind(OPEN_TAG)
        if opened >= 0 and CLOSE_TAG not in prompt[opened:]:
            return "think_open"
    if OPEN_TAG in template:
        return "think"
    return None


def resolve_format(
    reasoning_format: ReasoningFormat = "auto",
    *,
    model: str | None = None,
    props: Mapping[str, Any] | None = None,
) -> ReasoningFormat:
    """The format to split with: ``reasoning_format`` unless it is ``auto`` and the server's
    ``/props`` or the model's name says which; else ``auto``.

    Use it only where the server returns raw text (no reasoning parser); ``auto`` is always safe
    but cannot know that text before a bare ``</think>`` is reasoning until the close arrives.
    """
    check_reasoning_format(reasoning_format)
    if reasoning_format != "auto":
        return reasoning_format
    found = format_from_props(props) if props else None
    if found is None:
        found = format_for_model(model)
    return found or "auto"
