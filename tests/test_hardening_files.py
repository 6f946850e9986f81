"""Run and output folders: half-created folders, one writer per folder, full disks and odd paths
lose nothing, outputs never overwrite inputs, and every JSON steadylm writes is strict."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from steadylm.cli import main
from steadylm.config import CheckpointConfig, DataConfig, ModelConfig, OptimConfig, TrainConfig

NANO = ["--data", "builtin:pydoc", "--preset", "nano", "--vocab-size", "300", "--context", "16", "--batch-size", "2"]


def _one_error_line(capsys, *names: str) -> str:
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("steadylm: error: "), err
    for n in names:
        assert str(n) in lines[0], (n, lines[0])
    return lines[0]


def _tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _tmp_leftovers(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.tmp"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished nano run of 3 steps, checkpoint at step 3."""
    out = tmp_path_factory.mktemp("runs") / "done"
    assert main(["train", *NANO, "--steps", "3", "--out", str(out), "--no-plots", "--json"]) == 0
    return out


# --------------------------------------------------------------------------- 1. half-created run folders

def _half_created(folder: Path) -> Path:
    """What a kill during folder creation leaves: config.json, a partial tokenizer, no run.json."""
    cfg = TrainConfig(out=str(folder), steps=3, data=DataConfig(context=16, vocab_size=300),
                      model=ModelConfig(preset="nano"), optim=OptimConfig(batch_size=2),
                      checkpoint=CheckpointConfig(every=3, keep=2))
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict()))
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.json").write_text('{"a": 0')  # cut short
    return folder


