"""Plots of the signal-shape fit, the signal region and the Punzi scans.

Every function draws with matplotlib's Agg backend, writes the figure
atomically (format from the file suffix, PNG when there is none) and returns
the path. Masses and Delta E are in GeV.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from numpy.typing import ArrayLike

from analysis.errors import ConfigError
from analysis.outputs import atomic_path
from analysis.signal_region import (
    AxisFit,
    EllipseRegion,
    Sidebands,
    SignalRegion,
    SignalShape,
    as_float_array,
    resolve_weights,
)

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from analysis.fom import JointScanResult, ScanResult

log = logging.getLogger(__name__)

SIGNAL_COLOUR = "#d62728"
BACKGROUND_COLOUR = "#1f77b4"
SIDEBAND_COLOUR = "#2ca02c"
AXIS_LABELS = {"mass": r"$M_{3\mu}$ [GeV]", "delta_e": r"$\Delta E$ [GeV]"}


def _save(fig: Figure, path: str | Path) -> Path:
    target = Path(path)
    file_format = target.suffix.lstrip(".") or "png"
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format=file_format, dpi=120)
    plt.close(fig)
    log.debug("wrote %s", target)
    return target


def _draw_axis_fit(
    ax_data: Axes, ax_pull: Axes, fit: AxisFit, values: np.ndarray, weights: np.ndarray
) -> None:
    low, high = fit.fit_range
    edges = np.linspace(low, high, 101)
    counts, _ = np.histogram(values, bins=edges, weights=weights)
    variances, _ = np.histogram(values, bins=edges, weights=weights**2)
    centres = 0.5 * (edges[1:] + edges[:-1])
    width = edges[1] - edges[0]
    in_range = (values >= low) & (values <= high)
    expected = fit.bin_probabilities(edges) * float(weights[in_range].sum())

    errors = np.sqrt(variances)
    ax_data.errorbar(
        centres, counts, yerr=errors, fmt="o", ms=3, color="black", label="signal MC"
    )
    fine = np.linspace(low, high, 600)
    curve = fit.pdf(fine) * float(weights[in_range].sum()) * width
    label = fit.model.replace("_", " ")
    ax_data.plot(fine, curve, color=SIGNAL_COLOUR, lw=1.8, label=f"{label} fit")
    # Location and width parameters are in GeV; alpha and n are numbers.
    text = "\n".join(
        f"{name} = {fit.values[name]:.4g} ± {fit.errors[name]:.2g}"
        + (" GeV" if name.startswith(("mu", "sigma")) else "")
        for name in fit.values
    )
    ax_data.text(
        0.03,
        0.78,
        text,
        transform=ax_data.transAxes,
        va="top",
        fontsize=8,
        family="monospace",
    )
    ax_data.set_ylabel(f"candidates / {1000 * width:.1f} MeV")
    ax_data.set_yscale("log")
    ax_data.set_ylim(
        bottom=max(0.5 * float(counts[counts > 0].min(initial=1.0)), 1e-3),
        top=20.0 * float(counts.max(initial=1.0)),
    )
    ax_data.legend(frameon=False, fontsize=8, loc="upper left")

    with np.errstate(divide="ignore", invalid="ignore"):
        pulls = np.where(errors > 0, (counts - expected) / errors, 0.0)
    ax_pull.bar(centres, pulls, width=width, color="grey")
    ax_pull.axhline(0.0, color="black", lw=0.8)
    for level in (-2, 2):
        ax_pull.axhline(level, color="black", lw=0.6, ls=":")
    ax_pull.set_ylim(-5, 5)
    ax_pull.set_ylabel("pull")
    ax_pull.set_xlabel(AXIS_LABELS.get(fit.variable, fit.variable))


def plot_signal_fit(
    shape: SignalShape,
    mass: ArrayLike,
    delta_e: ArrayLike | None,
    weights: ArrayLike | None,
    path: str | Path,
) -> Path:
    """Plot the signal MC, the fitted model and the pulls, one column per axis.

    Pulls are (data - model) / sqrt(sum w^2) per bin.
    """
    m = as_float_array(mass, "mass")
    w = resolve_weights(weights, m.size, "weights")
    columns: list[tuple[AxisFit, np.ndarray]] = [(shape.mass, m)]
    if shape.delta_e is not None:
        if delta_e is None:
            raise ConfigError("the shape has a Delta E fit, so delta_e is needed")
        columns.append((shape.delta_e, as_float_array(delta_e, "delta_e")))

    fig, axes = plt.subplots(
        2,
        len(columns),
        figsize=(6.0 * len(columns), 5.5),
        gridspec_kw={"height_ratios": [3, 1]},
        sharex="col",
        squeeze=False,
    )
    for column, (fit, values) in enumerate(columns):
        _draw_axis_fit(axes[0, column], axes[1, column], fit, values, w)
    fig.suptitle(f"signal shape of {shape.sample}")
    fig.tight_layout()
    return _save(fig, path)


def _draw_bands_2d(ax: Axes, region: SignalRegion, sidebands: Sidebands) -> None:
    for index, (mass_band, delta_e_band) in enumerate(sidebands.bands(region)):
        assert delta_e_band is not None
        ax.add_patch(
            Rectangle(
                (mass_band[0], delta_e_band[0]),
                mass_band[1] - mass_band[0],
                delta_e_band[1] - delta_e_band[0],
                facecolor=SIDEBAND_COLOUR,
                alpha=0.12,
                edgecolor="none",
                label="sidebands" if index == 0 else None,
            )
        )
    box_m, box_de = sidebands.blind_box(region)
    assert box_de is not None
    ax.add_patch(
        Rectangle(
            (box_m[0], box_de[0]),
            box_m[1] - box_m[0],
            box_de[1] - box_de[0],
            fill=False,
            ls="--",
            edgecolor="grey",
            label="blinded box",
        )
    )


def plot_signal_region(
    region: SignalRegion,
    sidebands: Sidebands | None,
    signal: tuple[ArrayLike, ArrayLike | None],
    background: tuple[ArrayLike, ArrayLike | None] | None,
    path: str | Path,
) -> Path:
    """Plot the signal region and sidebands over signal and background candidates.

    2D: two panels of the (M, Delta E) plane, the whole analysis window and a
    zoom on the region, with the ellipse, the blinded box and the sidebands.
    1D: the M histogram of signal and background with the interval and the
    sidebands shaded.
    """
    if not isinstance(region, EllipseRegion):
        return _plot_region_1d(region, sidebands, signal, background, path)

    fig, axes = plt.subplots(1, 2, figsize=(12.0, 5.2))
    m_sig = as_float_array(signal[0], "signal mass")
    de_sig = as_float_array(_require(signal[1]), "signal delta_e")
    boundary_m, boundary_de = region.boundary()
    description = _region_label(region.to_dict())
    for ax, zoom in zip(axes, (False, True), strict=True):
        if sidebands is not None:
            _draw_bands_2d(ax, region, sidebands)
        if background is not None:
            m_bkg = as_float_array(background[0], "background mass")
            de_bkg = as_float_array(_require(background[1]), "background delta_e")
            ax.scatter(
                m_bkg,
                de_bkg,
                s=4,
                color=BACKGROUND_COLOUR,
                alpha=0.5,
                label="background",
            )
        ax.scatter(
            m_sig, de_sig, s=2, color=SIGNAL_COLOUR, alpha=0.15, label="signal MC"
        )
        ax.plot(boundary_m, boundary_de, color="black", lw=1.6, label=description)
        ax.set_xlabel(AXIS_LABELS["mass"])
        ax.set_ylabel(AXIS_LABELS["delta_e"])
        if zoom:
            (m_low, m_high), de_box = region.bounding_box()
            assert de_box is not None
            pad_m, pad_de = 1.5 * (m_high - m_low), 1.5 * (de_box[1] - de_box[0])
            ax.set_xlim(m_low - pad_m, m_high + pad_m)
            ax.set_ylim(de_box[0] - pad_de, de_box[1] + pad_de)
            ax.set_title("zoom on the signal region")
        else:
            if sidebands is not None and sidebands.delta_e_range is not None:
                ax.set_xlim(*sidebands.mass_range)
                ax.set_ylim(*sidebands.delta_e_range)
            ax.set_title("analysis window")
            ax.legend(frameon=True, fontsize=8, loc="lower left", markerscale=3)
    fig.tight_layout()
    return _save(fig, path)


def _require(values: ArrayLike | None) -> ArrayLike:
    if values is None:
        raise ConfigError("a 2D signal region plot needs Delta E for every sample")
    return values


def _region_label(data: dict[str, Any]) -> str:
    size = data.get("n_sigma")
    if data["kind"] == "ellipse":
        return "signal region" + (f" ({size:g} σ ellipse)" if size else "")
    return "signal region" + (f" (±{size:g} σ)" if size else "")


def _plot_region_1d(
    region: SignalRegion,
    sidebands: Sidebands | None,
    signal: tuple[ArrayLike, ArrayLike | None],
    background: tuple[ArrayLike, ArrayLike | None] | None,
    path: str | Path,
) -> Path:
    fig, ax = plt.subplots(figsize=(7.0, 4.8))
    m_sig = as_float_array(signal[0], "signal mass")
    (low, high), _ = region.bounding_box()
    if sidebands is not None:
        window = sidebands.mass_range
    else:
        pad = 3.0 * (high - low)
        window = (low - pad, high + pad)

    edges = np.linspace(window[0], window[1], 81)
    width_mev = 1000 * (edges[1] - edges[0])
    ax.hist(
        m_sig,
        bins=edges.tolist(),
        histtype="step",
        color=SIGNAL_COLOUR,
        lw=1.6,
        label="signal MC",
    )
    if background is not None:
        m_bkg = as_float_array(background[0], "background mass")
        ax.hist(
            m_bkg,
            bins=edges.tolist(),
            histtype="step",
            color=BACKGROUND_COLOUR,
            lw=1.6,
            label="background",
        )

    ax.axvspan(
        low, high, color="grey", alpha=0.25, label=_region_label(region.to_dict())
    )
    if sidebands is not None:
        for index, (band, _) in enumerate(sidebands.bands(region)):
            ax.axvspan(
                band[0],
                band[1],
                color=SIDEBAND_COLOUR,
                alpha=0.12,
                label="sidebands" if index == 0 else None,
            )

    ax.set_xlabel(AXIS_LABELS["mass"])
    ax.set_ylabel(f"candidates / {width_mev:.1f} MeV")
    ax.set_xlim(*window)
    ax.legend(frameon=False, fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_punzi_scan(result: ScanResult, path: str | Path) -> Path:
    """Plot the FOM with its band, the efficiency and the background against the cut.

    The chosen cut is a vertical line, the plateau within one standard
    deviation of the best FOM is shaded, and cuts excluded for too few
    background MC candidates are drawn as open markers.
    """
    fig, (ax_fom, ax_eff) = plt.subplots(
        2, 1, figsize=(7.5, 7.0), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    cuts = result.cuts
    ax_fom.fill_between(
        cuts,
        result.fom - result.fom_uncertainty,
        result.fom + result.fom_uncertainty,
        color="grey",
        alpha=0.3,
        label="±1σ (statistics of the background estimate)",
    )
    ax_fom.plot(
        cuts[result.allowed],
        result.fom[result.allowed],
        "o-",
        ms=3,
        color="black",
        label=_fom_label(result.a, result.formula, result.b),
    )
    if (~result.allowed).any():
        ax_fom.plot(
            cuts[~result.allowed],
            result.fom[~result.allowed],
            "o",
            ms=4,
            mfc="none",
            color="black",
            label="too few candidates behind the background estimate",
        )
    low, high = result.stability["plateau_cut_range"]
    ax_fom.axvspan(
        low,
        high + 1e-12,
        color=SIGNAL_COLOUR,
        alpha=0.12,
        label="within 1σ of the best FOM",
    )
    for ax in (ax_fom, ax_eff):
        ax.axvline(result.best_cut, color=SIGNAL_COLOUR, lw=1.2)
    ax_fom.set_ylabel("Punzi figure of merit")
    ax_fom.set_title(
        f"best BDT cut {result.best_cut:.4g}: ε = {result.best_efficiency:.3g}, "
        f"B = {result.best_background:.3g} events"
    )
    ax_fom.legend(frameon=False, fontsize=8)

    ax_eff.plot(cuts, result.efficiency, color=SIGNAL_COLOUR, label="signal efficiency")
    ax_eff.set_ylabel("signal efficiency", color=SIGNAL_COLOUR)
    ax_eff.set_xlabel("BDT cut")
    ax_bkg = ax_eff.twinx()
    ax_bkg.plot(
        cuts,
        result.background,
        ".",
        color=BACKGROUND_COLOUR,
        label="expected background",
    )
    if result.smooth != "none":
        ax_bkg.plot(
            cuts,
            result.background_used,
            "-",
            color=BACKGROUND_COLOUR,
            label="background (smoothed)",
        )
    positive = result.background_used[result.background_used > 0]
    if positive.size:
        ax_bkg.set_yscale("log")
    ax_bkg.set_ylabel("expected background [events]", color=BACKGROUND_COLOUR)
    handles = ax_eff.get_legend_handles_labels()
    extra = ax_bkg.get_legend_handles_labels()
    ax_eff.legend(
        handles[0] + extra[0], handles[1] + extra[1], frameon=False, fontsize=8
    )
    fig.tight_layout()
    return _save(fig, path)


def _fom_label(a: float, formula: str, b: float | None) -> str:
    if formula == "simple":
        return f"ε / (a/2 + √B), a = {a:g}"
    return f"full Punzi, a = {a:g}, b = {a if b is None else b:g}"


def plot_joint_scan(result: JointScanResult, path: str | Path) -> Path:
    """Plot the FOM over (BDT cut, region size) with the best point and its plateau.

    Grid points excluded for too few background MC candidates are hatched;
    the contour marks the FOM one standard deviation below the best.
    """
    fig, (ax_map, ax_cut) = plt.subplots(1, 2, figsize=(12.5, 5.0))
    cuts, sizes = result.cuts, result.n_sigmas
    fom = np.where(result.allowed, result.fom, np.nan)
    mesh = ax_map.pcolormesh(
        _edges(cuts), _edges(sizes), fom.T, shading="flat", cmap="viridis"
    )
    fig.colorbar(mesh, ax=ax_map, label="Punzi figure of merit")
    if (~result.allowed).any():
        ax_map.contourf(
            cuts,
            sizes,
            (~result.allowed).T.astype(float),
            levels=[0.5, 1.5],
            hatches=["//"],
            colors="none",
        )
    threshold = result.best_fom - result.stability["fom_uncertainty_at_best"]
    if np.nanmax(fom) > threshold > np.nanmin(fom) and min(fom.shape) > 1:
        ax_map.contour(
            cuts,
            sizes,
            np.nan_to_num(fom, nan=0.0).T,
            levels=[threshold],
            colors="white",
            linewidths=1.2,
        )
    ax_map.plot(
        result.best_cut,
        result.best_n_sigma,
        marker="*",
        ms=14,
        color=SIGNAL_COLOUR,
        mec="white",
        label="best point",
    )
    ax_map.set_xlabel("BDT cut")
    ax_map.set_ylabel("signal region size [σ]")
    ax_map.legend(frameon=True, fontsize=8, loc="upper left")
    ax_map.set_title(_fom_label(result.a, result.formula, result.b))

    best_j = result.best_index[1]
    for j in sorted({max(best_j - 1, 0), best_j, min(best_j + 1, sizes.size - 1)}):
        style = "-" if j == best_j else "--"
        ax_cut.plot(cuts, result.fom[:, j], style, label=f"{sizes[j]:g} σ")
    ax_cut.axvline(result.best_cut, color=SIGNAL_COLOUR, lw=1.0)
    ax_cut.set_xlabel("BDT cut")
    ax_cut.set_ylabel("Punzi figure of merit")
    ax_cut.set_title(
        f"best: cut {result.best_cut:.4g}, {result.best_n_sigma:g} σ, "
        f"ε = {result.best_efficiency:.3g}, B = {result.best_background:.3g}"
    )
    ax_cut.legend(frameon=False, fontsize=8, title="region size")
    fig.tight_layout()
    return _save(fig, path)


def _edges(centres: np.ndarray) -> np.ndarray:
    if centres.size == 1:
        return np.array([centres[0] - 0.5, centres[0] + 0.5])
    middle = 0.5 * (centres[1:] + centres[:-1])
    first = centres[0] - (middle[0] - centres[0])
    last = centres[-1] + (centres[-1] - middle[-1])
    return np.concatenate([[first], middle, [last]])
