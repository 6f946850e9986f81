"""Prompt sets for generation evaluation.

JSONL, one item a line (blank lines skipped)::

    {"id": "q1", "prompt": "...", "reference": "...", "answer": "Paris"}
    {"messages": [{"role": "user", "content": "..."}, ...], "references": ["...", "..."]}
    {"source": "Der Hund bellt.", "prompt": "Translate to English: Der Hund bellt.", "reference": "The dog barks."}

* ``prompt`` (text) or ``messages`` (chat, OpenAI format) - exactly one;
* ``reference`` (a string) or ``references`` (a list of strings) - optional;
* ``answer`` - optional short answer (for answer agreement and accuracy);
* ``source`` - optional source sentence of a translation item (the prompt defaults to it);
* ``id`` - optional; the line number is the id otherwise.

``builtin`` draws prompts from the held-out (validation) side of the built-in corpus, split exactly
as ``steadylm train`` splits it: the opening words of a paragraph are the prompt and the words that
follow are the reference, so a model trained by steadylm has never seen them. ``builtin:NAME`` does
the same for another built-in source; for source code (``builtin:stdlib-code``) a paragraph is a
block between blank lines, and prompt and reference keep the block's own line breaks and
indentation (counted in whitespace-separated words all the same).
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.sources import load_documents, split_documents
from ..errors import DataError
from ..io import iter_jsonl

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PromptItem:
    """One prompt (or chat) with what is known about good answers."""

    id: str
    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] | None = None
    references: tuple[str, ...] = ()
    answer: str | None = None
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    def text(self) -> str:
        """The prompt as plain text (for relevance and for display): the dialogue so far."""
        if self.prompt is not None:
            return self.prompt
        return "\n".join(c for _, c in self.messages or ())

    def last_user_turn(self) -> str:
        if self.prompt is not None:
            return self.prompt
        for role, content in reversed(self.messages or ()):
            if role == "user":
                return content
        return ""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id}
        if self.prompt is not None:
            d["prompt"] = self.prompt
        if self.messages is not None:
            d["messages"] = [{"role": r, "content": c} for r, c in self.messages]
        if self.references:
            d["references"] = list(self.references)
        if self.answer is not None:
            d["answer"] = self.answer
        if self.source is not None:
            d["source"] = self.source
        return d


def _item(obj: Any, where: str, line_no: int) -> PromptItem:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    pid = obj.get("id", line_no)
    if not isinstance(pid, (str, int)) or isinstance(pid, bool):
        raise DataError(f"{where}: 'id' must be a string or an integer")
    prompt, messages, source = obj.get("prompt"), obj.get("messages"), obj.get("source")
    if source is not None and not isinstance(source, str):
        raise DataError(f"{where}: 'source' must be a string")
    if prompt is None and messages is None and source is not None:
        prompt = source
    if (prompt is None) == (messages is None):
        raise DataError(f"{where}: needs exactly one of 'prompt' or 'messages'")
    msgs = None
    if prompt is not None:
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: 'prompt' must be a non-empty string")
    else:
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: 'messages' must be a non-empty list")
        out = []
        for j, m in enumerate(messages):
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise DataError(f"{where}: messages[{j}] must be an object with string 'role' and 'content'")
            if m["role"] not in ROLES:
                raise DataError(f"{where}: messages[{j}] has role {m['role']!r}; expected one of {', '.join(ROLES)}")
            out.append((m["role"], m["content"]))
        if out[-1][0] != "user":
            raise DataError(f"{where}: the last message must be a 'user' turn (the model answers it)")
        msgs = tuple(out)
    refs: list[str] = []
    if "reference" in obj and "references" in obj:
        raise DataError(f"{where}: give 'reference' or 'references', not both")
    if "reference" in obj:
        if not isinstance(obj["reference"], str):
            raise DataError(f"{where}: 'reference' must be a string")
        refs = [obj["reference"]]
    elif "references" in obj:
        r = obj["references"]
        if not isinstance(r, list) or not r or not all(isinstance(x, str) for x in r):
            raise DataError(f"{where}: 'references' must be a non-empty list of strings")
        refs = list(r)
    answer = obj.get("answer")
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise DataError(f"{where}: 'answer' must be a short string")
    return PromptItem(id=str(pid), prompt=prompt, messages=msgs, references=tuple(refs),
                      answer=None if answer is None else str(answer), source=source)


def read_prompts_jsonl(path: str | Path) -> list[PromptItem]:
    items: list[PromptItem] = []
    seen: dict[str, int] = {}
    for i, obj in iter_jsonl(path):
        item = _item(obj, f"{path}:{i}", i)
        if item.id in seen:
            raise DataError(f"{path}:{i}: duplicate id {item.id!r} (first on line {seen[item.id]})")
        seen[item.id] = i
        items.append(item)
    if not items:
        raise DataError(f"{path}: empty (no prompts)")
    return items


_WS = re.compile(r"\s+")
_NONSPACE = re.compile(r"\S+")

#: built-in sources whose paragraphs are code: prompts keep their line breaks and indentation
CODE_SOURCES = frozenset({"builtin:stdlib-code"})


def _cut_code(block: str, prompt_words: int, reference_words: int) -> tuple[str, str] | None:
    """A code block (dedented) cut after its ``prompt_words``-th word: (prompt, the next
    ``reference_words`` words), both with the block's own whitespace; None when too short."""
    block = textwrap.dedent(block.strip("\n")).rstrip()
    spans = [m.span() for m in _NONSPACE.finditer(block)]
    if len(spans) < prompt_words + reference_words // 2:
        return None
    end_prompt = spans[prompt_words - 1][1]
    end_ref = spans[min(len(spans), prompt_words + reference_words) - 1][1]
    return block[:end_prompt], block[end_prompt:end_ref].strip()


