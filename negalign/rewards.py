"""Verifiers: binary rewards for GSM8K, MATH and synthetic arithmetic, in TRL's reward-function signature.

Every verifier returns a ``Verdict`` whose ``status`` is one of

    ``correct``      the extracted answer equals the gold answer
    ``wrong``        an answer was extracted and it differs
    ``unparseable``  no answer could be extracted from the completion (no ``####`` / ``\\boxed{}`` / number, or
                     math-verify could not parse what was inside)
    ``timeout``      the comparison did not finish within the per-call timeout (the worker process is killed)

``unparseable`` and ``timeout`` are kept apart from ``wrong`` so a run can tell a model that answers wrongly from one
that stops answering in the expected format; all three give reward 0. False negatives (a right answer judged
``wrong``/``unparseable``) turn right answers into negatives, which NSR / NFT amplify: ``negalign eval verifier``
measures the rate on gold solutions.

Reward functions (``gsm8k_reward``, ``math_reward``, ``arith_reward``) take ``completions`` (strings or chat message
lists) and the dataset's ``answer`` column, as TRL's GRPOTrainer passes them, and return a list of floats. They log
the share of unparseable / timed-out completions through TRL's ``log_metric`` hook when it is given.

MATH answers are compared with math-verify inside a separate worker process: a pathological answer (say
``\\boxed{9^{9^{9^{9}}}}``) can hang sympy inside C code where no signal reaches it, so the only clean timeout is to
kill the process. The worker is started lazily, reused across calls, and restarted after a timeout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

STATUSES = ("correct", "wrong", "unparseable", "timeout")


@dataclass(frozen=True)
class Verdict:
    status: str  # one of STATUSES
    predicted: str | None = None  # the extracted answer text (None when unparseable)

    @property
    def reward(self) -> float:
        return 1.0 if self.status == "correct" else 0.0


def completion_text(completion) -> str:
    """The text of a completion as TRL passes it: a string, or a list of chat messages (the last one's content)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        last = completion[-1]
        if isinstance(last, dict):
            content = last.get("content", "")
            if isinstance(content, list):  # typed content blocks
                return "".join(c.get("text", "") for c in content if isinstance(c, dict))
            return str(content)
    return str(completion)


# ------------------------------------------------------------------------------------------------------ extraction


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces; ``\\boxed 5`` also works."""
    idx = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if idx < 0:
        return None
    rest = text[idx:]
    m = re.match(r"\\(?:boxed|fbox)\s*", rest)
    pos = m.end()
    if pos < len(rest) and rest[pos] == "{":
        depth = 0
        for j in range(pos, len(rest)):
            if rest[j] == "{":
                depth += 1
            elif rest[j] == "}":
                depth -= 1
                if depth == 0:
                    return rest[pos + 1 : j].strip()
        return None  # unbalanced
    m2 = re.match(r"\S+", rest[pos:])  # "\boxed 5"
    return m2.group(0).rstrip("$.") if m2 else None


_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def parse_number(text: str) -> Decimal | None:
    """The first number in ``text`` as a Decimal: ignores ``$``, ``%``, thousands separators (``1,000``, ``1{,}000``),
    ``\\!`` spacing and trailing units or full stops. None when there is no number."""
    t = text.replace("{,}", ",").replace("\\!", "").replace("\\$", "").replace("$", "").replace("\\,", "")
    t = re.sub(r"(?<=\d)\s+(?=\d{3}\b)", "", t)  # "1 000"
    m = _NUMBER.search(t)
    if not m:
        return None
    s = m.group(0).replace(",", "")
    try:
        return Decimal(s)
    except InvalidOperation:
        return None


def gsm8k_gold(solution: str) -> str:
    """The gold answer of a GSM8K solution: the text after the last ``####``."""
    if "####" not in solution:
        raise ValueError("GSM8K solution has no '####' answer line")
    return solution.rsplit("####", 1)[1].strip()


def extract_gsm8k_answer(text: str) -> str | None:
    """A completion's answer: after the last ``####``, else inside the last ``\\boxed{}``, else after
    "the answer is". None (unparseable) otherwise: a bare last number is not taken as an answer."""
    if "####" in text:
        return text.rsplit("####", 1)[1].strip().splitlines()[0] if text.rsplit("####", 1)[1].strip() else None
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    m = re.search(r"answer is[:\s]*([^\n]+)", text, flags=re.IGNORECASE)
    return m.group(1).strip() if m else None


def verify_gsm8k(completion, gold: str) -> Verdict:
    """GSM8K: numeric comparison of the extracted answer with the gold number (exact, as Decimals)."""
    text = completion_text(completion)
    ans = extract_gsm8k_answer(text)
    if ans is None:
        return Verdict("unparseable")
    pred = parse_number(ans)
    if pred is None:
        return Verdict("unparseable", ans)
    gold_num = parse_number(gsm8k_gold(gold) if "####" in gold else gold)
    if gold_num is None:
        raise ValueError(f"GSM8K gold answer {gold!r} holds no number")
    return Verdict("correct" if pred == gold_num else "wrong", ans)


def verify_arith(completion, gold) -> Verdict:
    """Synthetic arithmetic: the first integer of the completion against the gold integer."""
    text = completion_text(completion).strip()
    m = re.match(r"\s*(-?\d+)", text)
    if not m or len(m.group(1)) > MAX_INT_DIGITS:  # int() itself refuses over 4300 digits: never raise in a run
        return Verdict("unparseable")
    gold_int = canonical_int(str(gold).strip())
    if gold_int is None:
        raise ValueError(f"arithmetic gold answer {gold!r} is not an integer")
    return Verdict("correct" if canonical_int(m.group(1)) == gold_int else "wrong", m.group(1))


def canonical_int(text: str) -> str | None:
    """``-?digits`` without leading zeros (``-0`` is ``0``), compared as text: exact at any length."""
    m = re.fullmatch(r"([-+]?)0*(\d+)", text)
    if not m:
        return None
    digits = m.group(2)
    return digits if digits == "0" or m.group(1) != "-" else "-" + digits


def canonical_decimal(text: str) -> str | None:
    """A plain decimal number (``-12.500``, ``.5``, ``007``) in one exact text form (``-12.5``, ``0.5``, ``7``), or
    None. No rounding at any length (``Decimal.normalize`` rounds to the context's 28 digits)."""
    m = re.fullmatch(r"([-+]?)(\d*)(?:\.(\d*))?", text)
    if not m or not (m.group(2) or m.group(3)):
        return None
    whole = m.group(2).lstrip("0") or "0"
    frac = (m.group(3) or "").rstrip("0")
    body = whole + ("." + frac if frac else "")
    return body if body == "0" or m.group(1) != "-" else "-" + body


# ------------------------------------------------------------------------------------------------------------- MATH

MAX_INT_DIGITS = 4300  # Python's default int-string limit; longer answers are unparseable
MAX_MATH_ANSWER_CHARS = 2000  # a longer \\boxed{} answer is unparseable (normalising is quadratic in the length)
FAST_PATH_CHARS = 200  # normalised in this process up to this length (microseconds); longer: in the worker, timed
BATCH_TIMEOUT = 30.0  # seconds of MATH verification per reward batch; once spent, the rest are ``timeout``

_UNIT_WORDS = (
    "units?|cm|centimeters?|meters?|m|km|kilometers?|inches?|inch|feet|foot|ft|miles?|mph|degrees?|dollars?|cents?"
    "|seconds?|minutes?|hours?|days?|weeks?|years?|sq|square|cubic|pounds?|lbs?|ounces?|oz|grams?|g|kg|liters?"
    "|gallons?|people|students?|ways|points?|cups?|pages?|boxes?|marbles?|cookies?"
)


def normalize_math_answer(ans: str) -> str:
    """A light canonical form of a LaTeX answer, for a fast exact match before math-verify."""
    s = ans.strip()
    s = re.sub(r"\\text\{\s*(" + _UNIT_WORDS + r")\s*\}(\^\{?\d\}?)?", "", s)  # \text{ cm}, \text{cm}^2
    s = re.sub(r"\\(?:mbox|mathrm)\{\s*(" + _UNIT_WORDS + r")\s*\}", "", s)
    s = re.sub(r"\\text\{(.*?)\}", r"\1", s)
    s = s.replace("\\left", "").replace("\\right", "").replace("\\!", "").replace("\\,", "").replace("\\;", "")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("^\\circ", "").replace("^{\\circ}", "")
    s = s.replace("\\%", "").replace("%", "").replace("\\$", "").replace("$", "")
    s = s.replace("{,}", ",") if re.fullmatch(r"[\d{},]+", s.replace(" ", "")) else s
    s = re.sub(r"\s+", "", s)
    s = s.replace("\\\\", "\\")  # matrix row breaks: verl's MATH targets store "\\" as "\"
    s = s.rstrip(".")
    if "\\" not in s:  # plain text left: bare braces carry nothing ("{June20}", "440{cm}^2" in verl's MATH targets)
        s = s.replace("{", "").replace("}", "")
        m = re.fullmatch(r"(-?[\d.,]+)(?:" + _UNIT_WORDS + r")+(?:\^\d)?", s)
        if m:
            s = m.group(1)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"-?\d+\.\d*", s) or re.fullmatch(r"-?\d+", s):
        s = canonical_decimal(s) or s  # exact: no 28-digit rounding
    return s


