"""--optimizer adamw|spam|stable-spam|muon: each trains, resumes bit for bit, and Muon takes exactly the hidden matrices."""

import io

import pytest
import torch

from steadylm.errors import ConfigError
from steadylm.models import build_model
from steadylm.train.optimizers import OPTIMIZERS, CombinedOptimizer, build_optimizer, group_labels
from steadylm.train.regularize import param_groups
from steadylm.train.stabilizer import Stabilizer

V, T, B = 64, 32, 8


def _setup(name, model=None, **kw):
    model = model or build_model("nano", vocab_size=V, context=T, seed=0)
    groups = param_groups(model, 0.1)
    for g in groups:
        g.pop("names")
    kw.setdefault("reset_every", 4 if "spam" in name else None)  # a momentum reset inside the resumed window
    return model, build_optimizer(name, groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, model=model, **kw)


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        half = torch.randint(0, V, (B, T // 2), generator=g)
        out.append(torch.cat([half, half], 1))  # (B, T)
    return out


def _run(model, opt, batches, first=0):
    stab = Stabilizer(model, opt)
    losses = []
    for i, x in enumerate(batches):
        for g in opt.param_groups:  # a schedule, set the way steadylm train sets it
            g["lr"] = 1e-2 * (1 - 0.05 * (first + i))
        losses.append(stab.step(model(input_ids=x, labels=x).loss).loss)
    return losses


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_trains_the_nano_model(name):
    model, opt = _setup(name)
    x = _batches(1)[0]
    losses = _run(model, opt, [x] * 8)
    assert losses[-1] < losses[0] - 0.5, losses  # ln 64 = 4.16 at the start


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_resume_from_state_dict_is_bit_exact(name):
    batches = _batches(9)
    model, opt = _setup(name)
    _run(model, opt, batches[:3])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buf)  # what a checkpoint holds
    straight = _run(model, opt, batches[3:], first=3)

    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # as checkpoint.load_training_state reads it
    fresh = build_model("nano", vocab_size=V, context=T, seed=1)  # other weights: all must come from the checkpoint
    fresh.load_state_dict(saved["model"])
    fresh, opt2 = _setup(name, model=fresh)
    opt2.load_state_dict(saved["optim"])
    resumed = _run(fresh, opt2, batches[3:], first=3)
    assert resumed == straight
    for (n, a), b in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), n


def test_muon_takes_exactly_the_hidden_matrices():
    model, opt = _setup("muon")
    assert isinstance(opt, CombinedOptimizer) and list(opt.parts) == ["muon", "adamw"]
    names = {id(p): n for n, p in model.named_parameters()}
    under = {label: {names[id(p)] for g in part.param_groups for p in g["params"]} for label, part in opt.parts.items()}
    hidden = {n for n, p in model.named_parameters() if n.startswith("model.layers.") and p.ndim == 2}
    assert under["muon"] == hidden and len(hidden) == 2 * 7  # q, k, v, o, gate, up, down per layer
    assert under["adamw"] == set(names.values()) - hidden
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight"} <= under["adamw"]
    assert isinstance(opt.parts["muon"], torch.optim.Muon) and isinstance(opt.parts["adamw"], torch.optim.AdamW)
    # one param_groups over both halves: the groups are the inner optimizers' own dicts
    assert group_labels(opt, ["decay", "no_decay"]) == ["muon/decay", "decay", "no_decay"]
    assert opt.param_groups[0] is opt.parts["muon"].param_groups[0]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.1, 0.0]
    assert group_labels(_setup("adamw")[1], ["decay", "no_decay"]) == ["decay", "no_decay"]


def test_bad_optimizer_options_are_refused():
    with pytest.raises(ConfigError, match="unknown --optimizer 'lion'"):
        _setup("lion")
    with pytest.raises(ConfigError, match="momentum-reset"):
        _setup("adamw", reset_every=10)
    model = build_model("nano", vocab_size=V, context=T, seed=0)
    with pytest.raises(ConfigError, match="needs the model"):
        build_optimizer("muon", [{"params": list(model.parameters())}], lr=1e-3)
    _, opt = _setup("muon")
    with pytest.raises(ConfigError, match="resume with the --optimizer"):
        opt.load_state_dict({"adamw": {}})
