"""Benchmark the optuna-tuned xgboost BDT on the CMS tau -> 3mu TMVA file.

Phases (each writes ``<out>/<phase>.json``):

- ``threads``: one fixed xgboost training with nthread 1 and 2, on an idle
  machine and beside a busy process this script starts, and a 16-trial study
  run as (n_jobs, n_threads) = (1, 1), (1, 2) and (2, 1).
- ``grid``: an exhaustive 288-point grid on the same train/validation split
  as the studies (split seed 0), each point trained to its full tree count as
  the old batch grid did.
- ``optuna``: studies with seeds 1, 2, 3 at each trial budget of ``--budgets``.
- ``ceiling``: one fixed recipe as a 5-fold ensemble, trained on TrainTree
  and scored on TestTree, then the other way round, with out-of-fold AUCs
  and the bootstrap error of the test AUC: what each tree gives at most.
- ``report``: writes the Markdown summary from the JSON files.

Every model is scored once on TestTree. Run from the repository root::

    .venv/bin/python bench/bench_bdt.py --out /tmp/bench_bdt --phases all
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl
import uproot
import xgboost as xgb

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.bdt import (
    SEARCH_SPACE,
    BDTSettings,
    fold_by_group,
    library_versions,
    penalised_score,
    split_by_group,
    train_bdt,
    weighted_auc,
)
from analysis.bdt_report import evaluate
from analysis.outputs import write_json, write_text

log = logging.getLogger("bench_bdt")

DATA = Path(__file__).resolve().parents[2] / "shared/data/cms-tau3mu/TMVA_file_A.root"
FEATURES = [
    "Pmu3",
    "cLP",
    "tKink",
    "segmComp",
    "fv_nC",
    "fv_dphi3D",
    "fv_d3Dsig",
    "d0sig",
    "mindca_iso",
]
SPLIT_SEED = 0
STUDY_SEEDS = (1, 2, 3)
N_LAYOUT_FITS = 8
MAX_AUC_RATIO = 1.015
GRID = {
    "num_boost_round": (100, 300, 1000),
    "max_depth": (2, 3, 4, 6),
    "learning_rate": (0.01, 0.03, 0.1),
    "subsample": (0.5, 0.8),
    "colsample_bytree": (0.6, 1.0),
    "min_child_weight": (1, 10),
}


def load_tree(name: str) -> pl.DataFrame:
    """Read one TMVA tree into a frame with ``is_signal`` and ``event_id``."""
    with uproot.open(DATA) as handle:
        arrays = handle[f"dataset_A/{name}"].arrays(
            [*FEATURES, "classID", "weight", "BDT"], library="np"
        )
    frame = pl.DataFrame({k: arrays[k] for k in [*FEATURES, "weight", "BDT"]})
    return frame.with_columns(
        pl.Series("is_signal", (arrays["classID"] == 0).astype(np.int32)),
        pl.Series("event_id", np.arange(frame.height)),
    )


def balanced_weights(frame: pl.DataFrame) -> np.ndarray:
    """Return the weights with signal scaled to the background's total."""
    w = frame["weight"].to_numpy().astype(np.float64)
    y = frame["is_signal"].to_numpy()
    w[y == 1] *= w[y == 0].sum() / w[y == 1].sum()
    return w


def phase_threads(train: pl.DataFrame) -> dict[str, Any]:
    """Time xgboost with 1 and 2 threads, idle and beside a busy process."""
    x = train.select(FEATURES).to_numpy().astype(np.float32)
    y = train["is_signal"].to_numpy()
    params = {
        "max_depth": 4,
        "learning_rate": 0.05,
        "tree_method": "hist",
        "objective": "binary:logistic",
        "seed": 0,
    }

    def time_fit(nthread: int) -> float:
        matrix = xgb.DMatrix(x, label=y, nthread=nthread)
        start = time.perf_counter()
        xgb.train({**params, "nthread": nthread}, matrix, num_boost_round=500)
        return time.perf_counter() - start

    result: dict[str, Any] = {"load_average_start": os.getloadavg()}
    for condition in ("idle", "busy"):
        busy = None
        if condition == "busy":
            busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(1.0)
        try:
            times: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(5):
                for nthread in (1, 2):
                    times[nthread].append(time_fit(nthread))
        finally:
            if busy is not None:
                busy.terminate()
                busy.wait()
        result[condition] = {
            f"nthread_{n}": {"median_s": statistics.median(t), "runs_s": t}
            for n, t in times.items()
        }
        log.info("threads %s: %s", condition, result[condition])

    result["load_average_end"] = os.getloadavg()
    return result


