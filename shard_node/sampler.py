"""Last stage only: logits -> next token id (greedy, temperature, top-k, top-p, penalties, logit bias, seed), and
the log-probabilities of the tokens chosen."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from protos.data_structures import SamplingParams, TokenLogprobs


@dataclass
class TokenHistory:
    """The tokens a sequence has seen, for its penalties: the prompt's first, then the output's."""

    tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0

    def then(self, token: int) -> TokenHistory:
        """This history with one more output token."""
        return TokenHistory(self.tokens + [token], self.prompt_tokens)


def penalized(logits: torch.Tensor, params: SamplingParams, history: TokenHistory | None) -> torch.Tensor:
    """The logits with the logit bias added, and the repetition (prompt and output), presence and frequency
    (output) penalties applied to the tokens already seen (``logits`` itself when nothing changes it)."""
    if not params.changes_logits:
        return logits
    logits = logits.clone()
    if params.logit_bias:
        ids = torch.tensor([token for token, _ in params.logit_bias], dtype=torch.long, device=logits.device)
        logits[ids] += torch.tensor([bias for _, bias in params.logit_bias], dtype=logits.dtype, device=logits.device)
    seen = history.tokens if history is not None else []
    if params.repetition_penalty != 1.0 and seen:
        ids = torch.tensor(sorted(set(seen)), dtype=torch.long, device=logits.device)
        picked = logits[ids]
        logits[ids] = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
    output = seen[history.prompt_tokens:] if history is not None else []
    if (params.presence_penalty or params.frequency_penalty) and output:
        counts = torch.bincount(torch.tensor(output, dtype=torch.long), minlength=logits.shape[-1]).to(logits)
        logits -= counts * params.frequency_penalty + (counts > 0).to(logits) * params.presence_penalty
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


def choose(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """The token of logits already processed (penalties, bias, a grammar's mask): argmax, or a draw."""
    if params.is_greedy:
        return int(torch.argmax(logits))
    return draw(token_probs(logits, params), generator)


def sample_next(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None,
                history: TokenHistory | None = None) -> int:
    """logits: [vocab] float32 of one sequence's last position."""
    return choose(penalized(logits, params, history), params, generator)


def chosen_logprobs(logits: torch.Tensor, chosen: list[int], top: int) -> TokenLogprobs:
    """``logits``: [len(chosen), vocab], row i the position where ``chosen[i]`` was picked."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    picked = logprobs.gather(1, torch.tensor(chosen, dtype=torch.long, device=logits.device).unsqueeze(1))
    if top == 0:
        return TokenLogprobs(tuple(picked.squeeze(1).tolist()))
    values, ids = torch.topk(logprobs, min(top, logprobs.shape[-1]), dim=-1)
    return TokenLogprobs(tuple(picked.squeeze(1).tolist()), ids.shape[-1], tuple(ids.flatten().tolist()),
                         tuple(values.flatten().tolist()))
