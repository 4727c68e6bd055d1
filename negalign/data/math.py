"""Verifiable math data for RLVR and pass@k: GSM8K, MATH (Hub or the verl parquet layout) and synthetic arithmetic.

Every loader returns a ``datasets.Dataset`` with

    ``prompt``      a chat message list ``[{"role": "user", "content": question + instruction}]`` (TRL applies the
                    model's chat template)
    ``answer``      the gold answer the verifier compares with (``negalign.rewards``)
    ``completion``  a reference solution as an assistant message list (used by SFT; RL trainers ignore it)

and names its verifier in ``task`` (``gsm8k``, ``math``, ``arith``) so a trainer picks the matching reward function.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from negalign.data.core import DataError, read_records, require_columns

GSM8K_INSTRUCTION = "\nLet's think step by step and write the final answer after \"####\"."
MATH_INSTRUCTION = "\nLet's think step by step and output the final answer within \\boxed{}."


def template_has_instruction(tokenizer, marker: str = "\\boxed") -> bool:
    """Whether ``tokenizer``'s chat template adds its own answer instruction (text holding ``marker``) around a bare
    user message, as Qwen2.5-Math's default system prompt ("... put your final answer within \\boxed{}.") does."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return False
    probe = "PROBLEM"
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": probe}], tokenize=False,
                                             add_generation_prompt=True)
    except Exception:  # a template that needs other roles or arguments: assume it adds nothing
        return False
    return marker in text.replace(probe, "")


def _rows_to_dataset(rows: list[dict]):
    from datasets import Dataset

    if not rows:
        raise DataError("no rows left after filtering")
    return Dataset.from_list(rows)


def _example(question: str, answer: str, solution: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": question}],
        "completion": [{"role": "assistant", "content": solution}],
        "answer": str(answer),
    }


@dataclass
class GSM8KData:
    """GSM8K (Cobbe et al. 2021): ``question`` and ``answer`` (reasoning, then ``#### <number>``)."""

    task = "gsm8k"
    path: str = field(default="openai/gsm8k", metadata={"help": "Hub id, or a folder/file (../shared/data/gsm8k)."})
    split: str = field(default="train", metadata={"help": "Split name, or file stem inside a folder."})
    config: str | None = field(default="main", metadata={"help": "Hub dataset config (ignored for local files)."})
    instruction: str = field(default=GSM8K_INSTRUCTION, metadata={"help": "Text appended to each question."})
    max_samples: int | None = field(default=None, metadata={"help": "Keep only the first N problems."})
    revision: str | None = field(default=None, metadata={"help": "Hub dataset revision (commit or tag) to pin."})

    def rows(self) -> list[dict]:
        rows = read_records(self.path, self.split, self.config, self.revision)
        require_columns(rows, ["question", "answer"], f"GSM8K data {self.path} (split {self.split})")
        return rows[: self.max_samples] if self.max_samples else rows

    def examples(self) -> list[dict]:
        from negalign.rewards import gsm8k_gold

        out = []
        for r in self.rows():
            if "####" not in r["answer"]:
                raise DataError(f"GSM8K row without a '####' answer line in {self.path}: {r['answer'][:80]!r}")
            out.append(_example(r["question"] + self.instruction, gsm8k_gold(r["answer"]), r["answer"]))
        return out

    def load(self, tokenizer=None):
        return _rows_to_dataset(self.examples())

    def texts(self) -> list[str]:
        return [f"{r['question']} {r['answer']}" for r in self.rows()]


@dataclass
class MathData:
    """MATH (Hendrycks et al. 2021). Reads the verl layout (``prompt`` chat list, ``reward_model.ground_truth.target``
    and ``.solution``), e.g. ``../shared/data/math/math``, or a flat one with ``problem`` + ``solution`` (the answer is
    the solution's last ``\\boxed{}``), e.g. the Hub's ``DigitalLearningGmbH/MATH-lighteval``."""

    task = "math"
    path: str = field(default="DigitalLearningGmbH/MATH-lighteval", metadata={"help": "Hub id, or a folder/file "
                      "in the verl layout (../shared/data/math/math)."})
    split: str = field(default="train", metadata={"help": "Split name, or file stem inside a folder."})
    config: str | None = field(default=None, metadata={"help": "Hub dataset config name."})
    instruction: str = field(default=MATH_INSTRUCTION, metadata={"help": "Text appended to each problem."})
    instruction_if_template_has_one: bool = field(default=False, metadata={"help": "Append the instruction even "
        "when the model's chat template already asks for \\boxed{} (Qwen2.5-Math's system prompt). Default False: "
        "the problem goes in raw, as in the reference (RLVR-Decomposed, NFT), so the instruction is not doubled."})
    revision: str | None = field(default=None, metadata={"help": "Hub dataset revision (commit or tag) to pin."})
    levels: list[int] | None = field(default=None, metadata={"help": "Keep only these difficulty levels (1-5)."})
    max_samples: int | None = field(default=None, metadata={"help": "Keep only the first N problems."})

    def examples(self) -> list[dict]:
        from negalign.rewards import last_boxed

        rows = read_records(self.path, self.split, self.config, self.revision)
        if not rows:
            raise DataError(f"MATH data {self.path} (split {self.split}) is empty")
        out = []
        for r in rows:
            if self.levels and "level" in r:
                try:
                    if int(str(r["level"]).split()[-1]) not in self.levels:
                        continue
                except ValueError:
                    continue
            if "reward_model" in r and "prompt" in r:  # verl layout
                gt = r["reward_model"]["ground_truth"]
                question = gt.get("question") or r["prompt"][-1]["content"]
                answer = gt.get("target")
                solution = gt.get("solution") or f"The answer is $\\boxed{{{answer}}}$."
            elif "problem" in r and "solution" in r:  # flat layout
                question, solution = r["problem"], r["solution"]
                answer = r.get("answer") or last_boxed(solution)
            else:
                raise DataError(f"MATH data {self.path}: expected the verl layout (prompt, reward_model) or problem + "
                                f"solution columns; it has {sorted(r)}")
            if answer is None or not str(answer).strip():  # a few verl targets are empty: nothing to verify
                continue
            out.append(_example(question + self.instruction, answer, solution))
            if self.max_samples and len(out) >= self.max_samples:
                break
        return out

    def load(self, tokenizer=None):
        """The dataset; with ``tokenizer`` given and its chat template already asking for ``\\boxed{}``, the problems
        go in raw (no second instruction) unless ``instruction_if_template_has_one``."""
        rows = self.examples()
        if self.instruction and not self.instruction_if_template_has_one and template_has_instruction(tokenizer):
            cut = len(self.instruction)
            for r in rows:
                r["prompt"][0]["content"] = r["prompt"][0]["content"][:-cut]
        return _rows_to_dataset(rows)

    def texts(self) -> list[str]:
        return [e["prompt"][0]["content"] + " " + e["completion"][0]["content"] for e in self.examples()]