def _compare_normalized(gold: str, pred: str) -> str | None:
    """``correct`` / ``wrong`` when the normalised forms decide it exactly (equal, or two plain numbers), else None."""
    g, p = normalize_math_answer(gold), normalize_math_answer(pred)
    if g == p:
        return "correct"
    if canonical_decimal(g) is not None and canonical_decimal(p) is not None:
        return "correct" if canonical_decimal(g) == canonical_decimal(p) else "wrong"
    return None


def _strip_units_for_verify(ans: str) -> str:
    s = re.sub(r"\\text\{\s*(" + _UNIT_WORDS + r")\s*\}(\^\{?\d\}?)?", "", ans)
    s = re.sub(r"\\(?:mbox|mathrm)\{\s*(" + _UNIT_WORDS + r")\s*\}", "", s)
    s = re.sub(r"(?<=\d)\s*(" + _UNIT_WORDS + r")\s*$", "", s.strip())
    return s.strip()


def _worker_main() -> None:  # ``python -m negalign.rewards``: one JSON request per stdin line, one reply per line
    import json
    import sys

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    sys.stdout.write(json.dumps({"ready": True}) + "\n")
    sys.stdout.flush()
    for line in sys.stdin:
        gold, pred, *mode = json.loads(line)
        try:
            decided = _compare_normalized(gold, pred) if mode == ["normalize"] else None
            if decided is not None:
                sys.stdout.write(json.dumps({"status": decided}) + "\n")
                sys.stdout.flush()
                continue
            gold, pred = _strip_units_for_verify(gold), _strip_units_for_verify(pred)
            g = parse(f"${gold}$", extraction_config=configs, parsing_timeout=None)
            p = parse(f"${pred}$", extraction_config=configs, parsing_timeout=None)
            if not p:
                status = "unparseable"
            elif not g:
                status = "gold_unparseable"
            else:
                status = "correct" if verify(g, p, timeout_seconds=None) else "wrong"
        except Exception:  # a math-verify/sympy failure on odd input is a verdict, not a crash
            status = "unparseable"
        sys.stdout.write(json.dumps({"status": status}) + "\n")
        sys.stdout.flush()


