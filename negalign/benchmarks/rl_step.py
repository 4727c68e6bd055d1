"""``negalign bench rl-step``: the cost of an NSR step and an NFT step against TRL's GRPO step, on the same batch.

One kit model, one set of prompts (synthetic arithmetic, verified by ``negalign.rewards``). For each trainer —
``GRPOBaselineTrainer`` (TRL's GRPO objective), ``NSRTrainer`` (mode ``w_reinforce``) and ``NFTTrainer`` — the trainer's
own ``_generate_and_score_completions`` prepares the rollouts from the same weights and the same seed (so the three
see identical completions), then the *update* is timed: ``compute_loss`` + backward + AdamW step, median of the
rounds. Generation is timed separately for the generation share of a GRPO step. NFT's dynamic filter is off here so
that all three update on the same rows (its refill rounds are extra generation, not extra update cost)."""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

from negalign.benchmarks.common import machine_line
from negalign.results import write_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--size", default="small", help="Kit size (negalign.models.SIZES).")
    parser.add_argument("--prompts", type=int, default=8, help="Prompts per step.")
    parser.add_argument("--num-generations", type=int, default=8, help="Completions per prompt (G).")
    parser.add_argument("--max-completion-length", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5)


def main(args) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from negalign.data.math import ArithmeticData
    from negalign.models import build_kit_model, count_parameters
    from negalign.rewards import reward_function
    from negalign.trainers.nft import NFTConfig, NFTTrainer
    from negalign.trainers.nsr import GRPOBaselineTrainer, NSRConfig, NSRTrainer

    data = ArithmeticData(split="train", max_samples=args.prompts * 4)
    b = args.prompts * args.num_generations
    common = dict(per_device_train_batch_size=b, num_generations=args.num_generations,
                  max_completion_length=args.max_completion_length, use_cpu=True, bf16=False, report_to="none",
                  logging_steps=1, seed=0, beta=0.0, gradient_checkpointing=False, temperature=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        kit = build_kit_model(f"{tmp}/kit", data.texts(), size=args.size)
        tok = AutoTokenizer.from_pretrained(kit)
        base = AutoModelForCausalLM.from_pretrained(kit, dtype=torch.float32)
        dataset = data.load(tok)
        reward = [reward_function("arith")]
        trainers = {
            "grpo": GRPOBaselineTrainer(model=copy.deepcopy(base), reward_funcs=reward, train_dataset=dataset,
                                        processing_class=tok, args=NSRConfig(output_dir=f"{tmp}/g", mode="grpo",
                                                                             entropy_coef=0.0, **common)),
            "nsr": NSRTrainer(model=copy.deepcopy(base), reward_funcs=reward, train_dataset=dataset, processing_class=tok,
                              args=NSRConfig(output_dir=f"{tmp}/n", mode="w_reinforce", **common)),
            "nft": NFTTrainer(model=copy.deepcopy(base), reward_funcs=reward, train_dataset=dataset, processing_class=tok,
                              args=NFTConfig(output_dir=f"{tmp}/f", dynamic_filtering=False, **common)),
        }
        rows = [dataset[i % len(dataset)] for i in range(args.prompts) for _ in range(args.num_generations)]
        batches, gen_seconds = {}, {}
        for name, tr in trainers.items():
            tr.model.train()
            tr.current_gradient_accumulation_steps = 1  # set by Trainer's loop; one micro-batch per step here
            torch.manual_seed(0)
            t0 = time.perf_counter()
            batches[name] = tr._generate_and_score_completions(rows)
            gen_seconds[name] = time.perf_counter() - t0
        same = torch.equal(batches["grpo"]["completion_ids"], batches["nsr"]["completion_ids"]) and torch.equal(
            batches["grpo"]["completion_ids"], batches["nft"]["completion_ids"])
        times = {k: [] for k in trainers}
        states = {k: copy.deepcopy(tr.model.state_dict()) for k, tr in trainers.items()}
        opts = {k: torch.optim.AdamW(tr.model.parameters(), lr=1e-6) for k, tr in trainers.items()}
        for r in range(args.rounds + 1):  # round 0 is a warm-up
            for name, tr in trainers.items():
                tr.model.load_state_dict(states[name])
                t0 = time.perf_counter()
                tr.compute_loss(tr.model, batches[name]).backward()
                opts[name].step()
                opts[name].zero_grad(set_to_none=True)
                if r:
                    times[name].append(time.perf_counter() - t0)
        params = count_parameters(base)
        tokens = int(batches["grpo"]["completion_mask"].sum())
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {"nsr_over_grpo": med["nsr"] / med["grpo"], "nft_over_grpo": med["nft"] / med["grpo"],
              "generation_share_grpo": gen_seconds["grpo"] / (gen_seconds["grpo"] + med["grpo"])}
    print(f"rl-step on {machine_line()}: kit {args.size} ({params / 1e6:.1f}M parameters), {args.prompts} prompts x "
          f"{args.num_generations} completions ({tokens} completion tokens), identical rollouts: {same}")
    print(f"{'trainer':8s} {'update ms':>10s} {'generate s':>11s}")
    for k in trainers:
        print(f"{k:8s} {med[k] * 1000:10.1f} {gen_seconds[k]:11.2f}")
    print("ratios: " + ", ".join(f"{k} = {v:.3f}" for k, v in ratios.items()))
    write_results(args.output_dir, {"median_update_seconds": med, "update_seconds": times,
                                    "generation_seconds": gen_seconds, "identical_rollouts": same,
                                    "parameters": params, "completion_tokens": tokens},
                  ratios=ratios, benchmark="rl-step", settings=vars(args) | {"machine": machine_line()})
    return 0
