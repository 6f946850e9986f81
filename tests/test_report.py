"""steadylm report (HTML + Markdown), human ratings (export / import / LLM judge), Krippendorff's alpha,
and the two browser tests: the report rendered in headless Chromium, and the rating page filled in,
saved and imported."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from steadylm.cli import main
from steadylm.errors import SteadyError
from steadylm.evaluate.judge import judge_outputs, parse_judgement
from steadylm.report.html import NO_INPUTS, SECTIONS, build_report
from steadylm.report.human import CRITERIA, export_ratings, import_ratings
from steadylm.stats import krippendorff_alpha

HEADINGS = [h for _, h in SECTIONS]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


# --------------------------------------------------------------------------- fixtures: real and written inputs


@pytest.fixture(scope="module")
def train_run(tmp_path_factory) -> Path:
    """A real 6-step nano run with one injected NaN (an incident the report must show)."""
    from steadylm.config import CheckpointConfig, DataConfig, GuardConfig, ModelConfig, OptimConfig, TrainConfig
    from steadylm.train.loop import TrainingRun

    out = tmp_path_factory.mktemp("report") / "nano-run"
    cfg = TrainConfig(out=str(out), steps=6, data=DataConfig(context=32, vocab_size=400),
                      model=ModelConfig(preset="nano"), optim=OptimConfig(batch_size=4, lr=3e-3),
                      checkpoint=CheckpointConfig(every=6, keep=1), guard=GuardConfig(action="skip", inject=["nan@4"]))
    TrainingRun(cfg).run()
    return out


def _results(model_hash: str, self_bleu: float, *, backend: str = "local", members=None, version: str = "0.1.0"):
    ci = lambda m: {"mean": m, "ci_low": m - 1, "ci_high": m + 1, "n": 3}  # noqa: E731
    b = {"backend": backend, "model": f"/models/{model_hash}", "model_hash": model_hash}
    if members:
        b["members"] = members
        b["mode"] = "prob"
    return {
        "signature": {"steadylm": version, "backend": b, "decoding": {"temperature": 1.0, "max_new_tokens": 8},
                      "string": f"steadylm:{version}|backend:{backend}|model:{model_hash}|T:1|K:2|seeds:0"},
        "consistency": {"across_samples": {"measured": True, "self_bleu": ci(self_bleu), "self_chrf": ci(20.0),
                                           "semantic": ci(0.5)},
                        "across_seeds": {"measured": False, "reason": "needs two or more --seeds"},
                        "answers": {"measured": False, "reason": "no item has a short 'answer'"}},
        "contradiction": {"measured": False, "reason": "no --nli-model given"},
        "degeneration": {"seq_rep_1": 0.1, "seq_rep_2": 0.05, "seq_rep_4": 0.0, "distinct_1": 0.9, "distinct_2": 0.95,
                         "loop_share": 0.0, "next_token": {"measured": False, "reason": "endpoint"}},
        "relevance": {"prompt_response": ci(0.3)},
        "reference": {"measured": True, "bleu": {"score": 1.5, "signature": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"},
                      "chrf": {"score": 9.0, "signature": "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0"},
                      "ter": {"score": 99.0, "signature": "nrefs:1|case:lc|tok:tercom|norm:no|punct:yes|asian:no|version:2.6.0"}},
        "determinism": {"measured": False, "reason": "turned off (--no-determinism)"},
        "counts": {"prompts": 3, "generations": 6, "from_cache": 0}, "elapsed_s": 1.0,
    }


PROMPTS = [{"id": "p1", "prompt": "Lambda expressions create"}, {"id": "p2", "prompt": "A module is"},
           {"id": "p3", "messages": [{"role": "user", "content": "What is a loop?"}]}]


def write_generation(folder: Path, model_hash: str, self_bleu: float, **kw) -> Path:
    """An eval generation folder as the command writes it: results.json, generations.jsonl, prompts.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(_results(model_hash, self_bleu, **kw)), encoding="utf-8")
    (folder / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS), encoding="utf-8")
    flavor = {"a": "Surely", "b": "Perhaps", "c": "Anciently", "e": "Jointly"}[model_hash[0]]
    rows = [{"prompt_id": p["id"], "seed": 0, "sample": k, "text": f"{flavor}, answer {k} to: {p.get('prompt', '?')}"}
            for p in PROMPTS for k in range(2)]
    rows.append({"prompt_id": "p3@turn0", "seed": 0, "sample": 0, "text": "a turn request, not rated"})
    (folder / "generations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return folder


def write_robustness(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ci = {"mean": 40.0, "ci_low": 30.0, "ci_high": 50.0, "n": 2}
    kinds = {k: {"rate": 0.1, "changed_share": 1.0, "perplexity_shift": {"measured": True, "delta_bits_per_byte": 0.2},
                 "similarity": {"bleu": ci, "chrf": ci, "semantic": {"mean": 0.7, "ci_low": 0.6, "ci_high": 0.8, "n": 2}},
                 "answers": {"measured": False, "reason": "no item has a short 'answer'"},
                 "reference": {"measured": False, "reason": "no item has a reference"},
                 "pdr": {"similarity_chrf": {"pdr": 0.6, "ci_low": 0.5, "ci_high": 0.7}}} for k in ("typo", "upper")}
    r = {"signature": {"steadylm": "0.1.0", "string": "steadylm:0.1.0|backend:local|model:abc|kinds:typo,upper"},
         "clean": {"self_bleu": {"measured": False, "reason": "K=1"}}, "kinds": kinds,
         "aggregate": {"kinds": ["typo", "upper"], "chrf": ci, "primary_metric": "similarity_chrf",
                       "pdr": {"similarity_chrf": {"pdr": 0.6, "ci_low": 0.5, "ci_high": 0.7}}},
         "adversarial": {"measured": False, "reason": "--adv-items 0"},
         "ood": {"measured": False, "reason": "no --ood source given"},
         "per_prompt": [{"prompt_id": "p1", "kinds": {"typo": {"chrf": 12.0, "semantic": 0.4}, "upper": {"chrf": 80.0}}},
                        {"prompt_id": "p2", "kinds": {"typo": {"chrf": 70.0}, "upper": {"chrf": 90.0}}}]}
    (folder / "results.json").write_text(json.dumps(r), encoding="utf-8")
    gens = [{"set": "in", "prompt_id": "p1", "variant": "clean", "sample": 0, "prompt": "The quick brown fox",
             "text": "jumps over the lazy dog"},
            {"set": "in", "prompt_id": "p1", "variant": "typo", "sample": 0, "prompt": "Teh quikc brown fox",
             "text": "WORST <b>EXAMPLE</b> OUTPUT\n  kept verbatim"}]
    (folder / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gens), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, train_run) -> dict[str, Path]:
    """One input of every kind, in the formats the other commands write."""
    d = tmp_path_factory.mktemp("inputs")
    out = {"run": train_run}
    out["gen_a"] = write_generation(d / "model-a", "aaaaaaaaaaaa", 10.0)
    out["gen_b"] = write_generation(d / "model-b", "bbbbbbbbbbbb", 30.0)
    out["ens"] = write_generation(d / "ens-ab", "eeeeeeeeeeee", 50.0, backend="ensemble",
                                  members=[{"model": "/models/a", "model_hash": "aaaaaaaaaaaa", "weight": 0.5},
                                           {"model": "/models/b", "model_hash": "bbbbbbbbbbbb", "weight": 0.5}])
    out["robust"] = write_robustness(d / "robust")
    ppl = {"token_perplexity": 12.5, "word_perplexity": 40.0, "byte_perplexity": 2.0, "bits_per_byte": 1.0,
           "loglikelihood": -100.0, "tokens": 40, "words": 20, "bytes": 100, "documents": 2, "windows": 2, "window": 32,
           "stride": 32, "signature": "steadylm:0.1.0|model:aaaaaaaaaaaa|tok:bpe-400|window:32|stride:32|dtype:float32",
           "settings": {"data": "builtin:pydoc"}}
    out["ppl"] = d / "ppl.json"
    out["ppl"].write_text(json.dumps(ppl), encoding="utf-8")
    sweep = {"recipes": {
        "baseline": {"lr_sensitivity": 0.8, "best_loss": 5.0,
                     "runs": [{"lr": lr, "seed": s, "final_loss": None if fl is None else fl + s * 0.1} for lr, fl in ((1e-3, 5.0), (1e-2, 6.0), (1e-1, None))
                              for s in (0, 1)]},
        "stabilized": {"lr_sensitivity": 0.4, "best_loss": 4.9,
                       "runs": [{"lr": lr, "seed": s, "final_loss": fl} for lr, fl in ((1e-3, 4.9), (1e-2, 5.2), (1e-1, 5.6))
                                for s in (0, 1)]}},
        "signature": {"steadylm": "0.1.0", "string": "steadylm:0.1.0|sweep|preset:nano"}}
    (d / "sweep").mkdir()
    (d / "sweep" / "sweep.json").write_text(json.dumps(sweep), encoding="utf-8")
    out["sweep"] = d / "sweep"
    other = {"signature": {"steadylm": "0.1.0", "string": "steadylm:0.1.0|future-kind"},
             "brand_new_metric": {"score": 0.25, "rows": [{"name": "x", "value": 1}, {"name": "y", "value": 2}]}}
    out["other"] = d / "future.json"
    out["other"].write_text(json.dumps(other), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory, inputs) -> dict:
    d = tmp_path_factory.mktemp("human")
    return export_ratings([inputs["gen_a"], inputs["gen_b"]], d / "ratings.html", per_prompt=2, seed=7)


def ratings_file(path: Path, export: dict, rater: str, fn) -> Path:
    key = json.loads(Path(export["key"]).read_text())
    items = {iid: {c: fn(iid, c, v) for c in CRITERIA} for iid, v in key["items"].items()}
    doc = {"format": "steadylm-human-ratings/1", "export_id": key["export_id"], "rater": rater, "items": items}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- Krippendorff's alpha


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability": 4 observers, 12 units, missing values.
K2011 = [[1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
         [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
         [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
         [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None]]


@pytest.mark.parametrize("level, expected", [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849), ("ratio", 0.797)])
def test_krippendorff_alpha_textbook_example(level, expected):
    res = krippendorff_alpha(K2011, level)
    assert res["alpha"] == pytest.approx(expected, abs=5e-4)
    assert res["units"] == 11 and res["pairable_values"] == 40  # unit 12 has one value: not pairable


def test_krippendorff_alpha_edge_cases():
    assert krippendorff_alpha([[1, 2, 3, 4], [1, 2, 3, 4]], "ordinal")["alpha"] == pytest.approx(1.0)
    none = krippendorff_alpha([[1, None], [None, 2]], "interval")
    assert none["alpha"] is None and "two or more" in none["reason"]
    same = krippendorff_alpha([[3, 3, 3], [3, 3, 3]], "ordinal")
    assert same["alpha"] is None and "same value" in same["reason"]
    with pytest.raises(SteadyError):
        krippendorff_alpha(K2011, "cardinal")


# --------------------------------------------------------------------------- report


def _sections(page: str) -> list[str]:
    return re.findall(r"<h2>([^<]+)</h2>", page)


def test_report_over_a_training_run_alone(train_run, tmp_path):
    res = build_report([train_run], tmp_path / "r.html", md=tmp_path / "r.md")
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert _sections(page) == HEADINGS
    assert page.count(NO_INPUTS) == 5  # every section but Overview and Training
    assert len(re.findall(r'<img src="data:image/png;base64,', page)) >= 3  # loss, grad norm, lr
    assert "nonfinite_loss" in page  # the injected NaN, in the incident table
    assert "steps clipped" in page and "clip threshold" in page
    # self-contained: no script, nothing fetched from elsewhere
    assert "<script" not in page and not re.search(r'(src|href)="(https?:)?//', page)
    assert res["warnings"] == []
    md = (tmp_path / "r.md").read_text(encoding="utf-8")
    for h in HEADINGS[1:]:
        assert f"## {h}" in md
    assert "| nano-run | 6 |" in md and "_No inputs of this kind._" in md


def test_report_over_every_kind(inputs, tmp_path, capsys):
    human = tmp_path / "human.json"
    human.write_text(json.dumps({"format": "steadylm-human/1", "kind": "human", "signature": {"steadylm": "0.1.0", "string": "steadylm:0.1.0|kind:human"},
                                 "raters": [{"name": "ann", "kind": "human", "rated": 3}],
                                 "systems": {"model-a": {c: {"mean": 3.0, "ci_low": 2.0, "ci_high": 4.0, "n": 3}
                                                         for c in (*CRITERIA, "overall")} | {"items": 3}},
                                 "agreement": {"measured": False, "reason": "needs two or more raters"}}))
    rc = main(["report", *map(str, inputs.values()), str(human), "-o", str(tmp_path / "all.html"), "--md", str(tmp_path / "all.md")])
    assert rc == 0
    page = (tmp_path / "all.html").read_text(encoding="utf-8")
    assert _sections(page) == HEADINGS + ["Other results"]
    assert NO_INPUTS not in page
    # evaluation: every table with CIs and signatures, side by side
    assert "steadylm:0.1.0|backend:local|model:aaaaaaaaaaaa" in page and "nrefs:1|case:mixed|eff:no|tok:13a" in page
    assert re.search(r"10\s+\[9, 11\]", page) and "Side by side" in page
    assert "steadylm:0.1.0|model:aaaaaaaaaaaa|tok:bpe-400" in page  # perplexity signature
    # LR sensitivity: the ratio to baseline, the plot
    assert "0.50x" in page and "alt=\"plot of sweep\"" in page
    # robustness: per kind with the perturbation's description, worst example verbatim (escaped)
    assert "WORST &lt;b&gt;EXAMPLE&lt;/b&gt; OUTPUT\n  kept verbatim" in page and "Teh quikc brown fox" in page
    assert "QWERTY" in page or "keyboard" in page.lower()
    # ensembles: both members beside the ensemble
    ens = page[page.index('id="ensembles"'):page.index('id="human-ratings"')]
    assert "member model-a" in ens and "member model-b" in ens and "ensemble ens-ab" in ens
    # human ratings and the unknown kind
    assert "3 [2, 4] (n=3)" in page[page.index('id="human-ratings"'):]
    assert "brand_new_metric" in page and "0.25" in page
    md = (tmp_path / "all.md").read_text(encoding="utf-8")
    assert "| stabilized | 0.4 | 0.50x |" in md and "## Other results" in md and "`future`" in md
    captured = capsys.readouterr()
    assert str(tmp_path / "all.html") in captured.out
    assert "warning" not in captured.err  # every kind rendered by its own view, none fell back


def test_unknown_input_is_one_line_exit_2(tmp_path, capsys):
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    empty = tmp_path / "empty"
    empty.mkdir()
    stranger = tmp_path / "stranger.json"
    stranger.write_text(json.dumps({"hello": 1}))
    for bad in (junk, empty, stranger, tmp_path / "missing"):
        assert main(["report", str(bad), "-o", str(tmp_path / "r.html")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(bad) in err and err.startswith("steadylm: error:")
    assert not (tmp_path / "r.html").exists()


def test_incompatible_versions_and_missing_files_are_named(inputs, tmp_path, capsys):
    old = write_generation(tmp_path / "old-model", "cccccccccccc", 5.0, version="0.0.9")
    demo = tmp_path / "demo"
    shutil.copytree(inputs["run"], demo / "baseline")
    (demo / "baseline" / "summary.json").unlink()  # as if killed
    (demo / "demo.json").write_text(json.dumps({"seconds": 1.0, "summaries": {"baseline": {}, "stabilized": {}},
                                                "plots": ["runs/gone-demo/comparison.png"]}))
    robust = tmp_path / "robust"
    shutil.copytree(inputs["robust"], robust)
    (robust / "generations.jsonl").unlink()
    assert main(["report", str(old), str(inputs["gen_a"]), str(demo), str(robust), "-o", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    overview = page[page.index('id="overview"'):page.index('id="training"')]
    err = capsys.readouterr().err
    for text in ("incompatible steadylm versions", "0.0.9", str(demo / "stabilized"), "runs/gone-demo/comparison.png",
                 "summary.json is missing", str(robust / "generations.jsonl")):
        assert text in overview, text
        assert text in err, text


# --------------------------------------------------------------------------- human ratings


def test_export_is_blinded_shuffled_and_keyed(inputs, exported, tmp_path, capsys):
    page = Path(exported["html"]).read_text(encoding="utf-8")
    key = json.loads(Path(exported["key"]).read_text())
    assert exported["items"] == 12 and len(key["items"]) == 12  # 3 prompts x 2 outputs x 2 folders
    assert set(v["system"] for v in key["items"].values()) == {"model-a", "model-b"}
    for secret in ("model-a", "model-b", "aaaaaaaaaaaa", str(inputs["gen_a"]), "p1", "not rated"):
        assert secret not in page
    assert page.count('type="radio"') == 12 * 3 * 5
    order = [key["items"][i]["system"] for i in sorted(key["items"])]
    assert order != sorted(order)  # shuffled, not grouped by model
    again = export_ratings([inputs["gen_a"], inputs["gen_b"]], tmp_path / "again.html", per_prompt=2, seed=7)
    other = export_ratings([inputs["gen_a"], inputs["gen_b"]], tmp_path / "other.html", per_prompt=2, seed=8)
    assert again["export_id"] == exported["export_id"] and other["export_id"] != exported["export_id"]
    assert main(["human", "export", str(inputs["gen_a"]), "-o", str(tmp_path / "cli.html"), "--max-prompts", "2"]) == 0
    assert "2 outputs from 1 model" in capsys.readouterr().out  # one output per prompt by default
    assert len(json.loads((tmp_path / "cli.key.json").read_text())["items"]) == 2
    assert main(["human", "export", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.html")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_import_joins_raters(exported, tmp_path):
    key = json.loads(Path(exported["key"]).read_text())
    a = ratings_file(tmp_path / "a.json", exported, "ann", lambda i, c, v: 4 if v["system"] == "model-a" else 2)
    b = ratings_file(tmp_path / "b.json", exported, "bob",
                     lambda i, c, v: (5 if v["system"] == "model-a" else 1) if c != "logic" or v["sample"] == 0 else None)
    doc = import_ratings([a, b], exported["key"], out=tmp_path / "human.json")
    assert json.loads((tmp_path / "human.json").read_text()) == doc
    sa, sb = doc["systems"]["model-a"], doc["systems"]["model-b"]
    assert sa["fluency"]["mean"] == pytest.approx(4.5) and sb["fluency"]["mean"] == pytest.approx(1.5)
    assert sa["fluency"]["n"] == 6 and sa["fluency"]["ci_low"] <= 4.5 <= sa["fluency"]["ci_high"]
    # logic: bob rated only sample 0, so sample-1 items carry ann's 4 alone: (4.5*3 + 4*3) / 6
    assert sa["logic"]["mean"] == pytest.approx(4.25)
    ids = sorted(key["items"])
    rows = [[json.loads(f.read_text())["items"][i]["fluency"] for i in ids] for f in (a, b)]
    assert doc["agreement"]["fluency"]["ordinal"] == pytest.approx(krippendorff_alpha(rows, "ordinal")["alpha"])
    assert doc["agreement"]["fluency"]["ordinal"] > 0.5
    assert [r["name"] for r in doc["raters"]] == ["ann", "bob"] and doc["kind"] == "human"


def test_mismatched_ratings_are_refused(exported, tmp_path, capsys):
    good = ratings_file(tmp_path / "good.json", exported, "ann", lambda i, c, v: 3)
    cases = {
        "ratings are for export": lambda d: d.update(export_id="000000000000"),
        "not in export": lambda d: d["items"].update({"item-999": {"fluency": 3}}),
        "not an integer rating from 1 to 5": lambda d: d["items"][next(iter(d["items"]))].update(fluency=6),
        "unknown criterion": lambda d: d["items"][next(iter(d["items"]))].update(grammar=3),
        "holds no ratings": lambda d: d.update(items={i: {c: None for c in CRITERIA} for i in d["items"]}),
        "not a ratings file": lambda d: d.pop("format"),
    }
    for reason, change in cases.items():
        doc = json.loads(good.read_text())
        change(doc)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(doc))
        with pytest.raises(SteadyError, match=reason):
            import_ratings([bad], exported["key"])
        assert main(["human", "import", str(bad), "--key", exported["key"], "-o", str(tmp_path / "h.json")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and reason in err and str(bad) in err
    for half in (2.5, "4"):
        doc = json.loads(good.read_text())
        doc["items"][next(iter(doc["items"]))]["logic"] = half
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(doc))
        with pytest.raises(SteadyError, match="not an integer rating"):
            import_ratings([bad], exported["key"])
    assert not (tmp_path / "h.json").exists()


@pytest.mark.parametrize("text, expected", [
    ('{"fluency": 4, "consistency": 3, "logic": 5}', (4, 3, 5)),
    ('Sure! ```json\n{"Fluency": "4", "consistency": 2.0, "logic": 1}\n```', (4, 2, 1)),
    ("{'fluency': 5, 'consistency': 5, 'logic': 5}", (5, 5, 5)),
    ("Fluency: 3\nConsistency = 4\n**Logic**: 2", (3, 4, 2)),
    ('{"fluency": 7, "consistency": 0, "logic": 3.5}', (None, None, None)),
    ("4 3 5", (None, None, None)),
    ("dependency logic 3 fluently", (None, None, None)),
    ("", (None, None, None)),
])
def test_judge_answers_parse_or_count_as_missing(text, expected):
    assert tuple(parse_judgement(text)[c] for c in CRITERIA) == expected


def test_llm_judge_through_the_openai_backend(inputs, tokenizer, tmp_path):
    from openai_server import OpenAIServer

    from steadylm.models import build_model, save_model

    # the judge prompt is long: a nano model with room for it (the shared fixture has 64 tokens)
    model = build_model("nano", vocab_size=len(tokenizer), context=2048, seed=1,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    judge_dir = save_model(model, tokenizer, tmp_path / "judge")
    with OpenAIServer(judge_dir, model_name="tiny-judge") as server:
        doc = judge_outputs([inputs["gen_a"], inputs["gen_b"]], server.spec(), out=tmp_path / "human.json",
                            max_new_tokens=12, bootstrap=200)
        assert server.requests_seen == 6
    assert doc["kind"] == "llm-judge" and doc["raters"][0]["name"] == "llm-judge:tiny-judge"
    assert doc["judge"]["label"].startswith("LLM judge")
    answers = doc["judge"]["answers"]
    assert len(answers) == 6
    for c in CRITERIA:
        parsed = [a for a in answers if a["scores"][c] is not None]
        assert doc["judge"]["missing"][c] == 6 - len(parsed)
        for a in parsed:  # anything counted came from a labelled value in the raw answer, nothing invented
            assert c in a["raw"].lower()
    assert doc["judge"]["missing"]["fluency"] >= 4  # a random model rarely writes a valid rating
    sys_a = doc["systems"]["model-a"]
    assert sys_a["fluency"]["n"] == 3 - sum(1 for a in answers if a["system"] == "model-a" and a["scores"]["fluency"] is None)
    assert doc["agreement"]["measured"] is False
    # the report labels it as a judge, not people
    build_report([tmp_path / "human.json"], tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "LLM judge, not human: llm-judge:tiny-judge" in page


# --------------------------------------------------------------------------- browser tests


def _need_chromium():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (make installs Debian's chromium when it can: apt-get install chromium)")


def _chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--enable-logging=stderr", "--v=0", *args], capture_output=True, text=True, timeout=timeout)


def _console_problems(stderr: str) -> list[str]:
    """Chromium's log lines that come from the page: console messages and uncaught errors."""
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@pytest.mark.slow
def test_report_renders_in_headless_chromium(inputs, tmp_path):
    _need_chromium()
    page = tmp_path / "report.html"
    build_report([inputs["run"], inputs["gen_a"], inputs["sweep"]], page)
    dom = _chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    headings = re.findall(r"<h2>([^<]+)</h2>", dom.stdout)
    assert headings == HEADINGS
    assert re.search(r'<img src="data:image/png;base64,[A-Za-z0-9+/]{100}', dom.stdout)
    assert not _console_problems(dom.stderr), _console_problems(dom.stderr)
    shot = tmp_path / "report.png"
    r = _chromium("--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri())
    assert r.returncode == 0 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    assert not _console_problems(r.stderr), _console_problems(r.stderr)


@pytest.mark.slow
def test_rating_page_filled_in_chromium_is_accepted_by_import(exported, tmp_path):
    _need_chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[test]')")
    key = json.loads(Path(exported["key"]).read_text())
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(accept_downloads=True)
            page.on("console", lambda m: problems.append(f"console.{m.type}: {m.text}") if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: problems.append(f"uncaught: {e}"))
            page.on("request", lambda r: problems.append(f"request: {r.url}") if not r.url.startswith(("file:", "blob:", "data:")) else None)
            page.goto(Path(exported["html"]).as_uri())
            page.click("#save")  # without a name: asks for one, saves nothing
            assert "name" in page.text_content("#status") and page.text_content("#ratings-json") == ""
            page.fill("#rater", "Ada Lovelace")
            for n, iid in enumerate(sorted(key["items"])):
                for j, c in enumerate(CRITERIA):
                    page.check(f'input[name="{iid}:{c}"][value="{(n + j) % 5 + 1}"]')
            assert page.text_content("#progress").startswith(f"{len(key['items'])} of {len(key['items'])}")
            with page.expect_download() as dl:
                page.click("#save")
            saved = tmp_path / dl.value.suggested_filename
            dl.value.save_as(saved)
            assert json.loads(page.text_content("#ratings-json")) == json.loads(saved.read_text())
            # choices survive a reload (kept in the browser until saved)
            page.reload()
            assert page.is_checked(f'input[name="{sorted(key["items"])[0]}:fluency"][value="1"]')
        finally:
            browser.close()
    assert problems == []
    assert saved.name.startswith(f"ratings-{exported['export_id']}-Ada_Lovelace")
    doc = import_ratings([saved], exported["key"], out=tmp_path / "human.json")
    assert doc["raters"][0]["name"] == "Ada Lovelace" and doc["raters"][0]["rated"] == len(key["items"]) * 3
    for n, iid in enumerate(sorted(key["items"])):
        assert json.loads(saved.read_text())["items"][iid] == {c: (n + j) % 5 + 1 for j, c in enumerate(CRITERIA)}
    assert main(["report", str(tmp_path / "human.json"), "-o", str(tmp_path / "r.html")]) == 0
