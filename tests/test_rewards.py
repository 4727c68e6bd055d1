"""Verifiers: GSM8K / MATH / arithmetic verdicts on tricky formats, unparseable vs wrong, a clean timeout."""

from __future__ import annotations

import time

import pytest

from negalign import rewards as R


@pytest.fixture(scope="module")
def mv():
    v = R.MathVerifier(timeout=3.0)
    yield v
    v.close()


@pytest.mark.parametrize(
    "completion, gold",
    [
        ("so the answer is $\\boxed{ 0 }$.", "0"),  # spaces inside the box
        ("\\boxed{0.0}", "0"),  # decimal form of an integer
        ("\\boxed{0.5}", "\\frac{1}{2}"),  # decimal vs fraction
        ("\\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{\\dfrac{3}{4}}", "\\frac34"),  # \dfrac and brace-less \frac
        ("\\boxed{5\\text{ cm}}", "5"),  # units
        ("\\boxed{90^\\circ}", "90"),  # degrees
        ("\\boxed{\\$18.90}", "18.90"),  # currency
        ("\\boxed{1{,}000}", "1000"),  # thousands separator
        ("\\boxed{10\\%}", "10"),
        ("\\boxed{x^2+1}", "1+x^2"),  # symbolic equivalence (math-verify)
        ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt2}{2}"),
        ("\\boxed{(1,2)}", "(1, 2)"),
        ("first \\boxed{3} then fixed: \\boxed{4}", "4"),  # the last box counts
        ("\\boxed{\\frac{a}{\\left(b\\right)}}", "\\frac{a}{b}"),  # nested braces, \left \right
        # gold targets as the verl MATH parquet stores them (braces kept, \text dropped, matrix rows with one "\")
        ("\\boxed{\\text{June 20}}", "{June20}"),
        ("\\boxed{440\\text{ cm}^2}", "440{cm}^2"),
        ("\\boxed{\\begin{pmatrix} 6 \\\\ 3 \\end{pmatrix}}", "\\begin{pmatrix}6\\3\\end{pmatrix}"),
    ],
)
def test_math_equivalent_formats_are_correct(mv, completion, gold):
    assert mv.verify(completion, gold).status == "correct"


@pytest.mark.parametrize("completion, gold", [("\\boxed{7}", "8"), ("\\boxed{\\frac{1}{3}}", "0.33"),
                                              ("\\boxed{x^2-1}", "x^2+1"), ("\\boxed{4} and earlier \\boxed{3}", "4")])
def test_math_wrong_answers_are_wrong(mv, completion, gold):
    assert mv.verify(completion, gold).status == "wrong"


@pytest.mark.parametrize("completion", ["The answer is 5.", "\\boxed{}", "\\boxed{5", ""])
def test_math_unparseable_is_not_wrong(mv, completion):
    v = mv.verify(completion, "5")
    assert v.status == "unparseable" and v.reward == 0.0


def test_math_pathological_input_times_out_cleanly(mv):
    """A tower of powers makes sympy compute a gigantic integer inside C code, where no signal can interrupt it: the
    worker process is killed after the timeout, the verdict is 'timeout', and the next call works again."""
    start = time.perf_counter()
    v = mv.verify("\\boxed{9^{9^{9^{9}}}}", "1")
    elapsed = time.perf_counter() - start
    assert v.status == "timeout" and v.reward == 0.0
    assert elapsed < mv.timeout + 10
    assert mv.verify("\\boxed{2+2}", "4").status == "correct"  # a fresh worker took over
    assert mv.timeouts >= 1


@pytest.mark.parametrize(
    "completion, gold, status",
    [
        ("He pays 3*4=12.\n#### 12", "#### 12", "correct"),
        ("#### 1,000", "1000", "correct"),
        ("#### $18.00", "18", "correct"),
        ("#### 18 dollars", "18", "correct"),
        ("so the total is \\boxed{42}", "42", "correct"),
        ("The answer is: 7", "7", "correct"),
        ("#### 17", "18", "wrong"),
        ("#### -3", "3", "wrong"),
        ("she has 42 apples", "42", "unparseable"),  # a bare number is not an answer
        ("#### many", "42", "unparseable"),
    ],
)
def test_gsm8k_verdicts(completion, gold, status):
    assert R.verify_gsm8k(completion, gold).status == status


def test_arith_verdicts_and_chat_completions():
    assert R.verify_arith("12", "12").status == "correct"
    assert R.verify_arith(" 12 and more", 12).status == "correct"
    assert R.verify_arith("-3", "-3").status == "correct"
    assert R.verify_arith("13", "12").status == "wrong"
    assert R.verify_arith("twelve", "12").status == "unparseable"
    chat = [{"role": "assistant", "content": "12"}]
    assert R.verify_arith(chat, "12").status == "correct"


