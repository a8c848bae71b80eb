"""An AddModelRequest (gRPC) through the model spec's rules (protos/model_spec.py).

proto3 cannot tell an unset field from its zero value: "" and 0 mean the default (source: the name; max_context:
the model's own), and an empty list of stages or ranges means none given."""

from __future__ import annotations

from typing import Any

from protos import coordinator_pb2
from protos.model_spec import CheckedSpec, check_model_spec


def add_model_fields(request: coordinator_pb2.AddModelRequest) -> dict[str, Any]:
    """The fields the request sets, as a spec mapping (unset ones are left out and take the defaults)."""
    fields: dict[str, Any] = {"name": request.name}
    for key in ("source", "dtype", "quantization", "device", "replicas", "kv_cache_tokens", "max_context",
                "forwarding", "wire_dtype", "speculative", "num_speculative_tokens", "draft_model",
                "expected_concurrency"):
        value = getattr(request, key)
        if value:
            fields[key] = value
    if request.stages:
        fields["nodes"] = [list(s.node_ids) for s in request.stages]
    if request.layer_ranges:
        fields["layer_ranges"] = [[r.start, r.end] for r in request.layer_ranges]
    return fields


def spec_from_add_model(request: coordinator_pb2.AddModelRequest) -> CheckedSpec:
    """The checked spec of a model added at runtime; SpecProblem naming the field otherwise. Node ids are checked
    against the known nodes later, by the registry."""
    return check_model_spec(add_model_fields(request), "request")
