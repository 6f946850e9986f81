"""Pack tokenized documents into fixed-length training blocks with a deterministic order.

Documents are joined into one stream, each preceded by the separator token (BOS, else EOS), the
same token lm-eval-harness puts in front of a document when it scores it. The stream is cut into
non-overlapping blocks of ``context + 1`` tokens taken every ``context`` tokens (inputs are the
first ``context``, labels the last ``context``), like nanoGPT's data loader but without random
offsets, so that the order is a pure function of the seed.

The order of blocks is a fresh permutation per epoch, drawn from a generator seeded by
``(seed, epoch)``. Sample number ``g`` (counting across epochs) is therefore a function of
``g`` alone: resuming at optimizer step ``s`` needs nothing but ``s`` to find its data, and
the data position saved with a checkpoint is only a record.
"""

from __future__ import annotations

import torch

from ..errors import DataError


class SeededRows:
    """Rows served in a fresh seeded permutation per epoch: sample ``g`` is a function of ``g``.

    Subclasses set ``num_blocks`` (rows per epoch) and ``seed``, and build a batch from the row
    numbers `order` returns."""

    num_blocks: int
    seed: int
    _perm_epoch = -1
    _perm = None

    def __len__(self) -> int:
        return self.num_blocks

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.num_blocks, generator=g)
            self._perm_epoch = epoch
        return self._perm

    def position(self, sample: int) -> tuple[int, int]:
        """(epoch, index within the epoch) of global sample number ``sample``."""
        return divmod(sample, self.num_blocks)

    def order(self, start: int, size: int) -> torch.Tensor:
        """Row numbers of samples ``start .. start+size-1``, (B,): one slice per epoch touched."""
        parts = []
        g = start
        while g < start + size:
            epoch, i = self.position(g)
            n = min(start + size - g, self.num_blocks - i)  # rows left in this epoch
            parts.append(self._permutation(epoch)[i:i + n])
            g += n
        return parts[0] if len(parts) == 1 else torch.cat(parts)  # (B,)


class BlockDataset(SeededRows):
    """Fixed-length blocks over a token stream, served in a seeded per-epoch order."""

    def __init__(self, token_lists: list[list[int]], context: int, seed: int, separator: int | None, name: str = "data"):
        stream: list[int] = []
        for toks in token_lists:
            if separator is not None:
                stream.append(separator)
            stream.extend(toks)
        self.context = context
        self.seed = seed
        self.tokens = torch.tensor(stream, dtype=torch.long)
        self.num_blocks = (len(stream) - 1) // context
        if self.num_blocks < 1:
            raise DataError(
                f"{name}: only {len(stream)} tokens, fewer than one block of --context {context} + 1; "
                "use more text or a smaller --context"
            )

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.numel())

    def batch(self, start: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``start .. start+size-1`` as (inputs, labels), each (B, T).

        One gather per epoch the batch touches, no Python loop over rows and no tensor read on the
        host (the training step's one host read stays the only one)."""
        blocks = self.order(start, size)  # (B,)
        index = blocks[:, None] * self.context + torch.arange(self.context + 1)  # (B, T+1)
        block = self.tokens[index]  # (B, T+1)
        return block[:, :-1], block[:, 1:]

    def real_tokens(self, start: int, size: int) -> int:
        """Input tokens in samples ``start .. start+size-1``: every slot of a block is real."""
        return size * self.context

    def rows(self, start: int, size: int) -> dict[str, torch.Tensor]:
        """`batch` as the model's keyword arguments plus ``labels``, as `SFTDataset.rows` gives them."""
        x, y = self.batch(start, size)
        return {"input_ids": x, "labels": y}
