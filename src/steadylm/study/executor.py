"""Running the cells of a sweep: worker processes on this machine, or tasks on a Ray cluster.

A cell is one `TrainingRun` in its own folder. The folder is the whole state, so a sweep resumes
by looking at it:

* ``summary.json`` present - finished (or stopped by the guard): not run again;
* a run folder without ``summary.json`` - killed: continued from its newest checkpoint with
  `TrainingRun.resume` (and started again from scratch if that checkpoint is unusable);
* anything else in the folder (a kill before the run wrote its ``config.json``) - removed and
  started again.

Locally each cell runs in a ``spawn``-ed worker process (`concurrent.futures.ProcessPoolExecutor`;
``fork`` after torch has started threads can deadlock) with ``max(1, cores // workers)`` torch threads,
so ``workers`` cells share the machine without oversubscribing it. One worker runs the cells in
this process, one after the other. ``executor="ray"`` submits the same function as Ray tasks
(``num_cpus`` = the threads per cell); ``ray.init()`` starts a local instance or joins the cluster
named by ``RAY_ADDRESS``, whose nodes must have steadylm installed and see the same ``--out``
folder (a shared file system).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

from ..errors import ConfigError, SteadyError

EXECUTORS = ("local", "ray")


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    return max(1, cpu_cores() // max(1, workers))


#: written beside a run that ended in a way the run itself cannot record (see `run_cell`)
CELL_STATUS = "sweep_cell.json"


def cell_done(run_dir: str | os.PathLike) -> bool:
    d = Path(run_dir)
    return (d / "summary.json").is_file() or (d / CELL_STATUS).is_file()


def run_cell(spec: dict[str, Any]) -> str:
    """Train (or finish) one cell; returns ``"cached"``, ``"trained"``, ``"resumed"`` or ``"stopped"``.

    ``spec``: ``{"dir": run folder, "config": TrainConfig dict, "threads": torch threads,
    "keep_checkpoints": bool}``. Once ``summary.json`` is written a cell is never resumed, so its
    ``checkpoints/`` folder (weights plus AdamW state, 3x the model) is removed unless
    ``keep_checkpoints``; ``model/`` stays.
    A run the guard stops (`GuardStop`) is a result - a diverged cell - not an error. So is a run
    whose final validation loss is too large for ``exp`` (the perplexity overflows before
    ``summary.json`` is written): that cell gets ``sweep_cell.json`` with status ``overflow``.
    """
    from ..config import TrainConfig
    from ..errors import CheckpointError
    from ..train.loop import TrainingRun, is_run_dir
    from ..train.spikes import GuardStop

    d = Path(spec["dir"])
    if cell_done(d):
        return "cached"
    old = os.environ.get("STEADYLM_PROGRESS")
    os.environ["STEADYLM_PROGRESS"] = "0"  # the sweep draws one bar; a cell draws none
    try:
        run, status = None, "trained"
        if d.exists() and is_run_dir(d):
            try:
                run = TrainingRun.resume(d)
                run.cfg.threads = spec["threads"]
                status = "resumed"
            except CheckpointError:
                run = None
        if run is None:
            if d.exists():
                shutil.rmtree(d)
            cfg = dict(spec["config"], out=str(d), threads=spec["threads"])
            run = TrainingRun(TrainConfig.from_dict(cfg, origin=f"cell {d.name}"))
        try:
            run.run()
        except GuardStop:
            status = "stopped"
        except OverflowError as e:
            from ..fsutil import write_json_atomic

            write_json_atomic(d / CELL_STATUS, {"status": "overflow", "error": f"OverflowError: {e}",
                                                "reason": "the final validation loss is too large to exponentiate: diverged"})
            status = "overflow"
        except CheckpointError:
            if status != "resumed":
                raise
            shutil.rmtree(d)  # an unusable checkpoint: start the cell again
            cfg = dict(spec["config"], out=str(d), threads=spec["threads"])
            try:
                TrainingRun(TrainConfig.from_dict(cfg, origin=f"cell {d.name}")).run()
                status = "trained"
            except GuardStop:
                status = "stopped"
        if not spec.get("keep_checkpoints") and cell_done(d):
            shutil.rmtree(d / "checkpoints", ignore_errors=True)
        return status
    finally:
        if old is None:
            os.environ.pop("STEADYLM_PROGRESS", None)
        else:
            os.environ["STEADYLM_PROGRESS"] = old


def _describe(e: BaseException) -> str:
    if isinstance(e, SteadyError):
        return str(e)
    msg = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def execute(specs: list[dict[str, Any]], *, workers: int, executor: str = "local",
            on_done: Callable[[dict[str, Any], str], None] | None = None) -> dict[str, str]:
    """Run every spec not yet done; returns ``{dir: status}``. Every cell is tried even when
    one fails; then the first failure is raised (finished cells are kept for the next try)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown --executor {executor!r}; choose one of: {', '.join(EXECUTORS)}")
    if workers < 1:
        raise ConfigError(f"--workers must be positive, got {workers}")
    on_done = on_done or (lambda spec, status: None)
    statuses: dict[str, str] = {}
    todo = []
    for s in specs:
        if cell_done(s["dir"]):
            statuses[s["dir"]] = "cached"
        else:
            todo.append(s)
    errors: list[tuple[str, BaseException]] = []

    def record(spec: dict[str, Any], status: str | None, err: BaseException | None) -> None:
        if err is not None:
            errors.append((Path(spec["dir"]).name, err))
            status = "failed"
        statuses[spec["dir"]] = status or "failed"
        on_done(spec, statuses[spec["dir"]])

    if todo and executor == "ray":
        _execute_ray(todo, record)
    elif todo and workers == 1:
        import torch

        before = torch.get_num_threads()
        try:
            for spec in todo:
                try:
                    record(spec, run_cell(spec), None)
                except KeyboardInterrupt:
                    raise
                except Exception as e:  # noqa: BLE001 - reported with the cell's name below
                    record(spec, None, e)
        finally:
            torch.set_num_threads(before)  # a run sets the thread count; leave the caller's as it was
    elif todo:
        _execute_pool(todo, workers, record)
    if errors:
        name, err = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise SteadyError(f"cell {name} failed: {_describe(err)}{more}; finished cells are kept - "
                          "run the same command again to retry the rest")
    return statuses


def _execute_pool(todo: list[dict[str, Any]], workers: int, record) -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    pool = ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(run_cell, spec): spec for spec in todo}
        for fut in as_completed(futures):
            spec = futures[fut]
            try:
                record(spec, fut.result(), None)
            except Exception as e:  # noqa: BLE001 - a cell's failure, or a worker killed (BrokenProcessPool)
                record(spec, None, e)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _execute_ray(todo: list[dict[str, Any]], record) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("--executor ray: install ray (pip install 'steadylm[ray]')") from None
    started = False
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = True
    try:
        task = ray.remote(max_retries=0)(run_cell)
        refs = {task.options(num_cpus=spec["threads"]).remote(spec): spec for spec in todo}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            spec = refs[done[0]]
            try:
                record(spec, ray.get(done[0]), None)
            except ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                record(spec, None, cause if isinstance(cause, BaseException) else e)
            except Exception as e:  # noqa: BLE001 - a worker lost, an object lost
                record(spec, None, e)
    finally:
        if started:
            ray.shutdown()


__all__ = ["EXECUTORS", "cell_done", "cpu_cores", "execute", "run_cell", "threads_per_worker"]
