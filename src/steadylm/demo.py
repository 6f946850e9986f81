"""`steadylm demo`: baseline versus stabilized training on the built-in corpus, with faults.

Two runs of the ``tiny`` preset on ``builtin:pydoc`` see the same data, the same seed and the
same injected faults - a 1000x gradient spike and a one-step 1000x learning-rate spike (what a
bad batch or a hardware glitch does to a real run):

* ``baseline`` - plain AdamW, no clipping, no guard;
* ``stabilized`` - ZClip, the spike/NaN guard with rollback, z-loss 1e-4, AdamW with weight decay.

The demo prints both validation perplexities, writes a comparison plot, and says where the run
folders and the stabilized model are. It is the README's first command and must finish within
5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import CheckpointConfig, ClipConfig, DataConfig, GuardConfig, ModelConfig, OptimConfig, TrainConfig
from .errors import ConfigError
from .fsutil import OutDir, clear_folder, folder_contents, to_json

DEMO_STEPS = 200
FAULTS = ("spike@{a}:1000", "lr@{b}:1000")


def demo_configs(out: str, steps: int | None = None) -> dict[str, TrainConfig]:
    steps = DEMO_STEPS if steps is None else steps
    a, b = max(1, steps // 2), max(1, (3 * steps) // 4)
    faults = [f.format(a=a, b=b) for f in FAULTS]
    common = dict(
        steps=steps, seed=0,
        data=DataConfig(source="builtin:pydoc", context=128, vocab_size=4096),
        model=ModelConfig(preset="tiny"),
        checkpoint=CheckpointConfig(every=max(1, steps // 10), keep=3),
    )
    return {
        "baseline": TrainConfig(out=str(Path(out) / "baseline"), **common,
                                optim=OptimConfig(lr=3e-3, batch_size=16, weight_decay=0.0),
                                clip=ClipConfig(method="none"), guard=GuardConfig(action="off", inject=faults)),
        "stabilized": TrainConfig(out=str(Path(out) / "stabilized"), **common, z_loss=1e-4,
                                  optim=OptimConfig(lr=3e-3, batch_size=16, weight_decay=0.1),
                                  clip=ClipConfig(method="zclip"), guard=GuardConfig(action="rollback", inject=faults)),
    }


def run_demo(out: str = "runs/demo", steps: int | None = None) -> dict:
    from rich.console import Console

    console = Console(soft_wrap=True)
    configs = demo_configs(out, steps)  # validates --steps before anything is touched

    def replaceable(path: Path) -> bool:
        """Whether ``path`` holds an earlier demo (to replace); `ConfigError` if it holds anything else."""
        if not folder_contents(path):
            return False
        if not (path / "demo.json").is_file():
            raise ConfigError(f"--out {out}: folder is not empty and holds no earlier demo; choose another folder")
        return True

    replaceable(Path(out))  # refused before the lock's file is written into someone's folder
    folder = OutDir(out)  # held for the whole demo: a second demo into the same folder is refused
    try:
        if replaceable(folder.path):  # again, under the lock
            clear_folder(folder.path)
        return _demo(console, configs, folder.path)
    finally:
        folder.close()


def _demo(console, configs: dict[str, TrainConfig], out_path: Path) -> dict:
    from rich.table import Table

    from .train.loop import TrainingRun

    t0 = time.perf_counter()
    faults = ", ".join(configs["baseline"].guard.inject)
    console.print(f"[bold]steadylm demo[/]: two runs of the 'tiny' preset on builtin:pydoc, {configs['baseline'].steps} steps each, "
                  f"with the same injected faults ({faults})")
    summaries = {}
    for name, cfg in configs.items():
        what = "no clipping, no guard" if name == "baseline" else "ZClip + guard with rollback + z-loss + weight decay"
        console.print(f"[bold]{name}[/] ({what})")
        summaries[name] = TrainingRun(cfg).run()

    table = Table(title="baseline vs stabilized (same data, seed and faults)")
    for col in ("run", "val loss", "val perplexity", "incidents", "rollbacks", "seconds"):
        table.add_column(col)
    for name, s in summaries.items():
        table.add_row(name, f"{s['val_loss']:.3f}", f"{s['val_perplexity']:.1f}", str(s["incidents"]), str(s["rollbacks"]), f"{s['seconds']:.0f}")
    console.print(table)

    plots = []
    try:
        from .report.plots import plot_comparison, plot_run

        plots.append(plot_comparison({n: Path(c.out) for n, c in configs.items()}, out_path / "comparison.png"))
        for c in configs.values():
            plots.extend(plot_run(c.out))
    except ImportError:  # plotting arrives with the report package
        pass
    seconds = time.perf_counter() - t0
    stab = summaries["stabilized"]
    result = {"seconds": seconds, "summaries": summaries, "plots": [str(p) for p in plots]}
    (out_path / "demo.json").write_text(to_json(result, indent=2, default=str) + "\n", encoding="utf-8")
    console.print(f"run folders: {out_path / 'baseline'}  {out_path / 'stabilized'}  (metrics.jsonl, checkpoints/, tensorboard/, summary.json)")
    console.print(f"model:       {stab['model']}  (load it with AutoModelForCausalLM.from_pretrained)")
    if plots:
        console.print(f"plots:       {plots[0]}  and {out_path}/*/plots/")
    from .report.html import build_report

    rep = build_report([out_path], out_path / "report.html", md=out_path / "summary.md", title="steadylm demo")
    seconds = time.perf_counter() - t0
    result["seconds"] = seconds
    result["report"] = str(rep["html"])
    (out_path / "demo.json").write_text(to_json(result, indent=2, default=str) + "\n", encoding="utf-8")
    console.print(f"report:      {rep['html']}  (one self-contained HTML page; Markdown summary {rep['md']})")
    console.print(f"demo finished in {seconds:.0f} s")
    return result
