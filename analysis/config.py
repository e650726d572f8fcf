"""The analysis configuration: one YAML file per analysis, validated once at load.

:func:`load_config` reads the file with ``yaml.safe_load``, checks it against
the pydantic models below and applies the semantic checks that a schema cannot
express (unique sample names, one signal sample, existing input files).
Relative file paths are resolved against the folder of the YAML file, so a
config runs the same from any working directory.

Units: masses and energies in GeV, cross-sections in nb, integrated luminosity
in fb^-1.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from analysis.errors import ConfigError, did_you_mean
from analysis.production.config import LocalSettings, LsfSettings, PollSettings

SAMPLE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")

# Belle II uses sigma(e+e- -> tau+tau-) = 0.919 nb at the Upsilon(4S).
TAU_PAIR_CROSS_SECTION_NB = 0.919


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sample(_Strict):
    """One input sample: a set of ntuple files of one kind."""

    name: str = Field(description="letters, digits, '_', '.', '-'")
    kind: Literal["signal", "background", "data"]
    files: list[str] = Field(default_factory=list, description="paths or glob patterns")
    file_list: str | None = Field(
        default=None,
        description="text file with one path or glob per line (lines starting "
        "with '#' are comments); relative lines are relative to the list's folder",
    )
    tree: str | None = Field(default=None, description="tree name; default: top")
    selection: str | None = Field(
        default=None, description="cut that defines the sample inside its files"
    )
    partition: Literal["train", "test"] | None = Field(
        default=None, description="fixed train/test role instead of the random split"
    )
    cross_section_nb: Annotated[float, Field(gt=0)] | None = None
    generated_events: Annotated[int, Field(gt=0)] | None = Field(
        default=None, description="generated events (signal: generated tau decays)"
    )
    weight: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="fixed weight per candidate instead of sigma*L/N"
    )
    label: str | None = Field(
        default=None, description="group name in plots; default: the sample name"
    )

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not SAMPLE_NAME.match(value):
            raise ValueError(
                f"sample name {value!r} may contain only letters, digits, '_', "
                "'.' and '-' (it becomes part of file and batch job names)"
            )
        return value

    @model_validator(mode="after")
    def _check_inputs(self) -> Sample:
        if not self.files and self.file_list is None:
            raise ValueError(
                f"sample {self.name!r} has no inputs: give files (paths or glob "
                "patterns), a file_list, or both"
            )
        return self

    @model_validator(mode="after")
    def _check_normalisation(self) -> Sample:
        unnormalised = self.cross_section_nb is None or self.generated_events is None
        if self.kind == "background" and self.weight is None and unnormalised:
            raise ValueError(
                f"background sample {self.name!r} needs cross_section_nb and "
                "generated_events, or a fixed weight"
            )
        return self


class NamedCut(_Strict):
    """One step of the preselection."""

    name: str
    cut: str


class BestCandidate(_Strict):
    """How to keep one candidate per event."""

    variable: str | None = Field(default=None, description="ranking variable")
    direction: Literal["highest", "lowest", "random"] = "highest"
    seed: int = 1

    @model_validator(mode="after")
    def _check_variable(self) -> BestCandidate:
        if self.direction != "random" and not self.variable:
            raise ValueError(
                f"best_candidate.direction {self.direction!r} needs a variable; "
                "give best_candidate.variable or use direction: random"
            )
        return self


class Sidebands(_Strict):
    """Sidebands: the analysis window minus a blinded box around the region (GeV).

    The box is the signal region's bounding box widened by the gaps.
    """

    mass_range: tuple[float, float] = (1.5, 2.0)
    delta_e_range: tuple[float, float] | None = (-0.6, 0.3)
    mass_gap: float = Field(default=0.0, ge=0)
    delta_e_gap: float = Field(default=0.0, ge=0)


class SignalRegionConfig(_Strict):
    """Signal-region definition: variables, fit model, size and sidebands."""

    mass: str = Field(default="M", description="M_3mu variable (GeV)")
    delta_e: str | None = Field(
        default="deltaE", description="Delta E variable (GeV); null for 1D"
    )
    model: Literal["bifurcated_gaussian", "crystal_ball"] = "bifurcated_gaussian"
    n_sigma: float = Field(default=2.0, gt=0, le=10)
    sidebands: Sidebands = Field(default_factory=Sidebands)
    background_method: Literal["sideband", "mc"] = "sideband"
    background_mass_model: Literal["exponential", "polynomial"] = "exponential"
    background_mass_degree: int = Field(default=1, ge=0, le=5)
    background_delta_e_model: Literal["flat", "linear"] = "flat"
    fit_range_mass: tuple[float, float] | None = None


class SplitConfig(_Strict):
    """Deterministic train/test split by event."""

    test_fraction: float = Field(default=0.5, gt=0, lt=1)
    seed: int = 12345


class BDTConfig(_Strict):
    """BDT features and the optuna search."""

    features: list[str] = Field(min_length=1)
    background_source: Literal["mc", "data_sidebands"] = "mc"
    reference_score: str | None = Field(
        default=None, description="existing classifier branch to compare AUCs with"
    )
    n_trials: int = Field(default=20, ge=1)
    timeout_s: float | None = Field(default=None, gt=0)
    seed: int = 42
    n_threads: int = Field(default=1, ge=1)
    n_jobs: int = Field(default=1, ge=1)
    max_auc_ratio: float = Field(default=1.015, gt=1)
    early_stopping_rounds: int = Field(default=50, ge=1)
    validation_fraction: float = Field(default=0.25, gt=0, lt=1)
    balance_classes: bool = True
    n_folds: int | None = Field(
        default=None, ge=2, description="k-fold cross-validation by event"
    )
    pruner: Literal["median", "none"] = "median"
    final_model: Literal["refit", "fold_average"] = Field(
        default="refit",
        description="'fold_average' (with n_folds) averages the k fold models",
    )

    @model_validator(mode="after")
    def _fold_average_needs_folds(self) -> BDTConfig:
        if self.final_model == "fold_average" and self.n_folds is None:
            raise ValueError(
                "bdt.final_model 'fold_average' averages the models of k-fold "
                "cross-validation; set bdt.n_folds as well (for example 5)"
            )
        return self


class FigureOfMerit(_Strict):
    """Punzi figure of merit eps / (a/2 + sqrt(B)) and the BDT cut scan."""

    kind: Literal["punzi", "punzi_full"] = "punzi"
    a: float = Field(default=3.0, gt=0)
    b: float | None = Field(default=None, gt=0, description="b of the full formula")
    cut_min: float = 0.0
    cut_max: float = 1.0
    n_cuts: int = Field(default=101, ge=3)
    min_background_mc_events: int = Field(default=3, ge=0)
    region_sizes: list[float] = Field(
        default_factory=list,
        description="signal-region sizes (n_sigma) of the joint scan; empty: none",
    )


class LimitConfig(_Strict):
    """Inputs of the CLs upper limit."""

    luminosity_fb: float | None = Field(default=None, gt=0)
    cross_section_nb: float = Field(default=TAU_PAIR_CROSS_SECTION_NB, gt=0)
    cl: float = Field(default=0.90, gt=0, lt=1)
    calculator: Literal["toybased", "asymptotic"] = "toybased"
    n_toys: int = Field(default=10_000, ge=100)
    seed: int = 7
    br_reference: float = Field(default=1e-8, gt=0)
    signal_systematics: dict[str, float] = Field(default_factory=dict)
    normalisation_systematics: dict[str, float] = Field(default_factory=dict)
    toy_variation_files: dict[str, str] = Field(
        default_factory=dict,
        description="name -> CSV of relative signal variations, one toy per row "
        "and one column per signal-region bin; reduced by PCA",
    )

    @field_validator("signal_systematics", "normalisation_systematics")
    @classmethod
    def _check_relative(cls, value: dict[str, float]) -> dict[str, float]:
        for name, size in value.items():
            if not 0 <= size < 1:
                raise ValueError(
                    f"systematic {name!r} = {size} must be a relative uncertainty "
                    "in [0, 1), e.g. 0.02 for 2%"
                )
        return value


STEP_SIZE = re.compile(r"^\s*\d+(\.\d+)?\s*(B|kB|KB|MB|GB|KiB|MiB|GiB)\s*$")


class BatchReadingConfig(_Strict):
    """File groups as batch jobs: backend, group size and batch options.

    ``lsf``, ``local`` and ``poll`` take the keys of the production config's
    sections of the same names (docs/production.md).
    """

    backend: Literal["lsf", "local"] = "lsf"
    files_per_job: int = Field(default=10, ge=1)
    max_attempts: int = Field(default=3, ge=1)
    use_arrays: bool = False
    work_dir: str | None = Field(
        default=None,
        description="specs, ledgers, logs and results; default: "
        "<run>/preselection/batch, relative paths from the config's folder",
    )
    lsf: LsfSettings = Field(default_factory=LsfSettings)
    local: LocalSettings = Field(default_factory=LocalSettings)
    poll: PollSettings = Field(
        default_factory=lambda: PollSettings(interval_s=30.0, not_found_grace_s=120.0)
    )


class ReadingConfig(_Strict):
    """Reading settings: chunk size, and which executor reads the files."""

    executor: Literal["processes", "batch"] = Field(
        default="processes",
        description="'processes': this machine, 'workers' processes; "
        "'batch': groups of files as LSF (or local) batch jobs",
    )
    workers: int = Field(
        default=1, ge=1, description="worker processes, each reading whole files"
    )
    batch: BatchReadingConfig = Field(default_factory=BatchReadingConfig)
    step_size: str | Annotated[int, Field(gt=0)] = Field(
        default="64 MB",
        description="chunk size: bytes with a unit ('64 MB') or a number of entries",
    )

    @field_validator("step_size")
    @classmethod
    def _check_step_size(cls, value: str | int) -> str | int:
        if isinstance(value, str) and not STEP_SIZE.match(value):
            raise ValueError(
                f"step_size {value!r} is not a memory size; write a number and a "
                "unit (B, kB, MB, GB, KiB, MiB, GiB) such as '64 MB', or a number "
                "of entries"
            )
        return value


class SkimsConfig(_Strict):
    """Formats of the preselection's per-sample skims (parquet always)."""

    root: bool = Field(
        default=False,
        description="also write each skim as a ROOT file with a flat TTree",
    )
    root_tree: str = Field(default="skim", description="tree name in the ROOT skims")


