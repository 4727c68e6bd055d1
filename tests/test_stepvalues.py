"""Step splitting, Monte-Carlo step values with a deterministic toy policy, first pits, advantages, the value cache."""

import json

import pytest
import torch

from negalign.losses import first_pit, step_advantages
from negalign.stepvalues import estimate, estimate_step_values, read_step_values, split_steps, step_token_index

# ------------------------------------------------------------------------------------------------------- splitting


@pytest.mark.parametrize(
    "text, delimiter, expected",
    [
        ("a=1\nb=2\n#### 3", "\n", ["a=1\n", "b=2\n", "#### 3"]),
        # trailing delimiter and blank lines are glued to the step before them, never steps of their own
        ("a=1\n\n\nb=2\n#### 3\n\n", "\n", ["a=1\n\n\n", "b=2\n", "#### 3\n\n"]),
        # Windows line ends: the \r stays with its step
        ("a=1\r\nb=2\r\n#### 3\r\n", "\n", ["a=1\r\n", "b=2\r\n", "#### 3\r\n"]),
        # leading blank lines go to the first step
        ("\n \na=1\n#### 3", "\n", ["\n \na=1\n", "#### 3"]),
        # the delimiter inside the final answer line does not cut it
        ("x is 1.5. y is 2. #### 3.5", ".", ["x is 1.", "5.", " y is 2.", " #### 3.5"]),
        # everything after the last answer marker is one final step
        ("a\n#### 1\nbecause\n", "\n", ["a\n", "#### 1\nbecause\n"]),
        ("no delimiter at all", "\n", ["no delimiter at all"]),
        ("", "\n", []),
        (" \n\n  ", "\n", []),
        # a multi-character delimiter
        ("s1<step>s2<step><step>#### 4", "<step>", ["s1<step>", "s2<step><step>", "#### 4"]),
    ],
)
def test_split_steps_tricky_text(text, delimiter, expected):
    steps = split_steps(text, delimiter)
    assert steps == expected
    if steps:
        assert "".join(steps) == text  # prefixes are exact substrings of the response


def test_split_steps_without_answer_marker_and_bad_delimiter():
    assert split_steps("1+1=2\n#### 2", "\n", answer_marker=None) == ["1+1=2\n", "#### 2"]
    assert split_steps("x. #### 3.5", ".", answer_marker=None) == ["x.", " #### 3.", "5"]
    with pytest.raises(ValueError):
        split_steps("a", "")


# ------------------------------------------------------------------------------------------- toy policy and values


class ToyPolicy:
    """A deterministic stand-in for π_sft: the continuations of a text depend only on the text.

    The "task" is to end with the gold answer 6. A prefix whose last line is ``GOOD`` (or the bare prompt) is continued
    correctly by ``good`` of the M samples; a prefix that has gone through a ``BAD`` line is never continued
    correctly; ``OK`` lines keep ``ok`` of M correct. Every call is recorded."""

    def __init__(self, good=3, ok=1):
        self.good, self.ok = good, ok
        self.calls = []

    def sample(self, prompts, cfg, seed):
        self.calls.append(list(prompts))
        out = []
        for p in prompts:
            body = p.split("Q:", 1)[1]
            lines = [ln for ln in body.split("\n")[1:] if ln]
            if any(ln == "BAD" for ln in lines):
                k = 0
            elif lines and lines[-1] == "OK":
                k = self.ok
            else:
                k = self.good
            out.append(["\n#### 6"] * k + ["\n#### 0"] * (cfg.n - k))
        return out


def verify(text, answer):
    return text.strip().endswith(f"#### {answer}")


ITEMS = [
    # steps: GOOD, BAD, GOOD, answer(wrong) → Q = [Q0, Q1, Q2, Q3, Q4]
    {"prompt": "Q:1\n", "response": "GOOD\nBAD\nGOOD\n#### 5", "answer": "6"},
    # steps: OK, GOOD, answer(right)
    {"prompt": "Q:2\n", "response": "OK\nGOOD\n#### 6", "answer": "6"},
    # shares its first step and its prompt with the first item
    {"prompt": "Q:1\n", "response": "GOOD\nOK\n#### 7", "answer": "6"},
]