def phase_layouts(train: pl.DataFrame) -> dict[str, Any]:
    """Time 8 fits run one after another or two at a time, by thread count."""
    x = train.select(FEATURES).to_numpy().astype(np.float32)
    y = train["is_signal"].to_numpy()

    # The same parameter sets for every layout, so the work is identical.
    # Studies sampled by TPE would train different trees in each layout.
    sampler = optuna.samplers.RandomSampler(seed=7)
    study = optuna.create_study(sampler=sampler)
    param_sets = []
    for _ in range(N_LAYOUT_FITS):
        trial = study.ask()
        point = {
            name: _suggest_one(trial, name, spec) for name, spec in SEARCH_SPACE.items()
        }
        point["num_boost_round"] = min(point["num_boost_round"], 200)
        param_sets.append(point)

    def fit_point(point: dict[str, Any], nthread: int) -> None:
        matrix = xgb.DMatrix(x, label=y, nthread=nthread)
        booster_params = {k: v for k, v in point.items() if k != "num_boost_round"}
        xgb.train(
            {
                **booster_params,
                "tree_method": "hist",
                "nthread": nthread,
                "objective": "binary:logistic",
                "seed": 0,
            },
            matrix,
            num_boost_round=point["num_boost_round"],
        )

    result: dict[str, Any] = {"load_average_start": os.getloadavg()}
    layouts = ((1, 1), (1, 2), (2, 1))
    walls: dict[str, list[float]] = {f"jobs{j}_threads{t}": [] for j, t in layouts}
    # Repeats interleave the layouts so a change of load hits all of them.
    for _ in range(2):
        for n_jobs, n_threads in layouts:
            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=n_jobs) as pool:
                list(pool.map(lambda p, t=n_threads: fit_point(p, t), param_sets))
            walls[f"jobs{n_jobs}_threads{n_threads}"].append(
                time.perf_counter() - start
            )
            log.info("fits n_jobs=%d n_threads=%d: %s", n_jobs, n_threads, walls)
    result["layouts"] = {
        name: {"median_s": statistics.median(runs), "runs_s": runs}
        for name, runs in walls.items()
    }
    result["load_average_end"] = os.getloadavg()
    return result


