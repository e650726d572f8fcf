"""The five stages of the one-touch analysis, as plain functions.

Each stage reads the outputs of the previous one from the run directory,
calls the physics in ``analysis/`` with values taken from the config, writes
its own outputs atomically and returns a small JSON-ready summary. Nothing
here imports Prefect: ``flows/one_touch.py`` wraps each stage in a task.

Run directory layout::

    preselection/<sample>.parquet, cutflow.csv, cutflow.md, inputs.png
    signal_region/region.json, signal_fit.png, signal_region.png,
                  <sample>.parquet (with is_test, in_region, in_sideband)
    bdt/model.json, model.meta.json, study-<tag>.db, <sample>.parquet (with bdt)
    evaluation/working_point.json, roc.png, bdt_score.png, punzi_scan.png, ...
    limit/workspace.json, limit.json, cls_scan.png
    results.json, report.md
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl

from analysis import background as bkg
from analysis import bdt as bdt_mod
from analysis import fom, limit
from analysis import signal_region as sr
from analysis.batch_reading import BatchSettings
from analysis.config import AnalysisConfig, Sample, expand_files
from analysis.errors import (
    AnalysisError,
    ConfigError,
    CutError,
    MissingBranchError,
    PhysicsError,
)
from analysis.naming import find_branch, to_branch_name
from analysis.ntuple import EVENT_BRANCHES, describe_tree, tree_branches
from analysis.outputs import write_json, write_text
from analysis.plots import plot_input_variables
from analysis.preselection import (
    CutFlowStep,
    SampleSelection,
    best_candidate,
    compile_cuts,
    cutflow_markdown,
    cutflow_table,
    select_sample,
    select_samples_in_batch,
    write_parquet,
    write_root_skim,
)
from analysis.split import is_test_event

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def sample_scale(sample: Sample, luminosity_fb: float | None) -> float:
    """Return the per-candidate weight factor of a sample.

    Simulated backgrounds are scaled to the data luminosity with
    ``sigma [nb] * 1e6 [fb/nb] * L [fb^-1] / N_generated``; a fixed ``weight``
    takes precedence; signal and data get 1.
    """
    if sample.weight is not None:
        return sample.weight
    if sample.kind == "background":
        if luminosity_fb is None:
            raise ConfigError(
                f"background sample {sample.name!r} is normalised by cross-section "
                "but limit.luminosity_fb is not set; set it or give the sample a "
                "fixed weight"
            )
        assert sample.cross_section_nb is not None
        assert sample.generated_events is not None
        return sample.cross_section_nb * 1e6 * luminosity_fb / sample.generated_events
    return 1.0


def resolve_branch(variable: str, available: list[str], where: str) -> str:
    """Map a variable as basf2 prints it (or a branch name) to its branch name.

    Raises:
        MissingBranchError: no branch matches; the message lists near names.
    """
    found = find_branch(variable, available)
    if found is None:
        from analysis.errors import did_you_mean

        raise MissingBranchError(
            f"{where}: variable {variable!r} (branch {to_branch_name(variable)!r}) "
            "not found." + did_you_mean(to_branch_name(variable), available)
        )
    return found


@contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Raise a logger's level to ERROR for the duration of a block."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _select_one(
    spec: SampleSelection, report: Progress
) -> tuple[pl.DataFrame, list[CutFlowStep]]:
    """Select one sample; errors name the sample and, for cuts, the branches."""
    try:
        return select_sample(spec, progress=report)
    except (MissingBranchError, CutError) as err:
        # When the tree is event-wise, the hint names its jagged branches.
        hint = describe_tree(spec.files[0], spec.tree)
        raise type(err)(f"sample {spec.name!r}: {err}{hint}") from err
    except AnalysisError as err:
        raise type(err)(f"sample {spec.name!r}: {err}") from err


def _check_cuts(spec: SampleSelection) -> None:
    """Parse a sample's cuts against its first file before any job is submitted."""
    try:
        available = tree_branches(spec.files[0], spec.tree)
        compile_cuts(spec.cuts, available)
        if spec.selection:
            compile_cuts([("sample selection", spec.selection)], available)
    except (MissingBranchError, CutError) as err:
        hint = describe_tree(spec.files[0], spec.tree)
        raise type(err)(f"sample {spec.name!r}: {err}{hint}") from err
    except AnalysisError as err:
        raise type(err)(f"sample {spec.name!r}: {err}") from err


