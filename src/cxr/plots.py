"""PNG pictures with matplotlib (headless), readable without a browser."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cxr.outputs import atomic_path


def pyplot():
    """matplotlib's pyplot on the headless Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_history(rows: list[dict], path: str | os.PathLike, title: str) -> Path:
    """Loss and AUROC per epoch, train beside val."""
    plt = pyplot()
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [r["loss"] for r in rows], "o-", label="train (weighted)")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="binary cross-entropy", title="loss")
    ax_auc.plot(epochs, [r["auroc"] for r in rows], "o-", label="train (augmented, running)")
    ax_auc.plot(epochs, [r["val_auroc"] for r in rows], "o-", label="val (mean over findings)")
    ax_auc.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax_auc.set(xlabel="epoch", ylabel="AUROC", title="AUROC", ylim=(0.3, 1.0))
    for ax in (ax_loss, ax_auc):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    pyplot().close(fig)
    return path


def plot_roc(y: np.ndarray, p: np.ndarray, names: list[str], path, title: str) -> Path:
    """One ROC curve per class with positives, AUROC in the legend."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    for j, name in enumerate(names):
        if 0 < y[:, j].sum() < len(y):
            fpr, tpr, _ = roc_curve(y[:, j], p[:, j])
            ax.plot(fpr, tpr, lw=1, label=f"{name} {roc_auc_score(y[:, j], p[:, j]):.2f}")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(fontsize=6, loc="lower right")
    return _save(fig, path)


def plot_pr(y: np.ndarray, score: np.ndarray, path, title: str) -> Path:
    from sklearn.metrics import precision_recall_curve

    plt = pyplot()
    precision, recall, _ = precision_recall_curve(y, score)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(recall, precision)
    ax.axhline(float(np.mean(y)), color="grey", ls="--", lw=0.8, label="prevalence")
    ax.set(xlabel="recall", ylabel="precision", title=title, ylim=(0, 1.02))
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_calibration(curve: list[dict], ece: float, path, title: str, positive: str = "abnormal",
                     before: dict | None = None) -> Path:
    """The reliability curve (and, given ``before``'s ``reliability`` and ``ece``, the one before calibration)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="perfect")
    if before:
        ax.plot([c["mean_predicted"] for c in before["reliability"]],
                [c["fraction_positive"] for c in before["reliability"]], "s:", color="grey",
                label=f"before calibration (ECE {before['ece']:.3f})")
    ax.plot([c["mean_predicted"] for c in curve], [c["fraction_positive"] for c in curve], "o-",
            label=f"model (ECE {ece:.3f})")
    ax.set(xlabel="mean predicted probability", ylabel=f"observed share {positive}", title=title,
           xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_triage(curve: list[dict], threshold: float, path, title: str,
                names: tuple[str, str] = ("abnormal", "normal")) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot([c["positives_missed"] for c in curve], [c["negatives_skipped"] for c in curve], "-")
    ax.set(xlabel=f"share of {names[0]} exams missed", ylabel=f"share of {names[1]} exams skipped",
           title=f"{title} (threshold {threshold:.3f})", xlim=(0, 1), ylim=(0, 1))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion(c: dict, path, title: str, names: tuple[str, str] = ("abnormal", "normal")) -> Path:
    plt = pyplot()
    matrix = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    fig, ax = plt.subplots(figsize=(3.6, 3.2))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=names[::-1], yticklabels=names[::-1],
           xlabel="predicted", ylabel="actual", title=title)
    return _save(fig, path)


def plot_label_shares(summary: dict, path, title: str) -> Path:
    """Share of each split's images carrying each label, the splits side by side: a split that
    lost a finding's positives shows as a missing bar."""
    plt = pyplot()
    splits = list(summary)
    labels = list(summary[splits[0]]["positives"])
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(labels) + 1.2))
    height = 0.8 / len(splits)
    for k, name in enumerate(splits):
        s = summary[name]
        shares = [s["positives"][c] / s["images"] if s["images"] else 0 for c in labels]
        ax.barh(np.arange(len(labels)) + k * height, shares, height, label=f"{name} ({s['images']} images)")
    ax.set_yticks(np.arange(len(labels)) + height * (len(splits) - 1) / 2, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="share of the split's images", title=title)
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_age_sex(ages: np.ndarray, sexes: np.ndarray, split: np.ndarray, path, title: str,
                 splits: tuple[str, ...] = ("train", "val", "test")) -> Path:
    """Age histograms (5-year bins) per sex, one panel per split; unknown ages left out."""
    plt = pyplot()
    ages, sexes, split = np.asarray(ages, dtype=np.float64), np.asarray(sexes), np.asarray(split)
    bins = np.arange(0, 105, 5)
    fig, axes = plt.subplots(1, len(splits), figsize=(3.4 * len(splits), 3), sharex=True)
    for ax, name in zip(np.atleast_1d(axes), splits):
        for sex in ("F", "M"):
            chosen = ages[(split == name) & (sexes == sex) & ~np.isnan(ages)]
            ax.hist(chosen, bins=bins, histtype="step", lw=1.5, label=f"{sex} ({len(chosen)})")
        ax.set(xlabel="age (years)", ylabel="images", title=name)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)
