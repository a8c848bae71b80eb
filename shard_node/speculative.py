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
from shard_node.grammar import SequenceGrammar, constrained, taken
from shard_node.sampler import TokenHistory, choose, draw, penalized, token_probs


def verify_drafts(logits: torch.Tensor, drafts: list[int], params: SamplingParams,
                  generator: torch.Generator | None, history: TokenHistory,
                  grammar: SequenceGrammar | None = None) -> tuple[int, int]:
    """(drafts accepted, the token after them). ``logits``: [len(drafts) + 1, vocab], one row per prefix;
    ``history``: the context before the first draft (for the penalties); ``grammar``: the sequence's structured
    output (every row is masked by it, and it moves past each token kept)."""
    seen = history
    for i, draft in enumerate(drafts):
        row = constrained(penalized(logits[i], params, seen), grammar)
        if params.is_greedy:
            choice = int(torch.argmax(row))
            if choice != draft:
                return i, taken(choice, grammar)
        else:
            probs = token_probs(row, params)
            probs = probs / probs.sum()  # top-p leaves it unnormalised
            if float(torch.rand((), generator=generator)) >= float(probs[draft]):
                probs[draft] = 0.0  # p(d) < 1 here, so something else is left
                return i, taken(draw(probs, generator), grammar)
        taken(draft, grammar)
        seen = seen.then(draft) if params.needs_history else seen
    last = constrained(penalized(logits[len(drafts)], params, seen), grammar)
    return len(drafts), taken(choose(last, params, generator), grammar)


def greedy_accepted(choices: list[int], drafts: list[int]) -> tuple[int, int]:
    """Plain greedy (no penalty) with every row's argmax known: (drafts accepted, the token after them)."""
    for i, draft in enumerate(drafts):
        if choices[i] != draft:
            return i, choices[i]
    return len(drafts), choices[len(drafts)]
