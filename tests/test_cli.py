"""The command line: every bad input is one line on stderr, exit code 2, and no run folder.

One test runs ``python -m steadylm`` as a real process to hold the exit-2 contract end to end; the
rest call ``steadylm.cli.main`` in this process, which is the same code without the start-up cost."""

import json

import pytest

from conftest import one_line_error, run_cli

NANO = ["--data", "builtin:pydoc", "--preset", "nano", "--vocab-size", "400", "--context", "32", "--batch-size", "4"]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.txt").write_bytes(b"")
    (d / "nul.txt").write_bytes(b"text\x00more")
    (d / "latin1.txt").write_bytes("na\u00efve".encode("latin-1"))
    (d / "bad.jsonl").write_text('{"text": "fine"}\n{"text": broken\n', encoding="utf-8")
    (d / "notext.jsonl").write_text('{"text": "fine"}\n{"txt": "x"}\n', encoding="utf-8")
    (d / "bad.toml").write_text("steps = = 3\n", encoding="utf-8")
    (d / "unknown.toml").write_text("stepz = 3\n", encoding="utf-8")
    (d / "emptydir").mkdir()
    return d


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--steps", "0"], "--steps must be positive"),
        (["--steps", "-3"], "--steps must be positive"),
        (["--max-norm", "-1"], "--max-norm must be positive"),
        (["--clip-value", "0"], "--clip-value must be positive"),
        (["--clip", "bogus"], "unknown --clip 'bogus'"),
        (["--batch-size", "0"], "--batch-size must be positive"),
        (["--batch-size", "abc"], "invalid int value: 'abc'"),
        (["--context", "0"], "--context must be positive"),
        (["--lr", "-1"], "--lr must be positive"),
        (["--dropout", "1.5"], "--dropout must be in [0, 1)"),
        (["--weight-decay", "-0.1"], "--weight-decay must be zero or more"),
        (["--checkpoint-every", "0"], "--checkpoint-every must be positive"),
        (["--preset", "huge"], "unknown --preset 'huge'"),
        (["--bogus-flag"], "unrecognized arguments: --bogus-flag"),
        (["--clip", "zlip"], "unknown --clip 'zlip'"),
        (["--clip", "autoclip", "--percentile", "0"], "--percentile must be in (0, 100]"),
        (["--clip", "autoclip", "--percentile", "101"], "--percentile must be in (0, 100]"),
        (["--clip", "zclip", "--alpha", "1.5"], "--alpha must be in (0, 1)"),
        (["--clip", "zclip", "--alpha", "0"], "--alpha must be in (0, 1)"),
        (["--clip", "zclip", "--z-thresh", "0"], "--z-thresh must be positive"),
        (["--clip", "zclip", "--zclip-mode", "median"], "unknown --zclip-mode"),
        (["--clip", "agc", "--agc-clipping", "-0.1"], "--agc-clipping must be positive"),
        (["--guard", "sometimes"], "unknown --guard 'sometimes'"),
        (["--guard-sigma", "0"], "--guard-sigma must be positive"),
        (["--inject", "nan@x"], "--inject 'nan@x' does not parse"),
        (["--inject", "spike@3"], "does not parse"),
        (["--inject", "spike@3:-2"], "FACTOR must be a positive finite number"),
        (["--z-loss", "-1"], "--z-loss must be zero or more"),
        (["--ema", "1.0"], "--ema must be in [0, 1)"),
    ],
)
def test_bad_train_flags(tmp_path, capsys, args, fragment):
    out = tmp_path / "run"
    one_line_error(capsys, ["train", *NANO, "--steps", "2", *args, "--out", str(out)], fragment)
    assert not out.exists(), "a failed start must not leave a run folder"


@pytest.mark.parametrize(
    "name,fragment",
    [
        ("missing.txt", "no such file or folder"),
        ("empty.txt", "empty"),
        ("nul.txt", "binary data"),
        ("latin1.txt", "not UTF-8"),
        ("bad.jsonl", "bad.jsonl:2: not valid JSON"),
        ("notext.jsonl", "notext.jsonl:2: no 'text' field"),
        ("emptydir", "no .txt files"),
    ],
)
def test_bad_data(tmp_path, capsys, bad_files, name, fragment):
    out = tmp_path / "run"
    one_line_error(capsys, ["train", "--data", str(bad_files / name), "--preset", "nano", "--steps", "2", "--out", str(out)],
                   fragment)
    assert not out.exists()


@pytest.mark.parametrize("name,fragment", [("bad.toml", "invalid TOML"), ("unknown.toml", "unknown key 'stepz'"), ("nope.toml", "no such file")])
def test_bad_config_file(tmp_path, capsys, bad_files, name, fragment):
    one_line_error(capsys, ["train", "--config", str(bad_files / name), "--out", str(tmp_path / "run")], fragment)