def _batch_settings(config: AnalysisConfig, stage_dir: Path) -> BatchSettings | None:
    """Return the batch settings of the preselection, or None to read locally."""
    if config.reading.executor != "batch":
        return None
    batch = config.reading.batch
    return BatchSettings(
        backend=batch.backend,
        files_per_job=batch.files_per_job,
        work_dir=Path(batch.work_dir) if batch.work_dir else stage_dir / "batch",
        max_attempts=batch.max_attempts,
        use_arrays=batch.use_arrays,
        lsf=batch.lsf,
        local=batch.local,
        poll=batch.poll,
    )


def _stage_dir(run_dir: Path, name: str) -> Path:
    path = run_dir / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _branch_names(config: AnalysisConfig, available: list[str]) -> dict[str, str]:
    """Map every variable the analysis reads to its branch name."""
    names = {
        "mass": resolve_branch(config.signal_region.mass, available, "signal_region"),
    }
    if config.signal_region.delta_e is not None:
        names["delta_e"] = resolve_branch(
            config.signal_region.delta_e, available, "signal_region"
        )
    for feature in config.bdt.features:
        names[f"feature:{feature}"] = resolve_branch(feature, available, "bdt.features")
    if config.bdt.reference_score is not None:
        names["reference_score"] = resolve_branch(
            config.bdt.reference_score, available, "bdt.reference_score"
        )
    for extra in config.extra_branches:
        names[f"extra:{extra}"] = resolve_branch(extra, available, "extra_branches")
    return names


def feature_branches(config: AnalysisConfig, run_dir: Path) -> list[str]:
    """Return the BDT feature branch names, in the config's order."""
    names = _read_json(run_dir / "preselection" / "branches.json")
    return [names[f"feature:{f}"] for f in config.bdt.features]


# ---------------------------------------------------------------------------
# stage 1: preselection
# ---------------------------------------------------------------------------


