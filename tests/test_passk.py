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


QWEN_MATH_LIKE_TEMPLATE = (  # Qwen2.5-Math's shape: a default system prompt that already asks for \boxed{}
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nPlease reason step by step, and put your final "
    "answer within \\boxed{}.<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _math_file(tmp_path):
    rows = [{"problem": "What is $1+1$?", "solution": "It is $\\boxed{2}$."},
            {"problem": "What is $2+3$?", "solution": "So $\\boxed{5}$."}]
    path = tmp_path / "math.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_math_prompt_is_raw_when_the_chat_template_carries_the_instruction(arith_kit, tmp_path):
    """Qwen2.5-Math's template adds "… put your final answer within \\boxed{}" itself; the reference feeds the raw
    problem, and negalign used to append its own instruction as well, so the model read it twice. Without such a
    template (or with the option set) the instruction is appended as before."""
    from transformers import AutoTokenizer

    from negalign.data.math import MATH_INSTRUCTION, MathData

    tok = AutoTokenizer.from_pretrained(arith_kit)
    plain = MathData(path=_math_file(tmp_path)).load(tok)
    assert plain[0]["prompt"][0]["content"] == "What is $1+1$?" + MATH_INSTRUCTION

    tok.chat_template = QWEN_MATH_LIKE_TEMPLATE
    ds = MathData(path=_math_file(tmp_path)).load(tok)
    assert [p[0]["content"] for p in ds["prompt"]] == ["What is $1+1$?", "What is $2+3$?"]
    text = tok.apply_chat_template(ds[0]["prompt"], tokenize=False, add_generation_prompt=True)
    assert text.count("\\boxed{}") == 1  # the instruction appears once, from the template

    from negalign.data.math import template_has_instruction

    assert template_has_instruction(tok)
    tok.chat_template = None
    assert not template_has_instruction(tok)
    tok.chat_template = QWEN_MATH_LIKE_TEMPLATE
    forced = MathData(path=_math_file(tmp_path), instruction_if_template_has_one=True).load(tok)
    assert forced[0]["prompt"][0]["content"].endswith(MATH_INSTRUCTION)
    assert ds["answer"] == ["2", "5"]


def test_passk_samples_like_the_reference_by_default():
    """RLVR-Decomposed's eval.sh samples pass@k at temperature 0.6, top-p 0.95 (negalign used 1.0 / 1.0)."""
    import argparse
    import inspect

    from negalign.evaluation.passk import add_arguments, evaluate_model

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--model", "m", "--data", "math", "--output-dir", "x"])
    assert (args.temperature, args.top_p) == (0.6, 0.95)
    sig = inspect.signature(evaluate_model).parameters
    assert (sig["temperature"].default, sig["top_p"].default) == (0.6, 0.95)
    assert p.parse_args(["--model", "m", "--data", "math", "--output-dir", "x", "--temperature", "1.0",
                         "--top-p", "1.0"]).top_p == 1.0
