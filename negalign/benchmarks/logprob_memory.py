"""``negalign bench logprob-memory``: peak memory and time of chunked log-probs (``negalign.logprobs.token_logps``)
against the naive full-logits computation, forward + backward, on the same kit model and batch.

A third variant, ``decoder``, runs the decoder alone (no LM head) to show the cost both share; the log-prob overhead
ratio subtracts it. A fourth, ``chunked_kept``, is the chunked path with ``checkpoint_head=False`` (each chunk's
logits kept for the backward instead of recomputed). Each variant runs in its own fresh process. On CPU ``peak_mib``
is the peak of the tensor memory the forward + backward allocates above what was live before it, from
``torch.profiler``'s memory events (``common.profiled_peak_mib``, a second, profiled run; the timed run is not
profiled), and ``rss_peak_mib`` the process's peak RSS above its RSS right after the model and batch were built
(includes memory the C library keeps after frees); on a GPU ``peak_mib`` is ``torch.cuda.max_memory_allocated``
above the same point."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

from negalign.benchmarks.common import (Timer, current_rss_mib, load_average, machine_line, peak_rss_mib,
                                        profiled_peak_mib, run_child, set_threads)
from negalign.results import write_results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32768, help="Model vocabulary (the logits' last dimension).")
    parser.add_argument("--size", default="small", help="Kit size (negalign.models.SIZES).")
    parser.add_argument("--chunk-size", type=int, default=1024)
    parser.add_argument("--model", default=None, help="A model folder, Hub id or offline: name (e.g. "
                        "offline:smollm2-135m-instruct) instead of a kit model; --size and --vocab are then its own.")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default).")


VARIANTS = ("decoder", "naive", "chunked", "chunked_kept")


def _child(variant: str, kit: str, batch: int, seq: int, chunk: int, threads: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from negalign.logprobs import naive_token_logps, sequence_logps, token_logps

    set_threads(threads)
    torch.manual_seed(0)
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    model = AutoModelForCausalLM.from_pretrained(kit, dtype=torch.float32).to(dev)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq), device=dev)
    am = torch.ones_like(ids)
    resp = am.clone()
    resp[:, : seq // 4] = 0  # the first quarter plays the prompt
    # warm-up on a tiny batch so lazy allocations do not count
    def decoder_only(model, ids, am, resp):  # the shared cost: decoder activations, no LM head at all
        hidden = model.get_decoder()(input_ids=ids, attention_mask=am).last_hidden_state
        return hidden.float().mean(-1)

    fn = {"chunked": token_logps, "chunked_kept": token_logps, "naive": naive_token_logps,
          "decoder": decoder_only}[variant]
    kwargs = {"chunk_size": chunk, "checkpoint_head": variant == "chunked"} if variant.startswith("chunked") else {}
    w = (ids[:1, -16:], am[:1, -16:], resp[:1, -16:])
    sequence_logps(fn(model, *w, **kwargs), w[2]).sum().backward()
    model.zero_grad(set_to_none=False)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = current_rss_mib()
        start_peak = peak_rss_mib()
    c0 = time.process_time()
    with Timer() as t:
        loss = sequence_logps(fn(model, ids, am, resp, **kwargs), resp).sum()
        loss.backward()
        if cuda:
            torch.cuda.synchronize()
    cpu_seconds = time.process_time() - c0
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20 - base
        return {"variant": variant, "peak_mib": peak, "seconds": t.seconds, "loss": loss.item()}
    rss, value = max(peak_rss_mib(), start_peak) - base, loss.item()
    del loss
    model.zero_grad(set_to_none=False)
    peak = profiled_peak_mib(lambda: sequence_logps(fn(model, ids, am, resp, **kwargs), resp).sum().backward())
    return {"variant": variant, "peak_mib": peak, "rss_peak_mib": rss, "seconds": t.seconds,
            "cpu_seconds": cpu_seconds, "loss": value}


def main(args) -> int:
    from negalign.models import build_kit_model

    corpus = [f"sample text number {i} with words {i % 13} and {i % 7}" for i in range(200)]
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            from transformers import AutoConfig

            from negalign.models import resolve_model

            kit = resolve_model(args.model)  # an offline: name becomes its cached folder
            args.vocab = AutoConfig.from_pretrained(kit).vocab_size
            args.size = None
        else:
            kit = build_kit_model(f"{tmp}/kit", corpus, size=args.size, model_vocab_size=args.vocab)
        common = [kit, str(args.batch_size), str(args.seq_len), str(args.chunk_size), str(args.threads)]
        load = [load_average()]
        res = {v: run_child(__name__, ["--child", v, *common]) for v in VARIANTS}
        load.append(load_average())
    for v in ("chunked", "chunked_kept"):
        if abs(res["naive"]["loss"] - res[v]["loss"]) > 1e-2 * abs(res["naive"]["loss"]):
            raise RuntimeError(f"{v} and naive log-probs disagree: {res}")
    full_logits_mib = args.batch_size * args.seq_len * args.vocab * 4 / 2**20
    ratios = {
        "chunked_over_naive": res["chunked"]["peak_mib"] / res["naive"]["peak_mib"],
        "chunked_time_over_naive": res["chunked"]["seconds"] / res["naive"]["seconds"],
        # the memory the log-prob computation adds on top of the decoder's own activations
        "logprob_overhead_chunked_over_naive": (res["chunked"]["peak_mib"] - res["decoder"]["peak_mib"])
        / (res["naive"]["peak_mib"] - res["decoder"]["peak_mib"]),
        # the head recompute of the chunked path: what keeping each chunk's logits instead costs and saves
        "chunked_kept_over_chunked": res["chunked_kept"]["peak_mib"] / res["chunked"]["peak_mib"],
        "chunked_kept_time_over_chunked": res["chunked_kept"]["seconds"] / res["chunked"]["seconds"],
    }
    if "cpu_seconds" in res["naive"]:  # CPU: the process's CPU time too (robust to a shared machine's load)
        ratios["chunked_cpu_time_over_naive"] = res["chunked"]["cpu_seconds"] / res["naive"]["cpu_seconds"]
        ratios["chunked_kept_cpu_time_over_chunked"] = (res["chunked_kept"]["cpu_seconds"]
                                                        / res["chunked"]["cpu_seconds"])
    print(f"logprob-memory on {machine_line()}: batch {args.batch_size} x {args.seq_len} tokens, vocab {args.vocab} "
          f"(full float32 logits = {full_logits_mib:.0f} MiB), forward + backward; "
          f"load average {load[0]} -> {load[-1]}")
    print(f"{'variant':12s} {'peak MiB':>10s} {'RSS MiB':>8s} {'seconds':>8s} {'CPU s':>8s}")
    for v in VARIANTS:
        print(f"{v:12s} {res[v]['peak_mib']:10.0f} {res[v].get('rss_peak_mib', float('nan')):8.0f} "
              f"{res[v]['seconds']:8.2f} {res[v].get('cpu_seconds', float('nan')):8.2f}")
    print("ratios: " + ", ".join(f"{k} = {x:.3f}" for k, x in ratios.items()))
    write_results(args.output_dir, {"variants": res, "full_logits_mib": full_logits_mib, "load_average": load},
                  ratios=ratios,
                  benchmark="logprob-memory", settings=vars(args) | {"machine": machine_line()})
    return 0


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--child":
    variant, kit, batch, seq, chunk, threads = sys.argv[2:8]
    print(json.dumps(_child(variant, kit, int(batch), int(seq), int(chunk), int(threads))))
