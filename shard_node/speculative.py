"""Last stage only: verification of a sequence's draft tokens against the model's own next-token choices.

A verify slice is the sequence's newest token followed by k draft tokens; its k + 1 rows of logits score, in
order, the token after each prefix. Greedy: a draft is accepted while it is the argmax. Sampling: standard
speculative sampling with a draft that is one proposed token (a point mass): the draft d is accepted with
probability p(d), where p is exactly the distribution plain decoding samples from at that position; a rejected
draft is replaced by a token drawn from p with d removed (renormalised). Either way the output has the
distribution of plain decoding (Leviathan et al. 2023, Chen et al. 2023). After the accepted drafts, the next token
comes from the following row, so a step always yields at least one token.
"""

from __future__ import annotations

import torch

from protos.data_structures import SamplingParams
from shard_node.sampler import TokenHistory, draw, penalized, sample_next, token_probs


def verify_drafts(logits: torch.Tensor, drafts: list[int], params: SamplingParams,
                  generator: torch.Generator | None, history: TokenHistory) -> tuple[int, int]:
    """(drafts accepted, the token after them). ``logits``: [len(drafts) + 1, vocab], one row per prefix;
    ``history``: the context before the first draft (for the penalties)."""
    seen = history
    for i, draft in enumerate(drafts):
        row = penalized(logits[i], params, seen)
        if params.is_greedy:
            choice = int(torch.argmax(row))
            if choice != draft:
                return i, choice
        else:
            probs = token_probs(row, params)
            probs = probs / probs.sum()  # top-p leaves it unnormalised
            if float(torch.rand((), generator=generator)) >= float(probs[draft]):
                probs[draft] = 0.0  # p(d) < 1 here, so something else is left
                return i, draw(probs, generator)
        seen = seen.then(draft) if params.needs_history else seen
    return len(drafts), sample_next(logits[len(drafts)], params, generator, seen)


def greedy_accepted(choices: list[int], drafts: list[int]) -> tuple[int, int]:
    """Plain greedy (no penalty) with every row's argmax known: (drafts accepted, the token after them)."""
    for i, draft in enumerate(drafts):
        if choices[i] != draft:
            return i, choices[i]
    return len(drafts), choices[len(drafts)]