def builtin_prompts(n: int = 32, *, prompt_words: int = 12, reference_words: int = 24,
                    source: str = "builtin:pydoc", val_fraction: float = 0.1) -> list[PromptItem]:
    """Prompts from the held-out documents of a built-in corpus (the validation side of the same
    split ``steadylm train`` uses): each paragraph long enough gives ``prompt_words`` words of
    prompt and the next ``reference_words`` words as the reference."""
    train, val = split_documents(load_documents(source), val_fraction)
    # some topics repeat paragraphs of others: a paragraph also found in a training document is
    # not held out, so it is skipped
    seen = " ".join(" ".join(train).split())
    code = source in CODE_SOURCES
    items: list[PromptItem] = []
    for d, doc in enumerate(val):
        for p, para in enumerate(re.split(r"\n\s*\n", doc)):
            if code:
                cut = _cut_code(para, prompt_words, reference_words)
                if cut is None:
                    continue
                prompt, ref = cut
                if " ".join(f"{prompt} {ref}".split()) in seen:
                    continue
            else:
                words = _WS.split(para.strip())
                if len(words) < prompt_words + reference_words // 2:
                    continue
                prompt, ref = " ".join(words[:prompt_words]), " ".join(words[prompt_words:prompt_words + reference_words])
                if f"{prompt} {ref}" in seen:
                    continue
            items.append(PromptItem(id=f"{source.split(':', 1)[1]}-{d}-{p}", prompt=prompt, references=(ref,)))
    if not items:
        raise DataError(f"{source}: no held-out paragraph is long enough for a prompt")
    # spread over documents: round-robin rather than the first n paragraphs of one document
    by_doc: dict[str, list[PromptItem]] = {}
    for it in items:
        by_doc.setdefault(it.id.rsplit("-", 1)[0], []).append(it)
    picked: list[PromptItem] = []
    while len(picked) < n and any(by_doc.values()):
        for k in list(by_doc):
            if by_doc[k] and len(picked) < n:
                picked.append(by_doc[k].pop(0))
    return picked


#: ``--prompt-format``: how ``prompt`` items reach the model
PROMPT_FORMATS = ("text", "chat")


def load_prompts(spec: str, *, n_builtin: int = 32, prompt_format: str = "text") -> list[PromptItem]:
    """``builtin`` (``builtin:pydoc``), another built-in source (``builtin:stdlib-code``), or a JSONL file.

    ``prompt_format="chat"`` turns every ``prompt`` item into a one-turn chat (the prompt as the user's
    turn), so that a chat model sees it through its chat template as it sees ``messages`` items;
    ``"text"`` leaves it as text to continue (what a base model, and the built-in prompts, are for).
    lm-eval-harness makes the same choice with ``--apply_chat_template``, off by default."""
    if prompt_format not in PROMPT_FORMATS:
        raise DataError(f"--prompt-format must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
    if spec == "builtin" or spec.startswith("builtin:"):
        src = "builtin:pydoc" if spec == "builtin" else spec
        items = builtin_prompts(n_builtin, source=src)
    else:
        items = read_prompts_jsonl(spec)
    if prompt_format == "chat":
        items = [PromptItem(id=it.id, messages=(("user", it.prompt),), references=it.references, answer=it.answer,
                            source=it.source, meta=it.meta) if it.prompt is not None else it for it in items]
    return items


def prompts_label(spec: str, prompt_format: str = "text") -> str:
    """How a result names its prompt set: the ``--prompts`` spec, and ``as chat`` when it was turned into chats."""
    return spec if prompt_format == "text" else f"{spec} (prompt items as chat)"
