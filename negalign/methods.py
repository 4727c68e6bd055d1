"""One record per method: the facts a model card, ``negalign train --show-method`` and the docs need.

``METHODS[name]`` holds the method's title, a one-line summary, its paper (title, authors, year, arXiv id, BibTeX),
tags (family: ``unlearning`` / ``rlvr`` / ``preference`` / ``per-step`` / ``sft``), the data sets its recipes are
written for, the Hub ``pipeline_tag`` of what it trains, and the module that trains it (``trainer``;
``negalign.config.METHODS`` is read from here). ``Method.defaults()`` is the one way to a method's preset
hyper-parameters: the values live beside the config dataclass that checks them (the trainer module's
``METHOD_DEFAULTS``), and config, ``--show-keys`` and ``--show-method`` read them through the record. Pure data:
importing this module imports nothing heavy (``defaults()`` imports the trainer).
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Paper:
    key: str  # BibTeX key
    title: str
    authors: tuple[str, ...]
    year: int
    arxiv: str  # arXiv id, YYMM.NNNNN
    venue: str | None = None  # booktitle of a published version; None: the arXiv preprint

    @property
    def url(self) -> str:
        return f"https://arxiv.org/abs/{self.arxiv}"

    @property
    def short(self) -> str:
        lead = self.authors[0].split()[-1]
        return f"{lead}{' et al.' if len(self.authors) > 1 else ''} {self.year}"

    @property
    def bibtex(self) -> str:
        kind, where = (("inproceedings", f"booktitle = {{{self.venue}}}") if self.venue
                       else ("article", f"journal   = {{arXiv preprint arXiv:{self.arxiv}}}"))
        return (f"@{kind}{{{self.key},\n"
                f"    title     = {{{{{self.title}}}}},\n"
                f"    author    = {{{' and '.join(self.authors)}}},\n"
                f"    {where},\n"
                f"    year      = {self.year},\n"
                f"    url       = {{{self.url}}},\n"
                f"}}")

    def trl(self) -> dict:
        """TRL's ``Trainer._paper`` shape: ``{"title", "id", "citation"}``."""
        return {"title": self.title, "id": self.arxiv, "citation": self.bibtex}


COLM_2024 = "First Conference on Language Modeling"
TOFU = Paper("maini2024tofu", "TOFU: A Task of Fictitious Unlearning for LLMs",
             ("Pratyush Maini", "Zhili Feng", "Avi Schwarzschild", "Zachary C. Lipton", "J. Zico Kolter"), 2024,
             "2401.06121", COLM_2024)
NPO = Paper("zhang2024negative", "Negative Preference Optimization: From Catastrophic Collapse to Effective Unlearning",
            ("Ruiqi Zhang", "Licong Lin", "Yu Bai", "Song Mei"), 2024, "2404.05868", COLM_2024)
SIMNPO = Paper("fan2024simplicity", "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning",
               ("Chongyu Fan", "Jiancheng Liu", "Licong Lin", "Jinghan Jia", "Ruiqi Zhang", "Song Mei", "Sijia Liu"),
               2024, "2410.07163")
D2O = Paper("duan2024negating", "Negating Negatives: Alignment with Human Negative Samples via Distributional "
            "Dispreference Optimization",
            ("Shitong Duan", "Xiaoyuan Yi", "Peng Zhang", "Yan Liu", "Zheng Liu", "Tun Lu", "Xing Xie", "Ning Gu"),
            2024, "2403.03419", "Findings of the Association for Computational Linguistics: EMNLP 2024")
NSR = Paper("zhu2025surprising", "The Surprising Effectiveness of Negative Reinforcement in LLM Reasoning",
            ("Xinyu Zhu", "Mengzhou Xia", "Zhepei Wei", "Wei-Lin Chen", "Danqi Chen", "Yu Meng"), 2025, "2506.01347")
NFT = Paper("chen2025bridging", "Bridging Supervised Learning and Reinforcement Learning in Math Reasoning",
            ("Huayu Chen", "Kaiwen Zheng", "Qinsheng Zhang", "Ganqu Cui", "Yin Cui", "Haotian Ye", "Tsung-Yi Lin",
             "Ming-Yu Liu", "Jun Zhu", "Haoxiang Wang"), 2025, "2505.18116")
