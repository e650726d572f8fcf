"""Metrics and plots of a trained BDT: AUCs, overtraining KS tests, figures.

Figures are drawn on :class:`matplotlib.figure.Figure` with the Agg canvas, so
no pyplot state or display is involved and the module is safe to call from
worker threads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats
from sklearn.metrics import roc_curve

from analysis.bdt import TrainedBDT, predict, weighted_auc
from analysis.errors import ConfigError, MissingBranchError, did_you_mean
from analysis.outputs import atomic_path

log = logging.getLogger(__name__)

#: Background efficiencies at which :func:`evaluate` reports the signal
#: efficiency on the test sample.
BACKGROUND_EFFICIENCIES = (0.01, 0.05, 0.1)

_SCORE_BINS = 40


def evaluate(
    bdt: TrainedBDT,
    train: pl.DataFrame,
    test: pl.DataFrame,
    *,
    label: str = "is_signal",
    weight: str | None = "weight",
) -> dict[str, Any]:
    """Score the BDT on its training and test samples and test for overtraining.

    The KS tests compare the unweighted BDT score distributions of the
    training and test samples, separately for signal and background
    (``scipy.stats.ks_2samp``, two-sided). A small p-value means the two
    distributions differ, the usual sign of overtraining.

    Args:
        bdt: the trained model.
        train: the rows the model was trained on.
        test: rows never seen in training or tuning.
        label: column with 1 for signal and 0 for background.
        weight: event-weight column used in the AUCs and efficiencies; None
            for unit weights.

    Returns:
        ``auc_train``, ``auc_test``, ``auc_ratio`` (train/test),
        ``ks_statistic_signal``, ``ks_pvalue_signal``,
        ``ks_statistic_background``, ``ks_pvalue_background``,
        ``signal_efficiency_at_background`` (test sample, keyed by the
        background efficiencies in :data:`BACKGROUND_EFFICIENCIES`),
        ``n_train`` and ``n_test`` (rows).

    Raises:
        MissingBranchError: a feature, label or weight column is missing.
    """
    scored = {
        name: _score(bdt, frame, label, weight)
        for name, frame in (("train", train), ("test", test))
    }
    y_train, s_train, w_train = scored["train"]
    y_test, s_test, w_test = scored["test"]

    auc_train = weighted_auc(y_train, s_train, w_train)
    auc_test = weighted_auc(y_test, s_test, w_test)
    ks_signal = stats.ks_2samp(s_train[y_train == 1], s_test[y_test == 1])
    ks_background = stats.ks_2samp(s_train[y_train == 0], s_test[y_test == 0])

    fpr, tpr, _ = roc_curve(y_test, s_test, sample_weight=w_test)
    efficiencies = {
        str(eff_b): float(np.interp(eff_b, fpr, tpr))
        for eff_b in BACKGROUND_EFFICIENCIES
    }
    metrics = {
        "auc_train": auc_train,
        "auc_test": auc_test,
        "auc_ratio": auc_train / auc_test,
        "ks_statistic_signal": float(ks_signal.statistic),
        "ks_pvalue_signal": float(ks_signal.pvalue),
        "ks_statistic_background": float(ks_background.statistic),
        "ks_pvalue_background": float(ks_background.pvalue),
        "signal_efficiency_at_background": efficiencies,
        "n_train": int(y_train.size),
        "n_test": int(y_test.size),
    }
    log.info(
        "bdt evaluation: AUC train %.4f, test %.4f, KS p-value signal %.3g, "
        "background %.3g",
        auc_train,
        auc_test,
        metrics["ks_pvalue_signal"],
        metrics["ks_pvalue_background"],
    )
    return metrics


def write_bdt_plots(
    bdt: TrainedBDT,
    train: pl.DataFrame,
    test: pl.DataFrame,
    study: optuna.Study | None,
    outdir: Path,
    *,
    label: str = "is_signal",
    weight: str | None = "weight",
) -> dict[str, Path]:
    """Draw the BDT report figures as PNG files in ``outdir``.

    Files: ``roc.png`` (train and test ROC curves), ``bdt_score.png`` (score
    per class, train as filled histograms and test as points, the classic
    overtraining plot), ``feature_importance.png`` (total gain per feature),
    and, when ``study`` is given, ``optuna_history.png`` and
    ``optuna_importance.png`` (fANOVA parameter importances).

    Returns:
        Figure name (file stem) to path.

    Raises:
        MissingBranchError: a feature, label or weight column is missing.
        OutputError: a file could not be written.
    """
    outdir = Path(outdir)
    y_train, s_train, w_train = _score(bdt, train, label, weight)
    y_test, s_test, w_test = _score(bdt, test, label, weight)

    figures = {
        "roc": _plot_roc(y_train, s_train, w_train, y_test, s_test, w_test),
        "bdt_score": _plot_scores(y_train, s_train, w_train, y_test, s_test, w_test),
        "feature_importance": _plot_importance(bdt),
    }
    if study is not None:
        figures["optuna_history"] = _plot_history(study)
        figures["optuna_importance"] = _plot_param_importance(study)

    paths = {}
    for name, figure in figures.items():
        paths[name] = _save(figure, outdir / f"{name}.png")
    log.info("bdt plots written to %s: %s", outdir, ", ".join(paths))
    return paths


def _score(
    bdt: TrainedBDT, frame: pl.DataFrame, label: str, weight: str | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    for role, column in (("label", label), ("weight", weight)):
        if column is not None and column not in frame.columns:
            raise MissingBranchError(
                f"bdt {role} column {column!r} not found in the frame."
                f"{did_you_mean(column, frame.columns)}"
            )
    y = frame[label].to_numpy()
    if not np.isin(y, (0, 1)).all():
        raise ConfigError(
            f"bdt label column {label!r} must hold 0 (background) or 1 (signal); "
            f"found {np.unique(y)[:5].tolist()}"
        )
    w = None if weight is None else frame[weight].to_numpy().astype(np.float64)
    return y.astype(np.int32), predict(bdt, frame), w


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    return path


def _plot_roc(
    y_train: np.ndarray,
    s_train: np.ndarray,
    w_train: np.ndarray | None,
    y_test: np.ndarray,
    s_test: np.ndarray,
    w_test: np.ndarray | None,
) -> Figure:
    figure = Figure(figsize=(6, 5), layout="constrained")
    axes = figure.add_subplot()
    for name, y, s, w, style in (
        ("train", y_train, s_train, w_train, "--"),
        ("test", y_test, s_test, w_test, "-"),
    ):
        fpr, tpr, _ = roc_curve(y, s, sample_weight=w)
        auc = weighted_auc(y, s, w)
        axes.plot(tpr, 1 - fpr, style, label=f"{name} (AUC {auc:.4f})")
    axes.set_xlabel("signal efficiency")
    axes.set_ylabel("background rejection (1 - background efficiency)")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    axes.set_title("BDT ROC curve")
    return figure


def _plot_scores(
    y_train: np.ndarray,
    s_train: np.ndarray,
    w_train: np.ndarray | None,
    y_test: np.ndarray,
    s_test: np.ndarray,
    w_test: np.ndarray | None,
) -> Figure:
    figure = Figure(figsize=(7, 5), layout="constrained")
    axes = figure.add_subplot()
    edges = np.linspace(0.0, 1.0, _SCORE_BINS + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])

    for value, name, colour in (
        (1, "signal", "tab:blue"),
        (0, "background", "tab:red"),
    ):
        train_mask, test_mask = y_train == value, y_test == value
        ks = stats.ks_2samp(s_train[train_mask], s_test[test_mask])
        train_w = None if w_train is None else w_train[train_mask]
        axes.hist(
            s_train[train_mask],
            bins=edges.tolist(),
            weights=train_w,
            density=True,
            histtype="stepfilled",
            alpha=0.35,
            color=colour,
            label=f"{name} train",
        )

        # Test points: normalised like density=True, errors from sum of w^2.
        test_w = np.ones(test_mask.sum()) if w_test is None else w_test[test_mask]
        counts, _ = np.histogram(s_test[test_mask], bins=edges, weights=test_w)
        sumw2, _ = np.histogram(s_test[test_mask], bins=edges, weights=test_w**2)
        norm = test_w.sum() * np.diff(edges)
        axes.errorbar(
            centres,
            counts / norm,
            yerr=np.sqrt(sumw2) / norm,
            fmt="o",
            markersize=3,
            color=colour,
            label=f"{name} test (KS p = {ks.pvalue:.3f})",
        )

    axes.set_xlabel("BDT score (signal probability)")
    axes.set_ylabel("normalised entries / bin width")
    axes.set_yscale("log")
    # Head room above the peaks keeps the legend off the histograms.
    bottom, top = axes.get_ylim()
    axes.set_ylim(bottom, top * 30)
    axes.legend(loc="upper center", ncol=2, fontsize="small")
    axes.set_title("BDT score, train vs test")
    return figure


def _plot_importance(bdt: TrainedBDT) -> Figure:
    gains = bdt.booster.get_score(importance_type="total_gain")
    values = np.array([gains.get(name, 0.0) for name in bdt.features])
    total = values.sum()
    shares = values / total if total > 0 else values
    order = np.argsort(shares)
    figure = Figure(figsize=(6, 0.4 * len(bdt.features) + 1.5), layout="constrained")
    axes = figure.add_subplot()
    axes.barh([bdt.features[i] for i in order], shares[order], color="tab:green")
    axes.set_xlabel("share of total gain")
    axes.set_title("BDT feature importance (gain)")
    return figure


def _plot_history(study: optuna.Study) -> Figure:
    figure = Figure(figsize=(7, 5), layout="constrained")
    axes = figure.add_subplot()
    complete = _trials(study, optuna.trial.TrialState.COMPLETE)
    pruned = _trials(study, optuna.trial.TrialState.PRUNED)
    if complete:
        numbers = np.array([t.number for t in complete])
        values = np.array([t.value for t in complete], dtype=float)
        axes.plot(numbers, values, "o", color="tab:blue", label="complete trial")
        axes.step(
            numbers,
            np.maximum.accumulate(values),
            where="post",
            color="tab:orange",
            label="best so far",
        )
    if pruned:
        last = [max(t.intermediate_values.values(), default=np.nan) for t in pruned]
        axes.plot(
            [t.number for t in pruned],
            last,
            "x",
            color="grey",
            label="pruned trial (last report)",
        )
    axes.set_xlabel("trial number")
    axes.set_ylabel("penalised validation AUC")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    axes.set_title(f"optuna history of study {study.study_name!r}")
    return figure


def _plot_param_importance(study: optuna.Study) -> Figure:
    figure = Figure(figsize=(6, 4.5), layout="constrained")
    axes = figure.add_subplot()
    axes.set_title("optuna parameter importance (fANOVA)")
    complete = _trials(study, optuna.trial.TrialState.COMPLETE)
    try:
        importances = optuna.importance.get_param_importances(
            study,
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0),
        )
    except (RuntimeError, ValueError) as err:
        # optuna raises when fewer than two complete trials or no varied
        # parameter are available, and the figure then shows that.
        log.warning("bdt parameter importances not computed: %s", err)
        importances = {}
    if not importances:
        axes.text(
            0.5,
            0.5,
            f"not computable from {len(complete)} complete trials",
            ha="center",
            va="center",
            transform=axes.transAxes,
        )
        axes.set_axis_off()
        return figure
    names = list(importances)[::-1]
    axes.barh(names, [importances[n] for n in names], color="tab:purple")
    axes.set_xlabel("importance for the objective (fraction of variance)")
    return figure


def _trials(
    study: optuna.Study, state: optuna.trial.TrialState
) -> Sequence[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(state,))
