"""Sections of the compare-e2e report that keep it honest: the encoders named as they are, training times as
medians with their spread and outliers beside the machine and its load, and the degenerate runs counted.

Each function returns markdown lines; `featcache.results.report` puts them in order.
"""

from __future__ import annotations

import numpy as np

from featcache.core.machine import Environment
from featcache.models.naming import encoder_words, weights_words
from featcache.models.record import EncoderRecord
from featcache.results.degenerate import DEGENERATE_RULE, count_degenerate, run_flags
from featcache.results.records import RunResults
from featcache.results.study import STUDY_SECONDS
from featcache.results.timing import OUTLIER_MARK, OUTLIER_NOTE, TimeSpread, environment_lines, time_spread

Groups = dict[tuple[str, int], list[RunResults]]


def encoder_lines(store_encoder: EncoderRecord, init_encoder: EncoderRecord | None) -> list[str]:
    """Which encoders the modes used, in words and by the hash of their weights."""
    used = "read by C, run by F and Es, its last blocks trained by Tk and Pk"
    lines = [f"- the store's encoder ({used}): {_named(store_encoder)};"]
    if init_encoder is None or init_encoder.same_weights(store_encoder):
        lines.append("- E and FI start from the same encoder (no other starting point recorded or given).")
    else:
        lines.append(
            f"- E and FI start from (`--e-init`, or what the store's encoder started from): {_named(init_encoder)}."
        )
    return ["Encoders:", "", *lines]


def _named(record: EncoderRecord) -> str:
    return f"{encoder_words(record)}, {weights_words(record)}"


def _study_seconds(size: int) -> list[str]:
    return [f"{STUDY_SECONDS[m][size]:.1f}" if size in STUDY_SECONDS[m] else "–" for m in ("E", "F")]


def time_section(
    groups: Groups,
    *,
    modes: list[str],
    sizes: list[int],
    extraction: tuple[float, str | None] | None,
    study: bool,
    environment: Environment | None,
) -> list[str]:
    """The study's Table 3, extended: per size and mode the median training seconds over seeds with their min–max,
    outliers marked; the extraction's share per C run (``extraction``: its seconds and device, shared among the C
    runs); E's % saved and speed-ups from the medians; the study's seconds in its setting; the machine and load."""
    n_c = sum(len(runs) for (mode, _), runs in groups.items() if mode == "C")
    share = extraction[0] / n_c if extraction and n_c else None
    lines = [
        "",
        "## Training time (the study's Table 3, extended)",
        "",
        "Seconds of training steps per run (device synchronised; validation, checkpoints and extraction excluded): "
        "the median over seeds and, in brackets, the fastest and slowest seed; % saved and speed-up against E, "
        "from the medians.",
        *([""] + environment_lines(environment) if environment else []),
    ]
    if any(r.group is not None for runs in groups.values() for r in runs):
        lines.append(
            "C runs of one size trained their seeds together as one grouped network; each run's time is the "
            "group's divided by the number of seeds."
        )
    if share is not None:
        lines.append(
            f"The store's extraction took {extraction[0]:.1f} s ({extraction[1]}); spread over the {n_c} C runs "
            f"that used it, that is {share:.2f} s per run, shown as *C+extract* (medians)."
        )
    spreads = {key: time_spread(runs) for key, runs in groups.items()}
    header = ["size", *modes] + (["C+extract"] if share is not None and "C" in modes else [])
    others = [m for m in modes if m != "E"] if "E" in modes else []
    header += [f"{m} saved vs E" for m in others] + [f"{m} speed-up" for m in others]
    header += ["study E", "study F"] if study else []
    lines += ["", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for s in sizes:
        t = {m: spreads[(m, s)] for m in modes}
        row = [str(s), *(t[m].cell() for m in modes)]
        if share is not None and "C" in modes:
            row.append(f"{t['C'].median + share:.2f}{t['C'].mark}")
        row += [f"{100 * (1 - t[m].median / t['E'].median):.1f} %{_either(t[m], t['E'])}" for m in others]
        row += [f"{t['E'].median / t[m].median:.1f}x{_either(t[m], t['E'])}" for m in others]
        row += _study_seconds(s) if study else []
        lines.append("| " + " | ".join(row) + " |")
    if any(spread.outliers for spread in spreads.values()):
        lines += ["", f"{OUTLIER_NOTE}; a ratio marked {OUTLIER_MARK} has one among the runs it compares."]
    return lines


def _either(a: TimeSpread, b: TimeSpread) -> str:
    return OUTLIER_MARK if a.outliers or b.outliers else ""


def degenerate_section(groups: Groups, *, modes: list[str], sizes: list[int]) -> list[str]:
    """How many runs per mode and size predicted degenerate test masks, and which, with why."""
    lines = ["", "## Degenerate runs", ""]
    flagged = [r for runs in groups.values() for r in runs if run_flags(r)]
    if not flagged:
        return [*lines, f"None ({DEGENERATE_RULE})."]
    lines += [
        f"Runs whose test predictions are degenerate ({DEGENERATE_RULE}): their IoU says little, and a mean over "
        "seeds that includes them mixes two kinds of result.",
        "",
        "| size | " + " | ".join(modes) + " |",
        "|---|" + "---|" * len(modes),
    ]
    for s in sizes:
        cells = [f"{count_degenerate(groups[(m, s)])} of {len(groups[(m, s)])}" for m in modes]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines.append("")
    for r in sorted(flagged, key=lambda r: (-r.size, modes.index(r.mode), r.seed)):
        lines.append(f"- {r.mode}, size {r.size}, seed {r.seed}: {'; '.join(run_flags(r))}")
    return lines


def iou_cell(runs: list[RunResults]) -> str:
    """``0.612 ± 0.020`` (– for one seed), with the number of degenerate runs among them."""
    ious = [r.test.iou for r in runs]
    std = f"{np.std(ious, ddof=1):.3f}" if len(ious) > 1 else "–"
    flagged = count_degenerate(runs)
    return f"{np.mean(ious):.3f} ± {std}" + (f" ({flagged} degenerate)" if flagged else "")