class Blinding(_Strict):
    """Whether the data signal region may be looked at."""

    unblind: bool = False


class AnalysisConfig(_Strict):
    """A whole analysis, as read from one YAML file."""

    name: str
    description: str = ""
    tree: str | None = Field(default=None, description="default tree of all samples")
    samples: list[Sample] = Field(min_length=1)
    preselection: list[NamedCut] = Field(default_factory=list)
    best_candidate: BestCandidate | None = None
    signal_region: SignalRegionConfig = Field(default_factory=SignalRegionConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    bdt: BDTConfig
    figure_of_merit: FigureOfMerit = Field(default_factory=FigureOfMerit)
    limit: LimitConfig = Field(default_factory=LimitConfig)
    blinding: Blinding = Field(default_factory=Blinding)
    reading: ReadingConfig = Field(default_factory=ReadingConfig)
    extra_branches: list[str] = Field(
        default_factory=list, description="more branches to keep in the skims"
    )
    skims: SkimsConfig = Field(default_factory=SkimsConfig)

    @model_validator(mode="after")
    def _check_samples(self) -> AnalysisConfig:
        names = [s.name for s in self.samples]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"sample names must be unique, repeated: {duplicates}")
        if not any(s.kind == "signal" for s in self.samples):
            raise ValueError("at least one sample must have kind: signal")
        partitions = {s.partition for s in self.samples}
        if None in partitions and len(partitions) > 1:
            raise ValueError(
                "either every sample sets partition (train/test) or none does"
            )
        if self.bdt.background_source == "mc" and not any(
            s.kind == "background" for s in self.samples
        ):
            raise ValueError(
                "bdt.background_source is 'mc' but no sample has kind: background; "
                "add one or set background_source: data_sidebands"
            )
        if self.bdt.background_source == "data_sidebands" and not any(
            s.kind == "data" for s in self.samples
        ):
            raise ValueError(
                "bdt.background_source is 'data_sidebands' but no sample has kind: data"
            )
        return self

    def sample(self, name: str) -> Sample:
        """Return the sample called ``name``.

        Raises:
            ConfigError: no sample has that name; the message lists near names.
        """
        for sample in self.samples:
            if sample.name == name:
                return sample
        names = [s.name for s in self.samples]
        raise ConfigError(
            f"no sample named {name!r} in config {self.name!r}."
            + did_you_mean(name, names)
        )

    def section_hash(self, *sections: str) -> str:
        """Return a SHA-256 of the named top-level sections (for caching)."""
        data = self.model_dump(mode="json")
        chosen = {key: data[key] for key in sections} if sections else data
        text = json.dumps(chosen, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def _format_location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text or "<top level>"


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = AnalysisConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        candidates = [annotation, *args]
        model = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)),
            None,
        )
        if model is None:
            return []
    return list(model.model_fields)


