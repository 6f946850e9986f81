"""Training: clipping, regularization, checkpoints and the `steadylm train` loop.

The pieces work in any PyTorch loop::

    from steadylm.train import NormClip, param_groups, l2_penalty
    clipper = NormClip(max_norm=1.0)
    loss = model(x, labels=y).loss + l2_penalty(decayed_params, 1e-4)
    loss.backward()
    stats = clipper.clip_(model.parameters())   # stats.norm is the pre-clip norm
    optimizer.step()

or let `Stabilizer` do backward, clipping, the spike/NaN guard and the optimizer step::

    stab = Stabilizer(model, optimizer, clipper=ZClip(), guard=SpikeGuard("skip"))
    report = stab.step(model(x, labels=y).loss)

With ``transformers.Trainer``: ``steadylm.train.hf.StabilityCallback`` (imported on demand, so
this package does not import ``transformers``).
"""

from .clip import AGC, AutoClip, ClipStats, NoClip, NormClip, ValueClip, ZClip, make_clipper
from .regularize import l1_penalty, l2_penalty, param_groups
from .spikes import SpikeGuard
from .stabilizer import Stabilizer, StepReport

__all__ = [
    "AGC", "AutoClip", "ClipStats", "NoClip", "NormClip", "ValueClip", "ZClip", "make_clipper",
    "l1_penalty", "l2_penalty", "param_groups", "SpikeGuard", "Stabilizer", "StepReport",
]