MADPO = Paper("rho2025margin", "Margin Adaptive DPO: Leveraging Reward Model for Granular Control in Preference "
              "Optimization", ("Hyung Gyu Rho",), 2025, "2510.05342")
DPO = Paper("rafailov2023direct", "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
            ("Rafael Rafailov", "Archit Sharma", "Eric Mitchell", "Christopher D. Manning", "Stefano Ermon",
             "Chelsea Finn"), 2023, "2305.18290", "Advances in Neural Information Processing Systems 36 (NeurIPS 2023)")
DEEPSEEKMATH = Paper("shao2024deepseekmath", "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open "
                     "Language Models",
                     ("Zhihong Shao", "Peiyi Wang", "Qihao Zhu", "Runxin Xu", "Junxiao Song", "Xiao Bi", "Haowei Zhang",
                      "Mingchuan Zhang", "Y. K. Li", "Y. Wu", "Daya Guo"), 2024, "2402.03300")
PERSTEP = Paper("setlur2024rl", "RL on Incorrect Synthetic Data Scales the Efficiency of LLM Math Reasoning by "
                "Eight-Fold",
                ("Amrith Setlur", "Saurabh Garg", "Xinyang Geng", "Naman Garg", "Virginia Smith", "Aviral Kumar"), 2024,
                "2406.14532", "Advances in Neural Information Processing Systems 37 (NeurIPS 2024)")

# data sets by the recipe's data loader (``data.name``): the Hub id a card names when the recipe read a local copy,
# and the benchmark paper the card cites with the method's
DATASETS = {"tofu": "locuslab/TOFU", "gsm8k": "openai/gsm8k", "math": "DigitalLearningGmbH/MATH-lighteval"}
DATASET_PAPERS = {"tofu": TOFU}

TOFU_DATA = ("locuslab/TOFU",)
MATH_DATA = ("DigitalLearningGmbH/MATH-lighteval", "openai/gsm8k")
IMDB_PAIRS = ("insub/imdb_prefix20_forDPO_gpt2-large-imdb-FT_siebert_sentiment-roberta-large-english",)


@dataclass(frozen=True)
class Method:
    name: str
    title: str  # short display name (the card's and TRL's trainer name)
    summary: str  # one line: what the objective does
    paper: Paper | None
    tags: tuple[str, ...]  # the family first
    datasets: tuple[str, ...] = ()  # Hub ids the shipped recipes train on (a card names the run's own data set)
    pipeline_tag: str = "text-generation"
    language: tuple[str, ...] = ("en",)
    trainer: str = ""  # the module that trains it: CONFIG_CLASS, METHOD_DEFAULTS, train(recipe)

    @property
    def family(self) -> str:
        return self.tags[0]

    def defaults(self) -> dict:
        """The method's preset config values (its trainer module's ``METHOD_DEFAULTS`` entry; imports the trainer)."""
        return getattr(importlib.import_module(self.trainer), "METHOD_DEFAULTS", {}).get(self.name, {})

    def describe(self) -> str:
        """Two lines for ``--show-method``: title and summary, then the paper."""
        head = f"{self.name}: {self.title}: {self.summary}"
        if self.paper is None:
            return head
        return f"{head}\n  paper: {self.paper.title} ({self.paper.short}), {self.paper.url}"


_TRAINERS = "negalign.trainers."


def _unlearning(name, title, summary, paper, *extra):
    return Method(name, title, summary, paper, ("unlearning", *extra), TOFU_DATA, trainer=_TRAINERS + "unlearn")


def _rlvr(name, title, summary, paper, trainer="nsr"):
    return Method(name, title, summary, paper, ("rlvr", "reasoning", "math"), MATH_DATA, trainer=_TRAINERS + trainer)