def test_values_exact_with_toy_policy_mean_and_max():
    pol = ToyPolicy(good=3, ok=1)
    rows = estimate_step_values(ITEMS, verify, engine=pol, num_continuations=5, estimator="mean", batch_size=2,
                                progress=False)
    # item 0: Q0 = bare prompt → 3/5; after GOOD 3/5; after BAD 0; after GOOD (BAD upstream) 0; Q4 = verdict(5≠6) = 0
    assert rows[0]["values"] == [0.6, 0.6, 0.0, 0.0, 0.0]
    assert rows[0]["advantages"] == pytest.approx([0.0, -0.6, 0.0, 0.0])
    assert rows[0]["first_pit"] == 1 and rows[0]["correct"] is False
    # item 1: Q0 3/5, after OK 1/5, after GOOD 3/5, Q3 = 1 (right answer)
    assert rows[1]["values"] == [0.6, 0.2, 0.6, 1.0]
    assert rows[1]["advantages"] == pytest.approx([-0.4, 0.4, 0.4])
    assert rows[1]["correct"] is True
    # item 2: Q0 3/5, GOOD 3/5, OK 1/5, wrong answer 0
    assert rows[2]["values"] == [0.6, 0.6, 0.2, 0.0]
    assert rows[2]["first_pit"] == 2
    # the max estimator: any of the 5 continuations correct
    pol2 = ToyPolicy(good=3, ok=1)
    rows = estimate_step_values(ITEMS, verify, engine=pol2, num_continuations=5, estimator="max", progress=False)
    assert rows[0]["values"] == [1.0, 1.0, 0.0, 0.0, 0.0] and rows[0]["first_pit"] == 1
    assert rows[1]["values"] == [1.0, 1.0, 1.0, 1.0] and rows[1]["advantages"] == [0.0, 0.0, 0.0]
    assert rows[2]["values"] == [1.0, 1.0, 1.0, 0.0] and rows[2]["first_pit"] == 2


def test_prefixes_are_batched_and_deduplicated():
    pol = ToyPolicy()
    estimate_step_values(ITEMS, verify, engine=pol, num_continuations=5, batch_size=64, progress=False)
    assert len(pol.calls) == 1  # one batch for all prefixes of all responses
    sent = pol.calls[0]
    # distinct (prompt, prefix): Q:1 bare, Q:1 GOOD, Q:1 GOOD BAD, Q:1 GOOD BAD GOOD, Q:2 bare, Q:2 OK, Q:2 OK GOOD,
    # Q:1 GOOD OK  → 8 (the bare prompt Q:1 and its GOOD prefix are shared by items 0 and 2)
    assert len(sent) == len(set(sent)) == 8
    assert "Q:1\nGOOD\nBAD\n" in sent and "Q:1\n" in sent
    # the full responses are never continued: their value is their own verdict
    assert not any(s.endswith("#### 5") or s.endswith("#### 6") for s in sent)


def test_estimator_and_edge_cases():
    assert estimate([False, True, False], "max") == 1.0
    assert estimate([False, True, False, True], "mean") == 0.5
    with pytest.raises(ValueError):
        estimate([True], "median")
    rows = estimate_step_values([{"prompt": "Q:9\n", "response": "  \n", "answer": "6"}], verify, engine=ToyPolicy(),
                                num_continuations=2, estimator="mean", progress=False)
    assert rows[0]["steps"] == [] and rows[0]["values"] == [1.0] and rows[0]["first_pit"] is None


# ---------------------------------------------------------------------------------------- first pit and advantages


def test_first_pit_and_advantages_hand_examples():
    # Q = [Q0, Q1, Q2, Q3, Q4]: dips to 0.2 after step 2 (0-based index 1), recovers, dips to 0.2 again after step 4:
    # the *first* lowest is index 1; A_i = Q_i - Q_{i-1} by hand
    v = torch.tensor([0.8, 0.6, 0.2, 0.6, 0.2])
    assert step_advantages(v).tolist() == pytest.approx([-0.2, -0.4, 0.4, -0.4])
    assert int(first_pit(v)) == 1
    # Q0 is never a pit, even when it is the lowest value
    assert int(first_pit(torch.tensor([0.0, 0.4, 0.2, 1.0]))) == 1
    # all zeros (a prompt π_sft never solves): the first step
    assert int(first_pit(torch.zeros(4))) == 0
    # batched, and the advantages telescope: Σ_i A_i = Q_m - Q_0
    vb = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.4, 0.6, 0.8, 1.0]])
    assert first_pit(vb).tolist() == [1, 0]
    assert step_advantages(vb).sum(-1).tolist() == pytest.approx([-1.0, 0.6])


# ---------------------------------------------------------------------------------------------------- the cache