def preselection(
    config: AnalysisConfig, run_dir: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Apply the cut strings and best-candidate selection to every sample.

    Writes one parquet skim per sample, the cut-flow as CSV and Markdown, and
    the input-variable plot.

    Raises:
        ConfigError: an input path or pattern matches no file.
        InputFileError: a file cannot be read as a flat ntuple.
        CutError: a cut is invalid or names an unknown variable.
    """
    out = _stage_dir(run_dir, "preselection")
    files = {s.name: expand_files(s) for s in config.samples}
    first = config.samples[0]
    first_file = files[first.name][0]
    first_tree = first.tree or config.tree
    available = tree_branches(first_file, first_tree)
    try:
        names = _branch_names(config, available)
    except MissingBranchError as err:
        hint = describe_tree(first_file, first_tree)
        raise MissingBranchError(
            f"sample {first.name!r}, {first_file}: {err}{hint}"
        ) from err
    write_json(out / "branches.json", names)
    # The event keys stay in the skims, so a candidate can be found again in
    # the ntuple (event_id alone is a hash of them).
    bookkeeping = {b for b in (*EVENT_BRANCHES, "__candidate__") if b in available}
    keep = sorted(set(names.values()) | bookkeeping)

    cut_steps: list[CutFlowStep] = []
    skims: dict[str, str] = {}
    total_files = sum(len(f) for f in files.values())
    done = 0
    specs = {
        sample.name: SampleSelection(
            name=sample.name,
            files=files[sample.name],
            tree=sample.tree or config.tree,
            cuts=[(c.name, c.cut) for c in config.preselection],
            keep=keep,
            scale=sample_scale(sample, config.limit.luminosity_fb),
            selection=sample.selection,
            step_size=config.reading.step_size,
            salt=config.samples.index(sample),
            workers=config.reading.workers,
        )
        for sample in config.samples
    }
    # Batch jobs of all samples run at once; the other executors go sample
    # by sample below.
    selected = {}
    batch = _batch_settings(config, out)
    if batch is not None:
        for spec in specs.values():
            _check_cuts(spec)
        results = select_samples_in_batch(list(specs.values()), batch, progress)
        selected = dict(zip(specs, results, strict=True))
    for sample in config.samples:
        spec = specs[sample.name]

        def report(files_done: int, _total: int, offset: int = done) -> None:
            if progress is not None:
                progress(offset + files_done, total_files)

        if sample.name in selected:
            table, steps = selected[sample.name]
        else:
            table, steps = _select_one(spec, report)
        done += len(files[sample.name])
        if config.best_candidate is not None:
            bc = config.best_candidate
            variable = bc.variable
            if variable is not None and bc.direction != "random":
                variable = resolve_branch(variable, available, "best_candidate")
            table = best_candidate(
                table, variable=variable, direction=bc.direction, seed=bc.seed
            )
            after = CutFlowStep(
                sample.name,
                "best candidate",
                f"{bc.direction} {bc.variable or ''}".strip(),
                candidates=table.height,
                events=table["event_id"].n_unique(),
                weighted_candidates=float(table["weight"].sum()),
                weighted_events=float(table["weight"].sum()),
            )
            steps.append(after)
        table = table.with_columns(
            is_signal=pl.lit(1 if sample.kind == "signal" else 0, dtype=pl.Int8),
            kind=pl.lit(sample.kind),
        )
        cut_steps.extend(steps)
        skims[sample.name] = str(write_parquet(table, out / f"{sample.name}.parquet"))

    flow_table = cutflow_table(cut_steps)
    with_csv = out / "cutflow.csv"
    from analysis.outputs import atomic_path

    with atomic_path(with_csv) as tmp:
        flow_table.write_csv(tmp)
    markdown = cutflow_markdown(flow_table)
    write_text(out / "cutflow.md", markdown)

    tables = {name: pl.read_parquet(path) for name, path in skims.items()}
    plot = plot_input_variables(
        tables,
        {s.name: s.kind for s in config.samples},
        [names[f"feature:{f}"] for f in config.bdt.features],
        out / "inputs.png",
        labels={s.name: s.label or s.name for s in config.samples},
    )
    return {
        "skims": skims,
        "cutflow_csv": str(with_csv),
        "cutflow_md": str(out / "cutflow.md"),
        "cutflow": flow_table.to_dicts(),
        "plots": {"inputs": str(plot)},
        "files": {name: [str(f) for f in fs] for name, fs in files.items()},
    }


def root_skims(config: AnalysisConfig, run_dir: Path) -> dict[str, str]:
    """Write the preselection skims as ROOT files when ``skims.root`` is set.

    Runs after the preselection stage, cached or not, so switching
    ``skims.root`` on later writes the files without recomputing any stage.
    A ROOT skim newer than its parquet skim is kept.

    Returns:
        Sample name to ROOT skim path; empty when ``skims.root`` is off.
    """
    if not config.skims.root:
        return {}
    written = {}
    for sample in config.samples:
        parquet = run_dir / "preselection" / f"{sample.name}.parquet"
        target = run_dir / "preselection" / f"{sample.name}.root"
        stale = (
            not target.exists()
            or target.stat().st_mtime_ns < parquet.stat().st_mtime_ns
        )
        if stale:
            table = pl.read_parquet(parquet)
            write_root_skim(table, target, config.skims.root_tree)
            log.info("ROOT skim of %s: %s", sample.name, target)
        written[sample.name] = str(target)
    return written


# ---------------------------------------------------------------------------
# stage 2: signal shape, signal region, split
# ---------------------------------------------------------------------------


def _axes(table: pl.DataFrame, names: dict[str, str]) -> tuple[Any, Any]:
    mass = table[names["mass"]].to_numpy()
    delta_e = table[names["delta_e"]].to_numpy() if "delta_e" in names else None
    return mass, delta_e


def signal_region(config: AnalysisConfig, run_dir: Path) -> dict[str, Any]:
    """Fit the signal shape, build the signal region and split every sample.

    Raises:
        FitError: the signal fit did not converge.
        PhysicsError: no signal candidate survived the preselection.
    """
    out = _stage_dir(run_dir, "signal_region")
    names = _read_json(run_dir / "preselection" / "branches.json")
    cfg = config.signal_region
    signal_samples = [s for s in config.samples if s.kind == "signal"]
    signal = pl.concat(
        [
            pl.read_parquet(run_dir / "preselection" / f"{s.name}.parquet")
            for s in signal_samples
        ]
    )
    if signal.height < 20:
        raise PhysicsError(
            f"only {signal.height} signal candidates survive the preselection; "
            "the signal fit needs at least 20. Loosen the cuts or add signal MC."
        )
    mass, delta_e = _axes(signal, names)
    shape = sr.fit_signal_shape(
        mass,
        delta_e,
        signal["weight"].to_numpy(),
        model=cfg.model,
        sample=",".join(s.name for s in signal_samples),
        mass_range=cfg.sidebands.mass_range,
        delta_e_range=cfg.sidebands.delta_e_range if delta_e is not None else None,
    )
    region = sr.make_signal_region(shape, cfg.n_sigma)
    sidebands = sr.Sidebands(
        mass_range=cfg.sidebands.mass_range,
        delta_e_range=cfg.sidebands.delta_e_range if delta_e is not None else None,
        mass_gap=cfg.sidebands.mass_gap,
        delta_e_gap=cfg.sidebands.delta_e_gap,
    )

    skims: dict[str, str] = {}
    counts: dict[str, dict[str, int]] = {}
    background_axes: list[tuple[Any, Any]] = []
    for sample in config.samples:
        table = pl.read_parquet(run_dir / "preselection" / f"{sample.name}.parquet")
        m, de = _axes(table, names)
        if sample.partition is not None:
            is_test = np.full(table.height, sample.partition == "test")
        else:
            is_test = is_test_event(
                table["event_id"].to_numpy(),
                config.split.test_fraction,
                config.split.seed,
            )
        table = table.with_columns(
            pl.Series("is_test", is_test),
            pl.Series("in_region", region.contains(m, de)),
            pl.Series("in_sideband", sidebands.mask(m, de, region)),
        )
        if sample.kind == "data" and not config.blinding.unblind:
            # Blinding: data inside the blinded box around the signal region
            # leave the analysis here, so no later count, plot or table
            # contains them. Unblinding reruns this stage with them kept.
            hidden = _in_box(sidebands.blind_box(region), m, de)
            table = table.filter(pl.Series(~hidden))
            m, de = _axes(table, names)
            log.info(
                "%s: blinded, %d candidates in the blinded box are hidden",
                sample.name,
                int(hidden.sum()),
            )
        if sample.kind != "signal":
            background_axes.append((m, de))
        counts[sample.name] = {
            "train": int((~is_test).sum()),
            "test": int(is_test.sum()),
            "in_region": int(table["in_region"].sum()),
            "in_sideband": int(table["in_sideband"].sum()),
        }
        skims[sample.name] = str(write_parquet(table, out / f"{sample.name}.parquet"))

    write_json(out / "region.json", region.to_dict())
    write_json(out / "shape.json", shape.to_dict())
    fit_plot = sr.plot_signal_fit(
        shape, mass, delta_e, signal["weight"].to_numpy(), out / "signal_fit.png"
    )
    bkg_m = np.concatenate([a[0] for a in background_axes]) if background_axes else None
    bkg_de = (
        np.concatenate([a[1] for a in background_axes])
        if background_axes and delta_e is not None
        else None
    )
    plane_plot = sr.plot_signal_region(
        region,
        sidebands,
        (mass, delta_e),
        (bkg_m, bkg_de) if bkg_m is not None else None,
        out / "signal_region.png",
    )
    log.info("signal region: %s", region.to_dict())
    summary = {
        "skims": skims,
        "shape": shape.to_dict(),
        "region": region.to_dict(),
        "sidebands": {
            "mass_range": list(sidebands.mass_range),
            "delta_e_range": (
                list(sidebands.delta_e_range) if sidebands.delta_e_range else None
            ),
            "mass_gap": sidebands.mass_gap,
            "delta_e_gap": sidebands.delta_e_gap,
        },
        "counts": counts,
        "plots": {"signal_fit": str(fit_plot), "signal_region": str(plane_plot)},
    }
    write_json(out / "summary.json", summary)
    return summary


def _in_box(box: Any, mass: np.ndarray, delta_e: np.ndarray | None) -> np.ndarray:
    """Return True for candidates inside a (M, Delta E) box; Delta E None is 1D."""
    (m_low, m_high), de_box = box
    inside = (mass >= m_low) & (mass <= m_high)
    if de_box is not None and delta_e is not None:
        inside &= (delta_e >= de_box[0]) & (delta_e <= de_box[1])
    return np.asarray(inside, dtype=bool)


def _sidebands(summary: dict[str, Any]) -> sr.Sidebands:
    sb = summary["sidebands"]
    return sr.Sidebands(
        mass_range=tuple(sb["mass_range"]),
        delta_e_range=tuple(sb["delta_e_range"]) if sb["delta_e_range"] else None,
        mass_gap=sb["mass_gap"],
        delta_e_gap=sb["delta_e_gap"],
    )


# ---------------------------------------------------------------------------
# stage 3: BDT
# ---------------------------------------------------------------------------


def _load(run_dir: Path, stage: str, config: AnalysisConfig) -> dict[str, pl.DataFrame]:
    return {
        s.name: pl.read_parquet(run_dir / stage / f"{s.name}.parquet")
        for s in config.samples
    }


def _training_sets(
    config: AnalysisConfig, tables: dict[str, pl.DataFrame]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Return (train, test) tables of signal and the configured background."""
    kinds = {s.name: s.kind for s in config.samples}
    parts = []
    for name, table in tables.items():
        from_mc = config.bdt.background_source == "mc"
        if kinds[name] == "signal" or (kinds[name] == "background" and from_mc):
            parts.append(table)
        elif kinds[name] == "data" and config.bdt.background_source == "data_sidebands":
            parts.append(table.filter(pl.col("in_sideband") | ~pl.col("in_region")))
    combined = pl.concat(parts, how="vertical_relaxed")
    train = combined.filter(~pl.col("is_test"))
    test = combined.filter(pl.col("is_test"))
    for name, part in (("training", train), ("test", test)):
        n_signal = int(part["is_signal"].sum())
        if n_signal == 0 or n_signal == part.height:
            raise PhysicsError(
                f"the {name} set has {n_signal} signal and "
                f"{part.height - n_signal} background candidates; the BDT needs "
                "both. Check the samples' kinds and bdt.background_source."
            )
    return train, test


def train(
    config: AnalysisConfig,
    run_dir: Path,
    progress: Progress | None = None,
    study_tag: str = "default",
) -> dict[str, Any]:
    """Tune and train the BDT, then add its score to every sample.

    The optuna study is stored as ``bdt/study-<study_tag>.db``. The flow passes
    the start of the stage key as the tag, so a rerun after a crash resumes
    the same study and changed inputs or settings start a new one. Studies of
    other tags are deleted first.
    """
    out = _stage_dir(run_dir, "bdt")
    study_path = out / f"study-{study_tag}.db"
    for old in out.glob("study-*.db"):
        if old != study_path:
            log.info("removing the study of earlier inputs %s", old)
            old.unlink()
    features = feature_branches(config, run_dir)
    tables = _load(run_dir, "signal_region", config)
    train_set, _ = _training_sets(config, tables)
    settings = bdt_mod.BDTSettings(
        n_trials=config.bdt.n_trials,
        timeout_s=config.bdt.timeout_s,
        seed=config.bdt.seed,
        max_auc_ratio=config.bdt.max_auc_ratio,
        n_threads=config.bdt.n_threads,
        n_jobs=config.bdt.n_jobs,
        early_stopping_rounds=config.bdt.early_stopping_rounds,
        validation_fraction=config.bdt.validation_fraction,
        balance_classes=config.bdt.balance_classes,
        n_folds=config.bdt.n_folds,
        pruner=config.bdt.pruner,
        final_model=config.bdt.final_model,
    )
    # optuna logs each trial through its own stderr handler; send those lines
    # through logging instead, so they reach the Prefect run logs.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    model = bdt_mod.train_bdt(
        train_set,
        features,
        label="is_signal",
        weight="weight",
        group="event_id",
        settings=settings,
        study_path=study_path,
        progress=progress,
    )
    model_path = bdt_mod.save_model(model, out / "model.json")
    write_json(out / "study.json", {"path": str(study_path)})
    skims = {}
    for name, table in tables.items():
        scored = bdt_mod.add_bdt_column(model, table)
        skims[name] = str(write_parquet(scored, out / f"{name}.parquet"))
    return {
        "model": str(model_path),
        "best_params": model.best_params,
        "final_model": model.metadata.get("final_model", "refit"),
        "n_folds": settings.n_folds,
        "n_trees_per_fold": model.metadata.get("n_trees_per_fold"),
        "validation_auc": model.validation_auc,
        "train_auc": model.train_auc,
        "n_trials": model.n_trials_done,
        "skims": skims,
    }


