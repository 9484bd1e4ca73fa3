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
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="mlflow,tensorboard,wandb")
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1, help="Runs open side by side, each logging every epoch.")
    parser.add_argument("--pause", type=float, default=0.0, help="Seconds between epochs (the training's stand-in).")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one backend
    args = parser.parse_args()
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
