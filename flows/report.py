"""results.json and report.md of a one-touch run (no Prefect here)."""

from __future__ import annotations

import datetime as dt
import math
import platform
from pathlib import Path
from typing import Any

from analysis import __version__
from analysis.config import AnalysisConfig
from analysis.outputs import write_json, write_text


def _model_description(bdt: dict[str, Any]) -> str:
    """Say which final model the BDT stage kept."""
    folds = bdt.get("n_folds")
    if bdt.get("final_model") == "fold_average":
        trees = bdt.get("n_trees_per_fold") or []
        return (
            f"average of the {folds} fold models "
            f"({', '.join(str(n) for n in trees)} trees)"
        )
    if folds:
        return f"refitted on all training events after {folds}-fold cross-validation"
    return "refitted on the training side of the validation split"


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _cutflow_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| sample | step | candidates | events | weighted | eff. total |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['sample']} | {row['step']} | {row['candidates']} | "
            f"{row['events']} | {_fmt(row['weighted_candidates'])} | "
            f"{_fmt(row['eff_total'], 3)} |"
        )
    return "\n".join(lines)


def _warning_lines(warnings: dict[str, list[str]], bdt: dict[str, Any]) -> list[str]:
    """List the warnings of every stage, and flag a failed overtraining test."""
    items = [
        f"- {stage}: {message}" for stage, msgs in warnings.items() for message in msgs
    ]
    for kind in ("signal", "background"):
        p_value = bdt.get(f"ks_pvalue_{kind}")
        if p_value is not None and p_value < 0.01:
            items.append(
                f"- bdt: KS test of the {kind} BDT score, train against test, has "
                f"p-value {p_value:.2g} < 0.01: possible overtraining"
            )
    if not items:
        return []
    return ["", "## Warnings", "", *items]


def _estimate_lines(estimates: dict[str, Any]) -> list[str]:
    if not estimates:
        return []
    lines = [
        "",
        "| background estimate at the working point | events | based on |",
        "|---|---:|---|",
    ]
    for name, est in estimates.items():
        bound = " (upper bound)" if est["is_upper_bound"] else ""
        lines.append(
            f"| {name} | {_fmt(est['value'])} +- {_fmt(est['uncertainty'])}{bound} "
            f"| {est['n_sideband']} candidates |"
        )
    return [*lines, ""]


def _joint_lines(joint: dict[str, Any] | None) -> list[str]:
    if not joint:
        return []
    return [
        f"Joint scan over BDT cut and region size (for information): best at "
        f"BDT cut {_fmt(joint['best_bdt_cut'])} with a "
        f"{_fmt(joint['best_n_sigma'], 3)} sigma region, efficiency "
        f"{_fmt(joint['efficiency'])}, background {_fmt(joint['background'])} "
        "events.",
        "",
        "![joint scan](evaluation/joint_scan.png)",
        "",
    ]