# ---------------------------------------------------------------------------
# stage 4: testing and working point
# ---------------------------------------------------------------------------


def _signal_efficiency(
    config: AnalysisConfig, tables: dict[str, pl.DataFrame], cuts: np.ndarray
) -> tuple[np.ndarray, float]:
    """Signal efficiency in the region vs BDT cut, from the test set only.

    The denominator is the number of generated signal events in the test set
    (``generated_events * test_fraction``), or, without ``generated_events``,
    the number of test candidates before the preselection is unknown and the
    efficiency is relative to the preselected test sample.
    """
    selected = np.zeros_like(cuts)
    generated = 0.0
    for sample in config.samples:
        if sample.kind != "signal":
            continue
        table = tables[sample.name].filter(pl.col("is_test"))
        scores = table.filter(pl.col("in_region"))["bdt"].to_numpy()
        weights = table.filter(pl.col("in_region"))["weight"].to_numpy()
        selected += np.array([weights[scores > c].sum() for c in cuts])
        if sample.generated_events is not None and sample.partition is None:
            generated += sample.generated_events * config.split.test_fraction
        else:
            generated += float(table["weight"].sum())
    if generated <= 0:
        raise PhysicsError("no signal in the test set: cannot compute an efficiency")
    return selected / generated, generated


def _background_tables(
    config: AnalysisConfig, tables: dict[str, pl.DataFrame]
) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
    """Return (data for the sideband estimate, MC for the MC estimate)."""
    kinds = {s.name: s.kind for s in config.samples}
    data = [t for n, t in tables.items() if kinds[n] == "data"]
    mc = [t for n, t in tables.items() if kinds[n] == "background"]
    data_table = pl.concat(data) if data else None
    if data_table is not None and config.bdt.background_source == "data_sidebands":
        # Data sidebands trained the BDT: estimate from the unseen half only.
        data_table = data_table.filter(pl.col("is_test")).with_columns(
            pl.col("weight") / config.split.test_fraction
            if not any(s.partition for s in config.samples)
            else pl.col("weight")
        )
    mc_table = None
    if mc:
        # MC trained the BDT: use the test half, scaled up to the full sample.
        fraction = config.split.test_fraction
        mc_table = (
            pl.concat(mc)
            .filter(pl.col("is_test"))
            .with_columns(pl.col("weight") / fraction)
        )
    return data_table, mc_table