def _describe(error: Any) -> str:
    loc = tuple(error["loc"])
    where = _format_location(loc)
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc)
        hint = did_you_mean(str(loc[-1]), allowed)
        return (
            f"{where}: unknown key.{hint} Allowed keys here: {', '.join(allowed)}"
            if allowed
            else f"{where}: unknown key"
        )
    if error["type"] == "missing":
        return f"{where}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message} (got {error['input']!r})"


def parse_config(data: Any, base_dir: Path, source: str = "<config>") -> AnalysisConfig:
    """Validate a configuration mapping and resolve its file paths.

    Args:
        data: the mapping read from YAML.
        base_dir: folder against which relative sample paths are resolved.
        source: name of the file, for error messages.

    Raises:
        ConfigError: the mapping does not match the schema; the message lists
            every offending key with its value and what is allowed.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping of keys at the top level, "
            f"found {type(data).__name__}"
        )
    try:
        config = AnalysisConfig.model_validate(data)
    except ValidationError as err:
        lines = [_describe(e) for e in err.errors()]
        raise ConfigError(
            f"invalid analysis config {source}:\n  " + "\n  ".join(lines)
        ) from None

    toy_files = {
        name: os.path.normpath(base_dir / Path(path).expanduser())
        for name, path in config.limit.toy_variation_files.items()
    }
    limit = config.limit.model_copy(update={"toy_variation_files": toy_files})
    config = config.model_copy(update={"limit": limit})
    work_dir = config.reading.batch.work_dir
    if work_dir is not None:
        resolved = os.path.normpath(base_dir / Path(work_dir).expanduser())
        batch = config.reading.batch.model_copy(update={"work_dir": resolved})
        reading = config.reading.model_copy(update={"batch": batch})
        config = config.model_copy(update={"reading": reading})

    samples = []
    for sample in config.samples:
        files = [
            os.path.normpath(base_dir / Path(f).expanduser()) for f in sample.files
        ]
        file_list = sample.file_list
        if file_list is not None:
            file_list = os.path.normpath(base_dir / Path(file_list).expanduser())
        samples.append(
            sample.model_copy(update={"files": files, "file_list": file_list})
        )
    return config.model_copy(update={"samples": samples})


def load_config(path: str | Path) -> AnalysisConfig:
    """Read and validate the analysis configuration at ``path``.

    Raises:
        ConfigError: the file is missing, is not valid YAML (the message gives
            the line), or does not match the schema.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {path} not found; give the path of an analysis YAML "
            "file, for example configs/demo.yaml"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise ConfigError(
            f"{path}: invalid YAML at {where}: {err.problem}. Fix the syntax there."
        ) from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    return parse_config(data, path.resolve().parent, source=str(path))


