"""The analysis configuration: the shipped configs load, bad ones fail clearly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from analysis.config import expand_files, load_config, parse_config
from analysis.errors import ConfigError

PROJECT = Path(__file__).resolve().parents[1]


def _minimal() -> dict[str, Any]:
    return {
        "name": "t",
        "samples": [
            {"name": "sig", "kind": "signal", "files": ["s.root"]},
            {
                "name": "bkg",
                "kind": "background",
                "files": ["b.root"],
                "cross_section_nb": 1.0,
                "generated_events": 10,
            },
        ],
        "bdt": {"features": ["x"]},
        "limit": {"luminosity_fb": 10.0},
    }


def _write(tmp_path: Path, data: Any) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("name", ["demo.yaml", "cms-tau3mu.yaml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(PROJECT / "configs" / name)
    assert config.samples
    assert config.limit.cl == pytest.approx(0.90)


def test_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, _minimal()))
    assert config.samples[0].files == [str(tmp_path / "s.root")]


def test_unknown_key_names_it_and_suggests(tmp_path: Path) -> None:
    data = _minimal()
    data["bdt"]["n_trails"] = 5
    with pytest.raises(ConfigError, match=r"bdt\.n_trails: unknown key") as err:
        load_config(_write(tmp_path, data))
    assert "'n_trials'" in str(err.value)


def test_wrong_type_shows_value(tmp_path: Path) -> None:
    data = _minimal()
    data["bdt"]["n_trials"] = "many"
    with pytest.raises(ConfigError, match=r"bdt\.n_trials: .*'many'"):
        load_config(_write(tmp_path, data))


def test_bad_sample_kind_lists_allowed(tmp_path: Path) -> None:
    data = _minimal()
    data["samples"][0]["kind"] = "signl"
    with pytest.raises(ConfigError, match=r"samples\[0\]\.kind: .*'signal'"):
        load_config(_write(tmp_path, data))


@pytest.mark.parametrize("name", ["a b", "x;rm -rf", "$(id)", "a/b", "é"])
def test_sample_name_outside_safe_set_is_rejected(tmp_path: Path, name: str) -> None:
    data = _minimal()
    data["samples"][0]["name"] = name
    with pytest.raises(ConfigError, match="may contain only letters"):
        load_config(_write(tmp_path, data))


def test_negative_luminosity_is_rejected(tmp_path: Path) -> None:
    data = _minimal()
    data["limit"]["luminosity_fb"] = -1.0
    with pytest.raises(ConfigError, match=r"limit\.luminosity_fb: .*-1\.0"):
        load_config(_write(tmp_path, data))


def test_missing_samples_is_reported(tmp_path: Path) -> None:
    data = _minimal()
    del data["samples"]
    with pytest.raises(ConfigError, match="samples: required key is missing"):
        load_config(_write(tmp_path, data))


def test_no_signal_sample_is_rejected(tmp_path: Path) -> None:
    data = _minimal()
    data["samples"][0]["kind"] = "data"
    with pytest.raises(ConfigError, match="kind: signal"):
        load_config(_write(tmp_path, data))


def test_duplicate_sample_names_are_rejected(tmp_path: Path) -> None:
    data = _minimal()
    data["samples"][1]["name"] = "sig"
    with pytest.raises(ConfigError, match="unique"):
        load_config(_write(tmp_path, data))


def test_background_without_normalisation_is_rejected(tmp_path: Path) -> None:
    data = _minimal()
    del data["samples"][1]["cross_section_nb"]
    with pytest.raises(ConfigError, match="needs cross_section_nb"):
        load_config(_write(tmp_path, data))


def test_yaml_syntax_error_gives_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: t\nsamples: [\n  - oops: {\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+"):
        load_config(path)


def test_yaml_tags_are_not_executed(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(path)


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config("no/such/config.yaml")


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_config(["a"], tmp_path)


def test_expand_files_reports_missing_and_empty_glob(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, _minimal()))
    with pytest.raises(ConfigError, match=r"s\.root not found"):
        expand_files(config.samples[0])
    data = _minimal()
    data["samples"][0]["files"] = ["nothing/*.root"]
    config = load_config(_write(tmp_path, data))
    with pytest.raises(ConfigError, match="matches no file"):
        expand_files(config.samples[0])


def test_expand_files_sorts_glob_matches(tmp_path: Path) -> None:
    for name in ("b.root", "a.root", "c.root"):
        (tmp_path / name).write_bytes(b"")
    data = _minimal()
    data["samples"][0]["files"] = ["*.root"]
    config = load_config(_write(tmp_path, data))
    found = [p.name for p in expand_files(config.samples[0])]
    assert found == ["a.root", "b.root", "c.root"]


def test_file_list_adds_listed_paths(tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    lists.mkdir()
    for name in ("s.root", "t1.root", "t2.root", "u.root"):
        (data_dir / name).write_bytes(b"")
    (lists / "signal.txt").write_text(
        f"# signal MC, one path per line\n../data/t*.root\n\n{data_dir / 'u.root'}\n"
    )
    data = _minimal()
    data["samples"][0] = {
        "name": "sig",
        "kind": "signal",
        "files": ["data/s.root"],
        "file_list": "lists/signal.txt",
    }
    config = load_config(_write(tmp_path, data))
    found = [p.name for p in expand_files(config.samples[0])]
    assert found == ["s.root", "t1.root", "t2.root", "u.root"]


def test_file_list_errors_name_the_list(tmp_path: Path) -> None:
    data = _minimal()
    data["samples"][0] = {"name": "sig", "kind": "signal"}
    with pytest.raises(ConfigError, match="sample 'sig' has no inputs"):
        load_config(_write(tmp_path, data))

    data["samples"][0]["file_list"] = "missing.txt"
    config = load_config(_write(tmp_path, data))
    with pytest.raises(ConfigError, match=r"file_list .*missing\.txt cannot be read"):
        expand_files(config.samples[0])

    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    data["samples"][0]["file_list"] = "empty.txt"
    config = load_config(_write(tmp_path, data))
    with pytest.raises(ConfigError, match=r"empty\.txt lists no file"):
        expand_files(config.samples[0])

    (tmp_path / "gone.txt").write_text("gone.root\n")
    data["samples"][0]["file_list"] = "gone.txt"
    config = load_config(_write(tmp_path, data))
    with pytest.raises(ConfigError, match=r"gone\.root not found"):
        expand_files(config.samples[0])


def test_toy_variation_files_resolve_against_config(tmp_path: Path) -> None:
    data = _minimal()
    data["limit"]["toy_variation_files"] = {"muon_id": "toys/muid.csv"}
    config = load_config(_write(tmp_path, data))
    expected = str(tmp_path / "toys" / "muid.csv")
    assert config.limit.toy_variation_files == {"muon_id": expected}


def test_shipped_muon_id_toys_read(tmp_path: Path) -> None:
    from flows.stages import _toy_variations

    config = load_config(PROJECT / "configs" / "demo.yaml")
    toys = _toy_variations(config.limit.toy_variation_files)
    assert toys["muon_id"].shape == (200, 1)
    with pytest.raises(ConfigError, match=r"toy_variation_files\.x: cannot read"):
        _toy_variations({"x": str(tmp_path / "absent.csv")})