def phase_grid(train: pl.DataFrame, test: pl.DataFrame) -> dict[str, Any]:
    """Train every grid point on the study split and score the best on TestTree."""
    is_valid = split_by_group(train["event_id"].to_numpy(), 0.25, SPLIT_SEED)
    x = train.select(FEATURES).to_numpy().astype(np.float32)
    y = train["is_signal"].to_numpy()
    w = balanced_weights(train)
    dtrain = xgb.DMatrix(
        x[~is_valid],
        label=y[~is_valid],
        weight=w[~is_valid],
        feature_names=FEATURES,
        nthread=1,
    )
    dvalid = xgb.DMatrix(
        x[is_valid],
        label=y[is_valid],
        weight=w[is_valid],
        feature_names=FEATURES,
        nthread=1,
    )

    points = []
    start = time.perf_counter()
    for values in itertools.product(*GRID.values()):
        point = dict(zip(GRID, values, strict=True))
        history: dict[str, Any] = {}
        xgb.train(
            {
                **_fixed_params(),
                **{k: v for k, v in point.items() if k != "num_boost_round"},
            },
            dtrain,
            num_boost_round=point["num_boost_round"],
            evals=[(dtrain, "train"), (dvalid, "valid")],
            evals_result=history,
            verbose_eval=False,
        )
        train_auc = np.asarray(history["train"]["auc"])
        valid_auc = np.asarray(history["valid"]["auc"])
        scores = [
            penalised_score(v, t, MAX_AUC_RATIO)
            for v, t in zip(valid_auc, train_auc, strict=True)
        ]
        points.append(
            {
                **point,
                "valid_auc": float(valid_auc[-1]),
                "train_auc": float(train_auc[-1]),
                "best_penalised_score": float(max(scores)),
            }
        )
        log.info("grid point %d: %s", len(points), points[-1])
    wall = time.perf_counter() - start

    allowed = [p for p in points if p["train_auc"] / p["valid_auc"] <= MAX_AUC_RATIO]
    best = max(allowed, key=lambda p: p["valid_auc"])
    booster = xgb.train(
        {
            **_fixed_params(),
            **{k: v for k, v in best.items() if k in GRID and k != "num_boost_round"},
        },
        dtrain,
        num_boost_round=best["num_boost_round"],
    )
    test_score = booster.predict(
        xgb.DMatrix(
            test.select(FEATURES).to_numpy().astype(np.float32), feature_names=FEATURES
        )
    )
    train_score = booster.predict(dtrain)
    auc_test = weighted_auc(test["is_signal"].to_numpy(), test_score, None)
    auc_train = weighted_auc(y[~is_valid], train_score, None)
    return {
        "n_points": len(points),
        "n_within_ratio": len(allowed),
        "wall_s": wall,
        "best": best,
        "best_test_auc": auc_test,
        "best_train_auc_unweighted": auc_train,
        "best_penalised_score_any_iteration": max(
            p["best_penalised_score"] for p in points
        ),
        "points": points,
    }


def phase_optuna(
    train: pl.DataFrame,
    test: pl.DataFrame,
    budgets: list[int],
    out: Path,
    max_auc_ratio: float = MAX_AUC_RATIO,
    n_folds: int | None = None,
    final_model: str = "refit",
) -> dict[str, Any]:
    """Run one study per seed and budget and score its model on TestTree.

    The train AUC is taken on the rows the final model was trained on: the
    training side of the split, or all of TrainTree with k folds.
    """
    runs = []
    for n_trials in budgets:
        for seed in STUDY_SEEDS:
            settings = BDTSettings(
                n_trials=n_trials,
                seed=seed,
                split_seed=SPLIT_SEED,
                max_auc_ratio=max_auc_ratio,
                n_folds=n_folds,
                final_model=final_model,
            )
            study_path = out / f"study_{n_trials}_{seed}.db"
            study_path.unlink(missing_ok=True)  # time a fresh study, not a resume
            start = time.perf_counter()
            bdt = train_bdt(
                train,
                FEATURES,
                settings=settings,
                study_path=study_path,
            )
            wall = time.perf_counter() - start
            is_valid = split_by_group(train["event_id"].to_numpy(), 0.25, SPLIT_SEED)
            fitted = train if n_folds else train.filter(pl.Series(~is_valid))
            metrics = evaluate(bdt, fitted, test)
            runs.append(
                {
                    "n_trials": n_trials,
                    "seed": seed,
                    "wall_s": wall,
                    "n_trials_done": bdt.n_trials_done,
                    "validation_auc": bdt.validation_auc,
                    "best_params": bdt.best_params,
                    **metrics,
                }
            )
            log.info("optuna n_trials=%d seed=%d: %s", n_trials, seed, runs[-1])
    return {
        "max_auc_ratio": max_auc_ratio,
        "n_folds": n_folds,
        "final_model": final_model,
        "runs": runs,
    }


