"""Last stage only: logits -> next token id (greedy, temperature, top-k, top-p, repetition penalty, seed)."""

from __future__ import annotations

import torch

from protos.data_structures import SamplingParams


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None,
                seen_token_ids: list[int] | None = None) -> int:
    """logits: [vocab] float32 of one sequence's last position."""
    if params.repetition_penalty != 1.0 and seen_token_ids:
        ids = torch.tensor(sorted(set(seen_token_ids)), dtype=torch.long, device=logits.device)
        picked = logits[ids]
        logits = logits.clone()
        logits[ids] = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
    if params.is_greedy:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        drop = cumulative - sorted_probs > params.top_p  # keep the smallest prefix reaching top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:  # NaN/inf in the hidden state, say
        raise ValueError("sampling failed: the token probabilities are not finite")
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))
