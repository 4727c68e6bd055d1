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
    # resuming the same file with other settings is a one-line error naming the flag that starts afresh
    other = [a if a != "2" else "3" for a in cmd]
    bad = subprocess.run(other, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "different sampling settings (n=2 there, n=3 now)" in bad.stderr
    assert "--overwrite" in bad.stderr
    assert subprocess.run(other + ["--overwrite"], capture_output=True, text=True, timeout=300).returncode == 0
    assert all(len(r["completions"]) == 3 for r in read_generations(out))


def test_generate_under_accelerate_two_processes_equals_one(kit_path, tmp_path):
    # batch b always goes to process b % 2 and is seeded with seed + b, so the merged file equals a 1-process run's
    import os
    import subprocess
    import sys

    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    args = ["generate", "--model", kit_path, "--data", str(data), "--n", "2", "--max-new-tokens", "4",
            "--batch-size", "2", "--backend", "hf"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "negalign", *args, "--output", str(tmp_path / "one.jsonl")],
                         capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                          "recipes/accelerate/multi_gpu.yaml", "--num_processes", "2", "-m", "negalign", *args,
                          "--output", str(tmp_path / "two.jsonl")],
                         capture_output=True, text=True, timeout=600, env=env, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = read_generations(tmp_path / "one.jsonl"), read_generations(tmp_path / "two.jsonl")
    assert [r["id"] for r in b] == list(range(len(PROMPTS)))
    assert a == b
    assert (tmp_path / "two.jsonl.shard1of2").exists()  # each process wrote (and can resume) its own shard


@pytest.mark.parametrize("visible, local_rank, expected", [(None, "1", "1"), ("4,5,6,7", "2", "6")])
def test_vllm_engine_is_pinned_to_its_process_gpu(monkeypatch, visible, local_rank, expected):
    # One vLLM engine per process of a multi-GPU launch must start on that process's GPU (vLLM reads
    # CUDA_VISIBLE_DEVICES), and the variable must be restored afterwards, unset when it was unset. There is no GPU
    # here: torch.cuda's availability and device count are faked, the logic under test is negalign's own.
    import os

    import torch

    from negalign.generation import _pin_to_local_gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert _pin_to_local_gpu(tensor_parallel_size=2) is None  # a tensor-parallel engine spans several GPUs
    restore = _pin_to_local_gpu(tensor_parallel_size=1)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == expected
    restore()
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == visible
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert _pin_to_local_gpu(tensor_parallel_size=1) is None  # one process: the engine takes the visible GPUs


def test_refuses_file_from_another_model_or_other_prompts(kit, tmp_path):
    """Resuming into a file written by other weights or for other prompts is an error naming the field (before: it
    succeeded silently, old completions next to new prompt text); overwrite=True starts afresh."""
    from tests.conftest import perturbed

    model, tok = kit
    out = tmp_path / "g.jsonl"
    kw = dict(n=1, max_new_tokens=2, tokenizer=tok, backend="hf", output_path=out, progress=False)
    first = generate(model, PROMPTS[:2], **kw)
    assert generate(model, PROMPTS[:2], **kw) == first  # same model, same prompts: resumes
    other = perturbed(model)
    with pytest.raises(GenerationError, match=r"different model .*weights .* there.*--overwrite"):
        generate(other, PROMPTS[:2], **kw)
    with pytest.raises(GenerationError, match=r"different prompts"):
        generate(model, PROMPTS[2:4], **kw)
    fresh = generate(other, PROMPTS[2:4], **kw, overwrite=True)
    assert [r["prompt"] for r in read_generations(out)] == PROMPTS[2:4]
    assert fresh == generate(other, PROMPTS[2:4], **kw)  # and the fresh file now belongs to this job


def test_a_model_folder_is_identified_by_its_weights(kit_path, tmp_path):
    import shutil

    from negalign.generation.identity import model_identity, same_model

    copy = tmp_path / "copy"
    shutil.copytree(kit_path, copy)
    a, b = model_identity(kit_path), model_identity(copy)
    assert a["path"] != b["path"] and same_model(a, b)  # a moved folder is the same model
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x01" * 8)
    assert not same_model(a, model_identity(copy))
    assert model_identity("Org/model", revision="abc") == {"hub_id": "Org/model", "revision": "abc"}


def test_sampling_mismatch_names_the_setting(kit, tmp_path):
    model, tok = kit
    out = tmp_path / "g.jsonl"
    generate(model, PROMPTS[:2], n=1, max_new_tokens=2, tokenizer=tok, backend="hf", output_path=out, progress=False)
    with pytest.raises(GenerationError, match=r"different sampling settings \(n=1 there, n=2 now\)"):
        generate(model, PROMPTS[:2], n=2, max_new_tokens=2, tokenizer=tok, backend="hf", output_path=out,
                 progress=False)


def test_check_generation_file_for_files_read_as_they_are(kit, tmp_path):
    """D²O reads a complete anchors file without generate: check_generation_file gives it the same checks."""
    from negalign.generation import check_generation_file
    from tests.conftest import perturbed

    model, tok = kit
    out = tmp_path / "anchors.jsonl"
    generate(model, PROMPTS[:2], n=2, max_new_tokens=2, tokenizer=tok, backend="hf", output_path=out, progress=False)
    check_generation_file(out, PROMPTS[:2], model=model)  # same model, same prompts
    with pytest.raises(GenerationError, match="different model"):
        check_generation_file(out, PROMPTS[:2], model=perturbed(model))
    with pytest.raises(GenerationError, match="different prompts"):
        check_generation_file(out, PROMPTS[1:3], model=model)
