"""Fine-tuning data: chat, prompt/completion and text records, rendered, masked and packed.

**Reading.** A ``.jsonl`` file (streamed line by line through `steadylm.io`, so one line over
`MAX_LINE_BYTES` is refused with its line named), a ``.parquet`` file, a folder of either, or a
folder ``datasets.Dataset.save_to_disk`` wrote; the ``datasets`` library reads parquet (streamed)
and arrow (memory-mapped). A record is a chat (``messages``: a list of ``{role, content}``, as
OpenAI and HF datasets write them), a prompt/completion pair, or a ``text``; the first record (or
the table's columns) decides, unless ``messages_field`` / ``text_field`` names the field.

**Rendering.** Every record becomes one text and the character ranges that carry the loss. Chats
go through the tokenizer's own chat template; the assistant ranges are found by rendering prefix
by prefix (the conversation up to a turn with the generation prompt, then through the turn), as
TRL does for templates without ``{% generation %}`` markers (SmolLM2's has none). A range runs
through the turn's EOS token - generation stops there - and leaves out template glue after it
(ChatML's newline). Prompt/completion: the loss is on the completion and EOS; text: on all of it.
The text is tokenized once, and a token carries the loss when it *starts* inside a range
(offsets from the fast tokenizer), so a token that merges across a boundary is decided once.

**Streaming.** Records are tokenized in chunks of `CHUNK` and their ids and loss flags appended
to unlinked temporary files that are memory-mapped afterwards (nanoGPT's ``train.bin``, without
the file left behind): memory stays flat however large the input (``benchmarks/tokenize_memory.py``).

**Packing.** Each example gives ``len - 1`` (input, target) slots - its own next-token shift, so
no target crosses into the next example. ``packing="positions"``: best-fit decreasing (TRL's
``bfd``) into rows of ``context`` slots with position ids restarting at every example, HF's
position-id packing (``DataCollatorWithFlattening``): with no attention mask, transformers'
``masking_utils`` turns such position ids into a block-diagonal causal mask for eager, sdpa and
flash attention alike. `supports_position_packing` checks a model really keeps examples apart;
where it does not, ``packing="padding"`` puts one example per row, right-padded (causal attention
never looks ahead, so no mask is needed). Targets are -100 where there is no loss; the share of
padding is reported. Rows are served in a seeded per-epoch order (`SeededRows`), like `BlockDataset`.
"""

from __future__ import annotations

import hashlib
import tempfile
from array import array
from bisect import bisect_left, insort
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..config import LOSS_ON, PACKING
from ..errors import ConfigError, DataError, ModelError
from ..io import MAX_LINE_BYTES, iter_jsonl
from .packing import SeededRows
from .sources import content_bucket

ROLES = ("system", "user", "assistant", "tool")
#: the target that carries no loss (``torch.nn.functional.cross_entropy``'s ``ignore_index``)
IGNORE = -100
#: records rendered and tokenized per call of the Rust tokenizer
CHUNK = 512
_SUFFIXES = (".jsonl", ".json", ".parquet")


# ------------------------------------------------------------------ reading
def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else "no detail"


def _jsonl_rows(path: Path, max_line_bytes: int) -> Iterator[tuple[str, Any]]:
    for n, obj in iter_jsonl(path, max_line_bytes=max_line_bytes):
        yield f"{path}:{n}", obj


def _arrow_rows(name: str, table) -> Iterator[tuple[str, Any]]:
    """Rows of a ``datasets`` table; a read failing halfway (a corrupt file) is a `DataError`."""
    rows = iter(table)
    i = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:  # pyarrow and datasets raise many kinds here
            raise DataError(f"{name}: cannot read row {i + 1} ({type(e).__name__}: {_first_line(e)})") from None
        i += 1
        yield f"{name} row {i}", row


def _open_table(name: str, open_fn):
    try:
        return open_fn()
    except Exception as e:
        raise DataError(f"{name}: cannot read ({type(e).__name__}: {_first_line(e)})") from None


