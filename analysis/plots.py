"""Plots shared by several stages: input variables, signal against background."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from analysis.naming import to_variable_name
from analysis.outputs import atomic_path

KIND_COLOURS = {"signal": "#d62728", "background": "#1f77b4", "data": "black"}


def axis_label(variable: str) -> str:
    """Return the basf2 name of a branch with its unit, when the name implies one.

    Masses, energies and momenta are in GeV and squared masses in GeV^2, as
    basf2 writes them.
    """
    name = to_variable_name(variable)
    if "Mass2" in name or name in ("M2", "m2Recoil"):
        return f"{name} [GeV$^2$]"
    energy_like = ("Momentum", "Energy", "deltaE", "Mbc", "(p)", ", p)", "(E)")
    if name in ("M", "E", "p", "pt", "InvM") or any(t in name for t in energy_like):
        return f"{name} [GeV]"
    return name


def plot_input_variables(
    tables: Mapping[str, pl.DataFrame],
    kinds: Mapping[str, str],
    variables: Sequence[str],
    path: str | Path,
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Plot each input variable for signal and background, normalised to unit area.

    Background samples are stacked by their physics weight before
    normalising, so the background shape is the luminosity-weighted mixture.
    Data are drawn outside the signal region only if the table has an
    ``in_region`` column; otherwise they are left out (blinding).
    """
    labels = labels or {}
    n = len(variables)
    columns = min(4, n)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.0 * columns, 3.2 * rows))
    axes_list = np.atleast_1d(axes).ravel()
    for ax, variable in zip(axes_list, variables, strict=False):
        groups: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        for name, table in tables.items():
            kind = kinds[name]
            if kind == "data" or table.height == 0:
                continue
            values = table[variable].cast(pl.Float64).to_numpy()
            weights = table["weight"].to_numpy()
            finite = np.isfinite(values)
            entry = groups.setdefault(kind, ([], []))
            entry[0].append(values[finite])
            entry[1].append(weights[finite])
        everything = [v for vs, _ in groups.values() for v in vs]
        if not everything or not np.concatenate(everything).size:
            ax.set_visible(False)
            continue
        joined = np.concatenate(everything)
        low, high = np.percentile(joined, [0.5, 99.5])
        if low == high:
            low, high = low - 0.5, high + 0.5
        bins = np.linspace(low, high, 41)
        for kind, (value_parts, weight_parts) in groups.items():
            x = np.concatenate(value_parts)
            w = np.concatenate(weight_parts)
            if w.sum() <= 0:
                continue
            ax.hist(
                x,
                bins=bins,
                weights=w / w.sum(),
                histtype="step",
                linewidth=1.6,
                color=KIND_COLOURS.get(kind, "grey"),
                label=kind,
            )
        ax.set_xlabel(axis_label(variable))
        ax.set_ylabel("fraction of candidates")
        ax.legend(frameon=False, fontsize=8)
    for ax in axes_list[n:]:
        ax.set_visible(False)
    fig.suptitle("BDT input variables: signal vs background (unit area)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return Path(path)
