"""Figures of a report, with one color per method across every figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.colors
import matplotlib.pyplot as plt
import numpy as np

from lplgrad.report.metrics import mean_std
from lplgrad.strategies import list_strategies, strategy_class

# Accuracy per method: {method: {labeled size: [accuracy of each trial]}}
Curves = dict[str, dict[int, list[float]]]


def method_color(name: str) -> tuple[float, ...]:
    """The same color for a method in every figure and every report: the one its strategy declares
    (``Strategy.color``), else (a strategy no longer registered, a custom name) a tab10 color
    derived from the name's characters."""
    declared = strategy_class(name).color if name in list_strategies() else None
    if declared is not None:
        return tuple(matplotlib.colors.to_rgba(declared))
    return tuple(plt.get_cmap("tab10")(sum(map(ord, name)) % 10))


def learning_curves(curves: Curves, path: Path, title: str) -> None:
    """Mean test accuracy vs labeled images with a +/- 1 std band per method (the paper's Figs. 3-5)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, by_size in curves.items():
        sizes = sorted(by_size)
        mean, std = (100 * np.array(column) for column in zip(*(mean_std(by_size[s]) for s in sizes), strict=True))
        color = method_color(method)
        ax.plot(sizes, mean, marker="o", markersize=3, label=method, color=color)
        ax.fill_between(sizes, mean - std, mean + std, color=color, alpha=0.15)
    ax.set_xlabel("labeled images")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def grouped_bars(
    values: dict[str, list[float]], labels: list[str], path: Path, title: str, ylabel: str, xlabel: str = "class"
) -> None:
    """One bar per (label, method), methods side by side (per-class accuracy, Fig. 8; query histograms)."""
    methods = list(values)
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.6 * len(labels) * max(1, len(methods)) / 2), 4.5))
    for i, method in enumerate(methods):
        ax.bar(
            x + (i - (len(methods) - 1) / 2) * width, values[method], width, label=method, color=method_color(method)
        )
    ax.set_xticks(x, labels, rotation=45 if max(map(len, labels)) > 3 else 0, ha="right" if labels else "center")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a bar
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def tsne_grid(
    panels: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]],
    rounds_labeled: dict[int, int],
    classes: list[str],
    path: Path,
    title: str,
) -> None:
    """t-SNE maps of test features, rows = methods, columns = rounds, points colored by true class (Fig. 6)."""
    methods = list(dict.fromkeys(m for m, _ in panels))
    rounds = sorted({r for _, r in panels})
    fig, axes = plt.subplots(
        len(methods), len(rounds), figsize=(3.2 * len(rounds) + 1.5, 3.0 * len(methods)), squeeze=False
    )
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for i, method in enumerate(methods):
        for j, round_index in enumerate(rounds):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if (method, round_index) not in panels:
                ax.set_visible(False)
                continue
            points, labels = panels[(method, round_index)]
            ax.scatter(points[:, 0], points[:, 1], c=[cmap(int(k) % cmap.N) for k in labels], s=3, linewidths=0)
            ax.set_title(f"{method}, {rounds_labeled[round_index]} labeled", fontsize=9, color=method_color(method))
    handles = [
        plt.Line2D([], [], marker="o", linestyle="", color=cmap(k % cmap.N), label=name)
        for k, name in enumerate(classes[:20])
    ]
    fig.legend(handles=handles, loc="center right", fontsize=8, title="true class")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1 - 1.3 / fig.get_figwidth(), 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def confidence_histograms(values: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> None:
    """Max-softmax confidence of labeled vs unlabeled training images, one panel per method (Fig. 7)."""
    methods = list(values)
    columns = min(3, len(methods))
    rows = -(-len(methods) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.0 * columns, 3.0 * rows), squeeze=False)
    bins = np.linspace(0, 1, 26)
    for k, method in enumerate(methods):
        ax = axes[k // columns][k % columns]
        labeled, unlabeled = values[method]
        ax.hist(unlabeled, bins=bins, density=True, alpha=0.5, color="gray", label="unlabeled")
        ax.hist(labeled, bins=bins, density=True, alpha=0.6, color=method_color(method), label="labeled")
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("max softmax probability")
        ax.set_ylabel("density")
        ax.legend(fontsize=7)
    for k in range(len(methods), rows * columns):
        axes[k // columns][k % columns].set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


MIN_BIN = 10  # images: a bin with fewer is left out of the reliability diagram (its accuracy is noise)


def reliability_diagram(
    bins: dict[str, tuple[list[float | None], list[float | None], list[int]]], path: Path, title: str
) -> None:
    """Accuracy vs mean confidence per confidence bin, one line per method, and the diagonal of a
    perfectly calibrated model (Guo et al. 2017, Fig. 1). ``bins[method] = (confidence, accuracy,
    images)``; bins of fewer than ``MIN_BIN`` images are left out."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfectly calibrated")
    for method, (confidence, accuracy, counts) in bins.items():
        points = [
            (c, a)
            for c, a, n in zip(confidence, accuracy, counts, strict=True)
            if c is not None and a is not None and n >= MIN_BIN
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", markersize=4, label=method, color=method_color(method))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean confidence in the bin")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