class MathVerifier:
    """MATH answers: extract the last ``\\boxed{}``, try a normalised exact match, else math-verify in a worker process
    with a wall-clock ``timeout`` (seconds) per comparison. Use as a context manager or call ``close()``."""

    def __init__(self, timeout: float = 5.0, batch_timeout: float = BATCH_TIMEOUT):
        self.timeout = float(timeout)
        self.batch_timeout = float(batch_timeout)  # total per ``verify_batch`` call
        self._proc = None
        self.timeouts = 0

    # worker management -----------------------------------------------------------------------------------------
    def _start(self) -> None:
        import subprocess
        import sys

        self._proc = subprocess.Popen(
            [sys.executable, "-m", "negalign.rewards"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        if self._readline(60.0) is None:  # importing sympy + math-verify in the fresh worker
            self._kill()
            raise RuntimeError("the math-verify worker did not start (is math-verify installed?)")

    def _readline(self, timeout: float) -> str | None:
        import select

        ready, _, _ = select.select([self._proc.stdout], [], [], timeout)
        if not ready:
            return None
        line = self._proc.stdout.readline()
        return line or None

    def _kill(self) -> None:
        if self._proc is not None:
            try:
                self._proc.kill()
                self._proc.wait(timeout=5)
            except Exception:
                pass
            for stream in (self._proc.stdin, self._proc.stdout):
                try:
                    stream.close()
                except Exception:
                    pass
        self._proc = None

    def close(self) -> None:
        self._kill()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self._kill()
        except Exception:
            pass

    def _math_verify(self, gold: str, pred: str, normalize: bool = False, timeout: float | None = None) -> str:
        import json

        if self._proc is None or self._proc.poll() is not None:
            self._kill()
            self._start()
        try:
            self._proc.stdin.write(json.dumps([gold, pred] + (["normalize"] if normalize else [])) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._kill()
            return self._math_verify(gold, pred, normalize, timeout)
        line = self._readline(self.timeout if timeout is None else max(0.0, min(self.timeout, timeout)))
        if line is None:  # hung (or died): kill it; the next call starts a fresh worker
            self._kill()
            self.timeouts += 1
            return "timeout"
        return json.loads(line)["status"]

    # public --------------------------------------------------------------------------------------------------------
    def compare(self, pred: str, gold: str) -> str:
        """Status of an extracted answer ``pred`` against ``gold`` (both LaTeX without ``\\boxed``)."""
        return self._compare(pred, gold)

    def _compare(self, pred: str, gold: str, timeout: float | None = None) -> str:
        if len(pred) > MAX_MATH_ANSWER_CHARS:
            return "unparseable"
        if len(pred) <= FAST_PATH_CHARS and len(gold) <= FAST_PATH_CHARS:
            decided = _compare_normalized(gold, pred)  # bounded: microseconds
            if decided is not None:
                return decided
            status = self._math_verify(gold, pred, normalize=False, timeout=timeout)
        else:  # normalising a long answer is slow: do it in the worker, under the timeout
            status = self._math_verify(gold, pred, normalize=True, timeout=timeout)
        if status == "gold_unparseable":  # cannot judge beyond the exact match above
            return "wrong"
        return status

    def verify(self, completion, gold: str, timeout: float | None = None) -> Verdict:
        text = completion_text(completion)
        pred = last_boxed(text)
        if pred is None or not pred.strip():
            return Verdict("unparseable")
        if timeout is not None and timeout <= 0:
            self.timeouts += 1
            return Verdict("timeout", pred)
        return Verdict(self._compare(pred, gold, timeout), pred)

    def verify_batch(self, completions, golds) -> list[Verdict]:
        """Verdicts for a batch, spending at most ``batch_timeout`` seconds in all: each comparison gets what is
        left (at most ``timeout``), and once the budget is spent the rest are ``timeout`` without being run."""
        import time

        deadline = time.monotonic() + self.batch_timeout
        return [self.verify(c, g, timeout=deadline - time.monotonic()) for c, g in zip(completions, golds, strict=True)]


_DEFAULT_MATH_VERIFIER: MathVerifier | None = None


def default_math_verifier() -> MathVerifier:
    global _DEFAULT_MATH_VERIFIER
    if _DEFAULT_MATH_VERIFIER is None:
        _DEFAULT_MATH_VERIFIER = MathVerifier()
    return _DEFAULT_MATH_VERIFIER


def verify_math(completion, gold: str) -> Verdict:
    return default_math_verifier().verify(completion, gold)


# --------------------------------------------------------------------------------------- TRL reward functions

VERIFIERS = {"gsm8k": verify_gsm8k, "math": verify_math, "arith": verify_arith}


def _reward(verify, completions, answer, log_metric=None):
    if verify is verify_math:  # one time budget for the whole batch
        verdicts = default_math_verifier().verify_batch(completions, answer)
    else:
        verdicts = [verify(c, a) for c, a in zip(completions, answer, strict=True)]
    if log_metric is not None and verdicts:
        n = len(verdicts)
        log_metric("verifier/unparseable", sum(v.status == "unparseable" for v in verdicts) / n)
        log_metric("verifier/timeout", sum(v.status == "timeout" for v in verdicts) / n)
    return [v.reward for v in verdicts]


def gsm8k_reward(completions, answer, log_metric=None, **kwargs) -> list[float]:
    """TRL reward function: 1.0 when the ``####`` (or boxed) answer equals the GSM8K gold number, else 0.0."""
    return _reward(verify_gsm8k, completions, answer, log_metric)


def math_reward(completions, answer, log_metric=None, **kwargs) -> list[float]:
    """TRL reward function: 1.0 when the last ``\\boxed{}`` is equivalent to the gold answer (math-verify), else 0.0."""
    return _reward(verify_math, completions, answer, log_metric)


def arith_reward(completions, answer, log_metric=None, **kwargs) -> list[float]:
    """TRL reward function for the synthetic arithmetic task: 1.0 when the first integer is the result."""
    return _reward(verify_arith, completions, answer, log_metric)


REWARD_FUNCS = {"gsm8k": gsm8k_reward, "math": math_reward, "arith": arith_reward}


def reward_function(task: str):
    """The TRL reward function of a task name (``gsm8k``, ``math``, ``arith``)."""
    if task not in REWARD_FUNCS:
        raise ValueError(f"no verifier for task {task!r}; known: {', '.join(REWARD_FUNCS)}")
    return REWARD_FUNCS[task]


if __name__ == "__main__":
    _worker_main()
