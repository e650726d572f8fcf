"""The one-touch flow on the CMS tau -> 3mu training file, written by others."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from flows.one_touch import one_touch

PROJECT = Path(__file__).resolve().parents[1]

# ROC AUC of the file's own TMVA BDT on TestTree, computed with scikit-learn
# (signal = classID 0) and listed in the shared data folder's README.
TMVA_TEST_AUC = 0.8882
# Statistical error of an AUC on this test set, from the same README.
AUC_ERROR = 0.002

pytestmark = pytest.mark.integration


def test_cms_file_runs_to_signal_count_limit(
    shared_data: Path, prefect_api: str, tmp_path: Path
) -> None:
    config = yaml.safe_load((PROJECT / "configs" / "cms-tau3mu.yaml").read_text())
    data_file = shared_data / "cms-tau3mu" / "TMVA_file_A.root"
    for sample in config["samples"]:
        sample["files"] = [str(data_file)]
    config["bdt"]["n_trials"] = 6
    config["limit"]["n_toys"] = 500
    path = tmp_path / "cms.yaml"
    path.write_text(yaml.safe_dump(config))

    state = one_touch(config=str(path), runs_dir=str(tmp_path), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()

    bdt = result["bdt"]
    # Our scorer reproduces the README's value of the file's own BDT column:
    # four decimals, as the README prints them.
    assert bdt["reference_auc_test"] == pytest.approx(TMVA_TEST_AUC, abs=5e-5)
    # The tuned xgboost beats TMVA by more than three statistical errors.
    assert bdt["auc_test"] > TMVA_TEST_AUC + 3 * AUC_ERROR
    assert bdt["auc_train"] / bdt["auc_test"] < 1.03

    region = result["signal_region"]
    assert region["kind"] == "interval"
    # The signal peaks at m_tau = 1.777 GeV with about 14 MeV resolution.
    assert region["low"] < 1.77693 < region["high"]

    limit = result["limit"]
    assert "br_upper_expected" not in limit, "no luminosity: no BF limit"
    expected = limit["n_upper_expected"]
    assert all(math.isfinite(v) and v > 0 for v in expected)
    assert limit["n_upper_observed"] is None, "blinded"