def _is_saved(path: Path) -> bool:
    """A folder ``datasets``' ``save_to_disk`` wrote (a Dataset or a DatasetDict)."""
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def _data_files(path: Path) -> list[Path]:
    """The file itself, or a folder's .jsonl and .parquet files in path order."""
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES)


def _tables(source: str, max_line_bytes: int) -> Iterator[tuple[str, list[str] | None, Iterator[tuple[str, Any]]]]:
    """(name, column names or None for JSONL, rows as (where, record)) of every file in ``source``."""
    path = Path(source)
    if not path.exists():
        raise DataError(f"{source}: no such file or folder")
    if _is_saved(path):
        import datasets

        table = _open_table(source, lambda: datasets.load_from_disk(str(path)))
        if isinstance(table, datasets.DatasetDict):
            if "train" not in table:
                raise DataError(f"{source}: a DatasetDict without a 'train' split (splits: {', '.join(table)})")
            table = table["train"]
        yield source, list(table.column_names), _arrow_rows(source, table)
        return
    files = _data_files(path)
    if not files:
        raise DataError(f"{source}: folder has no .jsonl or .parquet files and is not a datasets save_to_disk folder")
    for f in files:
        if f.suffix.lower() == ".parquet":
            import datasets

            table = _open_table(str(f), lambda: datasets.load_dataset("parquet", data_files=[str(f)], split="train", streaming=True))
            columns = table.column_names
            if columns is None:  # no schema from the file: ask the parquet footer
                import pyarrow.parquet as pq

                columns = _open_table(str(f), lambda: pq.read_schema(f).names)
            yield str(f), list(columns), _arrow_rows(str(f), table)
        elif f.suffix.lower() in (".jsonl", ".json"):
            yield str(f), None, _jsonl_rows(f, max_line_bytes)
        else:
            raise DataError(f"{f}: expected a .jsonl or .parquet file, or a folder of them or of datasets.save_to_disk")


def _kind(columns: list[str], where: str, text_field: str | None, messages_field: str | None) -> tuple[str, str | None]:
    """("chat" | "prompt" | "text", the field) for a table with ``columns``."""
    have = ", ".join(repr(c) for c in columns) or "none"
    for field, flag, kind in ((messages_field, "--messages-field", "chat"), (text_field, "--text-field", "text")):
        if field is not None:
            if field not in columns:
                raise DataError(f"{where}: no field {field!r} (named by {flag}); fields: {have}")
            return kind, field
    if "messages" in columns:
        return "chat", "messages"
    if "prompt" in columns and "completion" in columns:
        return "prompt", None
    if "text" in columns:
        return "text", "text"
    raise DataError(f"{where}: no 'messages', 'prompt' and 'completion', or 'text' field (fields: {have}); "
                    "name one with --messages-field or --text-field")


def _string(record: dict, field: str, where: str) -> str:
    if field not in record:
        raise DataError(f"{where}: no {field!r} field")
    value = record[field]
    if not isinstance(value, str):
        raise DataError(f"{where}: {field!r} must be a string, got {type(value).__name__}")
    return value


