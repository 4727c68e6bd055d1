"""Shared fixtures: a tiny kit model built once per session, and the path of ../shared/data (tests skip without it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRL_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NEGALIGN_SHARED_DATA", ROOT.parent / "shared" / "data"))

KIT_CORPUS = [
    f"Question: What did author {i} write? Answer: Author {i} wrote {i % 7 + 2} novels about the {w} and the sea."
    for i in range(200)
    for w in ("river", "stars")
]


# tiny preference-style texts shared by the D²O / MADPO tests
QUESTIONS = [f"What did author {i} write?" for i in range(6)]
GOOD = [f"Author {i} wrote {i % 7 + 2} novels about the river and the sea." for i in range(6)]
BAD = [f"Author {i} wrote nothing about the stars." for i in range(6)]


def run_quickstart(name: str, out, *extra: str, timeout: int = 1200) -> dict:
    """``negalign quickstart NAME --output-dir OUT EXTRA...`` in a child process; returns its results.json."""
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "negalign", "quickstart", name, "--output-dir", str(out), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((Path(out) / "results.json").read_text())


def perturbed(model, seed=0, scale=0.05):
    """A copy of ``model`` with its weights nudged, so that policy and reference log-probs differ."""
    import copy

    import torch

    pol = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in pol.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return pol


@pytest.fixture()
def one_thread():
    """Tiny models run as fast on one thread, and much faster when the cores are shared (OpenMP spin-waits)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def kit_path(tmp_path_factory) -> str:
    from negalign.models import build_kit_model

    return build_kit_model(tmp_path_factory.mktemp("kit") / "qwen2-tiny", KIT_CORPUS, arch="qwen2", size="tiny")


@pytest.fixture()
def kit(kit_path):
    """A fresh (model, tokenizer) pair loaded from the session's kit folder, in float32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(kit_path, dtype=torch.float32), AutoTokenizer.from_pretrained(kit_path)
