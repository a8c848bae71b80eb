"""The only code that runs the model: one micro-batch of sequence slices through this shard's layers."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from protos.data_structures import LayerRange
from protos.model_spec import DEFAULT_QUANTIZATION
from shard_node.architectures import ModelSpec
from shard_node.attention import plan_batch
from shard_node.gguf_weights import GgufBlocks
from shard_node.grammar import SequenceGrammar, grammar_tokenizer
from shard_node.kv_cache import DEFAULT_MAX_SEQUENCES, CacheFull, KVCache, SequenceCache, UnknownSequence
from shard_node.micro_batch import BatchError, BatchResult, KeepBlocks, MicroBatch, RowError, SliceInput
from shard_node.quantize import kernel_description, quantize_linears, quantize_shard
from shard_node.sampler import chosen_logprobs
from shard_node.shard_model import ShardModel
from shard_node.slice_checks import cache_of, cache_problem
from shard_node.speculative import greedy_accepted, verify_drafts
from shard_node.weights import load_shard_weights

logger = logging.getLogger(__name__)


class ShardRunner:
    """One model's shard on this node: weights, KV cache, and the forward of a micro-batch."""

    def __init__(self, name: str, model_dir: Path, spec: ModelSpec, layers: LayerRange, dtype: torch.dtype,
                 device: torch.device, kv_cache_tokens: int, max_sequences: int = DEFAULT_MAX_SEQUENCES,
                 quantization: str = DEFAULT_QUANTIZATION) -> None:
        self.name, self.model_dir, self.spec, self.layers = name, model_dir, spec, layers
        self.dtype, self.device, self.quantization = dtype, device, quantization
        self.model = ShardModel.on_meta(spec, layers)
        self.kernel = kernel_description(quantization, device)  # refuses an unknown scheme before any loading
        self.gguf = GgufBlocks.open(model_dir, device) if quantization == "int4" else None
        load_shard_weights(self.model, model_dir, dtype, device,
                           on_layer_loaded=None if quantization == "none" else self._quantize_block)
        quantize_shard(self.model, quantization)  # the head (the layers are quantized as they load)
        if self.gguf is not None:
            self.kernel += f"; {self.gguf.describe(self.model.layers)}"
        self.model.eval()
        self.kv = KVCache(layers.length, spec.num_kv_heads, spec.head_dim, kv_cache_tokens, dtype, device,
                          max_sequences)

    def _quantize_block(self, block: nn.Module) -> None:
        """Once a block's float weights are in: its linears from the GGUF's int4 blocks where it has them, the
        others quantized from the float weights."""
        if self.gguf is not None:
            index = next(i for i, b in self.model.layers.items() if b is block)
            self.gguf.replace_linears(block, f"{self.spec.layer_prefix}{index}.")
        quantize_linears(block, self.quantization)

    @property
    def is_first(self) -> bool:
        return self.model.is_first

    @property
    def is_last(self) -> bool:
        return self.model.is_last

    def validate(self, batch: MicroBatch, owner: int) -> dict[int, RowError]:
        """Checks everything before any state changes. A problem of the batch as a whole (its shape, repeated
        ids) raises BatchError and leaves the node as it was; a problem of one sequence (its position, its cache,
        its sampling parameters, KV room) is returned as that row's error, and only that row is left out."""
        if not batch.slices:
            raise BatchError("INVALID_ARGUMENT", "micro-batch has no sequences")
        seen: set[str] = set()
        for s in batch.slices:
            if not s.seq_id:
                raise BatchError("INVALID_ARGUMENT", "a sequence has an empty seq_id")
            if s.seq_id in seen:
                raise BatchError("INVALID_ARGUMENT", f"sequence {s.seq_id!r} appears twice in one micro-batch")
            seen.add(s.seq_id)
            if s.num_tokens < 1:
                raise BatchError("INVALID_ARGUMENT", f"sequence {s.seq_id!r}: num_tokens must be >= 1, "
                                 f"got {s.num_tokens}")
        total = sum(s.num_tokens for s in batch.slices)
        if self.is_first:
            if batch.token_ids is None or batch.token_ids.shape != (total,):
                got = None if batch.token_ids is None else list(batch.token_ids.shape)
                raise BatchError("INVALID_ARGUMENT", f"first stage needs token_ids of length {total}, got {got}")
        else:
            want = (total, self.spec.hidden_size)
            if batch.hidden is None or tuple(batch.hidden.shape) != want:
                got = None if batch.hidden is None else list(batch.hidden.shape)
                raise BatchError("INVALID_ARGUMENT", f"hidden must have shape {list(want)}, got {got}")
            if batch.hidden.dtype != self.dtype:
                raise BatchError("INVALID_ARGUMENT", f"hidden dtype {batch.hidden.dtype} does not match the "
                                 f"shard's {self.dtype}")
        errors: dict[int, RowError] = {}
        ids = batch.token_ids if self.is_first else None  # checked per row only when some id is out of range
        check_ids = ids is not None and total > 0 and (int(ids.min()) < 0 or int(ids.max()) >= self.spec.vocab_size)
        row = 0
        for i, s in enumerate(batch.slices):
            problem = self._row_problem(batch, s, owner, row, check_ids)
            if problem is not None:
                errors[i] = RowError(s.seq_id, *problem)
            row += s.num_tokens
        self._check_room(batch, errors)
        return errors

    def _row_problem(self, batch: MicroBatch, s: SliceInput, owner: int, row: int, check_ids: bool
                     ) -> tuple[str, str] | None:
        """(gRPC code, message) of what is wrong with one sequence's slice, or None."""
        where = f"sequence {s.seq_id!r}"
        if s.invalid:
            return "INVALID_ARGUMENT", f"{where}: {s.invalid}"
        if s.start_pos < 0:
            return "INVALID_ARGUMENT", f"{where}: start_pos must be >= 0, got {s.start_pos}"
        if s.draft_token_ids and (len(s.draft_token_ids) >= s.num_tokens or s.no_sample):
            return "INVALID_ARGUMENT", (f"{where}: {len(s.draft_token_ids)} draft tokens need a slice of more rows "
                                        f"(num_tokens {s.num_tokens}) that samples (no_sample is set: {s.no_sample})")
        if self.is_last and s.sampling.logit_bias and s.sampling.logit_bias[-1][0] >= self.spec.vocab_size:
            return "INVALID_ARGUMENT", f"{where}: logit_bias token ids must be in [0, {self.spec.vocab_size})"
        sampling_rows = 0 if s.no_sample else 1 + len(s.draft_token_ids)
        if len(s.score_token_ids) > s.num_tokens - sampling_rows or not all(0 <= t < self.spec.vocab_size
                                                                            for t in s.score_token_ids):
            return "INVALID_ARGUMENT", (f"{where}: score_token_ids must be ids in [0, {self.spec.vocab_size}), at "
                                        f"most one per row before the {sampling_rows} that sample")
        if s.draft_token_ids and not all(0 <= t < self.spec.vocab_size for t in s.draft_token_ids):
            return "INVALID_ARGUMENT", f"{where}: draft token ids must be in [0, {self.spec.vocab_size})"
        problem = cache_problem(self.kv, batch.release_seq_ids, s, owner, self.spec.max_positions)
        if problem is not None:
            return problem
        if check_ids and batch.token_ids is not None:
            ids = batch.token_ids[row:row + s.num_tokens]
            if int(ids.min()) < 0 or int(ids.max()) >= self.spec.vocab_size:
                return "INVALID_ARGUMENT", f"{where}: token ids must be in [0, {self.spec.vocab_size})"
        return None

    def _check_room(self, batch: MicroBatch, errors: dict[int, RowError]) -> None:
        """New sequences that do not fit the KV budget fail alone, in order: the first ones that fit go on."""
        new = {i: s for i, s in enumerate(batch.slices) if s.starts_cache and i not in errors}
        try:
            self.kv.check_fits({s.seq_id: s.new_tokens for s in new.values()}, batch.release_seq_ids)
            return
        except CacheFull:
            pass
        fitting: dict[str, int] = {}
        for i, s in new.items():
            try:
                self.kv.check_fits({**fitting, s.seq_id: s.new_tokens}, batch.release_seq_ids)
            except CacheFull as e:
                errors[i] = RowError(s.seq_id, "RESOURCE_EXHAUSTED", f"layers {self.layers}: {e}")
            else:
                fitting[s.seq_id] = s.new_tokens

    @torch.inference_mode()
    def run(self, batch: MicroBatch, owner: int) -> BatchResult:
        """One forward of every valid slice together: projections and MLPs see all rows at once.

        Rows that failed (validation, sampling) are reported in ``row_errors`` and left out of ``hidden``;
        ``next_token_ids`` keeps one entry per slice (-1 for those). The prefix cache's keeps and evictions come
        first, whatever becomes of the batch (the coordinator counted them when it sent them)."""
        self.update_prefix_cache(batch.keep_blocks, batch.evict_hashes)
        errors = self.validate(batch, owner)
        started = time.perf_counter()
        for seq_id in batch.release_seq_ids:
            self.kv.release(seq_id)
        last = len(batch.slices) if self.is_last else 0
        result = BatchResult(next_token_ids=[-1] * last, accepted_drafts=[0] * last, logprobs=[None] * last,
                             scored=[None] * last)
        good: list[int] = []
        rows_in: list[slice] = []
        row = 0
        for i, s in enumerate(batch.slices):
            if i not in errors:
                good.append(i)
                rows_in.append(slice(row, row + s.num_tokens))
            row += s.num_tokens
        if good:
            self._forward(batch, owner, good, rows_in, errors, result)
        elif not self.is_last:  # every sequence failed: no rows go on
            result.hidden = torch.empty(0, self.spec.hidden_size, dtype=self.dtype, device=self.device)
        result.row_errors = [errors[i] for i in sorted(errors)]
        result.forward_seconds = time.perf_counter() - started
        return result

    def update_prefix_cache(self, keep: Iterable[KeepBlocks], evict: Iterable[int]) -> None:
        for k in keep:
            self.kv.keep(k.seq_id, k.first_block, list(k.hashes))
        self.kv.evict(list(evict))

    def _forward(self, batch: MicroBatch, owner: int, good: list[int], rows_in: list[slice],
                 errors: dict[int, RowError], result: BatchResult) -> None:
        slices = [batch.slices[i] for i in good]
        entries = []
        for s in slices:
            try:
                entries.append(cache_of(self.kv, s, owner))
            except (CacheFull, UnknownSequence) as e:  # validated above; only a race could get here
                raise BatchError("RESOURCE_EXHAUSTED" if isinstance(e, CacheFull) else "NOT_FOUND", str(e)) from e
        rows, row = [], 0
        for s in slices:
            rows.append(slice(row, row + s.num_tokens))
            row += s.num_tokens
        positions = [p for s in slices for p in range(s.start_pos, s.start_pos + s.num_tokens)]
        pos = torch.tensor(positions, dtype=torch.int64, device=self.device)
        paged = plan_batch(self.kv, entries, [s.start_pos for s in slices], [s.num_tokens for s in slices])
        source = batch.token_ids if self.is_first else batch.hidden
        assert source is not None
        if len(good) < len(batch.slices):  # leave the failed rows out
            source = torch.cat([source[r] for r in rows_in])
        if self.is_first:
            x = self.model.embed(source.to(self.device), pos)
        else:
            x = source.to(self.device)
        x = self.model.forward_layers(x, pos, paged)
        for s, entry in zip(slices, entries):
            entry.draft_start = self._provisional_from(s, entry)
            entry.length = s.start_pos + s.num_tokens  # rejected drafts of an earlier step are overwritten now
        if self.is_last:
            self._sample(batch, good, entries, x, rows, errors, result)
        else:
            result.hidden = x

    def _sample(self, batch: MicroBatch, good: list[int], entries: list[SequenceCache], x: torch.Tensor,
                rows: list[slice], errors: dict[int, RowError], result: BatchResult) -> None:
        """Logits of each slice's last row (only where a token is wanted, unless logits are asked for), of every
        draft row and of the rows that score given tokens (prompt log-probabilities); then each wanted token, after
        verifying the drafts (shard_node/speculative.py).

        ``good[k]`` is the batch index of the k-th computed slice; a row whose sampling fails fails alone."""
        wanted = [k for k, i in enumerate(good) if batch.return_logits or not batch.slices[i].no_sample
                  or batch.slices[i].score_token_ids]
        if not wanted:
            return
        scored = [batch.slices[good[k]].rows_with_logits(rows[k], batch.return_logits) for k in wanted]
        picked = torch.tensor([r for span in scored for r in span], device=x.device)
        logits = self.model.logits(x.index_select(0, picked))
        ends = [0]
        for span in scored:
            ends.append(ends[-1] + len(span))
        if batch.return_logits:
            result.logits = logits[torch.tensor(ends[1:], device=logits.device) - 1]
        plain = {j for j, k in enumerate(wanted) if batch.slices[good[k]].plain_greedy and entries[k].grammar is None}
        choices = torch.argmax(logits, dim=-1).tolist() if plain else []
        for j, k in enumerate(wanted):
            i = good[k]
            s, entry = batch.slices[i], entries[k]
            first = ends[j] + len(s.score_token_ids)  # the rows that sample
            if s.score_token_ids:
                result.scored[i] = chosen_logprobs(logits[ends[j]:first], list(s.score_token_ids),
                                                   s.sampling.logprobs or 0)
            if s.no_sample:
                continue
            try:
                if s.sampling.seed is not None and entry.generator is None:
                    entry.generator = torch.Generator().manual_seed(s.sampling.seed)
                if s.grammar and entry.grammar is None:
                    entry.grammar = self._grammar(s)
                drafts = list(s.draft_token_ids)
                rows_j = logits[first:ends[j + 1]]
                if j in plain:
                    accepted, token = greedy_accepted(choices[first:ends[j + 1]], drafts)
                else:
                    accepted, token = verify_drafts(rows_j, drafts, s.sampling, entry.generator, s.history(),
                                                    entry.grammar)
                result.next_token_ids[i], result.accepted_drafts[i] = token, accepted
                if s.sampling.logprobs is not None:
                    result.logprobs[i] = chosen_logprobs(rows_j[:accepted + 1], drafts[:accepted] + [token],
                                                         s.sampling.logprobs)
            except (ValueError, RuntimeError) as e:  # this sequence's sampling only; the others go on
                logger.warning("sequence %s: %s", s.seq_id, e)
                errors[i] = RowError(s.seq_id, "INTERNAL", f"sequence {s.seq_id!r}: {e}")

    @staticmethod
    def _provisional_from(s: SliceInput, entry: SequenceCache) -> int | None:
        """Where the sequence's provisional positions start once ``s`` ran (None: all are confirmed): its drafts, or
        with ``provisional`` all of its rows and the provisional ones before it."""
        if s.provisional:
            return s.start_pos if entry.draft_start is None else min(entry.draft_start, s.start_pos)
        if s.draft_token_ids:
            return s.start_pos + s.num_tokens - len(s.draft_token_ids)
        return None

    def _grammar(self, s: SliceInput) -> SequenceGrammar:
        """A new cache's structured output, past the sequence's output so far."""
        vocab = self.spec.vocab_size
        return SequenceGrammar.start(grammar_tokenizer(self.model_dir, vocab), s.grammar, vocab,
                                     list(s.grammar_token_ids))
