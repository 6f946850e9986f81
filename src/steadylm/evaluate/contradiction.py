"""Self-contradiction across samples: SelfCheckGPT-NLI with a local NLI model.

Reference: Manakul, Liusie & Gales (2023), "SelfCheckGPT: Zero-Resource Black-Box Hallucination
Detection for Generative Large Language Models", EMNLP, section 5 (SelfCheckGPT with NLI, eq. 9),
and its code (``potsawee/selfcheckgpt``, ``selfcheckgpt/modeling_selfcheck.py``, ``SelfCheckNLI``):
each sentence r_i of a response is checked against every other sampled response S^n, and only the
'entailment' and 'contradiction' logits count::

    P(contradict | r_i, S^n) = exp(z_c) / (exp(z_e) + exp(z_c))

averaged over the samples, giving a sentence score. Here every sample takes its turn as the
response: for sample i, the mean over its sentences and over the other samples j of
P(contradict | sentence, sample j), then the mean over i. 0 = the samples never contradict
each other, 1 = they always do.

Where we differ, and why:

* Input order. The paper feeds the NLI model the sampled passage as the premise and the sentence
  as the hypothesis, as MNLI models are trained; the released ``SelfCheckNLI.predict`` encodes the
  pair the other way round, ``(sentence, sample)``. We follow the paper: ``(premise=sample j,
  hypothesis=sentence)``.
* Any local sequence classifier whose ``config.id2label`` names a contradiction and an entailment
  class works (SelfCheckGPT ships a two-class DeBERTa-v3-large where neutral was already removed);
  with three classes, the neutral logit is simply not used, which is the same eq. 9.
* Sentences: split after ". ! ?" followed by whitespace, after "。！？", and at line breaks
  (``consistency.split_sentences``), not with spaCy, so Chinese works and nothing is downloaded.
* Pairs are batched (the reference runs them one at a time) and truncated to the model's maximum
  length, the longer text of the pair first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..errors import ModelError
from .consistency import split_sentences
from .result import Result, summarize_items


def _find_label(id2label: dict[Any, str], word: str, *, exclude: tuple[str, ...] = ()) -> int | None:
    hits = [int(i) for i, name in id2label.items()
            if word in str(name).lower() and not any(x in str(name).lower() for x in exclude)]
    return hits[0] if len(hits) == 1 else None


class NLIScorer:
    """A local NLI model folder (``AutoModelForSequenceClassification``) that scores contradiction
    between samples as SelfCheckGPT-NLI does."""

    def __init__(self, model_dir: str | Path, *, trust_remote_code: bool = False, batch_size: int = 16,
                 device: str = "cpu"):
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        path = Path(model_dir)
        if not path.is_dir():
            raise ModelError(f"{path}: no such NLI model folder")
        if batch_size < 1:
            raise ModelError(f"NLI batch size must be >= 1, got {batch_size}")
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
        except Exception as e:
            raise ModelError(f"{path}: not a model folder ({type(e).__name__}: {e})") from None
        labels = {int(k): str(v) for k, v in (getattr(config, "id2label", None) or {}).items()}
        contra = _find_label(labels, "contradict")
        # "not_entailment" / "non-entailment" labels of two-way (RTE-style) models are not entailment.
        entail = _find_label(labels, "entail", exclude=("not", "non"))
        if contra is None or entail is None:
            raise ModelError(f"{path}: config.id2label {labels} needs exactly one label containing 'contradict' "
                             "and one containing 'entail'; not an NLI model")
        archs = getattr(config, "architectures", None) or []
        if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
            raise ModelError(f"{path}: a {', '.join(archs)}, not a sequence classifier (NLI model)")
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path, trust_remote_code=trust_remote_code, local_files_only=True, output_loading_info=True)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, local_files_only=True)
        except Exception as e:
            raise ModelError(f"{path}: cannot load as a sequence classifier with a tokenizer ({type(e).__name__}: {e})") from None
        if info.get("missing_keys"):
            # A base model loads with a freshly initialised (random) classification head.
            raise ModelError(f"{path}: weights missing for {', '.join(sorted(info['missing_keys'])[:3])}; "
                             "not a trained sequence classifier")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.path = path
        self.device = device
        self.batch_size = batch_size
        self.contradiction_id = contra
        self.entailment_id = entail
        limits = [tokenizer.model_max_length]
        if getattr(config, "max_position_embeddings", None):
            limits.append(config.max_position_embeddings)
        self.max_length = int(min(limits))
        self._torch = torch

    def contradiction_probs(self, premises: Sequence[str], hypotheses: Sequence[str]) -> list[float]:
        """P(contradiction) over [entailment, contradiction] for each (premise, hypothesis) pair."""
        torch = self._torch
        out: list[float] = []
        with torch.no_grad():
            for s in range(0, len(premises), self.batch_size):
                enc = self.tokenizer(list(premises[s:s + self.batch_size]), list(hypotheses[s:s + self.batch_size]),
                                     truncation=True, max_length=self.max_length, padding=True, return_tensors="pt")
                logits = self.model(**enc.to(self.device)).logits.float()  # (B, num_labels)
                two = logits[:, [self.entailment_id, self.contradiction_id]]  # (B, 2)
                out.extend(torch.softmax(two, dim=-1)[:, 1].tolist())
        return out

    def sample_scores(self, samples: Sequence[str]) -> list[float | None]:
        """Per sample i: mean over its sentences and the other samples j of P(contradiction |
        premise = sample j, hypothesis = sentence). None for a sample without sentences, and for
        every sample when there are fewer than two."""
        samples = list(samples)
        if len(samples) < 2:
            return [None] * len(samples)
        premises, hyps, owner = [], [], []
        for i, text in enumerate(samples):
            for sent in split_sentences(text):
                for j, other in enumerate(samples):
                    if j != i:
                        premises.append(other)
                        hyps.append(sent)
                        owner.append(i)
        probs = self.contradiction_probs(premises, hyps) if premises else []
        sums = [0.0] * len(samples)
        counts = [0] * len(samples)
        for i, p in zip(owner, probs):
            sums[i] += p
            counts[i] += 1
        # Every sentence of sample i meets the same K-1 samples, so this flat mean equals the
        # mean over sentences of the mean over j.
        return [sums[i] / counts[i] if counts[i] else None for i in range(len(samples))]

    def contradiction_scores(self, samples: Sequence[str]) -> float | None:
        """SelfCheckGPT-NLI score of K samples for one prompt: the mean over samples (with
        sentences) of ``sample_scores``; None with fewer than two samples or no sentences."""
        vals = [v for v in self.sample_scores(samples) if v is not None]
        return sum(vals) / len(vals) if vals else None


class SelfContradiction:
    """SelfCheckGPT-NLI over each item's samples (`NLIScorer.contradiction_scores`), summarized over items."""

    METHOD = "SelfCheckGPT-NLI: P(contradiction) over [entailment, contradiction]"

    def __init__(self, scorer: NLIScorer, *, n_resamples: int, name: str | None = None):
        self.scorer, self.n_resamples = scorer, n_resamples
        self.name = str(scorer.path) if name is None else name
        """the NLI model as the user named it, for the signature"""

    def item(self, samples: Sequence[str]) -> float | None:
        return self.scorer.contradiction_scores(samples)

    def score(self, per_item: Mapping[str, float | None]) -> Result:
        return summarize_items(per_item, n_resamples=self.n_resamples,
                               signature={"method": self.METHOD, "nli_model": self.name})