def test_an_error_is_one_line_and_exit_2_in_a_real_process(tmp_path):
    """The contract end to end: ``python -m steadylm`` exits 2, prints one ``steadylm: error:`` line
    and no traceback, writes nothing on stdout and leaves no run folder."""
    out = tmp_path / "run"
    r = run_cli("train", "--data", str(tmp_path / "missing.txt"), "--preset", "nano", "--steps", "2", "--out", str(out))
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert r.stderr.splitlines() == [f"steadylm: error: {tmp_path / 'missing.txt'}: no such file or folder"], r.stderr
    assert r.stdout == "" and not out.exists()


def test_config_file_and_flag_precedence(tmp_path, capsys):
    from steadylm.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text('steps = 2\nseed = 5\n[data]\nsource = "builtin:pydoc"\ncontext = 32\nvocab_size = 400\n'
                   '[model]\npreset = "nano"\n[optim]\nbatch_size = 4\nlr = 0.01\n', encoding="utf-8")
    rc = main(["train", "--config", str(cfg), "--lr", "1.0", "--lr", "0.002", "--out", str(tmp_path / "run"), "--json",
               "--no-plots", "--inject", "nan@1", "--inject", "spike@2:10"])
    assert rc == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["seed"] == 5 and saved["steps"] == 2 and saved["optim"]["lr"] == 0.002  # the later flag wins
    assert saved["guard"]["inject"] == ["nan@1", "spike@2:10"]  # --inject accumulates


def test_train_needs_out_and_model_must_be_a_model(tmp_path, capsys):
    one_line_error(capsys, ["train", *NANO], "train needs --out")
    one_line_error(capsys, ["train", "--model", str(tmp_path), "--out", str(tmp_path / "r")], "not a Hugging Face model folder")
    one_line_error(capsys, ["train", "--preset", "nano", "--model", str(tmp_path), "--out", str(tmp_path / "r")],
                   "either --preset or --model")


def test_eval_bad_input(tmp_path, capsys, bad_files, nano_model_dir):
    one_line_error(capsys, ["eval", "perplexity", "--model", str(nano_model_dir), "--data", str(bad_files / "nul.txt")], "binary data")
    one_line_error(capsys, ["eval", "perplexity", "--model", str(tmp_path / "none"), "--data", "builtin:pydoc"], "no such model folder")
    one_line_error(capsys, ["eval", "perplexity", "--data", "builtin:pydoc"], "required: --model")
    # a folder with a config that is not a causal LM
    enc = tmp_path / "bert"
    enc.mkdir()
    (enc / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    (enc / "model.safetensors").write_bytes(b"")
    one_line_error(capsys, ["eval", "perplexity", "--model", str(enc), "--data", "builtin:pydoc"], "not a causal language model")
    # only .bin weights: steadylm does not unpickle
    pt = tmp_path / "pickled"
    pt.mkdir()
    (pt / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (pt / "pytorch_model.bin").write_bytes(b"\x80\x04")
    one_line_error(capsys, ["eval", "perplexity", "--model", str(pt), "--data", "builtin:pydoc"], "no safetensors weights")


def test_unknown_command(capsys):
    one_line_error(capsys, ["frobnicate"], "invalid choice: 'frobnicate'")


def test_presets_and_version(capsys):
    import steadylm
    from steadylm.cli import main

    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "tiny" in out and "nano" in out
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out == f"steadylm {steadylm.__version__}\n"


@pytest.mark.slow
def test_demo_runs_and_says_where_things_are(tmp_path, capsys):
    out = tmp_path / "demo"
    r = run_cli("demo", "--out", str(out), "--steps", "4")
    assert r.returncode == 0, r.stderr
    assert f"run folders: {out / 'baseline'}" in r.stdout
    assert f"model:       {out / 'stabilized' / 'model'}" in r.stdout
    for name in ("baseline", "stabilized"):
        assert (out / name / "model" / "model.safetensors").is_file()
        s = json.loads((out / name / "summary.json").read_text())
        assert s["steps"] == 4 and [i["spec"] for i in s["injected"]] == ["spike@2:1000", "lr@3:1000"]
    assert (out / "comparison.png").is_file()
    # a second demo into the same folder replaces the first
    r = run_cli("demo", "--out", str(out), "--steps", "2")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "stabilized" / "summary.json").read_text())["steps"] == 2
    # but a folder that holds something else is left alone
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    one_line_error(capsys, ["demo", "--out", str(other), "--steps", "2"], "holds no earlier demo")
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"] and (other / "notes.txt").read_text() == "keep"


def test_closed_pipe_is_not_a_traceback():
    """`steadylm perturb --list | head -1`: the reader leaves early; no traceback on stderr."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "steadylm", "perturb", "--list"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()  # gone before steadylm writes anything
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err