def _estimate(
    config: AnalysisConfig,
    names: dict[str, str],
    region: Any,
    sidebands: sr.Sidebands,
    data: pl.DataFrame | None,
    mc: pl.DataFrame | None,
    cut: float,
) -> dict[str, bkg.BackgroundEstimate]:
    estimates: dict[str, bkg.BackgroundEstimate] = {}
    if data is not None:
        passing = data.filter(pl.col("bdt") > cut)
        m, de = _axes(passing, names)
        sideband = passing["in_sideband"].to_numpy()
        estimates["sideband"] = bkg.estimate_from_sidebands(
            m[sideband],
            de[sideband] if de is not None else None,
            passing["weight"].to_numpy()[sideband],
            region,
            sidebands,
            mass_model=config.signal_region.background_mass_model,
            mass_degree=config.signal_region.background_mass_degree,
            delta_e_model=config.signal_region.background_delta_e_model,
            cl=config.limit.cl,
        )
    if mc is not None:
        passing = mc.filter(pl.col("bdt") > cut)
        m, de = _axes(passing, names)
        estimates["mc"] = bkg.estimate_from_mc(
            m, de, passing["weight"].to_numpy(), region, cl=config.limit.cl
        )
    return estimates


def working_point(config: AnalysisConfig, run_dir: Path) -> dict[str, Any]:
    """Test the BDT and choose the BDT cut by the Punzi figure of merit."""
    out = _stage_dir(run_dir, "evaluation")
    names = _read_json(run_dir / "preselection" / "branches.json")
    region_summary = _read_json(run_dir / "signal_region" / "region.json")
    region = sr.region_from_dict(region_summary)
    sidebands = _sidebands(_read_json(run_dir / "signal_region" / "summary.json"))
    tables = _load(run_dir, "bdt", config)
    model = bdt_mod.load_model(run_dir / "bdt" / "model.json")
    train_set, test_set = _training_sets(config, tables)
    metrics = bdt_mod.evaluate(model, train_set, test_set, label="is_signal")
    if "reference_score" in names:
        for part, table in (("train", train_set), ("test", test_set)):
            metrics[f"reference_auc_{part}"] = bdt_mod.weighted_auc(
                table["is_signal"].to_numpy(),
                table[names["reference_score"]].to_numpy(),
                None,
            )
    study_path = Path(_read_json(run_dir / "bdt" / "study.json")["path"])
    study = bdt_mod.load_study(study_path)
    plots = bdt_mod.write_bdt_plots(
        model, train_set, test_set, study, out, label="is_signal", weight="weight"
    )

    fm = config.figure_of_merit
    cuts = np.linspace(fm.cut_min, fm.cut_max, fm.n_cuts)[:-1]
    efficiency, n_generated = _signal_efficiency(config, tables, cuts)
    data, mc = _background_tables(config, tables)
    method = config.signal_region.background_method
    if method == "sideband" and data is None:
        raise ConfigError(
            "signal_region.background_method is 'sideband' but no sample has "
            "kind: data; add data or use background_method: mc"
        )
    if method == "mc" and mc is None:
        raise ConfigError(
            "signal_region.background_method is 'mc' but no sample has kind: "
            "background; add background MC or use background_method: sideband"
        )
    background = np.empty_like(cuts)
    n_mc = np.zeros_like(cuts)
    # One estimate per scan point: keep their per-call messages out of the log
    # and report the scan as a whole instead.
    with _quiet("analysis.background"):
        for i, cut in enumerate(cuts):
            estimate = _estimate(config, names, region, sidebands, data, mc, cut)
            background[i] = estimate[method].value
            n_mc[i] = estimate[method].n_sideband
    log.info(
        "background scan over %d BDT cuts (%s): %.3g events at the loosest cut, "
        "%.3g at the tightest",
        cuts.size,
        method,
        background[0],
        background[-1],
    )
    # n_mc_events takes the raw count each estimate rests on: sideband data
    # for the sideband fit, simulated candidates for the MC estimate.
    scan = fom.scan_cut(
        cuts,
        efficiency,
        background,
        a=fm.a,
        formula="full" if fm.kind == "punzi_full" else "simple",
        b=fm.b,
        n_mc_events=n_mc,
        min_background_mc_events=fm.min_background_mc_events,
    )
    scan_plot = fom.plot_punzi_scan(scan, out / "punzi_scan.png")
    best = float(scan.best_cut)
    estimates = _estimate(config, names, region, sidebands, data, mc, best)
    chosen = estimates[method]
    eff = float(np.interp(best, cuts, efficiency))

    result = {
        "metrics": metrics,
        "bdt_cut": best,
        "signal_efficiency": eff,
        "n_signal_generated_test": n_generated,
        "background": chosen.to_dict(),
        "background_estimates": {k: v.to_dict() for k, v in estimates.items()},
        "scan": scan.to_dict(),
        "plots": {k: str(v) for k, v in {**plots, "punzi_scan": scan_plot}.items()},
    }
    if fm.region_sizes:
        joint = _joint_scan(config, run_dir, names, tables, sidebands, data, mc, cuts)
        result["joint_scan"] = joint
        result["plots"]["joint_scan"] = joint.pop("plot")
    write_json(out / "working_point.json", result)
    return result


