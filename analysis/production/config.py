"""Production configuration: samples, job payload, batch settings, polling.

The configuration is one YAML file, validated once at load time by
:func:`load_config`. Relative paths in it are relative to the file's folder.
"""

from __future__ import annotations

import logging
import re
import string
from pathlib import Path
from typing import Any, Literal

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

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")

#: Placeholders every payload template may use; samples add their ``params``.
PLACEHOLDERS = frozenset(
    {
        "output",
        "seed",
        "index",
        "sample",
        "inputs",
        "events",
        "tree",
        "python",
        "steering",
        "run_dir",
    }
)


def _check_name(value: str, what: str) -> str:
    if not NAME_PATTERN.match(value):
        raise ValueError(
            f"{what} {value!r} is invalid: use only letters, digits, '_', '.' and "
            "'-' (job names are built from it, and LSF reserves '[' and ']' for "
            "job arrays)"
        )
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LsfSettings(_Strict):
    """Options of ``bsub``, ``bjobs`` and ``bkill``.

    ``memory_mb`` is passed as the number given, so it must be in the unit of
    the cluster's ``LSF_UNIT_FOR_LIMITS`` (MB on most sites; LSF's own default
    is KB).
    """

    queue: str = Field(default="s", min_length=1)
    slots: int | None = Field(default=None, ge=1)
    memory_mb: int | None = Field(default=None, ge=1)
    memory_option: Literal["M", "rusage"] = "rusage"
    walltime_min: int | None = Field(default=None, ge=1)
    project: str | None = None
    extra_options: list[str] = Field(default_factory=list)
    bsub: str = "bsub"
    bjobs: str = "bjobs"
    bkill: str = "bkill"
    python: str | None = None
    command_timeout_s: float = Field(default=120.0, gt=0)
    max_argv_bytes: int = Field(default=100_000, ge=1000)
    bkill_chunk: int = Field(default=200, ge=1)


class LocalSettings(_Strict):
    """Settings of the ``local`` backend."""

    max_concurrent: int = Field(default=2, ge=1)


class PollSettings(_Strict):
    """Timing of the poll loop, all in seconds."""

    interval_s: float = Field(default=60.0, gt=0)
    retry_initial_s: float = Field(default=5.0, gt=0)
    max_interval_s: float = Field(default=600.0, gt=0)
    backoff_factor: float = Field(default=2.0, ge=1.0)
    unknown_escalate_s: float = Field(default=1800.0, gt=0)
    not_found_grace_s: float = Field(default=300.0, ge=0)
    submit_per_cycle: int = Field(default=1000, ge=1)


class SampleConfig(_Strict):
    """One sample: its input files (or a job count) and payload parameters.

    Either ``files``/``file_list`` with ``files_per_job`` (one job per group of
    input files), or ``jobs`` alone for a payload without inputs, such as an
    event generator.
    """

    name: str
    files: list[str] = Field(default_factory=list)
    file_list: Path | None = None
    files_per_job: int = Field(default=1, ge=1)
    jobs: int | None = Field(default=None, ge=1)
    events_per_job: int = Field(default=1000, ge=1)
    tree: str | None = None
    params: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "sample name")

    @model_validator(mode="after")
    def _inputs_or_jobs(self) -> SampleConfig:
        has_inputs = bool(self.files) or self.file_list is not None
        if has_inputs == (self.jobs is not None):
            raise ValueError(
                f"sample {self.name!r}: give either files/file_list or jobs, "
                "not both and not neither"
            )
        return self


