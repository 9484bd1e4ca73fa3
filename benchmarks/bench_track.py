"""What tracking costs a training process, per backend: importing it, its first run (MLflow creates its SQLite
database then), each epoch logged, and the end (test metrics, results.json, end of run, close).

Each backend runs in a fresh Python process that has already imported torch and featcache (as a training
process has), so the import seconds are the backend's own. ``--runs`` runs are open side by side and every epoch
is logged to each of them (a grouped sweep), three values each (train_loss, val_loss, epoch_seconds), with
``--pause`` seconds between epochs standing in for the training (not counted). "per epoch" is the seconds spent in
`Run.log_epoch` calls plus the end (where MLflow writes the epochs it still holds), over ``--epochs`` x ``--runs``.
"CPU s" is the CPU time of everything from the import to the end, background threads included (TensorBoard writes
from one) and W&B's service process too (it runs beside the training, after a teardown that waits for it).
W&B runs offline.

    python benchmarks/bench_track.py                                     # 1,000 epochs, one run
    python benchmarks/bench_track.py --epochs 500 --runs 15 --pause 0.05 --backends mlflow

``--compare STORE`` measures instead what tracking adds to a whole command: ``featcache compare-e2e STORE --modes C``
(the public command line, each run a fresh process into a fresh folder, the tracker's import and database included)
without tracking and with each of ``--backends``, ``--repeats`` times each, interleaved (none, mlflow, tensorboard,
none, ...) so that a change of the machine's load falls on every variant alike. It prints each variant's median
wall and CPU seconds (the process and its children: the CPU time is what the machine's other load disturbs least)
and their excess over no tracking, with the load average before and after; ``--`` passes further options on.
It also splits each command's wall time into its epochs (the runs' ``total_seconds``, training and validation,
each group counted once), where no tracker code runs, and the rest: start-up, evaluation, figures and every
tracker call. A change of the machine's speed between two commands half an hour long shows in the epochs; what
tracking costs shows outside them.

    python benchmarks/bench_track.py --compare real.zarr --backends mlflow,tensorboard --repeats 3 -- \
        --sizes 1400,160,80,40,20,10 --seeds 0,1,2 --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(backend: str, *, epochs: int, runs: int, pause: float, out: Path) -> dict:
    """The seconds of each phase, in this process (torch and featcache imported before the clock starts)."""
    import torch  # noqa: F401  # a training process has it already

    from featcache.track import open_trackers

    cpu0, children0 = time.process_time(), _children_cpu()
    t0 = time.perf_counter()
    trackers = open_trackers([backend], out=out)
    t1 = time.perf_counter()
    tracked = [trackers.start_run(name=f"seed-{i}", group="bench", params={"lr": 1e-4, "seed": i}) for i in range(runs)]
    t2 = time.perf_counter()
    logging = 0.0
    for epoch in range(1, epochs + 1):
        time.sleep(pause)
        start = time.perf_counter()
        for run in tracked:
            run.log_epoch(epoch=epoch, metrics={"train_loss": 1 / epoch, "val_loss": 2 / epoch, "epoch_seconds": 0.1})
        logging += time.perf_counter() - start
    t3 = time.perf_counter()
    results = out / "results.json"
    results.write_text(json.dumps({"test": {"dice": 0.5}}))
    for run in tracked:
        run.log_metrics({"test/dice": 0.5})
        run.log_artifact(results)
        run.end()
    trackers.close()
    if backend == "wandb":
        import wandb

        wandb.teardown()  # waits for the service process to write what it holds, and to exit
    t4 = time.perf_counter()
    cpu = time.process_time() - cpu0 + _children_cpu() - children0
    if trackers.names != (backend,):
        raise SystemExit(f"{backend} failed during the benchmark (see the warning above)")
    return {
        "backend": backend,
        "import_seconds": t1 - t0,
        "first_runs_seconds": t2 - t1,
        "epochs_seconds": logging,
        "end_seconds": t4 - t3,
        "per_epoch_ms": 1000 * (logging + t4 - t3) / (epochs * runs),
        "cpu_seconds": cpu,
        "epochs": epochs,
        "runs": runs,
        "pause": pause,
    }


def compare_command(store: str, *, track: str | None, out: Path, extra: list[str]) -> dict:
    """One ``featcache compare-e2e STORE --modes C`` in a fresh process: its wall and CPU seconds (the process and
    its children, e.g. W&B's service)."""
    device = [] if "--device" in extra else ["--device", "cpu"]
    options = [*device, "--modes", "C", *extra, "--out", str(out), *(["--track", track] if track else [])]
    cmd = [sys.executable, "-m", "featcache", "compare-e2e", store, *options]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "FEATCACHE_TRACK")}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DIR=str(out))
    cpu0, t0 = _children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if done.returncode or "warning:" in done.stderr:
        raise SystemExit(f"{' '.join(cmd)}: exit code {done.returncode}\n{done.stderr[-3000:]}")
    epochs = epochs_seconds(out)
    return {
        "track": track or "none",
        "wall_seconds": wall,
        "cpu_seconds": cpu,
        "epochs_seconds": epochs,
        "outside_seconds": wall - epochs,
    }


