"""Commands that train: pretrain, train-decoder, compare-e2e, demo."""

from __future__ import annotations

from pathlib import Path

import typer

from featcache.cli.app import CUDA_GRAPHS, context
from featcache.cli.config_file import CONFIG, reporting
from featcache.core.runtime import out_console
from featcache.track import TRACK_HELP

#: ``--track`` on every training command; the metavar keeps the help's columns within 80 characters.
TRACK = typer.Option([], "--track", metavar="<name>", help=TRACK_HELP)


def pretrain(
    *,
    data: Path = typer.Argument(..., help="Dataset folder (its training split trains, its validation split selects)."),
    out: Path = typer.Option(..., "--out", help="ENCODER.pt (figures and history are written beside it)."),
    arch: str = typer.Option("vit_b_16", help="vit_b_16 | vit_s_16 | vit_ti_16 | vit_mini | vit_micro."),
    init: str = typer.Option(
        "imagenet",
        help=(
            "imagenet | random | a torchvision state dict | a featcache encoder "
            "checkpoint | timm:NAME (any timm model)."
        ),
    ),
    encoder_weights: str | None = typer.Option(
        None,
        help=(
            "With --init timm:NAME: random | FILE (safetensors or "
            "a state dict); default: timm's pretrained weights (its cache, else downloaded)."
        ),
    ),
    model_kwargs: list[str] = typer.Option(
        [], help=("With --init timm:NAME: a timm.create_model option KEY=VALUE (repeatable), e.g. depth=6.")
    ),
    seed: int = typer.Option(0, help="Seed of the random init, batch order and noise."),
    epochs: int = typer.Option(32),
    batch_size: int = typer.Option(40),
    lr: float = typer.Option(2e-5, help="Adam learning rate."),
    noise_std: float = typer.Option(0.1, help="Gaussian noise std, pixel range [0, 1]."),
    image_size: int = typer.Option(224, help="Training resolution (a multiple of 16)."),
    workers: int = typer.Option(0, help="DataLoader workers for the one-off image loading."),
    checkpoint_seconds: float = typer.Option(
        60.0, help="Least seconds between two resume-state writes (0: every epoch)."
    ),
    device: str | None = typer.Option(None, help="Overrides the global --device."),
    track: list[str] = TRACK,
    config: Path | None = CONFIG,
    command: typer.Context,
) -> None:
    """Self-supervised denoising pretraining of the encoder (the study's VE + RD)."""
    from featcache.cli.parsing import parse_model_kwargs
    from featcache.train.pretrain import PretrainConfig
    from featcache.train.pretrain import pretrain as run_pretrain

    cfg = PretrainConfig(
        data=data,
        out=out,
        arch=arch,
        init=init,
        seed=seed,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        noise_std=noise_std,
        image_size=image_size,
        workers=workers,
        init_weights=encoder_weights,
        model_kwargs=parse_model_kwargs(model_kwargs),
    )
    ctx = context(device, checkpoint_seconds=checkpoint_seconds, **reporting(command, track, device=device))
    report = run_pretrain(cfg, ctx=ctx)
    out_console.print(
        f"wrote {report.out}: best epoch {report.best_epoch} (validation MSE {report.best_val_loss:.5f}), "
        f"{report.seconds:.1f} s of training; figures {', '.join(str(f) for f in report.figures)}"
    )


