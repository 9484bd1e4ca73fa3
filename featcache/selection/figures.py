"""The figures of a selection: the training split in two dimensions with the chosen images marked, and a contact
sheet of the chosen images with their masks outlined."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from featcache.results.figures import save_figure
from featcache.results.overlays import RED, outline

#: The contact sheet shows at most this many images (the first chosen), in rows of `SHEET_COLUMNS`.
SHEET_MAX, SHEET_COLUMNS = 64, 8
#: Up to this budget each chosen point is numbered on the scatter; beyond, its colour alone gives its rank.
NUMBERED = 40


def pca_2d(x: torch.Tensor) -> tuple[np.ndarray, tuple[float, float]]:
    """The first two principal components of the rows of ``x`` ``[n, d]``: coordinates ``[n, 2]`` and the share of
    the variance each explains. Exact (an SVD in float64 on the CPU), so the figure does not depend on the
    device or a random start."""
    xd = x.detach().to("cpu", torch.float64)
    centred = xd - xd.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    k = min(2, vh.shape[0])
    coords = torch.zeros(len(xd), 2, dtype=torch.float64)
    coords[:, :k] = centred @ vh[:k].T
    variance = s.pow(2)
    share = (variance[:2] / variance.sum()).tolist() if float(variance.sum()) > 0 else [0.0, 0.0]
    share += [0.0] * (2 - len(share))
    return coords.numpy(), (share[0], share[1])


def plot_selection_scatter(x: torch.Tensor, order: list[int], *, path: Path, title: str) -> None:
    """Every candidate (rows of the pooled features ``x`` ``[n, d]``) on its first two principal components, grey;
    the chosen (``order``: positions in ``x``, in the order chosen) coloured by rank and, up to `NUMBERED`,
    numbered from 1."""
    coords, (pc1, pc2) = pca_2d(x)
    chosen = np.asarray(order, dtype=np.int64)
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    ax.scatter(coords[:, 0], coords[:, 1], s=8, color="0.75", label=f"training split ({len(coords)})", linewidths=0)
    points = ax.scatter(
        coords[chosen, 0],
        coords[chosen, 1],
        s=60,
        c=np.arange(1, len(chosen) + 1),
        cmap="viridis",
        edgecolors="black",
        linewidths=0.6,
        label=f"chosen ({len(chosen)})",
        zorder=3,
    )
    if len(chosen) <= NUMBERED:
        for rank, i in enumerate(chosen, start=1):
            ax.annotate(str(rank), coords[i], xytext=(4, 4), textcoords="offset points", fontsize=7, zorder=4)
    fig.colorbar(points, ax=ax, label="rank in the order chosen")
    ax.set_xlabel(f"principal component 1 ({100 * pc1:.1f} % of the variance)")
    ax.set_ylabel(f"principal component 2 ({100 * pc2:.1f} % of the variance)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_contact_sheet(images: torch.Tensor, masks: torch.Tensor, labels: list[str], *, path: Path, title: str) -> None:
    """The chosen images ``[k, 3, S, S]`` uint8 in the order chosen, each with its mask ``[k, S, S]`` outlined
    red and its label (rank and id) above it; at most `SHEET_MAX`, the first chosen."""
    shown = min(len(labels), SHEET_MAX)
    columns = min(SHEET_COLUMNS, shown)
    rows = math.ceil(shown / columns)
    fig = Figure(figsize=(1.8 * columns, 1.9 * rows + 0.4))
    axes = np.array(fig.subplots(rows, columns, squeeze=False))
    thickness = max(1, round(images.shape[-1] / 100))
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k >= shown:
            continue
        picture = images[k].permute(1, 2, 0).numpy().copy()
        picture[outline(masks[k].numpy().astype(bool), thickness)] = RED
        ax.imshow(picture)
        ax.set_title(labels[k], fontsize=7)
    more = f" (the first {shown} of {len(labels)})" if shown < len(labels) else ""
    fig.suptitle(f"{title}{more}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
