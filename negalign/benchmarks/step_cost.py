"""``negalign bench step-cost``: what one unlearning step costs, side by side on one model and one batch.

Training steps (forward + backward + AdamW update) on the same forget rows and their retain partners:

* ``npo_rt``       — negalign's NPO+RT step: forget and retain rows in ONE policy forward, the LM head applied to the
                     answer positions only (chunked, ``logprob_checkpoint_head`` as the trainer's default, ``auto``),
                     forget reference log-probs read from the cached column (``UnlearnTrainer.compute_terms``);
* ``npo_rt_head_recompute`` — the same step with ``logprob_checkpoint_head=always`` (each head chunk recomputed in
                     the backward; ``npo_rt_head_kept``, ``never``, when the default is ``always``);
* ``sft``          — a Hugging Face SFT step on the same tokens (one forward of forget + retain, full logits, the
                     model's built-in LM loss);
* ``per_step_ref`` — the layout of open-unlearning's NPO: a reference forward on the forget rows at every step and
                     separate policy forwards for forget and retain, each with full logits (``model(**inputs)`` with
                     labels, then the per-sequence NLL from the logits, as its ``compute_batch_nll`` does).

Time: rounds interleave the arms so that drift in machine load hits them alike; the median step is reported, in
wall-clock seconds and in the process's CPU seconds (``time.process_time``: with ``--threads 1`` the work the step
did, whatever share of a shared machine's cores it got; the ``_cpu`` ratios).
Memory (after the timing, one profiled step per arm): ``step_peak_mib`` is the peak of the tensor memory the step
allocates above what is live before it (``torch.profiler`` memory events, ``common.profiled_peak_mib``: activations,
logits, gradients, optimizer temporaries); ``resident_mib`` what the arm keeps between steps (the policy's weights
and AdamW state, plus a frozen reference copy for ``per_step_ref``; negalign's cached reference is a column of
floats); ``peak_mib`` their sum.

Ratios: ``npo_rt_over_sft`` and ``per_step_ref_over_cached`` (median step time), ``npo_rt_peak_over_sft`` and
``per_step_ref_peak_over_cached`` (``peak_mib``), ``npo_rt_step_peak_over_sft`` (``step_peak_mib``),
``head_alternative_over_default`` and ``head_alternative_step_peak_over_default`` (time and ``step_peak_mib`` of the
``npo_rt_head_*`` arm over ``npo_rt``; ``--no-head-arm`` leaves them out)."""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

from negalign.benchmarks.common import load_average, machine_line, profiled_peak_mib, set_threads
from negalign.results import write_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--size", default="medium", help="Kit size (negalign.models.SIZES); medium is ~19M parameters.")
    parser.add_argument("--batch-size", type=int, default=8, help="Forget rows per step (plus as many retain rows).")
    parser.add_argument("--rounds", type=int, default=5, help="Timed rounds (0: memory only, no timing).")
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--model", default=None, help="A model folder, Hub id or offline: name (e.g. "
                        "offline:smollm2-135m-instruct) instead of a kit model (--size is then ignored).")
    parser.add_argument("--tofu", default=None, help="TOFU folder (default: ../shared/data/tofu when present, "
                        "else a generated fictitious-author set).")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default).")
    parser.add_argument("--no-memory", action="store_true", help="Skip the profiled memory step of each arm.")
    parser.add_argument("--no-head-arm", action="store_true", help="Leave out the arm with the other "
                        "logprob_checkpoint_head (a quarter of the run; logprob-memory measures the same choice).")


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _rows(ids, am, cm):
    """Trim columns that are padding in every row (open-unlearning pads forget and retain batches separately)."""
    from negalign.data.batching import completion_labels

    cols = am.any(0).nonzero().flatten()
    sl = slice(int(cols.min()), int(cols.max()) + 1)
    ids, am, cm = ids[:, sl], am[:, sl], cm[:, sl]
    return ids, am, completion_labels(ids, cm)  # labels: -100 off the answer, as its TOFU collator