def train_decoder(
    *,
    store: str = typer.Argument(..., help="A complete store (featcache extract)."),
    size: int = typer.Option(..., help="Training images (a seeded subset of the training split)."),
    seeds: str = typer.Option("0,1,2", help="Seeds, e.g. 0,1,2 or 0-4: one run (subset, init, order) each."),
    augment: str = typer.Option("exact", help="exact (stored flip views) | feature-flip (approximate) | none."),
    decoder: str = typer.Option("sd", help="sd (the study's decoder) | linear (a per-patch linear probe)."),
    epochs: int | None = typer.Option(None, help="Default: the study's protocol for --size."),
    batch_size: int | None = typer.Option(None, help="Default: the study's protocol for --size."),
    val_size: int | None = typer.Option(None, help="Default: the study's protocol for --size."),
    lr: str = typer.Option(
        "2e-4",
        help="SGD learning rate (momentum 0.9), or a list (1e-4,2e-4,5e-4): a grid, every value x --weight-decay "
        "x --seeds, grouped on CUDA, each in OUT/lr-X_wd-Y/seed-K, with the choice on validation per seed.",
    ),
    weight_decay: str = typer.Option("1e-4", help="SGD weight decay, or a list (1e-4,1e-3): a grid with --lr."),
    eval_size: str = typer.Option("224", help="224 (the store's size) | original (logits upsampled to each image)."),
    out: Path | None = typer.Option(
        None, help="RUN_DIR (default runs/<store>-<C|Tk>-<decoder>-n<size>[-<selection>])."
    ),
    encoder: str | None = typer.Option(
        None,
        help=(
            "If given, the encoder you expect the store to hold (imagenet "
            "| random | FILE | timm:NAME); refused if it differs."
        ),
    ),
    layers: str | None = typer.Option(
        None,
        help=(
            "The stored blocks the decoder reads, e.g. -1 or 9,12 "
            "(concatenated on channels); default: every stored block."
        ),
    ),
    checkpoint_seconds: float = typer.Option(
        60.0, help="Least seconds between two resume-state writes (0: every epoch)."
    ),
    grouped: bool | None = typer.Option(
        None,
        "--grouped/--sequential",
        help="Train the seeds (and a grid's combinations) together as one grouped network (same results); "
        "default: grouped on CUDA; on the CPU seeds one by one, where grouping them measured slower, and a grid's "
        "combinations of each seed grouped, where that measured faster.",
    ),
    cuda_graphs: bool = CUDA_GRAPHS,
    device: str | None = typer.Option(None, help="Overrides the global --device."),
    train_blocks: int = typer.Option(
        0,
        help="k: also train the encoder's last k blocks and final norm from the store's cached tokens (mode Tk; the "
        "store extracted with --tail-tokens K >= k); 0: the decoder alone (mode C).",
    ),
    lora_rank: int | None = typer.Option(
        None,
        help="LoRA adapters of this rank on the trained blocks' linear layers (peft: pip install 'featcache[peft]') "
        "train instead of the blocks' own weights; torchvision encoders: q/k/v and output of the attention, and "
        "the MLP.",
    ),
    lora_alpha: float | None = typer.Option(
        None, help="LoRA scaling alpha (adapters scaled by alpha / rank); default: the rank."
    ),
    selection: str | None = typer.Option(
        None,
        help="Train on the images a label-selection strategy chooses from the store's features instead of a random "
        "subset: random (the seeded subsets, recorded) | kcenter | typiclust | probcover; the seed is its randomness.",
    ),
    selection_file: Path | None = typer.Option(
        None, help="Train on the first --size ids of this file (one per line, e.g. from featcache select), every seed."
    ),
    track: list[str] = TRACK,
    config: Path | None = CONFIG,
    command: typer.Context,
) -> None:
    """Train a decoder straight from the store, once per seed (and learning rate and weight decay), and summarise
    over seeds."""
    from featcache.cli.parsing import parse_layers, parse_numbers, parse_seeds
    from featcache.results.tables import grid_table, seeds_table
    from featcache.train.config import SweepConfig
    from featcache.train.sweep import train_decoder as run_train

    mode = f"T{train_blocks}" if train_blocks > 0 else "C"
    label = "-file" if selection_file is not None else f"-{selection}" if selection else ""
    cfg = SweepConfig(
        store=store,
        out=out or Path("runs") / f"{Path(store.rstrip('/')).stem}-{mode}-{decoder}-n{size}{label}",
        size=size,
        seeds=tuple(parse_seeds(seeds)),
        augment=augment,
        decoder=decoder,
        epochs=epochs,
        batch_size=batch_size,
        val_size=val_size,
        lrs=tuple(parse_numbers(lr, "--lr")),
        weight_decays=tuple(parse_numbers(weight_decay, "--weight-decay")),
        eval_size=eval_size,
        layers=parse_layers(layers) if layers else None,
        encoder=encoder,
        grouped=grouped,
        train_blocks=train_blocks,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        selection=selection,
        selection_file=selection_file,
    )
    ctx = context(
        device,
        ranks=True,
        cuda_graphs=cuda_graphs,
        checkpoint_seconds=checkpoint_seconds,
        **reporting(command, track, device=device, out=cfg.out),
    )
    sweep = run_train(cfg, ctx=ctx)
    if not sweep.summary:  # a torchrun rank other than 0: rank 0 reports
        return
    if cfg.grid:
        title = (
            f"{cfg.mode} mode, {size} training images, {len(sweep.summary['grid'])} (lr, weight decay) x "
            f"{len(cfg.seeds)} seeds"
        )
        out_console.print(grid_table(sweep.summary, f"{title} ({augment} flips): mean ± std over seeds"))
    else:
        chosen = f" chosen by {cfg.selection_label}" if cfg.selection_label else ""
        title = f"{cfg.mode} mode, {size} training images{chosen}, {len(sweep.results)} seeds ({augment} flips)"
        out_console.print(seeds_table(sweep.results, sweep.summary, title))
    out_console.print(f"runs and summary.json in {sweep.out}")


