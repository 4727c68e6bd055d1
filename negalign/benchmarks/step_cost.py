"""``negalign bench step-cost``: what one unlearning step costs, side by side on one kit model and one batch.

Three training steps (forward + backward + AdamW update) on the same forget rows and their retain partners:

* ``npo_rt``      — negalign's NPO+RT step: forget and retain rows in ONE policy forward, forget reference
                    log-probs read from the cached column (``UnlearnTrainer.compute_terms``);
* ``sft``         — a plain SFT step on the same tokens (one forward of forget + retain with HF's built-in LM loss);
* ``per_step_ref``— the layout of open-unlearning's NPO: a reference forward on the forget rows at every step and
                    separate policy forwards for forget and retain.

Rounds interleave the variants so that drift in machine load hits all three alike; the median step is reported.
Ratios: ``npo_rt_over_sft`` (target ≤ 1.10) and ``per_step_ref_over_cached``."""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

from negalign.benchmarks.common import machine_line
from negalign.results import write_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--size", default="medium", help="Kit size (negalign.models.SIZES); medium is ~19M parameters.")
    parser.add_argument("--batch-size", type=int, default=8, help="Forget rows per step (plus as many retain rows).")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=3)
    parser.add_argument("--model", default=None, help="A model folder, Hub id or offline: name (e.g. "
                        "offline:smollm2-135m-instruct) instead of a kit model (--size is then ignored).")
    parser.add_argument("--tofu", default=None, help="TOFU folder (default: ../shared/data/tofu when present, "
                        "else a generated fictitious-author set).")


def _variants(trainer, model, ref_model, batch, lp, losses):
    import torch

    n = batch["input_ids"].shape[0]
    fused = trainer.build_batch(batch)  # forget rows then retain rows, padded together

    def npo_rt():
        return trainer.compute_terms(model, batch)["loss"]

    def sft():
        labels = fused["input_ids"].masked_fill(fused["completion_mask"] == 0, -100)
        return model(input_ids=fused["input_ids"], attention_mask=fused["attention_mask"], labels=labels).loss

    def per_step_ref():
        f = (fused["input_ids"][:n], fused["attention_mask"][:n], fused["completion_mask"][:n])
        r = (fused["input_ids"][n:], fused["attention_mask"][n:], fused["completion_mask"][n:])
        pol_f = lp.sequence_logps(lp.token_logps(model, *f), f[2])
        with torch.no_grad():
            ref_f = lp.sequence_logps(lp.token_logps(ref_model, *f), f[2])
        r_mask = r[2].clone()
        r_mask[:, 0] = 0
        retain = losses.nll_loss(lp.token_logps(model, *r), r_mask).mean()
        return losses.npo_loss(pol_f, ref_f, trainer.args.beta).mean() + retain

    return {"npo_rt": npo_rt, "sft": sft, "per_step_ref": per_step_ref}


def main(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from negalign import logprobs as lp
    from negalign import losses
    from negalign.data.tofu import TofuData
    from negalign.models import build_kit_model, count_parameters
    from negalign.trainers.unlearn import UnlearnConfig, UnlearnTrainer

    tofu = args.tofu or str(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "tofu")
    if not Path(tofu).is_dir():
        raise SystemExit(f"step-cost needs TOFU data; {tofu} is absent (pass --tofu)")
    data = TofuData(path=tofu, forget_split="forget10", max_forget=args.batch_size * 4, max_retain=200)
    torch.manual_seed(0)
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
        variants = _variants(trainer, model, ref_model, batch, lp, losses)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        state = copy.deepcopy(model.state_dict())
        times = {k: [] for k in variants}
        for fn in variants.values():  # one untimed warm-up step each (allocator, autograd graph caches)
            model.load_state_dict(state)
            fn().backward()
            opt.zero_grad(set_to_none=True)
        for _ in range(args.rounds):
            for name, fn in variants.items():
                model.load_state_dict(state)
                for _ in range(args.steps_per_round):
                    t0 = time.perf_counter()
                    fn().backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    times[name].append(time.perf_counter() - t0)
        tokens = int(trainer.build_batch(batch)["attention_mask"].sum())
        params = count_parameters(model)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {"npo_rt_over_sft": med["npo_rt"] / med["sft"], "per_step_ref_over_cached": med["per_step_ref"] / med["npo_rt"]}
    which = args.model or f"kit {args.size}"
    print(f"step-cost on {machine_line()}: {which} ({params / 1e6:.1f}M parameters), "
          f"{args.batch_size} forget + {args.batch_size} retain rows ({tokens} tokens), median of "
          f"{args.rounds * args.steps_per_round} steps")
    for k, v in med.items():
        print(f"{k:14s} {v * 1000:8.1f} ms/step")
    print("ratios: " + ", ".join(f"{k} = {v:.3f}" for k, v in ratios.items()))
    write_results(args.output_dir, {"median_step_seconds": med, "step_seconds": times, "parameters": params,
                                    "tokens_per_step": tokens}, ratios=ratios, benchmark="step-cost",
                  settings=vars(args) | {"machine": machine_line()})
    return 0