class _Interrupt(Exception):
    pass


def test_value_cache_resumes_without_recomputation(tmp_path):
    items = ITEMS * 1 + [{"prompt": f"Q:{i}\n", "response": f"GOOD\nBAD\n#### {i}", "answer": "6"} for i in range(3, 9)]
    full = estimate_step_values(items, verify, engine=ToyPolicy(), num_continuations=4, estimator="mean",
                                batch_size=3, progress=False)

    pol = ToyPolicy()
    real = pol.sample

    def flaky(prompts, cfg, seed):
        if len(pol.calls) == 2:  # die while sampling the third batch
            raise _Interrupt
        return real(prompts, cfg, seed)

    pol.sample = flaky
    with pytest.raises(_Interrupt):
        estimate_step_values(items, verify, engine=pol, num_continuations=4, estimator="mean", batch_size=3,
                             cache_dir=tmp_path, progress=False)
    done_prompts = [p for call in pol.calls for p in call]
    assert len(pol.calls) == 2 and not (tmp_path / "values.jsonl").exists()

    pol2 = ToyPolicy()
    resumed = estimate_step_values(items, verify, engine=pol2, num_continuations=4, estimator="mean", batch_size=3,
                                   cache_dir=tmp_path, progress=False)
    assert resumed == full
    again = [p for call in pol2.calls for p in call]
    assert again and not set(again) & set(done_prompts)  # nothing finished before the interruption is redone
    assert len(done_prompts) + len(again) == len(set(done_prompts) | set(again))
    assert read_step_values(tmp_path / "values.jsonl") == json.loads(json.dumps(full))

    # a third run computes nothing at all
    pol3 = ToyPolicy()
    assert estimate_step_values(items, verify, engine=pol3, num_continuations=4, estimator="mean", batch_size=3,
                                cache_dir=tmp_path, progress=False) == full
    assert pol3.calls == []
    # different responses never read these continuations: they get their own file
    other = [dict(items[0], response="OK\n#### 6")]
    pol4 = ToyPolicy()
    estimate_step_values(other, verify, engine=pol4, num_continuations=4, estimator="mean", cache_dir=tmp_path,
                         progress=False)
    assert pol4.calls and len(list(tmp_path.glob("continuations-*.jsonl"))) == 2


# -------------------------------------------------------------------------------------------- tokens to steps


def test_step_token_index_maps_tokens_to_their_steps(kit):
    _, tok = kit
    prompt = tok.apply_chat_template([{"role": "user", "content": "What did author 3 write?"}], tokenize=False,
                                     add_generation_prompt=True)
    steps = split_steps("Author 3 wrote\nfive novels about\nthe sea.\n#### 5")
    ids, step_of, plen = step_token_index(tok, prompt, steps, tok.eos_token)
    assert len(ids) == len(step_of) and step_of[:plen] == [-1] * plen and -1 not in step_of[plen:]
    assert tok.decode(ids[:plen]) == prompt
    for k, s in enumerate(steps):  # the tokens of step k decode back to exactly step k's text
        text = tok.decode([i for i, j in zip(ids, step_of) if j == k])
        assert text == s + (tok.eos_token if k == len(steps) - 1 else "")
    assert step_of == sorted(step_of)  # steps are contiguous and in order


def test_value_cache_refuses_continuations_of_another_policy(tmp_path):
    """The continuation cache is keyed by the prefixes and the sampling settings; its header records the policy's
    identity, so another policy (here: other weights) is refused rather than reusing the first one's samples."""
    from negalign.generation import GenerationError

    class Policy(ToyPolicy):
        def __init__(self, weights):
            super().__init__()
            self.weights = weights

        def identity(self):
            return {"path": "/runs/sft", "weights": self.weights}

    estimate_step_values(ITEMS, verify, engine=Policy("aaaa"), num_continuations=2, cache_dir=tmp_path, progress=False)
    same = Policy("aaaa")
    estimate_step_values(ITEMS, verify, engine=same, num_continuations=2, cache_dir=tmp_path, progress=False)
    assert same.calls == []  # the same policy reuses the cache
    with pytest.raises(GenerationError, match=r"different model \(/runs/sft \(weights aaaa\) there, /runs/sft "
                                              r"\(weights bbbb\) now\).*start afresh"):
        estimate_step_values(ITEMS, verify, engine=Policy("bbbb"), num_continuations=2, cache_dir=tmp_path,
                             progress=False)