def epochs_seconds(out: Path) -> float:
    """The seconds the runs under ``out/runs`` spent in their epochs (`RunResults.total_seconds`: training and
    validation); runs trained together as one group share theirs, counted once."""
    groups = {}
    for path in sorted(out.glob("runs/**/results.json")):
        results = json.loads(path.read_text())
        group = results.get("group")
        key = (path.parent.parent, tuple(group["seeds"])) if group else path.parent
        groups[key] = group["total_seconds"] if group else results["total_seconds"]
    return sum(groups.values())


def compare(args: argparse.Namespace, extra: list[str]) -> None:
    """`compare_command` ``--repeats`` times per variant, interleaved; the medians and their excess over none."""
    variants = [None, *args.backends.split(",")]
    rows, load = [], [os.getloadavg()]
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for track in variants:
                out = Path(tmp) / f"{track or 'none'}-{repeat}"
                rows.append(compare_command(args.compare, track=track, out=out, extra=extra))
                print(json.dumps(rows[-1]), flush=True)
                shutil.rmtree(out)
    load.append(os.getloadavg())
    medians = {
        t or "none": {
            k: statistics.median(r[k] for r in rows if r["track"] == (t or "none"))
            for k in ("wall_seconds", "cpu_seconds", "epochs_seconds", "outside_seconds")
        }
        for t in variants
    }
    base = medians["none"]
    command = f"compare-e2e {args.compare} --modes C {' '.join(extra)}"
    print(f"{command}: median of {args.repeats} runs each, {os.cpu_count()} CPUs")
    print(f"load average (1, 5, 15 min) before {load[0]}, after {load[1]}")
    print(
        f"{'track':<12} {'wall s':>9} {'excess':>8} {'CPU s':>9} {'excess':>8} {'epochs s':>9} {'excess':>8} "
        f"{'outside s':>10} {'excess, % of wall':>18}"
    )
    for track, m in medians.items():
        wall, cpu, epochs, outside = (
            m[k] for k in ("wall_seconds", "cpu_seconds", "epochs_seconds", "outside_seconds")
        )
        print(
            f"{track:<12} {wall:>9.1f} {100 * (wall / base['wall_seconds'] - 1):>7.1f}% "
            f"{cpu:>9.1f} {100 * (cpu / base['cpu_seconds'] - 1):>7.1f}% "
            f"{epochs:>9.1f} {100 * (epochs / base['epochs_seconds'] - 1):>7.1f}% "
            f"{outside:>10.1f} {100 * (outside - base['outside_seconds']) / base['wall_seconds']:>17.1f}%"
        )
    print(json.dumps({"rows": rows, "medians": medians, "load": load}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="mlflow,tensorboard,wandb")
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1, help="Runs open side by side, each logging every epoch.")
    parser.add_argument("--pause", type=float, default=0.0, help="Seconds between epochs (the training's stand-in).")
    parser.add_argument("--compare", metavar="STORE", help="Measure whole compare-e2e commands instead (see above).")
    parser.add_argument("--repeats", type=int, default=3, help="With --compare: runs of each variant.")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one backend
    args, extra = parser.parse_known_args()
    if args.compare:
        compare(args, [a for a in extra if a != "--"])
        return
    if extra:
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            print(json.dumps(measure(args.one, epochs=args.epochs, runs=args.runs, pause=args.pause, out=out)))
        return
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    rows = []
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as home:
            env.update({key: home for key in ("WANDB_DIR", "WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")})
            cmd = [sys.executable, __file__, "--one", backend, *sys.argv[1:]]
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if done.returncode:
            raise SystemExit(f"{backend}: exit code {done.returncode}\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    header = (
        f"{'backend':<12} {'import s':>9} {'first runs s':>13} {'epochs s':>9} {'end s':>7} {'per epoch ms':>13} "
        f"{'CPU s':>7}"
    )
    print(
        f"{args.epochs} epochs x {args.runs} run(s) side by side, {args.pause} s between epochs, {os.cpu_count()} CPUs"
    )
    print(header)
    for r in rows:
        print(
            f"{r['backend']:<12} {r['import_seconds']:>9.2f} {r['first_runs_seconds']:>13.2f} "
            f"{r['epochs_seconds']:>9.2f} {r['end_seconds']:>7.2f} {r['per_epoch_ms']:>13.3f} {r['cpu_seconds']:>7.2f}"
        )
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
