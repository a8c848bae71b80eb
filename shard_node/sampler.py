"""Last stage only: logits -> next token id (greedy, temperature, top-k, top-p, repetition penalty, seed)."""

from __future__ import annotations

import torch

from protos.data_structures import SamplingParams


def penalized(logits: torch.Tensor, params: SamplingParams, seen_token_ids: list[int] | None) -> torch.Tensor:
    """The logits with the repetition penalty applied to the tokens already seen (unchanged without one)."""
    if params.repetition_penalty == 1.0 or not seen_token_ids:
        return logits
    ids = torch.tensor(sorted(set(seen_token_ids)), dtype=torch.long, device=logits.device)
    picked = logits[ids]
    logits = logits.clone()
    logits[ids] = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
    return logits


def token_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The distribution a non-greedy ``params`` samples from (temperature, then top-k, then top-p), on the CPU.
    ``logits``: [vocab], already ``penalized``. ValueError when it is not a distribution (NaN in the hidden state)."""
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
    if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
        raise ValueError("sampling failed: the token probabilities are not finite")
    return probs.cpu()


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token from a (not necessarily normalised) distribution on the CPU."""
    return int(torch.multinomial(probs, 1, generator=generator))


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None,
                seen_token_ids: list[int] | None = None) -> int:
    """logits: [vocab] float32 of one sequence's last position."""
    logits = penalized(logits, params, seen_token_ids)
    if params.is_greedy:
        return int(torch.argmax(logits))
    return draw(token_probs(logits, params), generator)
