"""Speculative decoding with a draft model: another served model with the same tokenizer (smaller, so faster)
proposes each sequence's drafts, greedily, token after token, on its own nodes; the target model verifies them in
one pass through its stages (shard_node/speculative.py), so the output is that of plain decoding.

Each sequence has a KV cache on the draft model's nodes (``ModelDrafts.seq_id``) that follows its context. A round
feeds what that cache lacks of the context, then the draft model's own tokens one by one, k steps batched over the
sequences of one lane, every position marked provisional (the nodes let a later step overwrite it). Once the target
verified the drafts the cache agrees with the context up to the last accepted draft (``DraftState.confirmed``), and
the next round starts there. If the draft model is not serving, moved to other nodes, or refuses a sequence, that
sequence decodes plainly for a while (``DraftState.back_off``) and its cache is built again later.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from coordinator.batch import BatchEntry, MicroBatchPlan
from coordinator.model_meta import ModelMeta
from coordinator.node_client import StageError
from coordinator.pipeline import Pipeline, Route
from coordinator.request import Request
from coordinator.speculation import ModelDrafts, SpeculationConfig, span
from protos.data_structures import SamplingParams

logger = logging.getLogger(__name__)


class DraftEngine(Protocol):
    """What the proposer needs of the draft model's engine (coordinator/engine.py ModelEngine)."""

    pipeline: Pipeline
    meta: ModelMeta

    @property
    def ready(self) -> bool: ...

    @property
    def draining(self) -> bool: ...

    @property
    def routes(self) -> list[Route]: ...

    def wake(self) -> None: ...


class HasMeta(Protocol):
    meta: ModelMeta


def draft_model_problem(model: str, draft_model: str, vocab_size: int, served: Mapping[str, HasMeta],
                        pending: Collection[str]) -> str:
    """Why ``draft_model`` cannot propose for ``model`` ('' if it can): it must be served (or pending) and share the
    vocabulary."""
    draft = served.get(draft_model)
    if draft is None and draft_model not in pending:
        return f"draft_model {draft_model!r} is not served; add it first (served: {sorted(served)})"
    if draft is not None and draft.meta.vocab_size != vocab_size:
        return (f"draft_model {draft_model!r} has a vocabulary of {draft.meta.vocab_size} tokens, {model} of "
                f"{vocab_size}: they need the same tokenizer")
    return ""


class Drafted(Protocol):
    """A model's engine as far as its draft model goes."""

    speculation: SpeculationConfig
    meta: ModelMeta


def check_draft_models(engines: Mapping[str, Drafted]) -> None:
    """Every model with a draft model (config.json): it is one of ``engines`` and has the same vocabulary; ValueError
    naming the model otherwise."""
    for name, engine in engines.items():
        draft = engine.speculation.draft_model
        problem = draft and draft_model_problem(name, draft, engine.meta.vocab_size, engines, ())
        if problem:
            raise ValueError(f"model {name}: {problem}")