def compare_e2e(
    *,
    store: str = typer.Argument(..., help="A complete store whose encoder is the self-supervised one."),
    encoder: str | None = typer.Option(
        None,
        help=(
            "Default: the store's own encoder (from its provenance); must "
            "match it (imagenet | random | FILE | timm:NAME)."
        ),
    ),
    e_init: str | None = typer.Option(
        None,
        help=(
            "imagenet | random | PATH | timm:NAME (for the store's "
            "architecture); default: the weights the store's encoder started from."
        ),
    ),
    layers: str | None = typer.Option(
        None, help=("The stored blocks every mode reads, e.g. -1 or 9,12; default: every stored block.")
    ),
    sizes: str = typer.Option("2000,160,80,40,20,10", help="Training-set sizes."),
    seeds: str = typer.Option("0,1,2", help="Seeds, e.g. 0,1,2 or 0-4."),
    modes: str = typer.Option(
        "E,Es,F,FI,C",
        help="Any of E, Es, F, FI, C, and Tk / Pk: the encoder's last k blocks trained from the store's cached tokens "
        "(T2; the store extracted with --tail-tokens K >= k) or from the images (P2).",
    ),
    epochs: int | None = typer.Option(None, help="Default: the study's protocol per size."),
    batch_size: int | None = typer.Option(None, help="Default: the study's protocol per size."),
    val_size: int | None = typer.Option(None, help="Default: the study's protocol per size."),
    lr: str = typer.Option(
        "2e-4",
        help="SGD learning rate of every mode (the study's 2e-4), or a list (2e-4,1e-4,5e-4): the --grid-modes train "
        "at each, the others at the first; the report adds the grid.",
    ),
    grid_modes: str = typer.Option("C", help="The modes that train every learning rate of a --lr list."),
    augment: str = typer.Option(
        "exact",
        help="exact (image flips / stored views) | feature-flip (C approximates, encoder modes flip images) | none.",
    ),
    out: Path = typer.Option(
        Path("runs/compare-e2e"),
        help="REPORT_DIR. The same configuration resumes there; another is refused (see --overwrite).",
    ),
    cuda_graphs: bool = CUDA_GRAPHS,
    device: str | None = typer.Option(None, help="Overrides the global --device."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an earlier sweep of another configuration in --out (its files removed)."
    ),
    study_lines: bool = typer.Option(
        False,
        "--study-lines",
        help="Show the study's published figures in the report whatever the store (by default only for "
        "ISIC 2017's official splits with a ViT-B/16 at 224 px).",
    ),
    lora_rank: int | None = typer.Option(
        None,
        help="LoRA adapters of this rank on the linear layers of the blocks the Tk and Pk modes train (peft: pip "
        "install 'featcache[peft]') train instead of the blocks' own weights; torchvision encoders: q/k/v and output "
        "of the attention, and the MLP.",
    ),
    lora_alpha: float | None = typer.Option(
        None, help="LoRA scaling alpha (adapters scaled by alpha / rank); default: the rank."
    ),
    selections: str = typer.Option(
        "random",
        help="Label selections to compare, e.g. random,kcenter,typiclust,probcover: every mode, size and seed trains "
        "on each one's chosen images too (random, the baseline, always); the report pairs each with random.",
    ),
    selection_file: Path | None = typer.Option(
        None, help="Also train on a file of ids (size N: its first N, every seed), compared with random as 'file'."
    ),
    track: list[str] = TRACK,
    config: Path | None = CONFIG,
    command: typer.Context,
) -> None:
    """Train every mode on the same subsets and protocol; write report.md with figures and tables."""
    from featcache.cli.parsing import parse_layers, parse_list, parse_numbers, parse_seeds
    from featcache.results.selection_report import baseline_runs, selection_table
    from featcache.results.tables import compare_table
    from featcache.train.compare import compare_e2e as run_compare
    from featcache.train.config import CompareConfig

    cfg = CompareConfig(
        store=store,
        out=out,
        encoder=encoder,
        e_init=e_init,
        sizes=parse_list(sizes, "--sizes"),
        seeds=tuple(parse_seeds(seeds)),
        modes=parse_list(modes, "--modes", str),
        epochs=epochs,
        batch_size=batch_size,
        val_size=val_size,
        lrs=tuple(parse_numbers(lr, "--lr")),
        augment=augment,
        layers=parse_layers(layers) if layers else None,
        grid_modes=parse_list(grid_modes, "--grid-modes", str),
        overwrite=overwrite,
        study_lines=study_lines,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        selections=parse_list(selections, "--selections", str),
        selection_file=selection_file,
    )
    ctx = context(device, ranks=True, cuda_graphs=cuda_graphs, **reporting(command, track, device=device))
    result = run_compare(cfg, ctx=ctx)
    if result.report is None:  # a torchrun rank other than 0: rank 0 reports
        return
    # A grid's other learning rates are in the report; the modes compare at the first, on random's subsets.
    compared = [r for r in result.results if r.lr == cfg.lrs[0]]
    out_console.print(compare_table(baseline_runs(compared)))
    if cfg.compares_selections:
        out_console.print(selection_table(compared))
    out_console.print(f"report: {result.report}")


def demo(
    out: Path = typer.Option(Path("featcache-demo"), help="Folder for the data, encoder, store and report."),
    data: Path | None = typer.Option(
        None, help="A real dataset instead of synthetic images (e.g. ISIC 2017 at 256 px)."
    ),
    device: str | None = typer.Option(None, help="Overrides the global --device."),
) -> None:
    """synth -> pretrain (small ViT) -> extract (flips) -> compare-e2e (E, F, C) -> report, in minutes on a CPU."""
    from featcache.demo import DemoConfig, run_demo
    from featcache.results.tables import compare_table

    cfg = DemoConfig(out=out, data=data)
    result = run_demo(cfg, ctx=context(device))
    out_console.print(compare_table(result.comparison.results))
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.steps.items())
    out_console.print(f"demo finished in {result.seconds:.0f} s ({steps}); shortened settings: {cfg.shortenings()}")
    out_console.print(f"report: {result.comparison.report}")
