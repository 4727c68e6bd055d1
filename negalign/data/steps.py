"""Multi-step synthetic arithmetic for the per-step negatives issue (Setlur et al. 2024), offline and verifiable.

A problem is a chain of ``num_steps`` additions/subtractions on a running value kept inside ``[0, max_value]``::

    question:  "Compute 7+5-3+8 step by step."
    solution:  "7+5=12\\n12-3=9\\n9+8=17\\n#### 17"

One line per step, then the final answer after ``####`` (the GSM8K convention), so ``negalign.rewards.verify_gsm8k``
verifies it and ``negalign.stepvalues.split_steps`` splits it exactly as it splits a GSM8K solution. A mistake in one
line propagates to the answer, so Monte-Carlo step values locate the first wrong step (the "pit") the way they do
on real math. Problems are generated from a seed; train and test are disjoint (no question appears in both).

The loader returns the same columns as ``negalign.data.math.GSM8KData`` (``prompt`` chat list, ``completion``
assistant message list, ``answer``), so the per-step trainers take either.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from negalign.data.core import DataError


def chat_prompt(messages_or_text, tokenizer) -> str:
    """The text the policy is conditioned on for a ``prompt`` column of these loaders (and ``GSM8KData``'s): the chat
    template with a generation prompt, the messages one per line without a template, or the text as given."""
    if isinstance(messages_or_text, str):
        return messages_or_text
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages_or_text, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in messages_or_text) + "\n"


def make_problem(rng: random.Random, num_steps: int, max_value: int, max_operand: int) -> tuple[str, str, int]:
    """One chain problem: (question, step-by-step solution ending in ``#### answer``, answer)."""
    value = rng.randint(0, max_value)
    start = value
    parts, lines = [], []
    for _ in range(num_steps):
        ops = [op for op in "+-" if 0 <= (value + (1 if op == "+" else -1)) <= max_value]
        op = rng.choice(ops)
        room = (max_value - value) if op == "+" else value
        b = rng.randint(1, min(max_operand, room))
        new = value + b if op == "+" else value - b
        parts.append(f"{op}{b}")
        lines.append(f"{value}{op}{b}={new}")
        value = new
    question = f"Compute {start}" + "".join(parts) + " step by step."
    return question, "\n".join(lines) + f"\n#### {value}", value


@dataclass
class StepArithData:
    """Multi-step synthetic arithmetic (chains of + and -) with one solution line per step and a ``####`` answer."""

    task = "gsm8k"  # answers after '####': verified by negalign.rewards.verify_gsm8k
    split: str = field(default="train", metadata={"help": "train or test (disjoint questions)."})
    num_problems: int = field(default=2000, metadata={"help": "Problems in the train split."})
    test_size: int = field(default=500, metadata={"help": "Problems in the test split (never in train)."})
    num_steps: int = field(default=3, metadata={"help": "Operations per problem (solution lines before '####')."})
    max_value: int = field(default=19, metadata={"help": "The running value stays within [0, max_value]."})
    max_operand: int = field(default=9, metadata={"help": "Largest number added or subtracted in a step."})
    seed: int = field(default=0, metadata={"help": "Seed of the problem generator (train and test use it alike)."})
    max_samples: int | None = field(default=None, metadata={"help": "Keep only the first N problems."})

    def problems(self) -> list[tuple[str, str, int]]:
        if self.split not in ("train", "test"):
            raise DataError(f"step arithmetic split must be 'train' or 'test', got {self.split!r}")
        if self.num_steps < 1 or self.max_value < 2 or self.max_operand < 1:
            raise DataError("step arithmetic needs num_steps >= 1, max_value >= 2, max_operand >= 1")
        # test problems are drawn first from their own stream; train skips any question the test split holds
        test_rng, train_rng = random.Random(f"{self.seed}-test"), random.Random(f"{self.seed}-train")
        test, seen = [], set()
        while len(test) < self.test_size:
            p = make_problem(test_rng, self.num_steps, self.max_value, self.max_operand)
            if p[0] not in seen:
                seen.add(p[0])
                test.append(p)
        if self.split == "test":
            out = test
        else:
            out, tries = [], 0
            while len(out) < self.num_problems:
                p = make_problem(train_rng, self.num_steps, self.max_value, self.max_operand)
                tries += 1
                if tries > 200 * self.num_problems:
                    raise DataError("step arithmetic: too few distinct problems for num_problems; raise max_value")
                if p[0] not in seen:
                    seen.add(p[0])
                    out.append(p)
        return out[: self.max_samples] if self.max_samples else out

    def examples(self) -> list[dict]:
        return [
            {
                "prompt": [{"role": "user", "content": q}],
                "completion": [{"role": "assistant", "content": sol}],
                "answer": str(ans),
            }
            for q, sol, ans in self.problems()
        ]

    def load(self, tokenizer=None):
        from datasets import Dataset

        return Dataset.from_list(self.examples())

    def texts(self) -> list[str]:
        """Texts to train a kit tokenizer on, in the chat layout."""
        return [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{s}<|im_end|>\n" for q, s, _ in self.problems()]
