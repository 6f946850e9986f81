import math

import pytest
import torch

from steadylm.train import NoClip, NormClip, ValueClip, make_clipper


def _param(grad):
    p = torch.nn.Parameter(torch.zeros(len(grad)))
    p.grad = torch.tensor(grad, dtype=torch.float32)
    return p


def test_seed_worked_example_norm_clip():
    # [1, 2, 3] has norm sqrt(14); clipped to norm 2 it is [1, 2, 3] * 2 / sqrt(14).
    p = _param([1.0, 2.0, 3.0])
    stats = NormClip(max_norm=2.0).clip_([p])
    assert float(stats.norm) == pytest.approx(math.sqrt(14), rel=1e-6)
    assert bool(stats.clipped)
    assert p.grad.tolist() == pytest.approx([0.534, 1.069, 1.604], abs=1e-3)
    # The often-quoted [0.58, 1.15, 1.73] divides by sqrt(3): that is wrong.
    assert p.grad.tolist() != pytest.approx([0.58, 1.15, 1.73], abs=1e-2)
    assert float(p.grad.norm()) == pytest.approx(2.0, rel=1e-5)


def test_norm_clip_equals_torch_clip_grad_norm():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.zeros(5, 7)), torch.nn.Parameter(torch.zeros(11))]
    b = [torch.nn.Parameter(torch.zeros(5, 7)), torch.nn.Parameter(torch.zeros(11))]
    for pa, pb in zip(a, b):
        g = torch.randn_like(pa) * 3
        pa.grad, pb.grad = g.clone(), g.clone()
    ref = torch.nn.utils.clip_grad_norm_(b, 0.5)
    stats = NormClip(0.5).clip_(a)
    assert torch.equal(stats.norm, ref)
    for pa, pb in zip(a, b):
        assert torch.equal(pa.grad, pb.grad)


def test_norm_clip_leaves_small_gradients_alone():
    p = _param([0.1, 0.2])
    stats = NormClip(1.0).clip_([p])
    assert not bool(stats.clipped)
    assert p.grad.tolist() == pytest.approx([0.1, 0.2])


def test_value_clip_clamps_elements_and_reports_pre_clip_norm():
    p = _param([-5.0, 0.5, 3.0])
    stats = ValueClip(1.0).clip_([p])
    assert p.grad.tolist() == [-1.0, 0.5, 1.0]
    assert float(stats.norm) == pytest.approx(math.sqrt(25 + 0.25 + 9), rel=1e-6)
    assert bool(stats.clipped)


def test_no_clip_measures_only():
    p = _param([3.0, 4.0])
    stats = NoClip().clip_([p])
    assert float(stats.norm) == pytest.approx(5.0)
    assert p.grad.tolist() == [3.0, 4.0]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_clippers_reject_bad_thresholds(bad):
    with pytest.raises(ValueError):
        NormClip(bad)
    with pytest.raises(ValueError):
        ValueClip(bad)


def test_make_clipper():
    assert isinstance(make_clipper("none"), NoClip)
    assert make_clipper("norm", max_norm=3.0).max_norm == 3.0
    assert make_clipper("value", clip_value=0.5).clip_value == 0.5
    with pytest.raises(ValueError):
        make_clipper("bogus")