def _variants(trainer, model, ref_model, batch, losses):
    import torch
    import torch.nn.functional as F

    from negalign.data.batching import completion_labels

    n = batch["input_ids"].shape[0]
    fused = trainer.build_batch(batch)  # forget rows then retain rows, padded together
    default_head = trainer.args.logprob_checkpoint_head
    other_head = "never" if default_head == "always" else "always"

    def npo_rt():
        return trainer.compute_terms(model, batch)["loss"]

    def npo_rt_other_head():
        trainer.args.logprob_checkpoint_head = other_head
        try:
            return trainer.compute_terms(model, batch)["loss"]
        finally:
            trainer.args.logprob_checkpoint_head = default_head

    def sft():
        labels = completion_labels(fused["input_ids"], fused["completion_mask"])
        return model(input_ids=fused["input_ids"], attention_mask=fused["attention_mask"], labels=labels).loss

    def batch_nll(m, ids, am, labels):  # open-unlearning's compute_batch_nll: full logits, summed NLL per row
        logits = m(input_ids=ids, attention_mask=am, labels=labels).logits  # [B, L, V]
        return F.cross_entropy(logits[:, :-1].transpose(-1, -2), labels[:, 1:], ignore_index=-100,
                               reduction="none").sum(-1)  # [B]

    forget = _rows(fused["input_ids"][:n], fused["attention_mask"][:n], fused["completion_mask"][:n])
    retain = _rows(fused["input_ids"][n:], fused["attention_mask"][n:], fused["completion_mask"][n:])

    def per_step_ref():
        nll = batch_nll(model, *forget)
        with torch.no_grad():
            ref_nll = batch_nll(ref_model, *forget)
        ids, am, labels = retain
        retain_loss = model(input_ids=ids, attention_mask=am, labels=labels).loss  # HF's LM loss, as its GradDiff
        return losses.npo_loss(-nll, -ref_nll, trainer.args.beta).mean() + retain_loss

    other = "npo_rt_head_kept" if other_head == "never" else "npo_rt_head_recompute"
    return {"npo_rt": npo_rt, other: npo_rt_other_head, "sft": sft, "per_step_ref": per_step_ref}