def _region_of_size(shape: dict[str, Any], n_sigma: float) -> Any:
    """Rebuild the signal region of ``n_sigma`` from the stored signal shape."""
    center = shape["center"]
    covariance = np.asarray(shape["covariance"], dtype=float)
    if shape["ndim"] == 1:
        half = n_sigma * float(np.sqrt(covariance[0][0]))
        return sr.IntervalRegion(center[0] - half, center[0] + half, n_sigma=n_sigma)
    return sr.EllipseRegion.from_covariance(center, covariance, n_sigma)


def _joint_scan(
    config: AnalysisConfig,
    run_dir: Path,
    names: dict[str, str],
    tables: dict[str, pl.DataFrame],
    sidebands: sr.Sidebands,
    data: pl.DataFrame | None,
    mc: pl.DataFrame | None,
    cuts: np.ndarray,
) -> dict[str, Any]:
    """Scan the BDT cut and the region size together (information only).

    The working point keeps the configured region size; this scan shows how
    much a different size would gain and where the joint optimum lies.
    """
    fm = config.figure_of_merit
    method = config.signal_region.background_method
    shape = _read_json(run_dir / "signal_region" / "shape.json")
    sizes = np.array(sorted(fm.region_sizes), dtype=float)
    efficiency = np.zeros((cuts.size, sizes.size))
    background = np.zeros_like(efficiency)
    n_mc = np.zeros_like(efficiency)
    signal_parts = [
        tables[s.name].filter(pl.col("is_test"))
        for s in config.samples
        if s.kind == "signal"
    ]
    signal = pl.concat(signal_parts)
    _, n_generated = _signal_efficiency(config, tables, cuts[:1])
    m_sig, de_sig = _axes(signal, names)
    scores = signal["bdt"].to_numpy()
    weights = signal["weight"].to_numpy()
    with _quiet("analysis.background"):
        for j, n_sigma in enumerate(sizes):
            region = _region_of_size(shape, float(n_sigma))
            inside = region.contains(m_sig, de_sig)
            for i, cut in enumerate(cuts):
                passing = inside & (scores > cut)
                efficiency[i, j] = weights[passing].sum() / n_generated
                estimate = _estimate(
                    config, names, region, sidebands, data, mc, float(cut)
                )[method]
                background[i, j] = estimate.value
                n_mc[i, j] = estimate.n_sideband
    joint = fom.scan_cut_and_size(
        cuts,
        sizes,
        efficiency,
        background,
        a=fm.a,
        formula="full" if fm.kind == "punzi_full" else "simple",
        b=fm.b,
        n_mc_events=n_mc,
        min_background_mc_events=fm.min_background_mc_events,
    )
    plot = fom.plot_joint_scan(joint, run_dir / "evaluation" / "joint_scan.png")
    i, j = joint.best_index
    log.info(
        "joint scan: best at BDT cut %.3g and %.3g sigma region (FOM %.4g)",
        cuts[i],
        sizes[j],
        joint.fom[i, j],
    )
    return {
        "best_bdt_cut": float(cuts[i]),
        "best_n_sigma": float(sizes[j]),
        "best_fom": float(joint.fom[i, j]),
        "efficiency": float(efficiency[i, j]),
        "background": float(background[i, j]),
        "plot": str(plot),
    }


