"""Plots chosen from what the sweep varied: each is drawn only when its x axis varies over the finished jobs.

PSNR against the noise sigma (one line per architecture and attack), PSNR against the batch size, attack time per
attack (log scale), PSNR against the rank analysis' RA index, PSNR against the attacked model's accuracy. The Agg
canvas is used directly, as in `rgap_bench.logging.files`, so no display is needed and pyplot's state is untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rgap_bench.logging import atomic_write
from rgap_bench.report.tables import group_keys

SIZE = (5.0, 3.4)


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Figure, object]:
    fig = Figure(figsize=SIZE, dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _finished(frame: pd.DataFrame, x: str) -> pd.DataFrame:
    done = frame[(frame["status"] == "ok") & frame[x].notna() & frame["psnr"].notna()]
    return done.astype({x: float, "psnr": float}) if not done.empty else done


def _psnr_lines(frame: pd.DataFrame, x: str, title: str, xlabel: str, symlog: bool = False) -> Figure | None:
    done = _finished(frame, x)
    if done.empty or done[x].nunique() < 2:
        return None
    fig, ax = _figure(title, xlabel, "PSNR (dB), mean ± std")
    for (model, attack), jobs in done.groupby(["model", "attack"], sort=True):
        stats = jobs.groupby(x)["psnr"].agg(["mean", "std"]).reset_index()
        ax.errorbar(stats[x], stats["mean"], yerr=stats["std"].fillna(0), marker="o", capsize=3,
                    label=f"{model}, {attack}")  # fmt: skip
    if symlog:  # sigma = 0 (no noise) stays on the axis
        positive = done.loc[done[x] > 0, x]
        ax.set_xscale("symlog", linthresh=float(positive.min()) if not positive.empty else 1.0)
    else:
        ax.set_xscale("log", base=2)
    ax.legend(fontsize=7)
    return fig


def psnr_vs_sigma(frame: pd.DataFrame) -> Figure | None:
    return _psnr_lines(frame, "sigma", "Reconstruction vs noise", "noise sigma (symlog)", symlog=True)


def psnr_vs_batch(frame: pd.DataFrame) -> Figure | None:
    return _psnr_lines(frame, "batch_size", "Reconstruction vs batch size", "batch size")


def time_per_attack(frame: pd.DataFrame) -> Figure | None:
    done = frame[(frame["status"] == "ok") & frame["attack_time_s"].notna()]
    if done.empty:
        return None
    fig, ax = _figure("Attack time", "attack", "attack time (s), log scale")
    attacks = sorted(done["attack"].unique())
    ax.boxplot([done.loc[done["attack"] == a, "attack_time_s"].astype(float) for a in attacks], tick_labels=attacks)
    ax.set_yscale("log")
    return fig


def _scatter(frame: pd.DataFrame, x: str, title: str, xlabel: str) -> Figure | None:
    done = _finished(frame, x)
    if done.empty or done[x].nunique() < 2:
        return None
    fig, ax = _figure(title, xlabel, "PSNR (dB)")
    for attack, jobs in done.groupby("attack", sort=True):
        ax.scatter(jobs[x], jobs["psnr"], label=str(attack), alpha=0.8)
    ax.legend(fontsize=7)
    return fig


def rank_vs_psnr(frame: pd.DataFrame) -> Figure | None:
    return _scatter(frame, "ra_index", "Rank analysis vs leakage", "RA index (0 = fully determined)")


def accuracy_vs_psnr(frame: pd.DataFrame) -> Figure | None:
    """Each point labelled with its design (the swept keys other than the attack and the replicates), so a secure
    design shows as low PSNR at the accuracy of the others."""
    measured = sorted(frame["accuracy_on"].dropna().unique()) if "accuracy_on" in frame else []
    fig = _scatter(frame, "accuracy", "Accuracy vs leakage", f"model accuracy ({'; '.join(measured) or '-'})")
    design = [k for k in group_keys(frame) if k != "attack"]
    if fig is not None and design:
        ax = fig.axes[0]
        for _, job in _finished(frame, "accuracy").iterrows():
            label = ", ".join(str(job[k]) for k in design)
            ax.annotate(label, (job["accuracy"], job["psnr"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    return fig


PLOTS: dict[str, Callable[[pd.DataFrame], Figure | None]] = {
    "psnr_vs_sigma": psnr_vs_sigma,
    "psnr_vs_batch_size": psnr_vs_batch,
    "attack_time": time_per_attack,
    "ra_index_vs_psnr": rank_vs_psnr,
    "accuracy_vs_psnr": accuracy_vs_psnr,
}


def save_plots(frame: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """Draw every plot the sweep supports into `out_dir/<name>.png`; returns name -> path."""
    saved = {}
    for name, draw in PLOTS.items():
        fig = draw(frame)
        if fig is None:
            continue
        path = Path(out_dir) / f"{name}.png"
        with atomic_write(path) as tmp:
            fig.savefig(tmp, format="png")
        saved[name] = path
    return saved
