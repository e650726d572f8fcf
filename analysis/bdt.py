"""BDT training: xgboost boosted decision trees tuned by an optuna study.

The stage takes a polars frame with one row per candidate, a label column
(1 signal, 0 background), an optional weight column and an event-id column.
Rows are split into training and validation sets by event, never by row, so
all candidates of one event sit on the same side. An optuna study (TPE sampler
with a fixed seed, median pruner fed by xgboost's per-iteration validation
AUC) searches the space in :data:`SEARCH_SPACE`. Each trial stops early when
its penalised validation AUC has not improved for ``early_stopping_rounds``
iterations. The objective is the validation AUC minus a penalty that is zero
while the train/validation AUC ratio stays at or below ``max_auc_ratio`` and
equals the excess of the ratio above it otherwise.

Weights: AUCs are weighted with the event weights. With ``balance_classes`` the
signal weights are scaled so their sum equals the background's sum. An AUC is
unchanged when all weights of one class are scaled by the same factor, so the
scaling changes the trees (through the loss) but not the AUC definition.

Models are stored as xgboost JSON beside a metadata JSON, never pickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import platform
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl
import xgboost as xgb
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from analysis.errors import (
    ConfigError,
    InputFileError,
    MissingBranchError,
    PhysicsError,
    did_you_mean,
)
from analysis.outputs import write_json, write_text

log = logging.getLogger(__name__)

#: Hyperparameters searched by optuna: name -> (kind, low, high, log scale) or
#: ("categorical", choices). ``num_boost_round`` is the maximum number of trees;
#: early stopping usually keeps fewer. ``max_bin`` 32-512 spans the 5-9 bit
#: binning of the FastBDT grid that this search replaces.
SEARCH_SPACE: dict[str, tuple[Any, ...]] = {
    "num_boost_round": ("int", 50, 2000, True),
    "max_depth": ("int", 1, 8, False),
    "learning_rate": ("float", 0.005, 0.3, True),
    "subsample": ("float", 0.1, 1.0, False),
    "colsample_bytree": ("float", 0.3, 1.0, False),
    "min_child_weight": ("float", 0.1, 100.0, True),
    "gamma": ("float", 1e-4, 5.0, True),
    "reg_lambda": ("float", 1e-3, 30.0, True),
    "max_bin": ("categorical", (32, 64, 128, 256, 512)),
}

#: Iterations between two reports of the running validation score to the pruner.
REPORT_EVERY = 10

_PRUNERS = ("median", "none")
_FINAL_MODELS = ("refit", "fold_average")
#: Largest accepted difference of log-odds between the averaged booster and
#: the mean of the fold boosters. xgboost sums in float32, so rounding gives
#: differences of about 1e-6 (measured: 1.4e-6 for 120 trees).
_AVERAGE_TOLERANCE = 1e-4
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")
_METADATA_SUFFIX = ".meta.json"
_FORMAT_VERSION = 1


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(
            f"bdt setting {name}={value!r} is invalid: expected an integer >= {minimum}"
        )


@dataclass(frozen=True)
class BDTSettings:
    """Settings of the BDT training and its optuna study.

    Attributes:
        n_trials: total number of optuna trials, counting trials already stored
            in a resumed study.
        timeout_s: wall-time budget of this call in seconds; None means no limit.
        seed: seed of the TPE sampler, of xgboost's row and column sampling and,
            unless ``split_seed`` is set, of the train/validation split.
        max_auc_ratio: train/validation AUC ratio above which a trial's score is
            penalised by the excess of the ratio.
        n_threads: xgboost ``nthread`` of each trial.
        n_jobs: optuna trials run in parallel (threads). Results of a parallel
            study depend on timing, so only ``n_jobs=1`` reproduces exactly.
        early_stopping_rounds: iterations without improvement of the penalised
            validation AUC before a trial stops adding trees.
        validation_fraction: fraction of events put in the validation set.
        balance_classes: scale signal weights so their sum equals the
            background's sum.
        n_folds: k-fold cross-validation by event instead of one validation
            split; None for one split.
        split_seed: seed of the event split; None uses ``seed``. A fixed split
            seed compares studies of different sampler seeds on the same split.
        pruner: "median" (optuna MedianPruner) or "none".
        study_name: name of the study inside the storage file.
        final_model: "refit" trains one model with the best parameters (on
            the training side of the split, or on all rows with k folds and
            the mean tree count). "fold_average" needs ``n_folds`` and keeps
            the k fold models, each trained on its training folds to its own
            tree count, averaged into one model.
    """

    n_trials: int = 30
    timeout_s: float | None = None
    seed: int = 42
    max_auc_ratio: float = 1.015
    n_threads: int = 1
    n_jobs: int = 1
    early_stopping_rounds: int = 50
    validation_fraction: float = 0.25
    balance_classes: bool = True
    n_folds: int | None = None
    split_seed: int | None = None
    pruner: str = "median"
    study_name: str = "bdt"
    final_model: str = "refit"

    def __post_init__(self) -> None:
        _check_int("n_trials", self.n_trials, minimum=1)
        _check_int("seed", self.seed, minimum=0)
        _check_int("n_threads", self.n_threads, minimum=1)
        _check_int("n_jobs", self.n_jobs, minimum=1)
        _check_int("early_stopping_rounds", self.early_stopping_rounds, minimum=1)

        if self.split_seed is not None:
            _check_int("split_seed", self.split_seed, minimum=0)
        if self.n_folds is not None:
            _check_int("n_folds", self.n_folds, minimum=2)
        if self.timeout_s is not None and not (
            _is_number(self.timeout_s) and self.timeout_s > 0
        ):
            raise ConfigError(
                f"bdt setting timeout_s={self.timeout_s!r} is invalid: expected a "
                "positive number of seconds or null for no limit"
            )
        if not (_is_number(self.max_auc_ratio) and self.max_auc_ratio >= 1.0):
            raise ConfigError(
                f"bdt setting max_auc_ratio={self.max_auc_ratio!r} is invalid: "
                "expected a number >= 1 (the train/validation AUC ratio limit)"
            )
        if not (
            _is_number(self.validation_fraction) and 0 < self.validation_fraction < 1
        ):
            raise ConfigError(
                f"bdt setting validation_fraction={self.validation_fraction!r} is "
                "invalid: expected a number strictly between 0 and 1"
            )
        if not isinstance(self.balance_classes, bool):
            raise ConfigError(
                f"bdt setting balance_classes={self.balance_classes!r} is invalid: "
                "expected true or false"
            )
        if self.pruner not in _PRUNERS:
            raise ConfigError(
                f"bdt setting pruner={self.pruner!r} is invalid: expected one of "
                f"{', '.join(_PRUNERS)}.{did_you_mean(str(self.pruner), _PRUNERS)}"
            )
        if self.final_model not in _FINAL_MODELS:
            raise ConfigError(
                f"bdt setting final_model={self.final_model!r} is invalid: expected "
                f"one of {', '.join(_FINAL_MODELS)}."
                + did_you_mean(str(self.final_model), _FINAL_MODELS)
            )
        if self.final_model == "fold_average" and self.n_folds is None:
            raise ConfigError(
                "bdt setting final_model='fold_average' averages the models of "
                "k-fold cross-validation; set n_folds (for example 5) as well"
            )
        if not (isinstance(self.study_name, str) and self.study_name):
            raise ConfigError(
                f"bdt setting study_name={self.study_name!r} is invalid: expected "
                "a non-empty string"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> BDTSettings:
        """Build settings from a config mapping, rejecting unknown keys.

        Raises:
            ConfigError: a key is not a setting (the message suggests near
                names) or a value is invalid.
        """
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                raise ConfigError(
                    f"unknown bdt setting {key!r}; known settings: "
                    f"{', '.join(known)}.{did_you_mean(str(key), known)}"
                )
        return cls(**dict(values))

    @property
    def effective_split_seed(self) -> int:
        """Seed of the event split: ``split_seed`` if set, else ``seed``."""
        return self.seed if self.split_seed is None else self.split_seed


@dataclass
class TrainedBDT:
    """A trained BDT with what is needed to apply and describe it.

    Attributes:
        booster: the xgboost booster, cut at the selected number of trees.
        features: feature names in the order the booster expects them.
        best_params: xgboost parameters and ``num_boost_round`` (trees kept) of
            the selected trial.
        metadata: training settings, seed, split sizes, library versions and
            the selected trial's scores; stored beside the model by
            :func:`save_model`.
        validation_auc: weighted AUC on the validation set (mean over folds
            with k-fold cross-validation).
        train_auc: weighted AUC on the training set of the same split.
        n_trials_done: complete and pruned trials in the study.
        study: the optuna study, or None for a model read by :func:`load_model`.
    """

    booster: xgb.Booster
    features: list[str]
    best_params: dict[str, Any]
    metadata: dict[str, Any]
    validation_auc: float
    train_auc: float
    n_trials_done: int
    study: optuna.Study | None = field(default=None, repr=False, compare=False)


@dataclass
class _Dataset:
    x: np.ndarray
    y: np.ndarray
    w: np.ndarray
    folds: np.ndarray  # fold index per row; with one split, 1 marks validation


def train_bdt(
    frame: pl.DataFrame,
    features: Sequence[str],
    *,
    label: str = "is_signal",
    weight: str | None = "weight",
    group: str | None = "event_id",
    settings: BDTSettings = BDTSettings(),
    study_path: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TrainedBDT:
    """Tune an xgboost BDT with optuna and return the model of the best trial.

    Args:
        frame: one row per candidate.
        features: input columns of the BDT, in the order the model uses them.
        label: column with 1 for signal and 0 for background.
        weight: column of event weights (non-negative); None for unit weights.
        group: event-id column; the split puts all rows of one event on the
            same side. None treats every row as its own event.
        settings: study and training settings.
        study_path: optuna storage file (``.db``, ``.sqlite`` or ``.sqlite3``
            for SQLite, any other name for a journal file). An existing study
            of the same name resumes and counts its finished trials towards
            ``settings.n_trials``. None keeps the study in memory.
        progress: called as ``progress(trials_done, n_trials)`` after each
            finished trial; ``trials_done`` counts complete and pruned trials.

    Returns:
        The trained BDT. With one validation split the model is retrained on
        the training set with the best trial's parameters and tree count. With
        k-fold cross-validation it is retrained on all rows with the mean tree
        count of the folds.

    Raises:
        MissingBranchError: a feature, label, weight or group column is missing.
        ConfigError: the label is not 0/1, weights are negative or not finite,
            or a stored study was started with other features, data or settings.
        PhysicsError: a class is missing from the frame or from one side of the
            split, or no trial finished.
    """
    features = list(features)
    _check_columns(frame, features, label, weight, group)
    data = _prepare(frame, features, label, weight, group, settings)
    fingerprint = _fingerprint(data, features, settings)

    study = _open_study(settings, study_path, fingerprint)
    n_done = _count_finished(study)
    remaining = settings.n_trials - n_done
    log.info(
        "bdt study %r: %d of %d trials already finished, running %d more",
        settings.study_name,
        n_done,
        settings.n_trials,
        max(remaining, 0),
    )
    if remaining > 0:
        callbacks = []
        if progress is not None:
            callbacks.append(_progress_callback(progress, settings.n_trials))
        study.optimize(
            lambda trial: _objective(trial, data, features, settings),
            n_trials=remaining,
            timeout=settings.timeout_s,
            n_jobs=settings.n_jobs,
            callbacks=callbacks,
            gc_after_trial=False,
        )

    completed = study.get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
    )
    if not completed:
        raise PhysicsError(
            f"bdt study {settings.study_name!r} has no complete trial among its "
            f"{len(study.trials)} trials (all pruned, failed or cut off); raise "
            "n_trials or timeout_s, or set pruner to 'none'"
        )
    best = study.best_trial
    bdt = _fit_final(best, data, features, settings)
    bdt.n_trials_done = _count_finished(study)
    bdt.study = study
    bdt.metadata.update(
        {
            "label": label,
            "weight": weight,
            "group": group,
            "study_path": None if study_path is None else str(study_path),
            "n_trials_done": bdt.n_trials_done,
        }
    )
    log.info(
        "bdt best trial %d: validation AUC %.4f, train AUC %.4f, ratio %.4f, %d trees",
        best.number,
        bdt.validation_auc,
        bdt.train_auc,
        bdt.train_auc / bdt.validation_auc,
        bdt.best_params["num_boost_round"],
    )
    if bdt.train_auc / bdt.validation_auc > settings.max_auc_ratio:
        log.warning(
            "bdt best trial %d exceeds the train/validation AUC ratio limit: "
            "%.4f > %.4f, kept because its penalised score is still the highest; "
            "with small validation sets the ratio fluctuates by a few percent",
            best.number,
            bdt.train_auc / bdt.validation_auc,
            settings.max_auc_ratio,
        )
    return bdt


def predict(
    bdt: TrainedBDT, frame: pl.DataFrame, chunk_rows: int = 200_000
) -> np.ndarray:
    """Compute the BDT score (signal probability, 0 to 1) of every row.

    The frame is processed in slices of ``chunk_rows`` rows so memory stays
    bounded for large samples. Null and NaN feature values are treated as
    missing by xgboost.

    Raises:
        MissingBranchError: a feature column of the model is missing.
        ConfigError: ``chunk_rows`` is not a positive integer.
    """
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int):
        raise ConfigError(f"chunk_rows={chunk_rows!r} is invalid: expected an int")
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows={chunk_rows} is invalid: expected >= 1")
    _check_columns(frame, bdt.features, None, None, None)

    scores = np.empty(frame.height, dtype=np.float64)
    for start in range(0, frame.height, chunk_rows):
        chunk = frame.slice(start, chunk_rows).select(bdt.features)
        x = chunk.to_numpy().astype(np.float32, copy=False)
        matrix = xgb.DMatrix(x, feature_names=bdt.features, nthread=1)
        scores[start : start + chunk.height] = bdt.booster.predict(matrix)
    return scores


def add_bdt_column(
    bdt: TrainedBDT,
    frame: pl.DataFrame,
    name: str = "bdt",
    chunk_rows: int = 200_000,
) -> pl.DataFrame:
    """Return ``frame`` with a float64 column ``name`` holding the BDT score.

    Raises:
        MissingBranchError: a feature column of the model is missing.
        ConfigError: the frame already has a column ``name``.
    """
    if name in frame.columns:
        raise ConfigError(
            f"frame already has a column {name!r}; drop it or choose another "
            "name for the BDT score"
        )
    return frame.with_columns(
        pl.Series(name, predict(bdt, frame, chunk_rows=chunk_rows))
    )


def save_model(bdt: TrainedBDT, path: Path) -> Path:
    """Save the booster as xgboost JSON and its metadata beside it, atomically.

    ``path`` gets the model (a ``.json`` suffix is added when missing) and
    ``<stem>.meta.json`` the metadata: features in order, best parameters,
    AUCs, settings, seed, library versions and the model file's SHA-256.

    Returns:
        The path of the model file.

    Raises:
        OutputError: writing failed; earlier files at those paths are unchanged.
    """
    path = Path(path)
    if path.suffix != ".json":
        path = path.with_name(path.name + ".json")
    model_text = bytes(bdt.booster.save_raw(raw_format="json")).decode("utf-8")
    sidecar = {
        "format_version": _FORMAT_VERSION,
        "model_file": path.name,
        "model_sha256": hashlib.sha256(model_text.encode("utf-8")).hexdigest(),
        "features": list(bdt.features),
        "best_params": bdt.best_params,
        "validation_auc": bdt.validation_auc,
        "train_auc": bdt.train_auc,
        "n_trials_done": bdt.n_trials_done,
        "metadata": bdt.metadata,
    }
    write_text(path, model_text)
    write_json(_metadata_path(path), sidecar)
    log.info("bdt model saved to %s", path)
    return path


def load_model(path: Path, features: Sequence[str] | None = None) -> TrainedBDT:
    """Load a model written by :func:`save_model`.

    Args:
        path: the model JSON file.
        features: the feature order the caller will supply; None skips the
            check.

    Raises:
        InputFileError: the model or its metadata file is missing, unreadable,
            or they do not belong together.
        ConfigError: ``features`` differs from the stored feature order.
    """
    path = Path(path)
    meta_path = _metadata_path(path)
    for needed in (path, meta_path):
        if not needed.is_file():
            raise InputFileError(
                f"bdt model file {needed} not found; save_model writes the model "
                f"and {meta_path.name} side by side"
            )
    try:
        sidecar = json.loads(meta_path.read_text(encoding="utf-8"))
        model_bytes = path.read_bytes()
    except (OSError, json.JSONDecodeError) as err:
        raise InputFileError(f"cannot read bdt model {path}: {err}") from err

    digest = hashlib.sha256(model_bytes).hexdigest()
    if digest != sidecar.get("model_sha256"):
        raise InputFileError(
            f"bdt model {path} does not match its metadata {meta_path.name}: "
            f"SHA-256 {digest[:12]} != {str(sidecar.get('model_sha256'))[:12]}; "
            "save the model again with save_model"
        )

    booster = xgb.Booster()
    booster.load_model(bytearray(model_bytes))
    stored = list(sidecar["features"])
    if booster.feature_names is not None and list(booster.feature_names) != stored:
        raise InputFileError(
            f"bdt model {path} lists features {booster.feature_names} but its "
            f"metadata lists {stored}; the files do not belong together"
        )
    if features is not None and list(features) != stored:
        raise ConfigError(
            f"feature order mismatch for bdt model {path}: the model expects "
            f"{stored}, the caller gave {list(features)}; pass the features in "
            "the model's order"
        )
    return TrainedBDT(
        booster=booster,
        features=stored,
        best_params=dict(sidecar["best_params"]),
        metadata=dict(sidecar["metadata"]),
        validation_auc=float(sidecar["validation_auc"]),
        train_auc=float(sidecar["train_auc"]),
        n_trials_done=int(sidecar["n_trials_done"]),
    )


def load_study(study_path: Path, study_name: str = "bdt") -> optuna.Study:
    """Open a stored study, for example to draw its plots after training.

    Raises:
        InputFileError: the file does not exist or contains no study of that name.
    """
    study_path = Path(study_path)
    if not study_path.is_file():
        raise InputFileError(f"optuna study file {study_path} not found")
    storage = _storage(study_path)
    names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
    if study_name not in names:
        raise InputFileError(
            f"optuna study {study_name!r} not found in {study_path}, which contains "
            f"{names}.{did_you_mean(study_name, names)}"
        )
    return optuna.load_study(study_name=study_name, storage=storage)


def weighted_auc(y: np.ndarray, score: np.ndarray, w: np.ndarray | None) -> float:
    """Return the weighted ROC AUC of ``score`` for labels ``y`` (1 = signal)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score, sample_weight=w))


