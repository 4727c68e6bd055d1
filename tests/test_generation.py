"""The offline generation engine: seeded, batched, and resumable without loss or duplicates."""

import json

import pytest

from negalign.generation import GenerationError, HFEngine, generate, read_generations

PROMPTS = [f"Question: What did author {i} write? Answer:" for i in range(7)]


def test_shapes_and_determinism(kit):
    model, tok = kit
    eng = HFEngine(model, tok)
    a = generate(None, PROMPTS, n=3, max_new_tokens=5, batch_size=3, engine=eng, progress=False)
    b = generate(None, PROMPTS, n=3, max_new_tokens=5, batch_size=3, engine=eng, progress=False)
    assert [r["id"] for r in a] == list(range(7)) and all(len(r["completions"]) == 3 for r in a)
    assert a == b  # same seed, same batches → same samples
    c = generate(None, PROMPTS, n=3, max_new_tokens=5, batch_size=3, seed=1, engine=eng, progress=False)
    assert c != a


class _Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted(kit, tmp_path):
    model, tok = kit
    eng = HFEngine(model, tok)
    full = generate(None, PROMPTS, n=2, max_new_tokens=4, batch_size=2, engine=eng, progress=False)

    calls = {"n": 0}
    real = eng.sample

    def flaky(prompts, cfg, seed):
        calls["n"] += 1
        if calls["n"] == 3:  # die while generating the third batch
            raise _Interrupt
        return real(prompts, cfg, seed)

    out = tmp_path / "gen.jsonl"
    eng.sample = flaky
    with pytest.raises(_Interrupt):
        generate(None, PROMPTS, n=2, max_new_tokens=4, batch_size=2, engine=eng, output_path=out, progress=False)
    assert [r["id"] for r in read_generations(out)] == [0, 1, 2, 3]
    with open(out, "a") as f:  # a torn half-line, as a kill mid-write leaves
        f.write('{"id": 4, "prompt": "Quest')
    eng.sample = real
    resumed = generate(None, PROMPTS, n=2, max_new_tokens=4, batch_size=2, engine=eng, output_path=out, progress=False)
    assert resumed == full
    rows = read_generations(out)
    assert [r["id"] for r in rows] == list(range(7))  # each prompt exactly once
    assert [r["completions"] for r in rows] == [r["completions"] for r in full]


def test_refuses_file_from_other_settings(kit, tmp_path):
    model, tok = kit
    out = tmp_path / "g.jsonl"
    generate(model, PROMPTS[:2], n=1, max_new_tokens=2, tokenizer=tok, backend="hf", output_path=out, progress=False)
    with pytest.raises(GenerationError, match="different sampling settings"):
        generate(model, PROMPTS[:2], n=2, max_new_tokens=2, tokenizer=tok, backend="hf", output_path=out, progress=False)


def test_cli_generate(kit_path, tmp_path):
    import subprocess
    import sys

    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:3]))
    out = tmp_path / "o.jsonl"
    cmd = [sys.executable, "-m", "negalign", "generate", "--model", kit_path, "--data", str(data), "--output", str(out),
           "--n", "2", "--max-new-tokens", "3", "--backend", "hf", "--chat"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = read_generations(out)
    assert len(rows) == 3 and rows[0]["prompt"].startswith("<|im_start|>user\n") and len(rows[0]["completions"]) == 2
    bad = subprocess.run(cmd[:7] + [str(tmp_path / "missing.jsonl")] + cmd[8:], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "data file not found" in bad.stderr