def _read_file_list(sample: Sample) -> list[str]:
    """Return the paths and patterns of a sample's file list, made absolute."""
    assert sample.file_list is not None
    listing = Path(sample.file_list)
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(
            f"sample {sample.name!r}: file_list {listing} cannot be read: {err}; "
            "write one input path or glob pattern per line"
        ) from err
    entries = []
    for line in lines:
        entry = line.strip()
        if entry and not entry.startswith("#"):
            entries.append(os.path.normpath(listing.parent / Path(entry).expanduser()))
    if not entries:
        raise ConfigError(
            f"sample {sample.name!r}: file_list {listing} lists no file; write one "
            "input path or glob pattern per line"
        )
    return entries


def expand_files(sample: Sample) -> list[Path]:
    """Expand the sample's paths and glob patterns into existing files, sorted.

    Raises:
        ConfigError: a path does not exist, or a pattern matches no file.
    """
    found: list[Path] = []
    patterns = list(sample.files)
    if sample.file_list is not None:
        patterns += _read_file_list(sample)
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(Path(p) for p in glob.glob(pattern, recursive=True))
            if not matches:
                raise ConfigError(
                    f"sample {sample.name!r}: pattern {pattern!r} matches no file; "
                    "check the path or generate the inputs first"
                )
            found.extend(matches)
        else:
            path = Path(pattern)
            if not path.exists():
                raise ConfigError(
                    f"sample {sample.name!r}: input file {pattern} not found; "
                    "check the path or generate the inputs first"
                )
            found.append(path)
    return found