class DraftModelProposer:
    def __init__(self, draft_model: str, served: Mapping[str, DraftEngine]) -> None:
        self.draft_model = draft_model
        self.served = served  # every served model by name (the registry's engines)
        self.holding: dict[str, tuple[Request, ModelDrafts]] = {}  # draft caches on the draft model's nodes
        self._caches = itertools.count(1)  # a new cache gets a new id: a release of an old one may still be pending

    @staticmethod
    def wanting(members: Sequence[Request]) -> list[Request]:
        """The sequences of a lane that decode next and want the draft model's drafts first."""
        return [r for r in members if not r.in_flight and not r.cancelled and r.prefill_done
                and r.drafting is not None and r.max_tokens - len(r.output_ids) > 1
                and r.drafting.wants_model_drafts(r.num_context_tokens, len(r.output_ids))]

    def engine(self) -> DraftEngine | None:
        engine = self.served.get(self.draft_model)
        return engine if engine is not None and engine.ready and not engine.draining else None

    async def propose_held(self, reqs: Sequence[Request]) -> None:
        """``propose``, with ``reqs`` counted in flight meanwhile (nothing else plans them)."""
        for r in reqs:
            r.batches_in_flight += 1
        try:
            await self.propose(reqs)
        finally:
            for r in reqs:
                r.batches_in_flight -= 1

    async def propose(self, reqs: Sequence[Request]) -> None:
        """Drafts for each of ``reqs`` (decode rows of one lane, each with a DraftState whose ``model`` is set),
        left in ``ModelDrafts.ready``; a sequence without drafts backs off."""
        engine = self.engine()
        route = next((r for r in engine.routes if all(x.usable for x in r)), None) if engine else None
        if engine is None or route is None:
            for req in reqs:
                self._give_up(req)
            return
        nodes = (engine.pipeline.model, *(r.node_id for r in route))  # a new layout of it: new caches
        for req in reqs:
            self._follow(req, nodes)
        await self._rounds(engine.pipeline, route, list(reqs))  # releases due on those nodes ride along

    def _follow(self, req: Request, nodes: tuple[str, ...]) -> None:
        """The sequence's draft cache is on ``nodes``: a new one when it was elsewhere."""
        assert req.drafting is not None and req.drafting.model is not None
        drafts = req.drafting.model
        if drafts.route != nodes:
            self._release(drafts)
            drafts.route, drafts.cached = nodes, 0
            drafts.seq_id = f"{req.seq_id}-draft{next(self._caches)}"
        self.holding[drafts.seq_id] = (req, drafts)

    async def _rounds(self, pipeline: Pipeline, route: Route, reqs: list[Request]) -> None:
        """k greedy steps of the draft model for every sequence (its own k), batched."""
        lengths = {id(r): r.num_context_tokens for r in reqs}
        wanted = {id(r): min(r.drafting.draft_tokens, r.max_tokens - len(r.output_ids) - 1)  # type: ignore[union-attr]
                  for r in reqs}
        got: dict[int, list[int]] = {id(r): [] for r in reqs}
        going = [r for r in reqs if wanted[id(r)] > 0]
        while going:
            entries = [self._entry(r, got[id(r)]) for r in going]
            try:
                result = await pipeline.step(route, MicroBatchPlan(-1, tuple(entries)))
            except (StageError, RuntimeError) as e:
                logger.warning("draft model %s failed; %d sequence(s) decode plainly for now: %s", self.draft_model,
                               len(going), e)
                for r in going:
                    self._give_up(r)
                return
            for i, (r, entry) in enumerate(zip(going, entries)):
                r.drafting.model.cached = entry.start_pos + len(entry.token_ids)  # type: ignore[union-attr]
                if i in result.failed or result.next_token_ids[i] < 0:
                    logger.info("draft model %s refused %s: %s", self.draft_model, r.request_id, result.failed.get(i))
                    self._give_up(r)
                else:
                    got[id(r)].append(result.next_token_ids[i])
            going = [r for i, r in enumerate(going) if i not in result.failed and len(got[id(r)]) < wanted[id(r)]]
        for r in reqs:
            if got[id(r)]:
                r.drafting.model.ready = (lengths[id(r)], tuple(got[id(r)]))  # type: ignore[union-attr]

    @staticmethod
    def _entry(req: Request, drafted: list[int]) -> BatchEntry:
        """The sequence's next step on the draft model: what its cache lacks of the context, or its last draft."""
        drafts = req.drafting.model  # type: ignore[union-attr]
        assert drafts is not None
        tokens = (drafted[-1],) if drafted else tuple(span(req.prompt_ids, req.output_ids, drafts.cached,
                                                               req.num_context_tokens))
        shadow = Request(request_id=f"{req.request_id}-draft", seq_id=drafts.seq_id, prompt_ids=req.prompt_ids,
                         max_tokens=req.max_tokens, sampling=SamplingParams(), stop_token_ids=frozenset(),
                         eos_token_ids=frozenset())
        return BatchEntry(shadow, drafts.cached, tokens, True, provisional=True)

    def _give_up(self, req: Request) -> None:
        assert req.drafting is not None and req.drafting.model is not None
        req.drafting.model.ready = (req.num_context_tokens, ())
        req.drafting.back_off(len(req.output_ids))
        self._release(req.drafting.model)
        req.drafting.model.route, req.drafting.model.cached = (), 0

    def sweep(self) -> None:
        """Frees the draft caches of sequences that ended: with the draft model's next micro-batch on those nodes, or
        its engine's Release call."""
        ended = [drafts for req, drafts in self.holding.values() if req.is_finished]
        for drafts in ended:
            self._release(drafts)
        engine = self.served.get(self.draft_model)
        if ended and engine is not None:
            engine.wake()

    def _release(self, drafts: ModelDrafts) -> None:
        self.holding.pop(drafts.seq_id, None)
        engine = self.served.get(self.draft_model)
        if not drafts.route or engine is None or drafts.route[0] != engine.pipeline.model:
            return  # no cache, or one on shards of the draft model's earlier layout (unloaded with them)
        for replica in engine.pipeline.replicas:
            if replica.node_id in drafts.route and replica.state != "down":
                replica.pending_release.append(drafts.seq_id)
