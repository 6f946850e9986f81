"""Logit soft-capping (Gemma 2): the built model's attention and output logits stay within the caps."""

import pytest
import torch

from steadylm.errors import ConfigError
from steadylm.models import PRESETS, build_model
from steadylm.models.presets import apply_softcaps

V, T = 64, 16


def _gemma2(attn=None, final=None):
    import transformers

    cls, fields, _ = PRESETS["nano-gemma2"]
    config = getattr(transformers, cls)(**fields, vocab_size=V, max_position_embeddings=T, tie_word_embeddings=False)
    assert apply_softcaps(config, attn=attn, final=final) == {
        k: v for k, v in (("attn_logit_softcapping", attn), ("final_logit_softcapping", final)) if v is not None}
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # a model whose logits have blown up: queries and the output head x1000
        model.lm_head.weight.mul_(1000)
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(1000)
    return model.eval()


def _logits_and_spread(model):
    ids = torch.randint(0, V, (2, T), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(input_ids=ids, output_attentions=True)
    # softmax(l)_i / softmax(l)_j = exp(l_i - l_j): the spread of log-probabilities over a row's
    # causal positions is the spread of its pre-softmax logits, at most 2 * cap when capped
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    spread = 0.0
    for a in out.attentions:  # (B, H, T, T)
        logp = a.log()
        hi = logp.masked_fill(~causal, float("-inf")).amax(-1)
        lo = logp.masked_fill(~causal, float("inf")).amin(-1)
        spread = max(spread, float((hi - lo).max()))
    return out.logits, spread


def test_softcaps_bound_final_and_attention_logits():
    free_logits, free_spread = _logits_and_spread(_gemma2())
    # uncapped, the blow-up goes straight through (the spread tops out where float32 probabilities underflow)
    assert free_logits.abs().max() > 100 and free_spread > 40
    logits, spread = _logits_and_spread(_gemma2(attn=4.0, final=5.0))
    assert logits.abs().max() <= 5.0
    assert 0 < spread <= 2 * 4.0 + 1e-4
    final_only, spread_free = _logits_and_spread(_gemma2(final=5.0))
    assert final_only.abs().max() <= 5.0 and spread_free > 40  # each cap is its own switch


def test_gemma2_presets_build_with_caps_off():
    model = build_model("nano-gemma2", vocab_size=V, context=T, seed=0)
    assert model.config.attn_logit_softcapping is None and model.config.final_logit_softcapping is None
    assert model.config.model_type == "gemma2"
    out = model(input_ids=torch.zeros((1, T), dtype=torch.long), labels=torch.zeros((1, T), dtype=torch.long))
    assert torch.isfinite(out.loss)


def test_architecture_without_softcapping_is_refused():
    import transformers

    config = transformers.LlamaConfig()
    with pytest.raises(ConfigError, match="--attn-softcap: the LlamaConfig architecture"):
        apply_softcaps(config, attn=30.0)
    with pytest.raises(ConfigError, match="--final-softcap: the LlamaConfig architecture"):
        apply_softcaps(config, final=30.0)
    assert not hasattr(config, "final_logit_softcapping")  # nothing half-set
    with pytest.raises(ConfigError, match="positive"):
        apply_softcaps(transformers.Gemma2Config(), final=-1.0)
    assert apply_softcaps(config) == {}  # no caps asked: any architecture