def test_half_created_run_folder_resumes_from_step_0(tmp_path, capsys):
    d = _half_created(tmp_path / "half")
    assert main(["train", "--resume", str(d), "--no-plots", "--json"]) == 0
    summary = json.loads((d / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["steps_this_session"] == 3
    assert (d / "run.json").is_file() and (d / "checkpoints" / "step-3").is_dir()


def test_half_created_run_folder_is_overwritable(tmp_path):
    d = _half_created(tmp_path / "half")
    assert main(["train", *NANO, "--steps", "2", "--out", str(d), "--overwrite", "--no-plots", "--json"]) == 0
    assert json.loads((d / "summary.json").read_text())["steps"] == 2
    assert not (d / "tokenizer" / "vocab.json").exists() and (d / "tokenizer" / "tokenizer.json").is_file()


def test_a_folder_holding_only_a_lock_and_leftovers_counts_as_empty(tmp_path):
    d = tmp_path / "fresh"
    d.mkdir()
    (d / ".steadylm.lock").write_text("")
    (d / ".config.json.tmp").write_text("{")  # an atomic write a kill cut short
    assert main(["train", *NANO, "--steps", "1", "--out", str(d), "--no-plots", "--json"]) == 0
    assert (d / "summary.json").is_file() and not (d / ".config.json.tmp").exists()


# --------------------------------------------------------------------------- 2. one writer per folder

@pytest.fixture
def holder(tmp_path):
    """A real second process holding steadylm's lock on the folders it is given."""
    procs = []

    def hold(*folders: Path) -> subprocess.Popen:
        code = textwrap.dedent("""
            import sys
            from steadylm.fsutil import FolderLock
            locks = [FolderLock(f).acquire() for f in sys.argv[1:]]
            print("locked", flush=True)
            sys.stdin.read()
        """)
        p = subprocess.Popen([sys.executable, "-c", code, *map(str, folders)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "locked"
        return p

    yield hold
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


def test_a_folder_in_use_is_refused_naming_the_process(finished_run, tmp_path, holder, capsys, nano_model_dir):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "summary.json").unlink()  # as if killed: resumable
    busy_eval, busy_sweep, busy_new = tmp_path / "gen", tmp_path / "sweep", tmp_path / "new"
    for d in (busy_eval, busy_sweep, busy_new):
        d.mkdir()
    proc = holder(run, busy_eval, busy_sweep, busy_new)
    before = _tree_digest(run)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "def f(x):"}\n')

    attempts = [
        (["train", "--resume", str(run)], run),
        (["train", *NANO, "--steps", "1", "--out", str(run), "--overwrite"], run),
        (["train", *NANO, "--steps", "1", "--out", str(busy_new)], busy_new),
        (["eval", "generation", "--model", str(nano_model_dir), "--prompts", str(prompts), "--samples", "1",
          "--max-new-tokens", "2", "--no-determinism", "--out", str(busy_eval)], busy_eval),
        (["eval", "robustness", "--model", str(nano_model_dir), "--prompts", str(prompts), "--kinds", "typo",
          "--max-new-tokens", "2", "--adv-items", "0", "--out", str(busy_eval)], busy_eval),
        (["sweep", "--recipes", "baseline", "--lrs", "1e-3", "--seeds", "0", "--steps", "1", "--workers", "1",
          "--out", str(busy_sweep)], busy_sweep),
    ]
    for argv, folder in attempts:
        assert main(argv) == 2, argv
        line = _one_error_line(capsys, folder, f"in use by steadylm process {proc.pid}", folder / ".steadylm.lock")
        assert "wait for it or stop it" in line
    assert _tree_digest(run) == before  # --overwrite removed nothing under the running process
    assert sorted(p.name for p in busy_eval.iterdir()) == [".steadylm.lock"]

    proc.kill()  # a holder that dies releases its lock: nothing stale to remove by hand
    proc.wait(timeout=30)
    assert main(["train", "--resume", str(run), "--no-plots", "--json"]) == 0
    assert (run / "summary.json").is_file() and (run / ".steadylm.lock").is_file()


def test_overwrite_keeps_the_lock_file_and_replaces_the_rest(finished_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "stray.txt").write_text("old")
    assert main(["train", *NANO, "--steps", "1", "--out", str(run), "--overwrite", "--no-plots", "--json"]) == 0
    assert not (run / "stray.txt").exists() and (run / ".steadylm.lock").is_file()
    assert json.loads((run / "summary.json").read_text())["steps"] == 1


def test_demo_takes_its_folder_lock_before_replacing_an_earlier_demo(tmp_path, holder, capsys):
    """A demo replaces an earlier demo's folder: under the lock, so it never deletes what another
    steadylm process is writing there (it used to remove the folder unlocked)."""
    out = tmp_path / "demo"
    (out / "baseline").mkdir(parents=True)
    (out / "demo.json").write_text("{}")
    (out / "baseline" / "metrics.jsonl").write_text('{"step": 1}\n')
    proc = holder(out)
    before = _tree_digest(out)
    assert main(["demo", "--out", str(out), "--steps", "2"]) == 2
    _one_error_line(capsys, out, f"in use by steadylm process {proc.pid}")
    assert _tree_digest(out) == before


def test_train_writes_its_plots_under_the_run_lock(tmp_path, monkeypatch):
    """The plots are the run's last files: another process must not take the folder before they
    are written (the lock used to be released first). Released once they are."""
    from steadylm.errors import SteadyError
    from steadylm.fsutil import FolderLock
    from steadylm.report import plots

    seen = []

    def plot_run(run_dir, *a, **kw):
        try:
            FolderLock(run_dir).acquire().release()
            seen.append("free")
        except SteadyError:
            seen.append("held")
        return []

    monkeypatch.setattr(plots, "plot_run", plot_run)
    out = tmp_path / "run"
    assert main(["train", *NANO, "--steps", "1", "--out", str(out), "--json"]) == 0
    assert seen == ["held"]
    FolderLock(out).acquire().release()  # and free afterwards


# --------------------------------------------------------------------------- 3. full disks and odd paths

_FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit then fail with EFBIG
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    from steadylm.cli import main
    sys.exit(main(sys.argv[2:]))
""")


def test_full_disk_during_a_checkpoint_loses_nothing(tmp_path, capsys):
    ref = tmp_path / "ref"
    assert main(["train", *NANO, "--steps", "6", "--checkpoint-every", "3", "--keep-checkpoints", "2",
                 "--out", str(ref), "--no-plots", "--json"]) == 0
    run = tmp_path / "run"  # the same run, as if killed after its step-3 checkpoint
    shutil.copytree(ref, run)
    shutil.rmtree(run / "checkpoints" / "step-6")
    shutil.rmtree(run / "model")
    (run / "summary.json").unlink()
    cfg = json.loads((run / "config.json").read_text())
    cfg["checkpoint"]["keep"] = 1  # the new checkpoint would replace step-3: it must not go first
    (run / "config.json").write_text(json.dumps(cfg))
    weights = (run / "checkpoints" / "step-3" / "model.safetensors").stat().st_size
    before = _tree_digest(run / "checkpoints")
    capsys.readouterr()

    env = dict(os.environ, PYTHONWARNINGS="ignore")
    r = subprocess.run([sys.executable, "-c", _FULL_DISK, str(weights // 2), "train", "--resume", str(run), "--no-plots"],
                       capture_output=True, text=True, env=env, timeout=600)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("steadylm: error: ") and "Traceback" not in r.stderr, r.stderr
    assert "step-6" in lines[0] and "File too large" in lines[0], lines[0]
    assert _tmp_leftovers(run) == []
    assert _tree_digest(run / "checkpoints") == before  # the earlier checkpoint is byte-identical

    assert main(["train", "--resume", str(run), "--no-plots", "--json"]) == 0  # and still resumes
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"] == 3
    want = hashlib.sha256((ref / "model" / "model.safetensors").read_bytes()).hexdigest()
    assert hashlib.sha256((run / "model" / "model.safetensors").read_bytes()).hexdigest() == want


def test_full_disk_leaves_no_temporary_file(tmp_path):
    from steadylm.fsutil import write_text_atomic

    target = tmp_path / "a.json"
    target.write_text("old")
    code = textwrap.dedent(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, 1000))
        from steadylm.fsutil import write_text_atomic
        try:
            write_text_atomic({str(target)!r}, "x" * 5000)
        except OSError as e:
            print(e.errno)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "27", r.stderr  # EFBIG
    assert target.read_text() == "old" and _tmp_leftovers(tmp_path) == []
    write_text_atomic(target, "new")
    assert target.read_text() == "new"


def test_checkpoint_failure_removes_its_tmp_folder_and_keeps_older_ones(finished_run, tmp_path, monkeypatch):
    import torch

    from steadylm.errors import CheckpointError, SteadyError
    from steadylm.train import checkpoint as ck

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    before = _tree_digest(run / "checkpoints")
    model = torch.nn.Linear(2, 2)

    class Boom:
        def save_pretrained(self, path, **kw):
            Path(path).mkdir(parents=True, exist_ok=True)
            (Path(path) / "model.safetensors").write_bytes(b"x" * 10)
            raise OSError(28, "No space left on device", str(Path(path) / "model.safetensors"))

    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(SteadyError, match=r"step-9.*No space left on device") as e:
        ck.save_checkpoint(run, 9, model=Boom(), tokenizer=None, optimizer=opt, state={}, keep=1)
    assert not isinstance(e.value, CheckpointError)  # not "an unusable checkpoint": a sweep must not discard the run
    assert _tmp_leftovers(run) == [] and _tree_digest(run / "checkpoints") == before


@pytest.mark.parametrize("kind", ["file", "dangling-link", "under-a-file"])
def test_odd_out_paths_are_one_line(tmp_path, capsys, kind, nano_model_dir):
    target = tmp_path / "x"
    if kind == "file":
        target.write_text("notes")
    elif kind == "dangling-link":
        target.symlink_to(tmp_path / "missing")
    else:
        (tmp_path / "f").write_text("notes")
        target = tmp_path / "f" / "run"
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "def f(x):"}\n')
    for argv in (["train", *NANO, "--steps", "1", "--out", str(target)],
                 ["eval", "generation", "--model", str(nano_model_dir), "--prompts", str(prompts), "--samples", "1",
                  "--max-new-tokens", "2", "--no-determinism", "--out", str(target)],
                 ["sweep", "--recipes", "baseline", "--lrs", "1e-3", "--seeds", "0", "--steps", "1", "--out", str(target)]):
        assert main(argv) == 2, argv
        _one_error_line(capsys, target)
    if kind == "file":
        assert target.read_text() == "notes"


def test_symlink_to_a_folder_is_that_folder(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert main(["train", *NANO, "--steps", "1", "--out", str(link), "--no-plots", "--json"]) == 0
    assert (real / "summary.json").is_file()
    assert main(["train", *NANO, "--steps", "1", "--out", str(link), "--overwrite", "--no-plots", "--json"]) == 0
    assert link.is_symlink() and (real / "summary.json").is_file()


def test_output_file_that_is_a_folder(tmp_path, capsys):
    res = tmp_path / "res"
    res.mkdir()
    (res / "results.json").write_text("{}")
    folder = tmp_path / "page"
    folder.mkdir()
    assert main(["report", str(res), "-o", str(folder)]) == 2
    _one_error_line(capsys, folder, "is a folder")
    assert main(["human", "export", str(res), "-o", str(folder)]) == 2
    _one_error_line(capsys, folder, "is a folder")


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def mounted(tmp_path):
    points = []

    def mount(name: str, opts: str) -> Path:
        p = tmp_path / name
        p.mkdir()
        if shutil.which("mount") is None or not _mount("-t", "tmpfs", "-o", f"size=16m,{opts}", "tmpfs", str(p)):
            pytest.skip("needs permission to mount a tmpfs")
        points.append(p)
        return p

    yield mount
    for p in points:
        subprocess.run(["umount", str(p)], capture_output=True)


def test_mount_point_as_out(mounted):
    mp = mounted("mnt", "rw")
    assert main(["train", *NANO, "--steps", "1", "--out", str(mp), "--no-plots", "--json"]) == 0
    assert main(["train", *NANO, "--steps", "2", "--out", str(mp), "--overwrite", "--no-plots", "--json"]) == 0
    assert json.loads((mp / "summary.json").read_text())["steps"] == 2 and os.path.ismount(mp)


def test_read_only_folder(mounted, capsys, tmp_path):
    ro = mounted("ro", "ro")
    res = tmp_path / "res"
    res.mkdir()
    assert main(["train", *NANO, "--steps", "1", "--out", str(ro / "run")]) == 2
    _one_error_line(capsys, ro / "run", "Read-only file system")
    assert main(["train", *NANO, "--steps", "1", "--out", str(ro)]) == 2
    _one_error_line(capsys, ro, "Read-only file system")
    assert main(["ensemble", "select", "--candidates", str(_candidates(tmp_path)), "-o", str(ro / "c.jsonl")]) == 2
    _one_error_line(capsys, ro / "c.jsonl", "Read-only file system")


def test_read_only_folder_by_permissions(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into 0o555 folders; test_read_only_folder covers this with a read-only mount")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["train", *NANO, "--steps", "1", "--out", str(ro / "run")]) == 2
        _one_error_line(capsys, ro / "run")
    finally:
        ro.chmod(0o755)


def _candidates(tmp_path: Path) -> Path:
    p = tmp_path / "cands.jsonl"
    p.write_text('{"id": "a", "candidates": ["x", "x", "y"]}\n')
    return p


# --------------------------------------------------------------------------- 4. outputs that are inputs

def test_outputs_that_are_inputs_are_refused(tmp_path, capsys):
    res = tmp_path / "res"
    res.mkdir()
    for name, text in (("results.json", '{"signature": {}}'), ("generations.jsonl", "{}\n"), ("prompts.jsonl", "{}\n")):
        (res / name).write_text(text)
    before = _tree_digest(res)
    cases = [
        (["report", str(res), "-o", str(res / "results.json")], res / "results.json"),
        (["report", str(res / "results.json"), "-o", "x.html", "--md", str(res / "results.json")], res / "results.json"),
        (["human", "export", str(res), "-o", str(res / "generations.jsonl")], res / "generations.jsonl"),
        (["human", "export", str(res), "-o", str(res / "page.html")], res / "page.key.json"),
        (["human", "import", str(res / "results.json"), "--key", str(res / "prompts.jsonl"), "-o",
          str(res / "prompts.jsonl")], res / "prompts.jsonl"),
    ]
    for argv, named in cases:
        assert main(argv) == 2, argv
        _one_error_line(capsys, named, "would overwrite the input")
    assert _tree_digest(res) == before and not Path("x.html").exists()


def test_check_out_file_allows_a_page_inside_an_input_folder(tmp_path):
    from steadylm.fsutil import check_out_file

    (tmp_path / "run").mkdir()
    assert check_out_file(tmp_path / "run" / "report.html", inputs=[tmp_path / "run"]) == tmp_path / "run" / "report.html"


# --------------------------------------------------------------------------- 5. failed eval starts leave no folder

@pytest.mark.parametrize("case", ["nli", "prompts", "model", "robustness-prompts", "robustness-model"])
def test_failed_eval_start_leaves_no_out_folder(tmp_path, capsys, case, nano_model_dir):
    out = tmp_path / "out"
    good = tmp_path / "p.jsonl"
    good.write_text('{"id": "a", "prompt": "def f(x):"}\n')
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": \n')
    model, prompts, extra = str(nano_model_dir), str(good), []
    if case == "nli":
        extra = ["--nli-model", str(tmp_path / "no-nli")]
    elif case.endswith("prompts"):
        prompts = str(bad)
    else:
        model = str(tmp_path / "no-model")
    cmd = ["eval", "robustness", "--kinds", "typo", "--adv-items", "0"] if case.startswith("robustness") else \
        ["eval", "generation", "--samples", "1", "--no-determinism"]
    assert main([*cmd, "--model", model, "--prompts", prompts, "--max-new-tokens", "2", *extra, "--out", str(out)]) == 2
    _one_error_line(capsys)
    assert not out.exists()


def test_failed_eval_start_keeps_a_folder_it_did_not_create(tmp_path, capsys, nano_model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "a", "prompt": "def f(x):"}\n')
    assert main(["eval", "generation", "--model", str(nano_model_dir), "--prompts", str(prompts), "--samples", "1",
                 "--no-determinism", "--nli-model", str(tmp_path / "no-nli"), "--out", str(out)]) == 2
    _one_error_line(capsys)
    assert (out / "mine.txt").read_text() == "keep"


# --------------------------------------------------------------------------- 6. strict JSON

def _strict(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_a_diverged_run_writes_strict_json(tmp_path, capsys):
    out = tmp_path / "nan"
    rc = main(["train", *NANO, "--steps", "3", "--lr", "1e6", "--guard", "off", "--clip", "none",
               "--out", str(out), "--no-plots", "--json"])
    assert rc == 0
    printed = _strict(capsys.readouterr().out)
    summary = _strict((out / "summary.json").read_text())
    assert summary["val_loss"] is None and printed["val_loss"] is None  # NaN, written as null
    records = [_strict(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "event" not in r] == [1, 2, 3]
    odd = [(k, r[k.removesuffix("_nonfinite")], v) for r in records for k, v in r.items() if k.endswith("_nonfinite")]
    assert odd and all(null is None and v in ("nan", "inf", "-inf") for _, null, v in odd)  # null, spelling beside it
    for p in out.rglob("*.json"):
        _strict(p.read_text())


def test_to_json_turns_non_finite_floats_into_null():
    from steadylm.fsutil import to_json

    text = to_json({"a": float("nan"), "b": [1.5, float("inf"), {"c": -float("inf")}], "d": (2.0,)})
    assert _strict(text) == {"a": None, "b": [1.5, None, {"c": None}], "d": [2.0]}
