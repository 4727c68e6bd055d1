"""Evaluation: TOFU unlearning metrics (``negalign.evaluation.tofu``), pass@k, verifier audits."""

from __future__ import annotations


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): ``1 - C(n-c, k) / C(n, k)``.

    Computed as the stable product ``1 - Π_{i=n-c+1}^{n} (1 - k/i)``, never with large binomials."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