def main(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from negalign import losses
    from negalign.data.tofu import TofuData
    from negalign.models import build_kit_model, count_parameters
    from negalign.trainers.unlearn import UnlearnConfig, UnlearnTrainer

    set_threads(args.threads)
    wall0 = time.perf_counter()
    tofu = args.tofu or str(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tofu")
    if not Path(tofu).is_dir():
        raise SystemExit(f"step-cost needs TOFU data; {tofu} is absent (pass --tofu)")
    data = TofuData(path=tofu, forget_split="forget10", max_forget=args.batch_size * 4, max_retain=200)
    torch.manual_seed(0)
    load = [load_average()]
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            from negalign.models import resolve_model

            kit = resolve_model(args.model)  # an offline: name becomes its cached folder
        else:
            kit = build_kit_model(f"{tmp}/kit", data.texts(), size=args.size, vocab_size=4096)
        tok = AutoTokenizer.from_pretrained(kit)
        model = AutoModelForCausalLM.from_pretrained(kit, dtype=torch.float32)
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        forget, retain = data.load_unlearning(tok)
        cfg = UnlearnConfig(output_dir=f"{tmp}/out", forget_loss="npo", retain_loss="nll", use_cpu=True, bf16=False,
                            per_device_train_batch_size=args.batch_size, report_to="none", ref_cache=False,
                            gradient_checkpointing=False)
        trainer = UnlearnTrainer(model=model, args=cfg, forget_dataset=forget, retain_dataset=retain,
                                 processing_class=tok)
        batch = trainer.collate([trainer.train_dataset[i] for i in range(args.batch_size)])
        variants = _variants(trainer, model, ref_model, batch, losses)
        if args.no_head_arm:
            variants = {k: v for k, v in variants.items() if not k.startswith("npo_rt_head")}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        state = copy.deepcopy(model.state_dict())

        def step(fn):
            fn().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        times, cpu = {k: [] for k in variants}, {k: [] for k in variants}
        for fn in variants.values() if args.rounds else ():  # untimed warm-up steps (allocator, autograd, AdamW state)
            model.load_state_dict(state)
            step(fn)
        if not args.rounds:  # --rounds 0 measures memory only: AdamW's state allocated without a training step
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
            opt.step()
            opt.zero_grad(set_to_none=True)
        for r in range(args.rounds):
            for name, fn in variants.items():
                model.load_state_dict(state)
                for _ in range(args.steps_per_round):
                    t0, c0 = time.perf_counter(), time.process_time()
                    step(fn)
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
                    print(f"round {r + 1}: {name} {times[name][-1] * 1000:.0f} ms, CPU {cpu[name][-1] * 1000:.0f} ms "
                          f"(load {load_average()})", flush=True)
        load.append(load_average())
        memory = {}
        if not args.no_memory:
            weights = _bytes(model.parameters()) / 2**20
            adam = _bytes(t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)) / 2**20
            ref = _bytes(ref_model.parameters()) / 2**20
            for name, fn in variants.items():
                model.load_state_dict(state)
                resident = weights + adam + (ref if name == "per_step_ref" else 0.0)
                peak = profiled_peak_mib(lambda fn=fn: step(fn))
                memory[name] = {"step_peak_mib": peak, "resident_mib": resident, "peak_mib": resident + peak}
                print(f"memory: {name} {memory[name]}", flush=True)
        fused = trainer.build_batch(batch)
        tokens = int(fused["attention_mask"].sum())
        answer_tokens = int(fused["completion_mask"].sum())
        row_lengths = fused["attention_mask"].sum(-1).tolist()
        params = count_parameters(model)
        vocab = model.config.vocab_size
    med = {k: statistics.median(v) for k, v in times.items() if v}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items() if v}
    alt = next((k for k in med if k.startswith("npo_rt_head")), None)
    ratios = {"npo_rt_over_sft": med["npo_rt"] / med["sft"],
              "per_step_ref_over_cached": med["per_step_ref"] / med["npo_rt"],
              # the same on the process's CPU time (one thread: the work done, whatever share of the cores it got)
              "npo_rt_over_sft_cpu": med_cpu["npo_rt"] / med_cpu["sft"],
              "per_step_ref_over_cached_cpu": med_cpu["per_step_ref"] / med_cpu["npo_rt"]} if med else {}
    if alt:
        ratios["head_alternative_over_default"] = med[alt] / med["npo_rt"]
    if memory:
        ratios |= {
            "npo_rt_peak_over_sft": memory["npo_rt"]["peak_mib"] / memory["sft"]["peak_mib"],
            "per_step_ref_peak_over_cached": memory["per_step_ref"]["peak_mib"] / memory["npo_rt"]["peak_mib"],
            "npo_rt_step_peak_over_sft": memory["npo_rt"]["step_peak_mib"] / memory["sft"]["step_peak_mib"],
        }
        alt = next((k for k in memory if k.startswith("npo_rt_head")), None)
        if alt:
            ratios["head_alternative_step_peak_over_default"] = (memory[alt]["step_peak_mib"]
                                                                 / memory["npo_rt"]["step_peak_mib"])
    wall = time.perf_counter() - wall0
    which = args.model or f"kit {args.size}"
    print(f"step-cost on {machine_line()}, {torch.get_num_threads()} thread(s): {which} ({params / 1e6:.1f}M "
          f"parameters, vocabulary {vocab}), {args.batch_size} forget + {args.batch_size} retain rows "
          f"({tokens} tokens, {answer_tokens} answer tokens, rows of {min(row_lengths)}-{max(row_lengths)}), median of "
          f"{args.rounds * args.steps_per_round} steps; load average {load[0]} -> {load[-1]}; wall {wall:.0f} s")
    print(f"{'arm':24s} {'ms/step':>9s} {'CPU ms':>9s} {'step peak MiB':>14s} {'resident MiB':>13s} {'peak MiB':>9s}")
    for k in variants:
        m = memory.get(k)
        mem = f"{m['step_peak_mib']:14.0f} {m['resident_mib']:13.0f} {m['peak_mib']:9.0f}" if m else ""
        print(f"{k:24s} {med.get(k, float('nan')) * 1000:9.1f} {med_cpu.get(k, float('nan')) * 1000:9.1f} {mem}")
    print("ratios: " + ", ".join(f"{k} = {v:.3f}" for k, v in ratios.items()))
    write_results(args.output_dir, {"median_step_seconds": med, "step_seconds": times,
                                    "median_step_cpu_seconds": med_cpu, "step_cpu_seconds": cpu, "memory": memory,
                                    "parameters": params, "vocab_size": vocab, "tokens_per_step": tokens,
                                    "answer_tokens_per_step": answer_tokens, "row_lengths": row_lengths,
                                    "threads": torch.get_num_threads(), "load_average": load, "wall_seconds": wall},
                  ratios=ratios, benchmark="step-cost", settings=vars(args) | {"machine": machine_line()})
    return 0