def _rel(path: str | None, run_dir: Path) -> str:
    if not path:
        return ""
    try:
        return str(Path(path).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(path)


def build_results(
    config: AnalysisConfig,
    config_path: Path,
    run_dir: Path,
    summaries: dict[str, dict[str, Any]],
    input_hashes: dict[str, str],
    code_version: str,
) -> dict[str, Any]:
    """Collect every number of the run into one JSON-ready mapping."""
    working = summaries["working_point"]
    limit = summaries["limit"]
    return {
        "analysis": config.name,
        "package_version": __version__,
        "code_version": code_version,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "config_path": str(config_path),
        "config_sha256": config.section_hash(),
        "input_files_sha256": input_hashes,
        "blinded": not config.blinding.unblind,
        "units": {
            "mass": "GeV",
            "delta_e": "GeV",
            "luminosity": "fb^-1",
            "cross_section": "nb",
        },
        "cutflow": summaries["preselection"]["cutflow"],
        "signal_shape": summaries["signal_region"]["shape"],
        "signal_region": summaries["signal_region"]["region"],
        "sidebands": summaries["signal_region"]["sidebands"],
        "split_counts": summaries["signal_region"]["counts"],
        "bdt": {
            "best_params": summaries["bdt"]["best_params"],
            "tuning_validation_auc": summaries["bdt"]["validation_auc"],
            "tuning_train_auc": summaries["bdt"]["train_auc"],
            "n_trials": summaries["bdt"]["n_trials"],
            **working["metrics"],
        },
        "working_point": {
            "bdt_cut": working["bdt_cut"],
            "signal_efficiency": working["signal_efficiency"],
            "background": working["background"],
            "background_estimates": working["background_estimates"],
            "scan": working["scan"],
            "joint_scan": working.get("joint_scan"),
        },
        "limit": limit,
        "warnings": {
            stage: summary.get("warnings", [])
            for stage, summary in summaries.items()
            if summary.get("warnings")
        },
    }


def write_results(path: Path, results: dict[str, Any]) -> Path:
    """Write results.json atomically."""
    return write_json(path, results)


def describe_region(region: dict[str, Any]) -> str:
    """Describe a signal region in words, with units."""
    if region.get("kind") == "ellipse":
        (m0, de0), (a, b) = region["center"], region["semi_axes"]
        angle = math.degrees(region["angle"])
        return (
            f"{_fmt(region['n_sigma'], 3)} sigma ellipse centred at "
            f"M = {m0:.4f} GeV, Delta E = {de0 * 1e3:.1f} MeV, semi-axes "
            f"{a * 1e3:.1f} MeV and {b * 1e3:.1f} MeV, rotated by {angle:.1f} deg"
        )
    if region.get("kind") == "interval":
        return (
            f"{_fmt(region['n_sigma'], 3)} sigma window "
            f"{region['low']:.4f} < M < {region['high']:.4f} GeV"
        )
    return str(region)


def render_report(results: dict[str, Any], run_dir: Path) -> str:
    """Render report.md: the headline limit, then one section per stage."""
    limit = results["limit"]
    wp = results["working_point"]
    bdt = results["bdt"]
    cl = round(limit["cl"] * 100)
    lines = [f"# tau -> 3mu one-touch report: {results['analysis']}", ""]
    if "br_upper_expected" in limit:
        expected = limit["br_upper_expected"]
        lines += [
            f"**Expected {cl}% CL upper limit on B(tau -> 3mu): "
            f"{_fmt(expected[2], 3)}** "
            f"(1 sigma band {_fmt(expected[1], 3)} - {_fmt(expected[3], 3)}), "
            f"for {_fmt(limit['luminosity_fb'])} fb^-1 and "
            f"sigma(ee -> tau tau) = {_fmt(limit['cross_section_nb'])} nb.",
        ]
        if limit.get("br_upper_observed") is not None:
            lines.append(
                f"**Observed: {_fmt(limit['br_upper_observed'], 3)}** with "
                f"{limit['observed_events']} events in the signal region."
            )
    else:
        expected = limit["n_upper_expected"]
        lines.append(
            f"**Expected {cl}% CL upper limit on the signal yield: "
            f"{_fmt(expected[2], 3)} events** (no luminosity given: the run stops "
            "at the signal count)."
        )
    lines += [*_warning_lines(results.get("warnings", {}), results["bdt"])]
    lines += [
        "",
        f"Blinded: {'yes' if results['blinded'] else 'no'}. "
        f"Package {results['package_version']}, config SHA-256 "
        f"`{results['config_sha256'][:12]}`.",
        "",
        "## 1. Preselection",
        "",
        _cutflow_markdown(results["cutflow"]),
        "",
        "![input variables](preselection/inputs.png)",
        "",
        "## 2. Signal shape and signal region",
        "",
        describe_region(results["signal_region"]) + ".",
        "",
        "![signal fit](signal_region/signal_fit.png)",
        "![signal region](signal_region/signal_region.png)",
        "",
        "## 3. BDT",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| trials | {bdt['n_trials']} |",
        f"| model | {_model_description(results['bdt'])} |",
        f"| AUC train | {_fmt(bdt.get('auc_train'))} |",
        f"| AUC test | {_fmt(bdt.get('auc_test'))} |",
        f"| KS p-value signal (train vs test) | {_fmt(bdt.get('ks_pvalue_signal'))} |",
        f"| KS p-value background | {_fmt(bdt.get('ks_pvalue_background'))} |",
    ]
    if "reference_auc_test" in bdt:
        lines.append(
            "| AUC test of the input's own classifier | "
            f"{_fmt(bdt['reference_auc_test'])} |"
        )
    params = results["bdt"].get("best_params", {})
    lines += [
        "",
        "Best parameters: "
        + ", ".join(f"{k} = {_fmt(v, 3)}" for k, v in params.items())
        + ".",
    ]
    lines += [
        "",
        "![ROC](evaluation/roc.png)",
        "![BDT score](evaluation/bdt_score.png)",
        "![optuna history](evaluation/optuna_history.png)",
        "",
        "## 4. Working point",
        "",
        f"BDT cut {_fmt(wp['bdt_cut'])}, signal efficiency "
        f"{_fmt(wp['signal_efficiency'])}, expected background "
        f"{_fmt(wp['background']['value'])} +- "
        f"{_fmt(wp['background']['uncertainty'])} events "
        f"({wp['background']['method']}"
        f"{', upper bound' if wp['background']['is_upper_bound'] else ''}).",
        "",
        *_estimate_lines(wp.get("background_estimates", {})),
        "![Punzi scan](evaluation/punzi_scan.png)",
        "",
        *_joint_lines(results["working_point"].get("joint_scan")),
        "## 5. Upper limit",
        "",
        f"Calculator: {limit['calculator']}. Expected upper limit on the signal "
        "yield (events, -2 to +2 sigma): "
        + ", ".join(_fmt(v, 3) for v in limit["n_upper_expected"])
        + ".",
        "",
        "![CLs scan](limit/cls_scan.png)",
        "",
        f"Workspace: `{_rel(limit['workspace'], run_dir)}` (pyhf JSON).",
        "",
    ]
    return "\n".join(lines)


def write_report(path: Path, results: dict[str, Any], run_dir: Path) -> Path:
    """Write report.md atomically."""
    return write_text(path, render_report(results, run_dir))
