"""`steadylm demo`: train a tiny model on the built-in corpus with the stabilizers on, evaluate it.

The demo is the README's first command; it must finish within 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from .config import ClipConfig, DataConfig, ModelConfig, OptimConfig, TrainConfig, CheckpointConfig
from .errors import ConfigError

DEMO_STEPS = 300


def demo_config(out: str, steps: int | None = None) -> TrainConfig:
    steps = DEMO_STEPS if steps is None else steps
    return TrainConfig(
        out=out,
        steps=steps,
        seed=0,
        data=DataConfig(source="builtin:pydoc", context=128, vocab_size=4096),
        model=ModelConfig(preset="tiny", dropout=0.0),
        optim=OptimConfig(lr=3e-3, batch_size=16, weight_decay=0.1),
        clip=ClipConfig(method="norm", max_norm=1.0),
        checkpoint=CheckpointConfig(every=max(1, steps // 3), keep=3),
    )


def run_demo(out: str = "runs/demo", steps: int | None = None) -> dict:
    from rich.console import Console

    from .train.loop import TrainingRun

    console = Console()
    out_path = Path(out)
    cfg = demo_config(out, steps)  # validates --steps before anything is touched
    if out_path.exists() and any(out_path.iterdir()):
        if not (out_path / "demo.json").is_file():
            raise ConfigError(f"--out {out}: folder is not empty and holds no earlier demo; choose another folder")
        shutil.rmtree(out_path)
    t0 = time.perf_counter()
    console.print(f"[bold]steadylm demo[/]: training the 'tiny' preset on builtin:pydoc for {cfg.steps} steps "
                  f"(norm clipping at {cfg.clip.max_norm}, AdamW weight decay {cfg.optim.weight_decay}, warm-up + cosine)")
    train_dir = out_path / "train"
    out_path.mkdir(parents=True, exist_ok=True)
    (out_path / "demo.json").write_text('{"steadylm": "demo"}\n', encoding="utf-8")
    cfg.out = str(train_dir)
    summary = TrainingRun(cfg).run()
    seconds = time.perf_counter() - t0
    console.print(
        f"trained {summary['parameters'] / 1e6:.2f} M parameters, {summary['steps']} steps in {summary['seconds']:.0f} s "
        f"({summary['tokens_per_s']:.0f} tokens/s); final train loss {summary['final_loss']:.3f}"
    )
    console.print(f"validation: loss {summary['val_loss']:.3f}, perplexity {summary['val_perplexity']:.2f}, "
                  f"{summary['val_bits_per_byte']:.3f} bits per byte")
    console.print(f"run folder: {train_dir}  (metrics.jsonl, checkpoints/, tensorboard/, summary.json)")
    console.print(f"model:      {summary['model']}  (load it with AutoModelForCausalLM.from_pretrained)")
    console.print(f"demo finished in {seconds:.0f} s")
    return {"summary": summary, "seconds": seconds, "run_dir": str(train_dir)}