def _perstep(name, title, summary):
    return Method(name, title, summary, PERSTEP, ("per-step", "reasoning", "math"), ("openai/gsm8k",),
                  trainer=_TRAINERS + "perstep")


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("sft", "SFT", "supervised fine-tuning (completion-only NLL) on the recipe's answers", None, ("sft",),
           trainer=_TRAINERS + "sft"),
    # GA and GradDiff are the baselines as the TOFU benchmark defines them
    _unlearning("ga", "GA", "gradient ascent on the forget set", TOFU),
    _unlearning("grad_diff", "GradDiff", "gradient ascent on the forget set + NLL on the retain set", TOFU),
    _unlearning("npo", "NPO", "Negative Preference Optimization on the forget set", NPO),
    _unlearning("npo_rt", "NPO+RT", "NPO on the forget set + NLL on the retain set", NPO),
    _unlearning("npo_kl", "NPO+KL", "NPO on the forget set + KL to the reference on the retain set", NPO),
    _unlearning("simnpo", "SimNPO", "reference-free, length-normalised NPO + NLL on the retain set", SIMNPO),
    _unlearning("idk_dpo", "IdkDPO", "DPO of a refusal (TOFU's idontknow.jsonl) over the forget answer, scaled by 2/β, "
                "+ NLL on the retain set", TOFU),
    _rlvr("psr", "PSR", "RLVR on correct samples only (+1), wrong ones dropped; no group baseline", NSR),
    _rlvr("nsr", "NSR", "RLVR on wrong samples only (-1), correct ones dropped; no group baseline", NSR),
    _rlvr("w_reinforce", "W-REINFORCE", "RLVR with +0.1 for correct and -1 for wrong samples; no group baseline",
          NSR),
    _rlvr("reinforce", "REINFORCE", "RLVR with +1 for correct and -1 for wrong samples; no group baseline", NSR),
    _rlvr("grpo", "GRPO", "TRL's GRPO with the settings of Zhu et al. 2025's baseline", DEEPSEEKMATH),
    _rlvr("grpo_trl", "GRPO", "TRL's GRPO with TRL's defaults", DEEPSEEKMATH),
    _rlvr("nft", "NFT", "Negative-aware Fine-Tuning: wrong answers train an implicit negative policy", NFT,
          trainer="nft"),
    Method("d2o", "D²O", "Distributional Dispreference Optimization: human negatives against self-sampled anchors", D2O,
           ("preference", "alignment", "safety"), ("PKU-Alignment/PKU-SafeRLHF",), trainer=_TRAINERS + "d2o"),
    Method("madpo_reward", "MADPO reward model", "MADPO step 1: a reward model on the preference pairs", MADPO,
           ("preference", "reward-model"), IMDB_PAIRS, pipeline_tag="text-classification",
           trainer=_TRAINERS + "madpo"),
    Method("madpo", "MADPO", "Margin-Adaptive DPO: DPO weighted per pair by the reward model's margin", MADPO,
           ("preference", "dpo"), IMDB_PAIRS, trainer=_TRAINERS + "madpo"),
    Method("dpo", "DPO", "Direct Preference Optimization (TRL's DPOTrainer; the MADPO baseline)", DPO,
           ("preference", "dpo"), IMDB_PAIRS, trainer=_TRAINERS + "madpo"),
    _perstep("perstep_dpo", "Per-step DPO",
             "DPO of a correct solution against a wrong one cut after its first pit (Monte-Carlo step values)"),
    _perstep("perstep_awr", "Per-step AWR", "advantage-weighted likelihood with per-step Monte-Carlo advantages"),
    _perstep("dpo_full", "DPO (whole pairs)", "DPO of a correct against a whole wrong solution (per-step control)"),
    _perstep("rft", "RFT", "rejection fine-tuning on the model's own correct solutions (per-step control)"),
)}


def get(name: str) -> Method:
    """The record of ``name``; an unknown name raises ``RecipeError`` naming the closest known one."""
    if name not in METHODS:
        from negalign.config import RecipeError

        match = difflib.get_close_matches(name, list(METHODS), n=1, cutoff=0.5)
        hint = f" Did you mean {match[0]!r}?" if match else ""
        raise RecipeError(f"unknown method {name!r}.{hint} Known methods: {', '.join(METHODS)}")
    return METHODS[name]
