import pytest
import torch

from steadylm.train import l1_penalty, l2_penalty, param_groups


def test_seed_l2_example():
    # lambda = 0.1, w = [1, 2, 3]: 0.1 * (1 + 4 + 9) = 1.4
    assert float(l2_penalty([torch.tensor([1.0, 2.0, 3.0])], 0.1)) == pytest.approx(1.4)


def test_l2_gradient_is_two_lambda_w():
    w = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    l2_penalty([w], 0.1).backward()
    assert w.grad.tolist() == pytest.approx([0.2, -0.4, 0.6])


def test_l1():
    assert float(l1_penalty([torch.tensor([1.0, -2.0, 3.0])], 0.5)) == pytest.approx(3.0)
    assert float(l1_penalty([torch.ones(3)], 0.0)) == 0.0


def test_param_groups_exclude_biases_and_norms():
    from steadylm.models import build_model

    model = build_model("nano", vocab_size=300, context=16)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"])
    assert all(p.ndim < 2 for p in no_decay["params"])
    assert any("norm" in n for n in no_decay["names"])
    assert "model.embed_tokens.weight" in decay["names"]
    n_all = sum(1 for _ in model.parameters())
    assert len(decay["params"]) + len(no_decay["params"]) == n_all

    decay2, no_decay2 = param_groups(model, 0.1, decay_embeddings=False)
    assert "model.embed_tokens.weight" in no_decay2["names"]
    assert "model.embed_tokens.weight" not in decay2["names"]


def test_weight_decay_is_decoupled_from_l2():
    # Same lambda, different update: AdamW's decay does not pass through Adam's normalisation.
    def run(wd, l2):
        w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0]))
        opt = torch.optim.AdamW([w], lr=0.1, weight_decay=wd)
        loss = (w * torch.tensor([0.01, 0.01, 0.01])).sum() + l2_penalty([w], l2)
        loss.backward()
        opt.step()
        return w.detach().clone()

    assert not torch.allclose(run(0.1, 0.0), run(0.0, 0.1))
