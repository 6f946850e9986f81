#!/usr/bin/env python3
"""steadylm perplexity vs lm-eval-harness vs a bare forward-pass baseline.

One run, same model, same documents, same window (default 512):

1. builds (seeded, offline) a ~12M-parameter random Llama model folder with a
   byte-level BPE tokenizer, and a JSONL of CPython's ``pydoc_data`` topics;
2. runs lm-eval-harness (``python -m lm_eval``, model ``hf``) on a local
   ``loglikelihood_rolling`` task over that JSONL;
3. runs ``steadylm eval perplexity ... --json``;
4. runs a bare baseline: only batched float32 forward passes over exactly the
   windows lm_eval scores (the physical limit; its forward loop is timed alone);
5. measures each child process on its own (wall time incl. start-up, CPU time,
   peak RSS via ``os.wait4``), interleaved over ``--repeats``;
6. prints a table plus ratios and writes everything as JSON to ``--out``.

Exit status: 0 ok; 1 steadylm and lm_eval disagree beyond --tolerance (or a
metric is missing); 2 a child failed / steadylm or lm_eval unavailable;
3 (only with --strict) a performance target was missed.

Example::

    .venv/bin/python benchmarks/perplexity_vs_lmeval.py --repeats 2 \\
        --out benchmarks/out/perplexity_vs_lmeval.json

Needs lm_eval importable by --lmeval-python (default: this interpreter);
``pip install lm_eval==0.4.13`` into the project venv works with
transformers 5.x.  The orchestrator itself imports only the standard library
so that it never inflates the children's measurements.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_ppl_bench_worker.py"
TASK_NAME = "steadylm_bench_rolling_ppl"
METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")
STEADYLM_REQUIRED = (
    "token_perplexity", "word_perplexity", "byte_perplexity", "bits_per_byte",
    "tokens", "documents", "window", "stride", "signature",
)
TARGETS = {  # name: (comparison, threshold)
    "speed_lmeval_over_steadylm": (">=", 1.3),
    "memory_steadylm_over_lmeval": ("<=", 1.0),
    "steadylm_wall_over_bare_forward": ("<=", 1.25),
}

TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: text
should_decontaminate: false
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata:
  version: 1.0
"""


# --------------------------------------------------------------------------- #
# child measurement
# --------------------------------------------------------------------------- #
def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def cpu_busy_s():
    """System-wide busy CPU seconds (all cores) from /proc/stat, or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def run_measured(name, cmd, env, log_dir: Path, timeout: float, cwd=None):
    """Run one child; measure wall, CPU and peak RSS of that child alone.

    ``os.wait4`` returns the rusage of exactly this child (plus descendants it
    reaped itself), unlike RUSAGE_CHILDREN which accumulates over all children.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    out_p, err_p = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
    la0 = loadavg()
    busy0 = cpu_busy_s()
    with open(out_p, "wb") as out_f, open(err_p, "wb") as err_f:
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(
                cmd, stdout=out_f, stderr=err_f, stdin=subprocess.DEVNULL,
                env=env, cwd=cwd, start_new_session=True,
            )
        except OSError as e:
            err_f.write(f"cannot start {cmd[0]}: {e}\n".encode())
            return {"name": name, "cmd": cmd, "returncode": 127, "timed_out": False,
                    "wall_s": 0.0, "cpu_user_s": 0.0, "cpu_sys_s": 0.0, "peak_rss_mib": 0.0,
                    "loadavg_before": la0, "loadavg_after": loadavg(),
                    "foreign_cpu_share": None, "stdout_path": str(out_p),
                    "stderr_path": str(err_p)}
        timed_out = threading.Event()

        def _kill():
            timed_out.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, _kill)
        timer.start()
        try:
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    busy1 = cpu_busy_s()
    rss_kib = ru.ru_maxrss if sys.platform != "darwin" else ru.ru_maxrss / 1024
    foreign = None
    if busy0 is not None and busy1 is not None and wall > 0:
        # CPU used by *other* processes while this child ran, as a share of capacity
        other = max(0.0, (busy1 - busy0) - (ru.ru_utime + ru.ru_stime))
        foreign = other / (wall * (os.cpu_count() or 1))
    return {
        "name": name,
        "cmd": cmd,
        "returncode": proc.returncode,
        "timed_out": timed_out.is_set(),
        "wall_s": wall,
        "cpu_user_s": ru.ru_utime,
        "cpu_sys_s": ru.ru_stime,
        "peak_rss_mib": rss_kib / 1024.0,
        "loadavg_before": la0,
        "loadavg_after": loadavg(),
        "foreign_cpu_share": foreign,
        "stdout_path": str(out_p),
        "stderr_path": str(err_p),
    }