#: The fixed recipe of the ceiling phase: settings close to the grid's best.
CEILING_PARAMS = {
    "max_depth": 3,
    "learning_rate": 0.03,
    "min_child_weight": 10,
    "subsample": 0.5,
    "colsample_bytree": 0.6,
}
CEILING_FOLDS = 5
BOOTSTRAP_RESAMPLES = 300


def _fold_ensemble(
    fit_on: pl.DataFrame, score: pl.DataFrame, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train one model per fold, each stopped early on its own fold.

    Returns the summed margins of the fold models on ``fit_on`` and on
    ``score``, and the out-of-fold margins on ``fit_on``.
    """
    x = fit_on.select(FEATURES).to_numpy().astype(np.float32)
    y = fit_on["is_signal"].to_numpy()
    w = balanced_weights(fit_on)
    x_score = xgb.DMatrix(score.select(FEATURES).to_numpy().astype(np.float32))
    x_all = xgb.DMatrix(x)
    folds = fold_by_group(fit_on["event_id"].to_numpy(), CEILING_FOLDS, seed)
    on_fit, on_score, out_of_fold = (
        np.zeros(y.size),
        np.zeros(score.height),
        np.zeros(y.size),
    )
    for fold in range(CEILING_FOLDS):
        in_fold = folds == fold
        booster = xgb.train(
            {**_fixed_params(), **CEILING_PARAMS, "seed": seed},
            xgb.DMatrix(x[~in_fold], label=y[~in_fold], weight=w[~in_fold]),
            num_boost_round=4000,
            evals=[
                (xgb.DMatrix(x[in_fold], label=y[in_fold], weight=w[in_fold]), "valid")
            ],
            early_stopping_rounds=100,
            verbose_eval=False,
        )
        trees = (0, booster.best_iteration + 1)
        on_fit += booster.predict(x_all, iteration_range=trees, output_margin=True)
        on_score += booster.predict(x_score, iteration_range=trees, output_margin=True)
        out_of_fold[in_fold] = booster.predict(
            xgb.DMatrix(x[in_fold]), iteration_range=trees, output_margin=True
        )
    return on_fit, on_score, out_of_fold


def phase_ceiling(train: pl.DataFrame, test: pl.DataFrame) -> dict[str, Any]:
    """Measure what one fixed recipe reaches on each tree, in both directions.

    A 5-fold ensemble of the recipe is trained on TrainTree and scored on
    TestTree, then trained on TestTree and scored on TrainTree. Out-of-fold
    AUCs show what each tree gives on its own events. The bootstrap spread of
    the forward test AUC is its statistical error.
    """
    runs = []
    y_train, y_test = train["is_signal"].to_numpy(), test["is_signal"].to_numpy()
    for seed in STUDY_SEEDS:
        start = time.perf_counter()
        on_train, on_test, oof_train = _fold_ensemble(train, test, seed)
        back_on_test, back_on_train, oof_test = _fold_ensemble(test, train, seed)
        runs.append(
            {
                "seed": seed,
                "forward_train_auc": weighted_auc(y_train, on_train, None),
                "forward_oof_auc": weighted_auc(y_train, oof_train, None),
                "forward_test_auc": weighted_auc(y_test, on_test, None),
                "swapped_oof_auc": weighted_auc(y_test, oof_test, None),
                "swapped_score_on_train": weighted_auc(y_train, back_on_train, None),
                "swapped_fit_auc": weighted_auc(y_test, back_on_test, None),
                "wall_s": time.perf_counter() - start,
            }
        )
        if seed == STUDY_SEEDS[0]:
            rng = np.random.default_rng(0)
            resampled = [
                weighted_auc(y_test[rows], on_test[rows], None)
                for rows in (
                    rng.integers(0, y_test.size, y_test.size)
                    for _ in range(BOOTSTRAP_RESAMPLES)
                )
            ]
            bootstrap_std = float(np.std(resampled))
        log.info("ceiling seed %d: %s", seed, runs[-1])
    return {
        "params": CEILING_PARAMS,
        "folds": CEILING_FOLDS,
        "bootstrap_std_test_auc": bootstrap_std,
        "runs": runs,
    }


def _suggest_one(trial: optuna.Trial, name: str, spec: tuple[Any, ...]) -> Any:
    if spec[0] == "int":
        return trial.suggest_int(name, spec[1], spec[2], log=spec[3])
    if spec[0] == "float":
        return trial.suggest_float(name, spec[1], spec[2], log=spec[3])
    return trial.suggest_categorical(name, list(spec[1]))


def _fixed_params() -> dict[str, Any]:
    return {
        "objective": "binary:logistic",
        "eval_metric": "auc",
        "tree_method": "hist",
        "nthread": 1,
        "seed": 0,
    }


def phase_report(out: Path, markdown: Path) -> None:
    """Write the Markdown summary of the phases found in ``out``."""
    lines = ["# BDT benchmark: optuna-tuned xgboost on TMVA_file_A.root", ""]
    meta = json.loads((out / "meta.json").read_text())
    lines += [
        f"Machine: {meta['cpu_count']} cores shared with other sessions; "
        f"libraries {meta['versions']}.",
        "Commands: " + "; ".join(f"`{c}`" for c in meta["commands"]) + ".",
        "Data: TrainTree (19966 events) split by event into 75 % training and "
        f"25 % validation with split seed {SPLIT_SEED}; TestTree (19966 events) "
        "scored once per model. AUCs use the file's class-balance "
        "weights, which are constant per class and so give the unweighted AUC; "
        "signal = classID 0. Wall times were measured while other sessions "
        "loaded the machine (load average 5 to 10).",
        "",
        f"TMVA BDT of the file on TestTree: AUC {meta['tmva_test_auc']:.4f}.",
        "",
    ]
    lines += _report_optuna(out)
    lines += _report_grid(out)
    lines += _report_comparison(out)
    lines += _report_threads(out)
    lines += _report_ceiling(out)
    write_text(markdown, "\n".join(lines) + "\n")


def _report_ceiling(out: Path) -> list[str]:
    path = out / "ceiling.json"
    if not path.is_file():
        return ["Ceiling phase not run.", ""]
    result = json.loads(path.read_text())
    columns = [
        ("forward_train_auc", "fit on Train: Train"),
        ("forward_oof_auc", "out of fold, Train"),
        ("forward_test_auc", "fit on Train: Test"),
        ("swapped_fit_auc", "fit on Test: Test"),
        ("swapped_oof_auc", "out of fold, Test"),
        ("swapped_score_on_train", "fit on Test: Train"),
    ]
    lines = [
        f"## Ceiling: one recipe, both directions ({result['folds']}-fold ensemble)",
        "",
        f"Recipe: {result['params']}, early stopping on each fold.",
        "",
        "| seed | " + " | ".join(label for _, label in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for run in result["runs"]:
        values = " | ".join(f"{run[key]:.4f}" for key, _ in columns)
        lines.append(f"| {run['seed']} | {values} |")
    medians = " | ".join(
        f"{statistics.median(r[key] for r in result['runs']):.4f}" for key, _ in columns
    )
    lines += [
        f"| median | {medians} |",
        "",
        f"Bootstrap error of the test AUC: {result['bootstrap_std_test_auc']:.4f}.",
        "",
    ]
    return lines


def _report_optuna(out: Path) -> list[str]:
    path = out / "optuna.json"
    if not path.is_file():
        return ["Optuna phase not run.", ""]
    result = json.loads(path.read_text())
    runs = result["runs"]
    ratio = result.get("max_auc_ratio", MAX_AUC_RATIO)
    lines = [
        f"## Optuna studies (seeds 1, 2, 3, max_auc_ratio {ratio})",
        "",
        "| trials | seed | wall s | validation AUC | train AUC | test AUC "
        "| train/test | KS p sig | KS p bkg | trees | depth | eta |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        params = run["best_params"]
        lines.append(
            f"| {run['n_trials']} | {run['seed']} | {run['wall_s']:.0f} "
            f"| {run['validation_auc']:.4f} | {run['auc_train']:.4f} "
            f"| {run['auc_test']:.4f} | {run['auc_ratio']:.4f} "
            f"| {run['ks_pvalue_signal']:.3f} | {run['ks_pvalue_background']:.3f} "
            f"| {params['num_boost_round']} | {params['max_depth']} "
            f"| {params['learning_rate']:.3f} |"
        )
    lines.append("")
    for n_trials in sorted({r["n_trials"] for r in runs}):
        chosen = [r for r in runs if r["n_trials"] == n_trials]
        lines.append(
            f"- {n_trials} trials, median over seeds: validation AUC "
            f"{statistics.median(r['validation_auc'] for r in chosen):.4f}, "
            f"test AUC {statistics.median(r['auc_test'] for r in chosen):.4f}, "
            f"train/test {statistics.median(r['auc_ratio'] for r in chosen):.4f}, "
            f"wall {statistics.median(r['wall_s'] for r in chosen):.0f} s."
        )
    lines.append("")
    return lines


def _report_grid(out: Path) -> list[str]:
    path = out / "grid.json"
    if not path.is_file():
        return ["Grid phase not run.", ""]
    grid = json.loads(path.read_text())
    best = grid["best"]
    return [
        f"## Exhaustive grid ({grid['n_points']} points)",
        "",
        f"Grid: {GRID}. Each point trained to its full tree count; "
        f"{grid['n_within_ratio']} points meet train/validation AUC ratio <= "
        f"{MAX_AUC_RATIO}. Wall time {grid['wall_s']:.0f} s (1 thread).",
        "",
        f"- best point within the ratio limit: "
        f"{ {k: best[k] for k in GRID} }, validation AUC "
        f"{best['valid_auc']:.4f}, train AUC {best['train_auc']:.4f}, "
        f"test AUC {grid['best_test_auc']:.4f}.",
        f"- best penalised score of any grid point at its best iteration "
        f"(what early stopping would reach): "
        f"{grid['best_penalised_score_any_iteration']:.4f}.",
        "",
    ]


def _report_comparison(out: Path) -> list[str]:
    grid_path, optuna_path = out / "grid.json", out / "optuna.json"
    if not (grid_path.is_file() and optuna_path.is_file()):
        return []
    grid = json.loads(grid_path.read_text())
    runs = json.loads(optuna_path.read_text())["runs"]
    lines = [
        "## Optuna against the grid",
        "",
        "| trials | trials / grid points | median validation AUC - grid best "
        "| median test AUC | grid best test AUC | median wall / grid wall |",
        "|---|---|---|---|---|---|",
    ]
    for n_trials in sorted({r["n_trials"] for r in runs}):
        chosen = [r for r in runs if r["n_trials"] == n_trials]
        delta = (
            statistics.median(r["validation_auc"] for r in chosen)
            - grid["best"]["valid_auc"]
        )
        wall = statistics.median(r["wall_s"] for r in chosen) / grid["wall_s"]
        lines.append(
            f"| {n_trials} | {n_trials / grid['n_points']:.3f} | {delta:+.4f} "
            f"| {statistics.median(r['auc_test'] for r in chosen):.4f} "
            f"| {grid['best_test_auc']:.4f} | {wall:.3f} |"
        )
    lines.append("")
    return lines


def _report_threads(out: Path) -> list[str]:
    path = out / "threads.json"
    if not path.is_file():
        return ["Thread phase not run.", ""]
    threads = json.loads(path.read_text())
    lines = [
        "## Thread counts",
        "",
        "One training, 500 trees of depth 4 on the 19966 TrainTree events, "
        "median of 5 runs:",
        "",
        "| condition | nthread 1 (s) | nthread 2 (s) |",
        "|---|---|---|",
    ]
    labels = {"idle": "alone", "busy": "beside one busy-loop process"}
    for condition in ("idle", "busy"):
        row = threads[condition]
        lines.append(
            f"| {labels[condition]} | {row['nthread_1']['median_s']:.2f} "
            f"| {row['nthread_2']['median_s']:.2f} |"
        )
    lines += [
        "",
        f"Load average at start {threads['load_average_start']}, at end "
        f"{threads['load_average_end']}.",
        "",
    ]
    layouts_path = out / "layouts.json"
    if not layouts_path.is_file():
        return [*lines, "Layout phase not run.", ""]
    layouts = json.loads(layouts_path.read_text())
    lines += [
        f"{N_LAYOUT_FITS} random parameter sets from the search space (trees "
        "capped at 200), trained one after another or two at a time, median "
        "of 2 interleaved runs:",
        "",
        "| n_jobs x n_threads | wall (s) | runs (s) |",
        "|---|---|---|",
    ]
    for name, row in layouts["layouts"].items():
        runs = ", ".join(f"{t:.1f}" for t in row["runs_s"])
        lines.append(f"| {name} | {row['median_s']:.1f} | {runs} |")
    lines += [
        "",
        f"Load average at start {layouts['load_average_start']}, at end "
        f"{layouts['load_average_end']}.",
        "",
    ]
    return lines


def main() -> None:
    """Run the benchmark phases named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("/tmp/bench_bdt"),
        help="folder for the JSON results and study files",
    )
    parser.add_argument(
        "--phases",
        default="all",
        help="comma-separated: threads, layouts, grid, optuna, ceiling, report, all",
    )
    parser.add_argument(
        "--budgets",
        default="28,100",
        help="comma-separated trial budgets of the studies",
    )
    parser.add_argument(
        "--max-auc-ratio",
        type=float,
        default=MAX_AUC_RATIO,
        help="train/validation AUC ratio limit of the studies (the grid keeps "
        f"{MAX_AUC_RATIO})",
    )
    parser.add_argument(
        "--n-folds",
        type=int,
        default=None,
        help="k-fold cross-validation in the studies instead of one split",
    )
    parser.add_argument(
        "--final-model",
        choices=("refit", "fold_average"),
        default="refit",
        help="final model of the studies (fold_average needs --n-folds)",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        default=Path(__file__).with_name("RESULTS-bdt.md"),
        help="Markdown summary written by the report phase",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("optuna").setLevel(logging.WARNING)

    phases = args.phases.split(",")
    if "all" in phases:
        phases = ["threads", "layouts", "grid", "optuna", "report"]
    args.out.mkdir(parents=True, exist_ok=True)
    train, test = load_tree("TrainTree"), load_tree("TestTree")
    meta_path = args.out / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    commands = meta.get("commands", [])
    if phases != ["report"]:
        commands.append(" ".join([".venv/bin/python", *sys.argv]))
    write_json(
        meta_path,
        {
            "cpu_count": os.cpu_count(),
            "versions": library_versions(),
            "commands": commands,
            "tmva_test_auc": weighted_auc(
                test["is_signal"].to_numpy(), test["BDT"].to_numpy(), None
            ),
        },
    )

    if "threads" in phases:
        write_json(args.out / "threads.json", phase_threads(train))
    if "layouts" in phases:
        write_json(args.out / "layouts.json", phase_layouts(train))
    if "grid" in phases:
        write_json(args.out / "grid.json", phase_grid(train, test))
    if "ceiling" in phases:
        write_json(args.out / "ceiling.json", phase_ceiling(train, test))
    if "optuna" in phases:
        budgets = [int(b) for b in args.budgets.split(",")]
        write_json(
            args.out / "optuna.json",
            phase_optuna(
                train,
                test,
                budgets,
                args.out,
                args.max_auc_ratio,
                args.n_folds,
                args.final_model,
            ),
        )
    if "report" in phases:
        phase_report(args.out, args.markdown)
        print(args.markdown.read_text())


if __name__ == "__main__":
    main()