def _messages(record: dict, field: str, where: str) -> list[dict]:
    """The conversation, checked; keys an arrow table filled with None (a field other rows have) dropped."""
    if field not in record:
        raise DataError(f"{where}: no {field!r} field")
    value = record[field]
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: {field!r} must be a non-empty list of {{role, content}} objects")
    out = []
    for j, m in enumerate(value):
        if not isinstance(m, dict):
            raise DataError(f"{where}: {field}[{j}] must be an object with 'role' and 'content', got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise DataError(f"{where}: {field}[{j}] has unknown role {role!r}; known roles: {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise DataError(f"{where}: {field}[{j}].content must be a string, got {type(m.get('content')).__name__}")
        out.append({k: v for k, v in m.items() if v is not None})
    return out


def iter_records(source: str, *, text_field: str | None = None, messages_field: str | None = None,
                 max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[str, str, Any]]:
    """(where, kind, value) of every record of ``source``, streamed and checked: ``kind`` "chat"
    with the message list, "prompt" with (prompt, completion), or "text" with the string."""
    for name, columns, rows in _tables(source, max_line_bytes):
        kind = field = None
        for where, record in rows:
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
            if kind is None:
                kind, field = _kind(list(record) if columns is None else columns, where if columns is None else name,
                                    text_field, messages_field)
            if kind == "chat":
                yield where, kind, _messages(record, field, where)
            elif kind == "prompt":
                yield where, kind, (_string(record, "prompt", where), _string(record, "completion", where))
            else:
                yield where, kind, _string(record, field, where)


def is_fine_tuning_source(source: str, *, text_field: str | None = None, messages_field: str | None = None) -> bool:
    """Whether ``source`` is read here rather than by `load_documents`: a field is named, it is
    parquet or a datasets folder, or its first JSONL record is a chat or a prompt/completion pair.
    A JSONL of plain ``text`` keeps the pretraining path (blocks across documents), and anything
    wrong with its first line is left for `load_documents` to report as before."""
    if text_field is not None or messages_field is not None:
        return True
    path = Path(source)
    if not path.exists():
        return False
    if _is_saved(path):
        return True
    files = _data_files(path)
    if any(p.suffix.lower() == ".parquet" for p in files):
        return True
    path = files[0] if files else path
    if path.suffix.lower() in (".jsonl", ".json") and path.is_file():
        lines = iter_jsonl(path)
        try:
            first = next(lines, (0, None))[1]
        except DataError:
            return False
        finally:
            lines.close()
        return isinstance(first, dict) and ("messages" in first or ("prompt" in first and "completion" in first))
    return False


# ------------------------------------------------------------------ rendering
@dataclass(frozen=True)
class Rendered:
    """One example as text, with the character ranges whose tokens carry the loss."""

    where: str
    text: str
    spans: tuple[tuple[int, int], ...]


class Renderer:
    """Turns records into `Rendered` examples with ``tokenizer``'s chat template and EOS."""

    def __init__(self, tokenizer, loss_on: str = "assistant"):
        if loss_on not in LOSS_ON:
            raise ConfigError(f"--loss-on must be one of {', '.join(LOSS_ON)}, got {loss_on!r}")
        self.tokenizer = tokenizer
        self.loss_on = loss_on
        self.eos = tokenizer.eos_token or ""

    def __call__(self, where: str, kind: str, value: Any) -> Rendered:
        if kind == "chat":
            return self.chat(value, where)
        if kind == "prompt":
            prompt, completion = value
            text = prompt + completion + self.eos
            return Rendered(where, text, ((0 if self.loss_on == "all" else len(prompt), len(text)),))
        text = value + self.eos
        return Rendered(where, text, ((0, len(text)),))

    def _template(self, messages: list[dict], where: str, generation: bool = False) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ModelError(f"{where}: a chat record, but the tokenizer has no chat template; "
                             "use a model whose tokenizer has one, or prompt/completion or text records")
        try:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        except Exception as e:  # jinja2 errors and the template's own raise_exception
            raise DataError(f"{where}: the chat template failed on this conversation ({type(e).__name__}: {_first_line(e)})") from None

    def chat(self, messages: list[dict], where: str) -> Rendered:
        """The conversation through the template; every assistant turn's tokens up to its EOS
        carry the loss (all tokens under ``loss_on="all"``)."""
        assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not assistant and self.loss_on == "assistant":
            raise DataError(f"{where}: no assistant message, so nothing to learn under --loss-on assistant "
                            "(remove the record or train with --loss-on all)")
        full = self._template(messages, where)
        if self.loss_on == "all":
            return Rendered(where, full, ((0, len(full)),))
        spans = []
        for i in assistant:
            head = self._template(messages[:i], where, generation=True)
            turn = self._template(messages[:i + 1], where)
            if not (turn.startswith(head) and full.startswith(turn)):
                raise DataError(f"{where}: the chat template renders message {i} differently once later messages follow, "
                                "so its assistant tokens cannot be found; train with --loss-on all")
            end = turn.rfind(self.eos, len(head)) if self.eos else -1
            spans.append((len(head), end + len(self.eos) if end >= 0 else len(turn)))
        return Rendered(where, full, tuple(spans))


def encode_rendered(tokenizer, chunk: list[Rendered]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token ids int32, loss flags bool) of each example: one batched call of the Rust tokenizer,
    a token carrying the loss when its first character lies in a loss range."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(f"{type(tokenizer).__name__}: fine-tuning data needs a fast (Rust) tokenizer for its offsets")
    enc = tokenizer([r.text for r in chunk], add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for r, ids, offsets in zip(chunk, enc["input_ids"], enc["offset_mapping"]):
        starts = np.array([o[0] for o in offsets], dtype=np.int64)
        loss = np.zeros(len(ids), dtype=bool)
        for a, b in r.spans:
            loss |= (starts >= a) & (starts < b)
        out.append((np.asarray(ids, dtype=np.int32), loss))
    return out


# ------------------------------------------------------------------ tokenized store
class _TokenFile:
    """Token ids and loss flags appended to unlinked temporary files (nothing to clean up, ever)."""

    def __init__(self, folder: str | None):
        self._ids = tempfile.TemporaryFile(dir=folder)
        self._loss = tempfile.TemporaryFile(dir=folder)
        self.offsets = array("q", [0])

    def append(self, ids: np.ndarray, loss: np.ndarray) -> None:
        self._ids.write(ids.tobytes())
        self._loss.write(loss.astype(np.uint8).tobytes())
        self.offsets.append(self.offsets[-1] + len(ids))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = self.offsets[-1]
        if n == 0:
            return np.zeros(0, np.int32), np.zeros(0, np.uint8), np.frombuffer(self.offsets, dtype=np.int64)
        self._ids.flush()
        self._loss.flush()
        return (np.memmap(self._ids, dtype=np.int32, mode="r", shape=(n,)),
                np.memmap(self._loss, dtype=np.uint8, mode="r", shape=(n,)),
                np.frombuffer(self.offsets, dtype=np.int64))


@dataclass
class Examples:
    """Tokenized examples: example ``e`` is ``ids[offsets[e]:offsets[e+1]]`` (memory-mapped)."""

    name: str
    ids: np.ndarray
    loss: np.ndarray
    offsets: np.ndarray
    truncated: int = 0
    """examples cut to ``context + 1`` tokens"""
    dropped: int = 0
    """examples left out because no loss token fell within ``context + 1`` tokens"""
    loss_tokens: int = 0
    """targets that carry the loss"""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def fingerprint(self) -> str:
        """sha256 of the tokens, loss flags and boundaries: what a resumed run must find again."""
        h = hashlib.sha256()
        for a in (self.ids, self.loss, self.offsets):
            h.update(memoryview(np.ascontiguousarray(a)).cast("B"))
        return h.hexdigest()


def tokenize_examples(source: str, tokenizer, *, context: int, loss_on: str = "assistant", text_field: str | None = None,
                      messages_field: str | None = None, val_fraction: float = 0.0,
                      max_line_bytes: int = MAX_LINE_BYTES, folder: str | None = None) -> tuple[Examples, Examples]:
    """(training, validation) examples of ``source``, streamed to temporary files in ``folder``.

    An example is cut to ``context + 1`` tokens; one left without a loss token is dropped
    (counted). Validation takes the examples whose rendered text hashes below ``val_fraction``
    (`split_documents`'s rule: stable under reordering)."""
    render = Renderer(tokenizer, loss_on)
    stores = {"train": _TokenFile(folder), "validation": _TokenFile(folder)}
    counts = {side: {"truncated": 0, "dropped": 0, "loss_tokens": 0} for side in stores}

    def flush(chunk: list[Rendered]) -> None:
        for r, (ids, loss) in zip(chunk, encode_rendered(tokenizer, chunk)):
            side = "validation" if val_fraction and content_bucket(r.text) < val_fraction else "train"
            if len(ids) > context + 1:
                ids, loss = ids[:context + 1], loss[:context + 1]
                counts[side]["truncated"] += 1
            n_loss = int(loss[1:].sum())  # the first token is never a target
            if not n_loss:
                counts[side]["dropped"] += 1
                continue
            counts[side]["loss_tokens"] += n_loss
            stores[side].append(ids, loss)

    chunk: list[Rendered] = []
    for where, kind, value in iter_records(source, text_field=text_field, messages_field=messages_field,
                                           max_line_bytes=max_line_bytes):
        chunk.append(render(where, kind, value))
        if len(chunk) == CHUNK:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)
    return tuple(Examples(f"{source} ({side} split)", *stores[side].arrays(), **counts[side]) for side in stores)


# ------------------------------------------------------------------ packing
def best_fit_decreasing(lengths: np.ndarray, capacity: int) -> list[list[int]]:
    """Rows of example numbers: longest first, each into the row with the least room that still
    takes it (TRL's ``bfd``); deterministic."""
    rows: list[list[int]] = []
    rooms: list[int] = []  # distinct free room sizes that some row has, sorted
    by_room: dict[int, list[int]] = {}
    for e in np.argsort(-lengths, kind="stable"):
        n = int(lengths[e])
        k = bisect_left(rooms, n)
        if k == len(rooms):
            r, room = len(rows), capacity
            rows.append([])
        else:
            room = rooms[k]
            r = by_room[room].pop()
            if not by_room[room]:
                del by_room[room]
                rooms.pop(k)
        rows[r].append(int(e))
        room -= n
        if room > 0:
            if room not in by_room:
                by_room[room] = []
                insort(rooms, room)
            by_room[room].append(r)
    return rows


@dataclass(frozen=True)
class PackingReport:
    """How the examples filled the rows."""

    packing: str
    examples: int
    truncated: int
    dropped: int
    rows: int
    tokens: int
    """input slots holding a real token"""
    loss_tokens: int
    padding_share: float
    """share of the ``rows x context`` slots that are padding"""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SFTDataset(SeededRows):
    """Rows of ``context`` (input, target) slots built from `Examples`, in a seeded per-epoch order."""

    def __init__(self, examples: Examples, context: int, seed: int, *, packing: str = "positions", pad_id: int = 0):
        if packing not in PACKING:
            raise ConfigError(f"packing must be one of {', '.join(PACKING)}, got {packing!r}")
        if len(examples) == 0:
            raise DataError(f"{examples.name}: no example with a loss token within --context {context} + 1 tokens "
                            f"({examples.dropped} left out)")
        self.examples, self.context, self.seed, self.packing, self.pad_id = examples, context, seed, packing, pad_id
        lengths = np.diff(examples.offsets) - 1  # slots: inputs t[:-1], targets t[1:]
        rows = best_fit_decreasing(lengths, context) if packing == "positions" else [[e] for e in range(len(lengths))]
        self.row_start = np.cumsum([0] + [len(r) for r in rows])
        self.row_items = np.array([e for r in rows for e in r], dtype=np.int64)
        self.num_blocks = len(rows)
        self.row_tokens = np.add.reduceat(lengths[self.row_items], self.row_start[:-1])  # real slots per row
        tokens = int(lengths.sum())
        self.report = PackingReport(packing, len(examples), examples.truncated, examples.dropped, len(rows), tokens,
                                    examples.loss_tokens, 1.0 - tokens / (len(rows) * context))

    @property
    def num_tokens(self) -> int:
        return self.report.tokens

    def real_tokens(self, start: int, size: int) -> int:
        """Real (non-padding) input tokens in samples ``start .. start+size-1``: what throughput
        counts. A whole epoch holds every row once, so only partial epochs need the order."""
        total, g, end = 0, start, start + size
        while g < end:
            epoch, i = self.position(g)
            n = min(end - g, self.num_blocks - i)
            whole = n == self.num_blocks
            total += self.report.tokens if whole else int(self.row_tokens[self._permutation(epoch)[i:i + n].numpy()].sum())
            g += n
        return total

    def rows(self, start: int, size: int) -> dict[str, torch.Tensor]:
        """Samples ``start .. start+size-1``: ``input_ids`` and ``labels`` (B, T) - ``labels`` the
        shifted targets, -100 without loss - and under position packing ``position_ids`` (B, T),
        restarting at every example (padding at a row's end is a segment of its own)."""
        return self.rows_at(self.order(start, size))

    def rows_at(self, numbers: torch.Tensor) -> dict[str, torch.Tensor]:
        """`rows` for the row numbers ``numbers`` (B,), outside the seeded order."""
        ex, T, size = self.examples, self.context, len(numbers)
        x = np.full((size, T), self.pad_id, dtype=np.int64)
        y = np.full((size, T), IGNORE, dtype=np.int64)
        pos = np.zeros((size, T), dtype=np.int64)
        for b, row in enumerate(numbers.tolist()):
            col = 0
            for e in self.row_items[self.row_start[row]:self.row_start[row + 1]]:
                s, t = ex.offsets[e], ex.offsets[e + 1]
                n = t - s - 1
                x[b, col:col + n] = ex.ids[s:t - 1]
                y[b, col:col + n] = np.where(ex.loss[s + 1:t].astype(bool), ex.ids[s + 1:t], IGNORE)
                pos[b, col:col + n] = np.arange(n)
                col += n
            pos[b, col:] = np.arange(T - col)
        out = {"input_ids": torch.from_numpy(x), "labels": torch.from_numpy(y)}
        if self.packing == "positions":
            out["position_ids"] = torch.from_numpy(pos)
        return out


def supports_position_packing(model) -> bool:
    """Whether ``model`` keeps position-packed examples apart: the second of two packed examples
    must get the logits it gets alone (one tiny forward pass each, in eval mode)."""
    first, second = [1, 2, 3, 4], [5, 6, 7]
    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = model(input_ids=torch.tensor([first + second], device=dev),
                           position_ids=torch.tensor([list(range(4)) + list(range(3))], device=dev), use_cache=False).logits[0, 4:]
            alone = model(input_ids=torch.tensor([second], device=dev), use_cache=False).logits[0]
    finally:
        model.train(was_training)
    scale = alone.float().abs().max().clamp_min(1e-6)
    tol = 1e-4 if alone.dtype == torch.float32 else 2e-2
    return bool(((packed.float() - alone.float()).abs().max() / scale) < tol)


def heldout_loss(model, dataset: SFTDataset, *, batch_size: int = 8) -> tuple[float, int]:
    """(mean next-token loss over the loss-carrying targets, their number) of every row of
    ``dataset`` once, in row order: the fine-tuning counterpart of validation perplexity."""
    import torch.nn.functional as F

    from ..models.headrows import LossPositions

    dev = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=dev)
    count = 0
    head = LossPositions(model)  # the LM head at the loss positions only
    try:
        with torch.no_grad():
            for start in range(0, len(dataset), batch_size):
                batch = dataset.rows_at(torch.arange(start, min(start + batch_size, len(dataset))))
                labels = batch.pop("labels")  # (B, T), on the host
                count += int((labels != IGNORE).sum())
                batch = {k: v.to(dev) for k, v in batch.items()}
                logits, y = head.logits(model, batch, labels, IGNORE)  # (B, T, V) and (B*T,), or (1, N, V) and (N,)
                total += F.cross_entropy(logits.flatten(0, 1).float(), y, reduction="sum", ignore_index=IGNORE).double()
    finally:
        head.remove()
        model.train(was_training)
    return float(total) / max(count, 1), count


def load_sft(source: str, tokenizer, *, context: int, seed: int, packing: str = "positions", loss_on: str = "assistant",
             text_field: str | None = None, messages_field: str | None = None, val_fraction: float = 0.1,
             max_line_bytes: int = MAX_LINE_BYTES, folder: str | None = None) -> tuple[SFTDataset, SFTDataset | None]:
    """(training, validation) datasets of ``source``, ready for ``rows(start, size)``; no
    validation set when ``val_fraction`` is 0 or no example fell on its side (the split is by
    content hash, record by record, so a small file may have none)."""
    train, val = tokenize_examples(source, tokenizer, context=context, loss_on=loss_on, text_field=text_field,
                                   messages_field=messages_field, val_fraction=val_fraction,
                                   max_line_bytes=max_line_bytes, folder=folder)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    return (SFTDataset(train, context, seed, packing=packing, pad_id=pad),
            SFTDataset(val, context, seed, packing=packing, pad_id=pad) if val_fraction and len(val) else None)