# ---------------------------------------------------------------------------
# stage 5: limit
# ---------------------------------------------------------------------------


def _toy_variations(files: dict[str, str]) -> dict[str, np.ndarray]:
    """Read toy variations (CSV: one toy per row, one column per bin).

    Raises:
        ConfigError: a file is missing or not a numeric table.
    """
    variations = {}
    for name, path in files.items():
        try:
            variations[name] = np.loadtxt(path, delimiter=",", ndmin=2)
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"limit.toy_variation_files.{name}: cannot read {path} as a "
                f"numeric CSV table ({err}); give one toy per row and one "
                "column per signal-region bin"
            ) from None
    return variations


def _scan_limit(
    inputs: limit.LimitInputs, lim: Any, progress: Progress | None
) -> limit.LimitResult:
    """Run the CLs scan, widening the POI range until every limit is inside it.

    The first range is the limit module's estimate; it can be too short when
    the expected +2 sigma limit lies far out, so the range doubles up to three
    times. The seed is the same each time, so the result does not depend on
    how many attempts it took except through the scan grid.
    """
    poi_max = limit.default_poi_max(inputs, lim.cl)
    for attempt in range(4):
        try:
            return limit.upper_limit(
                inputs,
                cl=lim.cl,
                calculator=lim.calculator,
                n_toys=lim.n_toys,
                seed=lim.seed,
                poi_max=poi_max,
                progress=progress,
            )
        except PhysicsError as err:
            # upper_limit raises PhysicsError naming poi_max when CLs does not
            # cross 1 - CL inside the scan; other physics errors are final.
            if "poi_max" not in str(err) or attempt == 3:
                raise
            log.warning("%s; widening the scan to mu <= %.3g", err, 2 * poi_max)
            poi_max *= 2
    raise AssertionError("unreachable")


