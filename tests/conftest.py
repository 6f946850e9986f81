"""Shared fixtures: tiny models and corpora built on the spot; no network, no hub."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ.setdefault("STEADYLM_PROGRESS", "0")
# One intra-op thread for torch here and in every steadylm process a test starts: the models are
# tiny, so a second thread only adds synchronisation, and when the cores are shared (a test server
# beside its client, a busy machine) waiting for it makes each op several times slower. Set before
# torch is imported; tests that pass --threads still get what they ask for.
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]

CHINESE = (
    "大语言模型的稳定性是指模型在不同输入、不同环境下表现的一致性和可靠性。"
    "梯度裁剪通过限制梯度的范数来防止梯度爆炸，从而提高训练的稳定性。"
)


def run_cli(*args: str, timeout: float = 600, cwd: str | os.PathLike | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m steadylm ARGS`` as a real process and capture its output."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "steadylm", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def _main(argv) -> int:
    """``steadylm.cli.main(argv)``'s exit code, also where argparse exits from inside parse_args
    (usage errors, --version)."""
    from steadylm import cli

    try:
        return cli.main(list(argv))
    except SystemExit as e:
        return e.code


def run_in_process(*args: str) -> subprocess.CompletedProcess:
    """``steadylm ARGS`` through ``steadylm.cli.main`` in this process, with what it prints captured
    and returned as ``run_cli`` returns it: the same code path without a second torch import (the
    real process, exit code and all, is held by one test in test_cli.py). For fixtures and tests
    that cannot take capsys; torch's thread count is restored afterwards."""
    import contextlib
    import io

    import torch

    out, err, threads = io.StringIO(), io.StringIO(), torch.get_num_threads()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = _main(args)
    finally:
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["steadylm", *args], rc, out.getvalue(), err.getvalue())


def one_line_error(capsys, argv, fragment: str, *, quiet: bool = False) -> str:
    """Run ``steadylm ARGV`` in this process; it must exit 2 with one ``steadylm: error:`` line
    holding ``fragment`` (and no traceback), and with ``quiet`` print nothing on stdout. Returns
    that line."""
    rc = _main(argv)
    out, err = capsys.readouterr()
    assert rc == 2, err
    assert not quiet or out == "", out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("steadylm: error:"), err
    assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="session")
def pydoc_docs() -> list[str]:
    from steadylm.data.sources import load_documents

    return load_documents("builtin:pydoc").documents


@pytest.fixture(scope="session")
def tokenizer(pydoc_docs):
    from steadylm.data.tokenizer import train_bpe

    return train_bpe(pydoc_docs[:20] + [CHINESE], 400)


@pytest.fixture(scope="session")
def nano_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A randomly initialised nano Llama with context 64, saved as an HF folder."""
    from steadylm.models import build_model, save_model

    model = build_model("nano", vocab_size=len(tokenizer), context=64, seed=0,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return save_model(model, tokenizer, tmp_path_factory.mktemp("models") / "nano")