class ProductionConfig(_Strict):
    """A whole production run.

    ``verify_outputs: false`` makes a job count as done on its batch state
    alone, for payloads that write no ROOT file (benchmarks).
    """

    name: str
    run_dir: Path
    backend: Literal["local", "lsf"] = "local"
    payload: list[str] = Field(min_length=1)
    tree: str = "tau3mu"
    seed: int = 12345
    max_attempts: int = Field(default=3, ge=1)
    use_arrays: bool = False
    array_limit: int | None = Field(default=None, ge=1)
    array_max_size: int = Field(default=1000, ge=1)
    job_wrapper: bool = True
    verify_outputs: bool = True
    lsf: LsfSettings = Field(default_factory=LsfSettings)
    local: LocalSettings = Field(default_factory=LocalSettings)
    poll: PollSettings = Field(default_factory=PollSettings)
    samples: list[SampleConfig] = Field(min_length=1)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _check_name(value, "production name")

    @model_validator(mode="after")
    def _semantic_checks(self) -> ProductionConfig:
        names = [sample.name for sample in self.samples]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"sample names must be unique, repeated: {duplicates}")
        for sample in self.samples:
            allowed = PLACEHOLDERS | set(sample.params)
            for item in self.payload:
                for field in _template_fields(item):
                    if field not in allowed:
                        raise ValueError(
                            f"payload placeholder {{{field}}} in {item!r} is not "
                            f"defined for sample {sample.name!r}."
                            + did_you_mean(field, sorted(allowed))
                        )
        return self

    def sample(self, name: str) -> SampleConfig:
        """Return the sample called ``name``.

        Raises:
            ConfigError: no sample has that name.
        """
        for sample in self.samples:
            if sample.name == name:
                return sample
        known = [s.name for s in self.samples]
        raise ConfigError(
            f"sample {name!r} not found in production {self.name!r}."
            + did_you_mean(name, known)
        )


def _template_fields(item: str) -> list[str]:
    fields = []
    for _, field, spec, conversion in string.Formatter().parse(item):
        if field is None:
            continue
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", field) or spec or conversion:
            raise ValueError(
                f"payload placeholder {{{field}}} in {item!r} is invalid: use plain "
                "names such as {output}, without attributes, indices or formats"
            )
        fields.append(field)
    return fields


def _format_location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse_config(
    data: Any, base_dir: Path, source: str = "<config>"
) -> ProductionConfig:
    """Validate a mapping as a :class:`ProductionConfig`.

    Args:
        data: the mapping read from YAML.
        base_dir: folder that relative paths (``run_dir``, ``file_list``,
            ``files``) are resolved against.
        source: name of the file, for error messages.

    Raises:
        ConfigError: a key is unknown or a value invalid; the message quotes
            the key path and the value.
    """
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, found "
            f"{type(data).__name__}"
        )
    try:
        config = ProductionConfig.model_validate(data)
    except ValidationError as err:
        problems = []
        for error in err.errors():
            where = _format_location(error["loc"])
            hint = ""
            if error["type"] == "extra_forbidden":
                hint = did_you_mean(str(error["loc"][-1]), _known_keys(error["loc"]))
            value = error.get("input")
            problems.append(f"{where} = {value!r}: {error['msg']}.{hint}")
        raise ConfigError(
            f"{source}: invalid production config:\n  " + "\n  ".join(problems)
        ) from err

    updates: dict[str, Any] = {"run_dir": (base_dir / config.run_dir).resolve()}
    samples = []
    for sample in config.samples:
        files = [
            str(base_dir / f) if not Path(f).is_absolute() else f for f in sample.files
        ]
        file_list = sample.file_list
        if file_list is not None:
            file_list = (base_dir / file_list).resolve()
            if not file_list.is_file():
                raise ConfigError(
                    f"{source}: samples.{sample.name}.file_list = {str(file_list)!r} "
                    "not found: write one input file per line in it"
                )
            lines = file_list.read_text(encoding="utf-8").splitlines()
            listed = [line.strip() for line in lines]
            files += [line for line in listed if line and not line.startswith("#")]
        samples.append(sample.model_copy(update={"files": files, "file_list": None}))
    updates["samples"] = samples
    return config.model_copy(update=updates)


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    model: type[BaseModel] = ProductionConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        annotation = field.annotation
        inner = getattr(annotation, "__args__", (annotation,))
        candidates = [
            a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not candidates:
            return []
        model = candidates[0]
    return list(model.model_fields)


def load_config(path: str | Path) -> ProductionConfig:
    """Read and validate the production config at ``path`` (YAML).

    Raises:
        ConfigError: the file is missing, not YAML, or invalid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(
            f"production config {path} could not be read: {err.strerror}; "
            "pass an existing YAML file with --config"
        ) from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    config = parse_config(data, path.resolve().parent, source=str(path))
    log.info(
        "loaded production %s: %d samples, backend %s",
        config.name,
        len(config.samples),
        config.backend,
    )
    return config
