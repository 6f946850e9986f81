"""`models.headrows.LossPositions`: the LM head run on the loss positions alone gives the full
head's logits at those positions (soft-cap included), the labels that go with them, and falls back
to the full head for a model that does not call its head exactly once."""

import pytest
import torch
import torch.nn.functional as F

from steadylm.models import build_model
from steadylm.models.headrows import LossPositions

IGNORE = -100


def batch_and_labels(vocab: int, B=3, T=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (B, T), generator=g)
    y = torch.randint(0, vocab, (B, T), generator=g)
    y[0, :5] = IGNORE  # each row its own unlabelled stretch: no one set of positions fits them all
    y[1, 9:] = IGNORE
    y[2, ::3] = IGNORE
    return {"input_ids": x}, y


@pytest.mark.parametrize("preset, softcap", [("nano", None), ("nano-gemma2", 0.5)])
def test_narrowed_logits_are_the_full_ones_at_the_loss_positions(preset, softcap):
    model = build_model(preset, vocab_size=300, context=32, seed=0, final_softcap=softcap).eval()
    batch, y = batch_and_labels(300)
    head = LossPositions(model)
    with torch.no_grad():
        full = model(**batch, use_cache=False).logits  # (B, T, V)
        got, labels = head.logits(model, batch, y, IGNORE)
    keep = y.reshape(-1) != IGNORE
    n = int(keep.sum())
    assert got.shape == (1, n, 300) and labels.tolist() == y.reshape(-1)[keep].tolist()
    want = full.reshape(-1, 300)[keep]
    torch.testing.assert_close(got[0], want, rtol=1e-5, atol=1e-5)
    if softcap is not None:  # the model's own cap applied after the narrowed head
        assert float(got.abs().max()) <= softcap
    torch.testing.assert_close(F.cross_entropy(got[0], labels),
                               F.cross_entropy(full.reshape(-1, 300), y.reshape(-1), ignore_index=IGNORE))


def test_gradients_match_the_full_head():
    model = build_model("nano", vocab_size=300, context=32, seed=0).eval()  # no dropout: the same function twice
    batch, y = batch_and_labels(300)
    loss = F.cross_entropy(model(**batch, use_cache=False).logits.reshape(-1, 300), y.reshape(-1), ignore_index=IGNORE)
    loss.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    logits, labels = LossPositions(model).logits(model, batch, y, IGNORE)
    F.cross_entropy(logits[0], labels).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[n], rtol=1e-4, atol=1e-6, msg=n)


def test_every_position_labelled_runs_the_model_unchanged():
    model = build_model("nano", vocab_size=300, context=32, seed=0).eval()
    batch, _ = batch_and_labels(300)
    y = batch["input_ids"].roll(-1, 1)
    head = LossPositions(model)
    with torch.no_grad():
        got, labels = head.logits(model, batch, y, IGNORE)
        want = model(**batch, use_cache=False).logits
    assert head.calls == 0 and got.shape == want.shape and torch.equal(got, want)
    assert labels.tolist() == y.reshape(-1).tolist()


class HeadTwice(torch.nn.Module):
    """A model that calls its head a second time (on the last position): the hook cannot narrow it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def forward(self, input_ids, use_cache=False):
        out = self.inner(input_ids=input_ids, use_cache=use_cache)
        self.inner.get_output_embeddings()(torch.zeros(1, 1, self.inner.config.hidden_size))
        return out


def test_a_head_not_called_once_falls_back_to_the_full_head_for_good():
    inner = build_model("nano", vocab_size=300, context=32, seed=0).eval()
    model = HeadTwice(inner)
    batch, y = batch_and_labels(300)
    head = LossPositions(model)
    with torch.no_grad():
        got, labels = head.logits(model, batch, y, IGNORE)
        want = inner(**batch, use_cache=False).logits
    assert not head.enabled and got.shape == want.shape and torch.equal(got, want)
    assert labels.tolist() == y.reshape(-1).tolist()
    with torch.no_grad():  # off from then on: the hook is gone, and one forward pass per call
        head.calls = 0
        assert head.logits(model, batch, y, IGNORE)[0].shape == want.shape and head.calls == 0


def test_narrowing_reads_nothing_back_from_the_tensors(monkeypatch):
    """The indices come from the host labels through numpy and the rows are picked on the device
    with them: no ``.item()``/``bool()``/``.tolist()`` on a tensor (on a GPU each would be a sync)."""
    model = build_model("nano", vocab_size=300, context=32, seed=0).eval()
    batch, y = batch_and_labels(300)
    head = LossPositions(model)
    reads = []
    for name in ("item", "__float__", "__int__", "__index__", "__bool__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(t, *a, _original=original, _name=name, **k):
            import traceback

            if "headrows.py" in traceback.extract_stack(limit=2)[0].filename:
                reads.append(_name)
            return _original(t, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    with torch.no_grad():
        logits, _ = head.logits(model, batch, y, IGNORE)
    assert logits.shape[0] == 1 and head.calls == 1  # it did narrow
    assert reads == []
