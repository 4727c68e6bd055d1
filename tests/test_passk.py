"""pass@k: exact estimator values (hand-derived), curves over problems, the `negalign eval passk` command end to end."""

from __future__ import annotations

import json
import math

import pytest

from negalign.evaluation import pass_at_k
from negalign.evaluation.passk import format_table, k_values, pass_at_k_curve, plot_curves
from tests.test_nsr import arith_kit  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models, one torch thread


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (4, 1, 1, 1 - 3 / 4),  # 1 - C(3,1)/C(4,1)
        (4, 1, 2, 1 - 3 / 6),  # 1 - C(3,2)/C(4,2)
        (4, 2, 2, 1 - 1 / 6),  # 1 - C(2,2)/C(4,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (10, 3, 4, 1 - 35 / 210),  # 1 - C(7,4)/C(10,4)
        (64, 0, 64, 0.0),
        (64, 1, 64, 1.0),
        (64, 60, 1, 60 / 64),  # pass@1 is the plain accuracy c/n
    ],
)
def test_pass_at_k_exact(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_binomials_for_large_n():
    n, c, k = 256, 17, 64
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)


def test_k_values_and_curve():
    assert k_values(64) == [1, 2, 4, 8, 16, 32, 64]
    assert k_values(6) == [1, 2, 4, 6]
    curve = pass_at_k_curve([1, 2], n=4)
    # problem 1: 1/4, 1/2, 1 ; problem 2: 1/2, 5/6, 1
    assert curve == pytest.approx({"1": 0.375, "2": (0.5 + 5 / 6) / 2, "4": 1.0})
    with pytest.raises(ValueError):
        pass_at_k_curve([], n=4)


def test_plot_and_table(tmp_path):
    curves = {"base": {"1": 0.2, "2": 0.3, "4": 0.5}, "nsr": {"1": 0.25, "2": 0.35, "4": 0.5}}
    path = plot_curves(curves, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000 and path.endswith("p.png")
    table = format_table(curves)
    assert table.splitlines()[0] == "| model | pass@1 | pass@2 | pass@4 |"
    assert "| nsr | 0.250 | 0.350 | 0.500 |" in table


def test_eval_passk_command(arith_kit, tmp_path):
    """Two (identical) models on 5 held-out arithmetic problems, n = 4: results.json, the plot, resumable samples."""
    import os
    import subprocess
    import sys

    out = tmp_path / "passk"
    proc = subprocess.run([sys.executable, "-m", "negalign", "eval", "passk", "--model", f"a={arith_kit}", "--model", f"b={arith_kit}", "--data", "arith",
               "--max-samples", "5", "--n", "4", "--max-new-tokens", "3", "--backend", "hf", "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| a |" in proc.stdout
    res = json.loads((out / "results.json").read_text())
    assert set(res["models"]) == {"a", "b"}
    assert set(res["models"]["a"]["pass_at_k"]) == {"1", "2", "4"}
    assert len(res["models"]["a"]["correct_counts"]) == 5
    assert res["models"]["a"]["pass_at_k"] == res["models"]["b"]["pass_at_k"]  # same model, same seed
    assert (out / "passk.png").exists() and (out / "samples_a.jsonl").exists()