def tail(path, n=15):
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + s for s in lines[-n:])


def parse_json_stdout(path):
    """The JSON object on stdout: whole text, else the last line that parses."""
    text = Path(path).read_text(errors="replace").strip()
    try:
        obj = json.loads(text)
        if isinstance(obj, dict):
            return obj
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
                if isinstance(obj, dict):
                    return obj
            except ValueError:
                continue
    raise ValueError(f"no JSON object on stdout of {path}")


def parse_lmeval_results(out_dir: Path):
    files = sorted(out_dir.rglob("results*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise ValueError(f"lm_eval wrote no results*.json under {out_dir}")
    data = json.loads(files[-1].read_text())
    res = data["results"][TASK_NAME]
    out = {m: float(res[f"{m},none"]) for m in METRICS}
    out["documents"] = res.get("sample_len") or data.get("n-samples", {}).get(
        TASK_NAME, {}).get("effective")
    out["results_file"] = str(files[-1])
    return out


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def py_has_module(python, module):
    r = subprocess.run(
        [python, "-c", f"import importlib.util,sys; sys.exit(importlib.util.find_spec({module!r}) is None)"],
        capture_output=True,
    )
    return r.returncode == 0


def py_versions(python, dists):
    code = (
        "import importlib.metadata as m, json\n"
        f"out={{}}\nfor d in {list(dists)!r}:\n"
        "    try: out[d]=m.version(d)\n"
        "    except Exception: out[d]=None\n"
        "print(json.dumps(out))"
    )
    r = subprocess.run([python, "-c", code], capture_output=True, text=True)
    try:
        return json.loads(r.stdout)
    except ValueError:
        return {}


def find_steadylm(arg):
    if arg:
        return shlex.split(arg)
    cand = Path(sys.executable).parent / "steadylm"
    if cand.exists():
        return [str(cand)]
    w = shutil.which("steadylm")
    return [w] if w else None


def rel_diff(a, b):
    if a is None or b is None or not all(map(math.isfinite, (a, b))):
        return math.inf
    if a == b:
        return 0.0
    return abs(a - b) / max(abs(b), 1e-300)


def fmt(x, spec=".6g"):
    if x is None:
        return "-"
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return format(x, spec)


# --------------------------------------------------------------------------- #
# main
# --------------------------------------------------------------------------- #
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--docs", type=int, default=0,
                    help="first N pydoc topics, sorted by key; 0 = all (79 on CPython "
                         "3.11: ~466 KB, ~106k tokens, ~50 s of forward on 2 idle cores); "
                         "24 = ~117 KB, ~27k tokens")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--tools", default="lm_eval,steadylm,bare",
                    help="comma list of lm_eval, steadylm, bare")
    ap.add_argument("--work-dir", default=str(HERE / "out" / "ppl_work"),
                    help="model, data, task and logs go here (rebuilt if stale)")
    ap.add_argument("--out", default=str(HERE / "out" / "perplexity_vs_lmeval.json"))
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--strict", action="store_true",
                    help="exit 3 when a performance target is missed")
    ap.add_argument("--steadylm-cmd", default=None,
                    help="command prefix for steadylm (default: steadylm next to this python)")
    ap.add_argument("--steadylm-extra", default="", help="extra args for steadylm eval perplexity")
    ap.add_argument("--lmeval-python", default=sys.executable,
                    help="python that can import lm_eval")
    ap.add_argument("--threads", type=int, default=0,
                    help="if >0, OMP/MKL_NUM_THREADS for every child")
    ap.add_argument("--timeout", type=float, default=1800.0, help="per child, seconds")
    # model build knobs
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--init-std", type=float, default=0.05,
                    help="weight init std; >0.02 makes NLL context-sensitive")
    ap.add_argument("--tokenizer-adds-bos", action="store_true",
                    help="Llama-style tokenizer whose encode() prepends BOS (lm_eval >= 0.4.10 "
                         "then scores that BOS too); default: no special tokens added")
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args(argv)
    try:
        sys.stdout.reconfigure(line_buffering=True)
    except (AttributeError, ValueError):
        pass

    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    for t in tools:
        if t not in ("lm_eval", "steadylm", "bare"):
            ap.error(f"unknown tool {t!r}")
    if args.window > 512:
        ap.error("the benchmark model has max_position_embeddings=512")

    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({
        "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(work / "hf_home"),  # isolated caches (lm_eval's datasets cache)
        "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1",
    })
    if args.threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)

    # ---- 1. build -------------------------------------------------------- #
    build_args = ["--docs", str(args.docs), "--seed", str(args.seed),
                  "--init-std", repr(args.init_std)]
    if args.tokenizer_adds_bos:
        build_args.append("--tokenizer-adds-bos")
    key = hashlib.sha256((json.dumps(build_args) + WORKER.read_text()).encode()).hexdigest()[:16]
    bdir = work / f"build-{key}"
    info_p = bdir / "build_info.json"
    if args.rebuild or not info_p.exists():
        if bdir.exists():
            shutil.rmtree(bdir)
        tmp = Path(tempfile.mkdtemp(prefix="build-", dir=work))
        print(f"[build] model + data -> {bdir}", file=sys.stderr)
        r = subprocess.run([sys.executable, str(WORKER), "build", "--out-dir", str(tmp)]
                           + build_args, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stderr[-4000:], file=sys.stderr)
            print("[build] failed", file=sys.stderr)
            return 2
        info = json.loads(r.stdout.strip().splitlines()[-1])
        tmp.rename(bdir)
        info["model_dir"], info["data"] = str(bdir / "model"), str(bdir / "docs.jsonl")
        info_p.write_text(json.dumps(info, indent=1))
    info = json.loads(info_p.read_text())
    model_dir, data = info["model_dir"], info["data"]
    print(f"[build] {info['params']/1e6:.2f}M params, vocab {info['vocab_size']}, "
          f"{info['documents']} docs, {info['bytes']} bytes", file=sys.stderr)

    task_dir = bdir / "lmeval_tasks"
    task_dir.mkdir(exist_ok=True)
    (task_dir / f"{TASK_NAME}.yaml").write_text(TASK_YAML.format(task=TASK_NAME, data=data))

    # ---- commands -------------------------------------------------------- #
    problems = []
    cmds = {}
    if "lm_eval" in tools:
        if not py_has_module(args.lmeval_python, "lm_eval"):
            problems.append(f"lm_eval not importable by {args.lmeval_python} "
                            "(pip install lm_eval==0.4.13)")
        else:
            cmds["lm_eval"] = lambda out_dir: [
                args.lmeval_python, "-m", "lm_eval",
                "--model", "hf",
                "--model_args", f"pretrained={model_dir},max_length={args.window},dtype=float32",
                "--tasks", TASK_NAME, "--include_path", str(task_dir),
                "--device", "cpu", "--batch_size", str(args.batch_size),
                "--output_path", str(out_dir),
            ]
    if "steadylm" in tools:
        sl = find_steadylm(args.steadylm_cmd)
        if not sl:
            problems.append("steadylm executable not found (use --steadylm-cmd)")
        else:
            cmds["steadylm"] = lambda out_dir: sl + [
                "eval", "perplexity", "--model", model_dir, "--data", data,
                "--window", str(args.window), "--batch-size", str(args.batch_size), "--json",
            ] + shlex.split(args.steadylm_extra)
    if "bare" in tools:
        cmds["bare"] = lambda out_dir: [
            sys.executable, str(WORKER), "bare", "--model", model_dir, "--data", data,
            "--window", str(args.window), "--batch-size", str(args.batch_size),
        ]
    for p in problems:
        print(f"[error] {p}", file=sys.stderr)

    # ---- 2-5. interleaved runs ------------------------------------------- #
    order = [t for t in ("lm_eval", "steadylm", "bare") if t in cmds]
    runs = {t: [] for t in order}
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for rep in range(args.repeats):
        rot = order[rep % len(order):] + order[: rep % len(order)] if order else []
        for t in rot:
            log_dir = work / "runs" / stamp / f"r{rep}"
            out_dir = log_dir / f"{t}_output"
            print(f"[run {rep + 1}/{args.repeats}] {t} ...", file=sys.stderr, flush=True)
            m = run_measured(t, cmds[t](out_dir), env, log_dir, args.timeout)
            m["repeat"] = rep
            try:
                if m["returncode"] != 0:
                    raise RuntimeError(f"exit status {m['returncode']}"
                                       + (" (timeout)" if m["timed_out"] else ""))
                if t == "lm_eval":
                    m["result"] = parse_lmeval_results(out_dir)
                else:
                    m["result"] = parse_json_stdout(m["stdout_path"])
                    if t == "steadylm":
                        missing = [k for k in STEADYLM_REQUIRED if k not in m["result"]]
                        if missing:
                            m["missing_keys"] = missing
                            print(f"[warn] steadylm JSON lacks {missing}", file=sys.stderr)
            except Exception as e:  # noqa: BLE001
                m["error"] = str(e)
                problems.append(f"{t} (repeat {rep}): {e}")
                print(f"[error] {t} failed: {e}\n{tail(m['stderr_path'])}", file=sys.stderr)
            fc = m["foreign_cpu_share"]
            print(f"[run {rep + 1}/{args.repeats}] {t}: wall {m['wall_s']:.2f} s, "
                  f"peak RSS {m['peak_rss_mib']:.0f} MiB"
                  + (f", other processes {100 * fc:.0f}% CPU" if fc is not None else ""),
                  file=sys.stderr, flush=True)
            runs[t].append(m)

    # ---- 6. summarise ----------------------------------------------------- #
    summary = {}
    for t, ms in runs.items():
        ok = [m for m in ms if "result" in m]
        if not ok:
            continue
        walls = [m["wall_s"] for m in ok]
        s = {
            "runs_ok": len(ok), "runs": len(ms),
            "wall_s_min": min(walls), "wall_s_median": statistics.median(walls),
            "cpu_s_min": min(m["cpu_user_s"] + m["cpu_sys_s"] for m in ok),
            "peak_rss_mib_max": max(m["peak_rss_mib"] for m in ok),
            "result": ok[0]["result"],
        }
        # the metrics must be identical across repeats of one tool
        spread = max((rel_diff(m["result"].get(k), ok[0]["result"].get(k))
                      for m in ok for k in METRICS), default=0.0)
        s["metric_spread_across_repeats"] = spread
        if t == "bare":
            s["forward_s_min"] = min(m["result"]["forward_s"] for m in ok)
            s["forward_s_median"] = statistics.median(m["result"]["forward_s"] for m in ok)
        summary[t] = s

    def metric(t, k):
        return summary.get(t, {}).get("result", {}).get(k)

    checks = {}
    exit_code = 0
    if "steadylm" in summary and "lm_eval" in summary:
        diffs = {k: rel_diff(metric("steadylm", k), metric("lm_eval", k)) for k in METRICS}
        worst = max(diffs.values())
        checks["agreement"] = {"rel_diff": diffs, "max_rel_diff": worst,
                               "tolerance": args.tolerance, "ok": worst <= args.tolerance}
        if not worst <= args.tolerance:
            exit_code = 1
    if "bare" in summary and "lm_eval" in summary:
        diffs = {k: rel_diff(metric("bare", k), metric("lm_eval", k)) for k in METRICS}
        checks["bare_vs_lmeval"] = {"rel_diff": diffs, "max_rel_diff": max(diffs.values()),
                                    "note": "sanity check of the window reimplementation"}
    if "steadylm" in summary and "bare" in summary:
        bt, st = metric("bare", "tokens"), metric("steadylm", "tokens")
        checks["token_count"] = {"steadylm": st, "bare_lmeval_windows": bt, "ok": st == bt}
        tp = rel_diff(metric("steadylm", "token_perplexity"), metric("bare", "token_perplexity"))
        checks["token_perplexity_vs_bare"] = {"rel_diff": tp}

    ratios = {}
    if "steadylm" in summary and "lm_eval" in summary:
        ratios["speed_lmeval_over_steadylm"] = (
            summary["lm_eval"]["wall_s_min"] / summary["steadylm"]["wall_s_min"])
        ratios["memory_steadylm_over_lmeval"] = (
            summary["steadylm"]["peak_rss_mib_max"] / summary["lm_eval"]["peak_rss_mib_max"])
    if "steadylm" in summary and "bare" in summary:
        ratios["steadylm_wall_over_bare_forward"] = (
            summary["steadylm"]["wall_s_min"] / summary["bare"]["forward_s_min"])
    if "lm_eval" in summary and "bare" in summary:
        ratios["lmeval_wall_over_bare_forward"] = (
            summary["lm_eval"]["wall_s_min"] / summary["bare"]["forward_s_min"])
    if "steadylm" in summary and "lm_eval" in summary:
        # CPU seconds are less sensitive than wall time to other load on the machine
        ratios["cpu_lmeval_over_steadylm"] = (
            summary["lm_eval"]["cpu_s_min"] / summary["steadylm"]["cpu_s_min"])
    targets = {}
    for name, (op, thr) in TARGETS.items():
        if name in ratios:
            v = ratios[name]
            targets[name] = {"value": v, "target": f"{op} {thr}",
                             "ok": v >= thr if op == ">=" else v <= thr}

    # ---- print ------------------------------------------------------------ #
    print()
    print(f"perplexity benchmark: {info['params']/1e6:.2f}M-param random Llama, "
          f"{info['documents']} docs / {info['bytes']} bytes, window {args.window}, "
          f"batch {args.batch_size}, repeats {args.repeats}, {os.cpu_count()} CPUs")
    hdr = (f"{'tool':<9} {'wall s min':>10} {'wall s med':>10} {'cpu s':>8} {'peak MiB':>9} "
           f"{'word_ppl':>14} {'byte_ppl':>11} {'bits/byte':>11}")
    print(hdr)
    print("-" * len(hdr))
    for t in ("lm_eval", "steadylm", "bare"):
        if t not in summary:
            if t in tools:
                print(f"{t:<9} {'FAILED / unavailable':>30}")
            continue
        s = summary[t]
        print(f"{t:<9} {s['wall_s_min']:>10.2f} {s['wall_s_median']:>10.2f} {s['cpu_s_min']:>8.1f} "
              f"{s['peak_rss_mib_max']:>9.0f} {fmt(metric(t, 'word_perplexity'), '.7g'):>14} "
              f"{fmt(metric(t, 'byte_perplexity'), '.7g'):>11} {fmt(metric(t, 'bits_per_byte'), '.7g'):>11}")
    if "bare" in summary:
        b = summary["bare"]
        r0 = b["result"]
        print(f"bare forward loop alone: {b['forward_s_min']:.2f} s min "
              f"({r0['tokens']} tokens, {r0['windows']} windows, {r0['torch_threads']} torch threads)")
    print()
    if "agreement" in checks:
        c = checks["agreement"]
        print(f"agreement  max rel diff steadylm vs lm_eval = {c['max_rel_diff']:.3g} "
              f"(<= {args.tolerance:g})  {'PASS' if c['ok'] else 'FAIL'}   "
              + ", ".join(f"{k} {v:.2g}" for k, v in c["rel_diff"].items()))
    if "bare_vs_lmeval" in checks:
        print(f"sanity     max rel diff bare vs lm_eval     = "
              f"{checks['bare_vs_lmeval']['max_rel_diff']:.3g}")
    if "token_count" in checks:
        c = checks["token_count"]
        print(f"tokens     steadylm {c['steadylm']} vs lm_eval windows {c['bare_lmeval_windows']}  "
              f"{'same' if c['ok'] else 'DIFFERENT'}")
    labels = {
        "speed_lmeval_over_steadylm": "speed      lm_eval_wall / steadylm_wall",
        "memory_steadylm_over_lmeval": "memory     steadylm_peak / lm_eval_peak",
        "steadylm_wall_over_bare_forward": "overhead   steadylm_wall / bare_forward",
        "lmeval_wall_over_bare_forward": "(info)     lm_eval_wall / bare_forward",
        "cpu_lmeval_over_steadylm": "(info)     lm_eval_cpu / steadylm_cpu",
    }
    for name, label in labels.items():
        if name in ratios:
            t = targets.get(name)
            tag = f"(target {t['target']})  {'PASS' if t['ok'] else 'MISS'}" if t else ""
            print(f"{label:<40} = {ratios[name]:.3f}  {tag}")
    busy = [m["foreign_cpu_share"] for ms in runs.values() for m in ms
            if m.get("foreign_cpu_share") is not None]
    if busy and max(busy) > 0.10:
        print(f"warning: other processes used up to {100 * max(busy):.0f}% of the CPUs while a "
              "child ran; timings are noisy (rerun on an idle machine, --repeats >= 2)")
    for p in problems:
        print(f"problem: {p}")

    if problems and exit_code == 0:
        exit_code = 2
    if "agreement" not in checks and "steadylm" in tools and "lm_eval" in tools:
        exit_code = exit_code or 2
    if args.strict and exit_code == 0 and not all(t["ok"] for t in targets.values()):
        exit_code = 3

    result = {
        "benchmark": "perplexity_vs_lmeval",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "settings": {k: v for k, v in vars(args).items()},
        "build": info,
        "host": {
            "python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "loadavg_end": loadavg(),
            "main_venv": py_versions(sys.executable, ["torch", "transformers", "tokenizers",
                                                      "safetensors", "steadylm"]),
            "lmeval_python": args.lmeval_python,
            "lmeval_versions": py_versions(args.lmeval_python, ["lm_eval", "torch", "transformers",
                                                                "datasets"]),
        },
        "summary": summary, "checks": checks, "ratios": ratios, "targets": targets,
        "problems": problems, "runs": runs, "exit_code": exit_code,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"\nresults: {out}  (exit {exit_code})")
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