def upper_limit(
    config: AnalysisConfig,
    run_dir: Path,
    working: dict[str, Any],
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Compute the CLs upper limit on the signal yield and the branching fraction."""
    out = _stage_dir(run_dir, "limit")
    lim = config.limit
    eff = working["signal_efficiency"]
    if eff <= 0:
        raise PhysicsError(
            "signal efficiency at the working point is 0; no limit can be set. "
            "Check the BDT cut range and the signal region size."
        )
    has_lumi = lim.luminosity_fb is not None
    reference = (
        limit.signal_reference_yield(
            eff, lim.luminosity_fb or 0.0, lim.cross_section_nb, lim.br_reference
        )
        if has_lumi
        else 1.0
    )
    observed = None
    if config.blinding.unblind:
        tables = _load(run_dir, "bdt", config)
        kinds = {s.name: s.kind for s in config.samples}
        observed = sum(
            int(
                t.filter(
                    pl.col("in_region") & (pl.col("bdt") > working["bdt_cut"])
                ).height
            )
            for n, t in tables.items()
            if kinds[n] == "data"
        )
    background = working["background"]
    inputs = limit.LimitInputs(
        signal_reference=reference,
        background=float(background["value"]),
        background_uncertainty=float(background["uncertainty"]),
        observed=observed,
        signal_systematics=dict(lim.signal_systematics),
        normalisation_systematics=dict(lim.normalisation_systematics)
        if has_lumi
        else {},
        toy_variations=_toy_variations(lim.toy_variation_files),
    )
    spec = limit.build_workspace(inputs)
    workspace = limit.write_workspace(spec, out / "workspace.json")
    result = _scan_limit(inputs, lim, progress)
    label = f"B(tau -> 3mu) / {lim.br_reference:g}" if has_lumi else "signal events"
    plot = limit.plot_cls_scan(result, out / "cls_scan.png", poi_label=label)

    def events(mu: float | None) -> float | None:
        return None if mu is None else mu * reference

    summary: dict[str, Any] = {
        "calculator": result.calculator,
        "cl": lim.cl,
        "observed_events": observed,
        "signal_reference_events": reference if has_lumi else None,
        "n_upper_observed": events(result.observed),
        "n_upper_expected": [events(v) for v in result.expected],
        "poi": result.to_dict(),
        "workspace": str(workspace),
        "plots": {"cls_scan": str(plot)},
    }
    if has_lumi:
        assert lim.luminosity_fb is not None

        def bf(n: float | None) -> float | None:
            if n is None:
                return None
            return limit.branching_fraction_limit(
                n, eff, lim.luminosity_fb or 0.0, lim.cross_section_nb
            )

        summary["br_upper_observed"] = bf(summary["n_upper_observed"])
        summary["br_upper_expected"] = [bf(n) for n in summary["n_upper_expected"]]
        summary["luminosity_fb"] = lim.luminosity_fb
        summary["cross_section_nb"] = lim.cross_section_nb
    write_json(out / "limit.json", summary)
    return summary


def expanded_inputs(config: AnalysisConfig) -> list[list[Path]]:
    """Return the input files of every sample, globs expanded, in config order."""
    return [expand_files(s) for s in config.samples]