_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


@dataclass
class ArithmeticData:
    """Synthetic arithmetic for offline runs: ``a op b =`` with the integer result as the answer.

    All problems with operands in ``[low, high]`` and operators in ``ops`` are enumerated and shuffled with a fixed
    seed; the first ``test_size`` form the ``test`` split, the rest ``train``, so the splits never share a problem."""

    task = "arith"
    split: str = field(default="train", metadata={"help": "train or test (disjoint problems)."})
    low: int = field(default=0, metadata={"help": "Smallest operand."})
    high: int = field(default=30, metadata={"help": "Largest operand."})
    ops: str = field(default="+-", metadata={"help": "Operators to use, from '+-*'."})
    test_size: int = field(default=200, metadata={"help": "Problems held out for the test split."})
    seed: int = field(default=0, metadata={"help": "Seed of the train/test split."})
    max_samples: int | None = field(default=None, metadata={"help": "Keep only the first N problems."})
    copies: int = field(default=1, metadata={"help": "SFT examples per problem (with label_noise, a distribution)."})
    label_noise: float = field(default=0.0, metadata={"help": "Mean share of SFT completions replaced by a near miss "
                               "(±1, ±2, ±10); each problem draws its own share in [0, 2·label_noise]. The `answer` "
                               "column (what verifiers check) always stays exact."})
    near_miss: str = field(default="random", metadata={"help": "How noisy labels pick their near miss: 'random' (each "
                           "label draws its own offset ±1 / ±2 / ±10) or 'fixed' (each problem draws one wrong answer, "
                           "a consistent misconception, shared by all its noisy labels)."})
    max_noise_share: float = field(default=0.95, metadata={"help": "Cap on a problem's share of noisy labels (1.0: "
                                   "some problems are shown only wrong answers)."})

    def problems(self) -> list[tuple[str, int]]:
        if self.split not in ("train", "test", "all"):
            raise DataError(f"arithmetic split must be 'train', 'test' or 'all', got {self.split!r}")
        bad = set(self.ops) - set("+-*")
        if bad or not self.ops:
            raise DataError(f"arithmetic ops must be drawn from '+-*', got {self.ops!r}")
        allp = [(f"{a}{op}{b}=", _OPS[op](a, b)) for a in range(self.low, self.high + 1)
                for b in range(self.low, self.high + 1) for op in self.ops]
        random.Random(self.seed).shuffle(allp)
        if self.test_size >= len(allp):
            raise DataError(f"test_size {self.test_size} leaves no training problems (there are {len(allp)})")
        chosen = {"test": allp[: self.test_size], "train": allp[self.test_size :], "all": allp}[self.split]
        return chosen[: self.max_samples] if self.max_samples else chosen

    def examples(self) -> list[dict]:
        if self.copies == 1 and not self.label_noise:
            return [_example(q, str(a), str(a)) for q, a in self.problems()]
        if self.near_miss not in ("random", "fixed"):
            raise DataError(f"near_miss must be 'random' or 'fixed', got {self.near_miss!r}")
        rng = random.Random(self.seed + 1)
        offsets = (-10, -2, -1, 1, 2, 10)
        out = []
        for q, a in self.problems():
            share = min(rng.random() * 2 * self.label_noise, self.max_noise_share)
            if self.near_miss == "fixed":
                wrong = a + rng.choice(offsets)
            for _ in range(self.copies):
                if self.near_miss == "random":
                    shown = a + rng.choice(offsets) if rng.random() < share else a
                else:
                    shown = wrong if rng.random() < share else a
                out.append(_example(q, str(a), str(shown)))
        return out

    def load(self, tokenizer=None):
        return _rows_to_dataset(self.examples())

    def texts(self) -> list[str]:
        """Texts to train a kit tokenizer on: every problem of both splits in the chat layout."""
        out = []
        for split in ("train", "test"):
            d = ArithmeticData(split, self.low, self.high, self.ops, self.test_size, self.seed)
            d.label_noise = 0.0
            out += [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n" for q, a in d.problems()]
        return out