def test_reward_functions_have_trl_signature_and_log_metrics():
    logged = {}
    out = R.arith_reward(["3", "4", "x"], answer=["3", "3", "3"], log_metric=lambda k, v: logged.setdefault(k, v),
                         prompts=["1+2=", "1+2=", "1+2="], trainer_state=None)
    assert out == [1.0, 0.0, 0.0]
    assert logged["verifier/unparseable"] == pytest.approx(1 / 3)
    assert R.gsm8k_reward(["#### 5"], answer=["5"]) == [1.0]
    assert R.reward_function("math") is R.math_reward
    with pytest.raises(ValueError):
        R.reward_function("nope")


def test_last_boxed_and_parse_number():
    assert R.last_boxed("a \\boxed{\\frac{1}{2}} b") == "\\frac{1}{2}"
    assert R.last_boxed("\\fbox{3}") == "3"
    assert R.last_boxed("\\boxed 5.") == "5"
    assert R.last_boxed("no box") is None
    assert str(R.parse_number("$1,234.50")) == "1234.50"
    assert R.parse_number("none") is None


def test_reformatted_gold_variants():
    from negalign.evaluation.verifier import gsm8k_variants, math_variants

    v = math_variants("\\frac{1}{2}")
    assert v["fraction_as_decimal"] == "\\boxed{0.5}" and v["dfrac"] == "\\boxed{\\dfrac{1}{2}}"
    assert "fraction_as_decimal" not in math_variants("\\frac{1}{3}")  # 0.333… does not terminate
    v = math_variants("1200")
    assert v["trailing_zero"] == "\\boxed{1200.0}" and v["thousands_sep"] == "\\boxed{1{,}200}"
    assert math_variants("0.25")["decimal_as_fraction"] == "\\boxed{\\frac{1}{4}}"
    assert gsm8k_variants("1500")["thousands_sep"] == "#### 1,500"


def test_verifier_audit_on_gold_solutions(shared_data):
    """A slice of the real test sets: every gold solution and re-formatted gold answer is judged correct."""
    from negalign.evaluation.verifier import audit_gsm8k, audit_math

    g = audit_gsm8k(str(shared_data / "gsm8k"), "test", 30, progress=False)
    m = audit_math(str(shared_data / "math" / "math"), "test", 30, timeout=5.0, progress=False)
    for audit in (g, m):
        assert audit["by_kind"]["gold_solution"]["total"] == 30
        for kind, c in audit["by_kind"].items():
            assert c["false_negative_rate"] == 0.0, (kind, c["examples"])


# ----------------------------------------------------------------------- exact, bounded, never raising (issue #13)


@pytest.mark.parametrize("completion, gold", [
    ("\\boxed{1234567890123456789012345678999}", "1234567890123456789012345678901"),  # 31 digits, differ in the last 3
    ("\\boxed{0.10000000000000000000000000001}", "0.1"),  # differs in the 29th decimal
])
def test_math_compares_long_numbers_exactly(mv, completion, gold):
    # before: Decimal.normalize rounded both to the context's 28 digits, so these were "correct"
    assert mv.verify(completion, gold).status == "wrong"
    assert mv.verify(completion, completion[7:-1]).status == "correct"


def test_arith_never_raises_on_huge_integers():
    huge = "9" * 5000  # over Python's 4300-digit int-string limit: int() raised ValueError before
    assert R.verify_arith(huge, "9").status == "unparseable"
    assert R.verify_arith("0012", "12").status == "correct"
    assert R.verify_arith("-0", "0").status == "correct"
    assert R.verify_arith("1" * 4000 + "2", "1" * 4000 + "3").status == "wrong"  # long but exact


def test_long_math_answers_are_bounded(mv):
    # before: normalize_math_answer ran in this process, quadratic: 120k characters took ~21 s
    start = time.perf_counter()
    assert mv.verify("\\boxed{" + "x+" * 60_000 + "1}", "1").status == "unparseable"
    assert time.perf_counter() - start < 1.0


def test_math_batch_has_one_time_budget():
    # before: each hung comparison cost the full per-call timeout, one after another (no verify_batch either)
    v = R.MathVerifier(timeout=2.0, batch_timeout=2.5)
    try:
        v.verify("\\boxed{1}", "1")  # start the worker outside the measured batch
        start = time.perf_counter()
        verdicts = v.verify_batch(["\\boxed{9^{9^{9^{9^{9}}}}}"] * 4, ["1"] * 4)
        elapsed = time.perf_counter() - start
    finally:
        v.close()
    assert [x.status for x in verdicts] == ["timeout"] * 4
    assert elapsed < 6.0, elapsed  # 4 x 2 s = 8 s before