def split_by_group(groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Return a boolean validation mask that keeps each group on one side.

    A ``fraction`` of the distinct groups (rounded, at least one) is drawn with
    ``numpy.random.default_rng(seed)``.
    """
    _, inverse = np.unique(groups, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.size else 0
    order = np.random.default_rng(seed).permutation(n_groups)
    n_valid = max(1, round(fraction * n_groups))
    is_valid_group = np.zeros(n_groups, dtype=bool)
    is_valid_group[order[:n_valid]] = True
    return is_valid_group[inverse]


def fold_by_group(groups: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """Return the fold index (0 to n_folds-1) of each row, one fold per group."""
    _, inverse = np.unique(groups, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if inverse.size else 0
    fold_of_group = np.random.default_rng(seed).permutation(n_groups) % n_folds
    return fold_of_group[inverse]


def library_versions() -> dict[str, str]:
    """Return the versions of the libraries that determine the model."""
    import sklearn

    return {
        "python": platform.python_version(),
        "xgboost": xgb.__version__,
        "optuna": optuna.__version__,
        "numpy": np.__version__,
        "polars": pl.__version__,
        "scikit-learn": sklearn.__version__,
    }


# Validation helpers.


def _check_columns(
    frame: pl.DataFrame,
    features: Sequence[str],
    label: str | None,
    weight: str | None,
    group: str | None,
) -> None:
    if not features:
        raise ConfigError("bdt feature list is empty; name at least one column")
    if len(set(features)) != len(features):
        repeated = sorted({f for f in features if list(features).count(f) > 1})
        raise ConfigError(f"bdt feature list repeats {repeated}; list each once")
    roles = [("feature", f) for f in features]
    roles += [
        (role, c)
        for role, c in (("label", label), ("weight", weight), ("group", group))
        if c
    ]
    for role, column in roles:
        if column not in frame.columns:
            raise MissingBranchError(
                f"bdt {role} column {column!r} not found in the frame "
                f"({frame.width} columns).{did_you_mean(column, frame.columns)}"
            )


def _prepare(
    frame: pl.DataFrame,
    features: list[str],
    label: str,
    weight: str | None,
    group: str | None,
    settings: BDTSettings,
) -> _Dataset:
    x = frame.select(features).to_numpy().astype(np.float32)

    y_raw = frame[label].to_numpy()
    if frame[label].null_count() or not np.isin(y_raw, (0, 1)).all():
        bad = frame.filter(~pl.col(label).is_in([0, 1]) | pl.col(label).is_null())
        raise ConfigError(
            f"bdt label column {label!r} must hold 0 (background) or 1 (signal); "
            f"found {bad[label].unique().head(5).to_list()}"
        )
    y = y_raw.astype(np.int32)
    n_signal = int(y.sum())
    if n_signal == 0 or n_signal == y.size:
        raise PhysicsError(
            f"bdt training needs signal and background rows; label {label!r} "
            f"has {n_signal} signal and {y.size - n_signal} background rows"
        )

    if weight is None:
        w = np.ones(y.size, dtype=np.float64)
    else:
        w = frame[weight].cast(pl.Float64).fill_null(np.nan).to_numpy().copy()
        if not np.isfinite(w).all() or (w < 0).any():
            raise ConfigError(
                f"bdt weight column {weight!r} has {int((~np.isfinite(w)).sum())} "
                f"non-finite and {int((w < 0).sum())} negative values; xgboost "
                "needs finite non-negative weights"
            )
    if settings.balance_classes:
        w_signal, w_background = w[y == 1].sum(), w[y == 0].sum()
        if w_signal <= 0 or w_background <= 0:
            raise PhysicsError(
                f"cannot balance classes: signal weight sum {w_signal}, "
                f"background weight sum {w_background}"
            )
        w[y == 1] *= w_background / w_signal
        log.debug("bdt signal weights scaled by %.6g", w_background / w_signal)

    groups = np.arange(y.size) if group is None else frame[group].to_numpy()
    seed = settings.effective_split_seed
    if settings.n_folds is None:
        folds = split_by_group(groups, settings.validation_fraction, seed)
        folds = folds.astype(np.int32)
        n_sides = 2
    else:
        folds = fold_by_group(groups, settings.n_folds, seed).astype(np.int32)
        n_sides = settings.n_folds
    for side in range(n_sides):
        y_side = y[folds == side]
        if y_side.size == 0 or y_side.min() == y_side.max():
            raise PhysicsError(
                f"bdt split (seed {seed}) leaves part {side} of {n_sides} with "
                f"{int(y_side.sum())} signal and {int((y_side == 0).sum())} "
                "background rows; more events are needed"
            )
    log.info(
        "bdt data: %d rows, %d signal, %d features, split %s (seed %d)",
        y.size,
        n_signal,
        len(features),
        "train/validation" if settings.n_folds is None else f"{n_sides} folds",
        seed,
    )
    return _Dataset(x=x, y=y, w=w, folds=folds)


# The optuna study.


def _fingerprint(
    data: _Dataset, features: list[str], settings: BDTSettings
) -> dict[str, Any]:
    digest = hashlib.sha256()
    for array in (data.x, data.y, data.w, data.folds):
        digest.update(np.ascontiguousarray(array).tobytes())
    # Settings that change the meaning of a trial; budgets and parallelism may
    # change between runs of one study.
    fixed = {
        key: value
        for key, value in dataclasses.asdict(settings).items()
        if key not in ("n_trials", "timeout_s", "n_jobs", "study_name", "final_model")
    }
    return {"features": features, "data_sha256": digest.hexdigest(), "settings": fixed}


def _open_study(
    settings: BDTSettings, study_path: Path | None, fingerprint: dict[str, Any]
) -> optuna.Study:
    storage: optuna.storages.BaseStorage | None = None
    if study_path is not None:
        study_path = Path(study_path)
        study_path.parent.mkdir(parents=True, exist_ok=True)
        storage = _storage(study_path)

    pruner: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=5 * REPORT_EVERY)
        if settings.pruner == "median"
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(
        storage=storage,
        study_name=settings.study_name,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=settings.seed),
        pruner=pruner,
        load_if_exists=True,
    )

    stored = study.user_attrs.get("fingerprint")
    if stored is None:
        study.set_user_attr("fingerprint", fingerprint)
    elif stored != json.loads(json.dumps(fingerprint)):
        changed = [key for key in fingerprint if stored.get(key) != fingerprint[key]]
        raise ConfigError(
            f"bdt study {settings.study_name!r} in {study_path} was started with "
            f"different {', '.join(changed)}; delete that file or use another "
            "run directory to start a new study"
        )
    elif storage is not None:
        log.info("bdt study resumed from %s", study_path)
    return study


def _storage(study_path: Path) -> optuna.storages.BaseStorage:
    if study_path.suffix in _SQLITE_SUFFIXES:
        # optuna fills a {SCHEMA_VERSION} template in the URL with
        # str.format, so braces of the path are doubled to stay literal.
        path = str(study_path.resolve()).replace("{", "{{").replace("}", "}}")
        return RDBStorage(f"sqlite:///{path}")
    return JournalStorage(JournalFileBackend(str(study_path)))


def _count_finished(study: optuna.Study) -> int:
    # Failed trials, and trials cut off by an interruption, are not counted,
    # so a resumed study replaces them.
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=states))


def _progress_callback(
    progress: Callable[[int, int], None], n_trials: int
) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        progress(_count_finished(study), n_trials)

    return report


def _suggest(trial: optuna.Trial) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, spec in SEARCH_SPACE.items():
        if spec[0] == "int":
            params[name] = trial.suggest_int(name, spec[1], spec[2], log=spec[3])
        elif spec[0] == "float":
            params[name] = trial.suggest_float(name, spec[1], spec[2], log=spec[3])
        else:
            params[name] = trial.suggest_categorical(name, list(spec[1]))
    return params


def _xgb_params(params: Mapping[str, Any], settings: BDTSettings) -> dict[str, Any]:
    booster_params = {k: v for k, v in params.items() if k != "num_boost_round"}
    booster_params.update(
        objective="binary:logistic",
        eval_metric="auc",
        tree_method="hist",
        nthread=settings.n_threads,
        seed=settings.seed,
    )
    return booster_params


def penalised_score(valid_auc: float, train_auc: float, max_auc_ratio: float) -> float:
    """Return the validation AUC minus the excess of train/validation AUC ratio.

    The penalty is ``max(0, train_auc / valid_auc - max_auc_ratio)``.
    """
    return valid_auc - max(0.0, train_auc / valid_auc - max_auc_ratio)


class _PenalisedEarlyStopping(xgb.callback.TrainingCallback):
    """Track the best iteration by penalised validation AUC and stop early.

    Reports the running best score to the optuna trial every
    :data:`REPORT_EVERY` iterations so the pruner can stop a poor trial.
    """

    def __init__(
        self,
        max_auc_ratio: float,
        rounds: int,
        trial: optuna.Trial | None,
        step_offset: int = 0,
    ) -> None:
        super().__init__()
        self.max_auc_ratio = max_auc_ratio
        self.rounds = rounds
        self.trial = trial
        self.step_offset = step_offset
        self.best_score = -math.inf
        self.best_iteration = 0
        self.best_valid_auc = math.nan
        self.best_train_auc = math.nan
        self.pruned = False

    def after_iteration(
        self, model: Any, epoch: int, evals_log: Mapping[str, Mapping[str, Any]]
    ) -> bool:
        train_auc = float(evals_log["train"]["auc"][-1])
        valid_auc = float(evals_log["valid"]["auc"][-1])
        score = penalised_score(valid_auc, train_auc, self.max_auc_ratio)
        if score > self.best_score:
            self.best_score = score
            self.best_iteration = epoch
            self.best_valid_auc = valid_auc
            self.best_train_auc = train_auc

        if self.trial is not None and (epoch + 1) % REPORT_EVERY == 0:
            self.trial.report(self.best_score, self.step_offset + epoch + 1)
            if self.trial.should_prune():
                self.pruned = True
                return True
        return epoch - self.best_iteration >= self.rounds


def _matrix(
    rows: tuple[np.ndarray, np.ndarray, np.ndarray],
    features: list[str],
    settings: BDTSettings,
) -> xgb.DMatrix:
    """Build the xgboost matrix of ``(x, y, w)`` rows."""
    return xgb.DMatrix(
        rows[0],
        label=rows[1],
        weight=rows[2],
        feature_names=features,
        nthread=settings.n_threads,
    )


def _fit(
    params: Mapping[str, Any],
    rows: tuple[np.ndarray, np.ndarray, np.ndarray],
    features: list[str],
    settings: BDTSettings,
    n_trees: int,
) -> xgb.Booster:
    """Train ``n_trees`` trees on ``rows`` without early stopping."""
    return xgb.train(
        _xgb_params(params, settings),
        _matrix(rows, features, settings),
        num_boost_round=n_trees,
    )


def _train_one(
    params: Mapping[str, Any],
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray, np.ndarray],
    features: list[str],
    settings: BDTSettings,
    trial: optuna.Trial | None,
    step_offset: int = 0,
) -> _PenalisedEarlyStopping:
    dtrain = _matrix(train, features, settings)
    dvalid = _matrix(valid, features, settings)
    stopper = _PenalisedEarlyStopping(
        settings.max_auc_ratio, settings.early_stopping_rounds, trial, step_offset
    )
    xgb.train(
        _xgb_params(params, settings),
        dtrain,
        num_boost_round=int(params["num_boost_round"]),
        evals=[(dtrain, "train"), (dvalid, "valid")],
        callbacks=[stopper],
        verbose_eval=False,
    )
    return stopper


def _sides(
    data: _Dataset, fold: int
) -> tuple[
    tuple[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]
]:
    is_valid = data.folds == fold
    train = (data.x[~is_valid], data.y[~is_valid], data.w[~is_valid])
    valid = (data.x[is_valid], data.y[is_valid], data.w[is_valid])
    return train, valid


def _objective(
    trial: optuna.Trial, data: _Dataset, features: list[str], settings: BDTSettings
) -> float:
    params = _suggest(trial)
    folds = [1] if settings.n_folds is None else list(range(settings.n_folds))
    scores, valid_aucs, train_aucs, iterations = [], [], [], []
    for index, fold in enumerate(folds):
        train, valid = _sides(data, fold)
        # With k folds, fold i reports at steps after those of folds 0..i-1.
        offset = index * int(SEARCH_SPACE["num_boost_round"][2])
        stopper = _train_one(params, train, valid, features, settings, trial, offset)
        if stopper.pruned:
            raise optuna.TrialPruned()
        scores.append(stopper.best_score)
        valid_aucs.append(stopper.best_valid_auc)
        train_aucs.append(stopper.best_train_auc)
        iterations.append(stopper.best_iteration + 1)

    trial.set_user_attr("valid_auc", float(np.mean(valid_aucs)))
    trial.set_user_attr("train_auc", float(np.mean(train_aucs)))
    trial.set_user_attr("n_trees", [int(n) for n in iterations])
    return float(np.mean(scores))


def _fit_final(
    best: optuna.trial.FrozenTrial,
    data: _Dataset,
    features: list[str],
    settings: BDTSettings,
) -> TrainedBDT:
    n_trees = round(float(np.mean(best.user_attrs["n_trees"])))
    params = {**best.params, "num_boost_round": n_trees}
    if settings.n_folds is None:
        train, _ = _sides(data, 1)
    else:
        train = (data.x, data.y, data.w)

    if settings.final_model == "fold_average":
        booster = _fold_average(best, data, features, settings)
        params["num_boost_round"] = booster.num_boosted_rounds()
    else:
        booster = _fit(params, train, features, settings, n_trees)

    validation_auc = float(best.user_attrs["valid_auc"])
    train_auc = float(best.user_attrs["train_auc"])
    if settings.n_folds is None:
        # The retrained booster must reproduce the trial's validation AUC
        # because training with a fixed seed and thread count is deterministic.
        _, valid = _sides(data, 1)
        score = booster.predict(xgb.DMatrix(valid[0], feature_names=features))
        refit_auc = weighted_auc(valid[1], score, valid[2])
        if not math.isclose(refit_auc, validation_auc, abs_tol=1e-6):
            log.warning(
                "bdt refit gives validation AUC %.6f, trial %d gave %.6f",
                refit_auc,
                best.number,
                validation_auc,
            )

    metadata = {
        "seed": settings.seed,
        "split_seed": settings.effective_split_seed,
        "settings": dataclasses.asdict(settings),
        "search_space": {k: list(v) for k, v in SEARCH_SPACE.items()},
        "best_trial": best.number,
        "best_score": best.value,
        "n_trees_per_fold": best.user_attrs["n_trees"],
        "final_model": settings.final_model,
        "n_train_rows": int(train[1].size),
        "n_rows": int(data.y.size),
        "library_versions": library_versions(),
    }
    return TrainedBDT(
        booster=booster,
        features=list(features),
        best_params={**params, **_xgb_params({}, settings)},
        metadata=metadata,
        validation_auc=validation_auc,
        train_auc=train_auc,
        n_trials_done=0,
    )


def _fold_average(
    best: optuna.trial.FrozenTrial,
    data: _Dataset,
    features: list[str],
    settings: BDTSettings,
) -> xgb.Booster:
    """Train the k fold models of the best trial and average them into one.

    Fold i is trained on the other folds to the tree count it reached in the
    trial. The average of the k margins (log-odds) is itself a booster: all
    trees, with leaf values divided by k, and the mean of the base margins.

    Raises:
        PhysicsError: the averaged booster does not reproduce the mean margin,
            which would mean xgboost changed its model format.
    """
    boosters = []
    for fold, n_trees in enumerate(best.user_attrs["n_trees"]):
        train, _ = _sides(data, fold)
        boosters.append(_fit(best.params, train, features, settings, n_trees))
    averaged = average_boosters(boosters)

    matrix = xgb.DMatrix(data.x, feature_names=features, nthread=settings.n_threads)
    expected = np.mean(
        [b.predict(matrix, output_margin=True) for b in boosters], axis=0
    )
    found = averaged.predict(matrix, output_margin=True)
    worst = float(np.max(np.abs(found - expected), initial=0.0))
    if worst > _AVERAGE_TOLERANCE:
        raise PhysicsError(
            f"the averaged fold models differ from the mean of the folds by "
            f"{worst:.3g} in log-odds (tolerance {_AVERAGE_TOLERANCE}); xgboost "
            f"{xgb.__version__} may store models differently, so set "
            "final_model: refit"
        )
    log.info(
        "bdt: averaged %d fold models with %s trees into one model",
        len(boosters),
        [b.num_boosted_rounds() for b in boosters],
    )
    return averaged


def average_boosters(boosters: Sequence[xgb.Booster]) -> xgb.Booster:
    """Return one binary:logistic booster whose margin is the mean of the given ones.

    The trees of every booster are concatenated with their leaf values divided
    by the number of boosters, and the base score is set to the sigmoid of the
    mean base margin. Works on xgboost's JSON model format (gbtree).

    Raises:
        ConfigError: no boosters, or a booster is not a single-output gbtree.
    """
    if not boosters:
        raise ConfigError("average_boosters needs at least one booster")
    models = [json.loads(bytes(b.save_raw(raw_format="json"))) for b in boosters]
    scale = 1.0 / len(models)
    base_margins = []
    trees: list[dict[str, Any]] = []
    for model in models:
        learner = model["learner"]
        booster = learner["gradient_booster"]
        if booster["name"] != "gbtree" or learner["objective"]["name"] != (
            "binary:logistic"
        ):
            raise ConfigError(
                f"average_boosters takes binary:logistic gbtree models, got "
                f"{learner['objective']['name']} {booster['name']}"
            )
        base = float(str(learner["learner_model_param"]["base_score"]).strip("[]"))
        base_margins.append(math.log(base / (1.0 - base)))
        for tree in booster["model"]["trees"]:
            for node, left in enumerate(tree["left_children"]):
                if left == -1:  # a leaf: its value is in split_conditions
                    tree["split_conditions"][node] *= scale
                    tree["base_weights"][node] *= scale
            tree["id"] = len(trees)
            trees.append(tree)

    merged = models[0]
    body = merged["learner"]["gradient_booster"]["model"]
    body["trees"] = trees
    body["tree_info"] = [0] * len(trees)
    body["iteration_indptr"] = list(range(len(trees) + 1))
    body["gbtree_model_param"]["num_trees"] = str(len(trees))
    mean_margin = float(np.mean(base_margins))
    base_score = 1.0 / (1.0 + math.exp(-mean_margin))
    merged["learner"]["learner_model_param"]["base_score"] = f"[{base_score!r}]"
    averaged = xgb.Booster()
    averaged.load_model(bytearray(json.dumps(merged).encode("utf-8")))
    return averaged


def _metadata_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.stem + _METADATA_SUFFIX)


# Metrics and figures live in analysis.bdt_report, which imports this module;
# they are re-exported here so callers find the whole stage in one place.
from analysis.bdt_report import evaluate, write_bdt_plots  # noqa: E402

__all__ = [
    "SEARCH_SPACE",
    "BDTSettings",
    "TrainedBDT",
    "add_bdt_column",
    "evaluate",
    "fold_by_group",
    "library_versions",
    "load_model",
    "load_study",
    "penalised_score",
    "predict",
    "save_model",
    "split_by_group",
    "train_bdt",
    "weighted_auc",
    "write_bdt_plots",
]
