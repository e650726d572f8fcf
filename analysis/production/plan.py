"""Split samples into jobs and expand the payload template of each job."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from analysis.errors import ConfigError
from analysis.production.config import ProductionConfig, SampleConfig

STEERING = Path(__file__).resolve().parent / "steering" / "reco_tau3mu.py"

#: Seeds of different samples are this far apart, so that no two jobs of a
#: production share a seed while a sample has fewer jobs than this.
SEED_STRIDE = 1_000_000


@dataclass(frozen=True)
class JobPlan:
    """One job of the production.

    Attributes:
        name: ``<production>.<sample>.<index>`` with a 5-digit index.
        sample: sample name.
        index: job index within the sample, from 0.
        argv: payload argv with every placeholder filled in.
        outputs: files the job must write.
        tree: tree that each output must contain, with entries.
        inputs: input files of the job (empty for a generator payload).
        seed: random seed given to the job.
    """

    name: str
    sample: str
    index: int
    argv: list[str]
    outputs: list[Path]
    tree: str
    inputs: list[str]
    seed: int


def expand_payload(
    template: list[str], values: dict[str, str], inputs: list[str]
) -> list[str]:
    """Fill the placeholders of an argv template.

    An element that is exactly ``{inputs}`` becomes one argv element per input
    file; anywhere else ``{inputs}`` is the files joined by commas. No element
    is ever split on spaces.

    Raises:
        ConfigError: a placeholder has no value.
    """
    argv: list[str] = []
    for item in template:
        if item == "{inputs}":
            argv.extend(inputs)
            continue
        try:
            argv.append(item.format_map({**values, "inputs": ",".join(inputs)}))
        except KeyError as err:
            raise ConfigError(
                f"payload element {item!r} uses placeholder {err} that has no value; "
                f"known: {sorted(values)}"
            ) from err
    return argv


def _sample_groups(sample: SampleConfig) -> list[list[str]]:
    if sample.jobs is not None:
        return [[] for _ in range(sample.jobs)]
    size = sample.files_per_job
    return [sample.files[i : i + size] for i in range(0, len(sample.files), size)]


def build_plan(config: ProductionConfig) -> list[JobPlan]:
    """Return every job of the production, sample by sample.

    Job ``index`` of the sample at position ``k`` in the config gets the seed
    ``config.seed + k * SEED_STRIDE + index``.
    """
    plans = []
    for position, sample in enumerate(config.samples):
        tree = sample.tree or config.tree
        for index, inputs in enumerate(_sample_groups(sample)):
            name = f"{config.name}.{sample.name}.{index:05d}"
            output = (
                config.run_dir
                / "output"
                / sample.name
                / f"{sample.name}_{index:05d}.root"
            )
            seed = config.seed + position * SEED_STRIDE + index
            values = {
                "output": str(output),
                "seed": str(seed),
                "index": str(index),
                "sample": sample.name,
                "events": str(sample.events_per_job),
                "tree": tree,
                "python": sys.executable,
                "steering": str(STEERING),
                "run_dir": str(config.run_dir),
                **sample.params,
            }
            argv = expand_payload(config.payload, values, inputs)
            plans.append(
                JobPlan(name, sample.name, index, argv, [output], tree, inputs, seed)
            )
    return plans
