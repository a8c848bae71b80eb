"""The coordinator's admin calls: models added (or previewed), re-placed and removed at runtime, nodes that join and
leave. Part of the Coordinator servicer (coordinator/service.py)."""

from __future__ import annotations

import grpc

from coordinator.placement import DoesNotFit
from coordinator.plan_preview import preview
from coordinator.rebalance import EXPLICIT_GAIN, Layout, Outcome
from coordinator.registry import ModelRegistry, ModelRequest, RegistryError
from protos import coordinator_pb2, wire
from protos.config import ModelConfig, NodeConfig
from protos.model_spec import SpecProblem
from protos.model_spec_proto import spec_from_add_model
from protos.names import text_problem


class AdminRpcs:
    registry: ModelRegistry

    def all_models(self) -> list[coordinator_pb2.ModelInfo]:
        raise NotImplementedError

    async def AddModel(self, request: coordinator_pb2.AddModelRequest, context: grpc.aio.ServicerContext
                       ) -> coordinator_pb2.ModelInfo:
        """Serves a model from the model cache; it answers once the model is serving, unavailable or pending."""
        try:
            spec = spec_from_add_model(request)
        except SpecProblem as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        model = ModelConfig.from_spec(spec)
        try:
            await self.registry.add(ModelRequest(model, spec.replicas))
        except RegistryError as e:
            await context.abort(e.code, str(e))
        return next(m for m in self.all_models() if m.name == spec.name)

    async def PreviewModel(self, request: coordinator_pb2.AddModelRequest, context: grpc.aio.ServicerContext
                           ) -> coordinator_pb2.PlacementPreview:
        try:
            model = ModelConfig.from_spec(spec_from_add_model(request))
            return await preview(self.registry, ModelRequest(model, request.replicas or 1), request.remeasure)
        except SpecProblem as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except RegistryError as e:
            await context.abort(e.code, str(e))
        except DoesNotFit as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"{request.name!r} cannot be placed now: {e}")
        except grpc.aio.AioRpcError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"a node could not be measured: {e.code().name}: "
                                f"{e.details()}")
        raise AssertionError("abort raises")  # pragma: no cover

    async def RemoveModel(self, request: coordinator_pb2.RemoveModelRequest, context: grpc.aio.ServicerContext
                          ) -> coordinator_pb2.RemoveModelResponse:
        timeout = request.timeout_seconds or self.registry.config.coordinator.drain_timeout_s
        try:
            freed = await self.registry.remove(request.name, timeout)
        except RegistryError as e:
            await context.abort(e.code, str(e))
        return coordinator_pb2.RemoveModelResponse(name=request.name, nodes=[
            coordinator_pb2.NodeMemory(node_id=n, rss_before=b, rss_after=a) for n, (b, a) in freed.items()])

    async def RegisterNode(self, request: coordinator_pb2.RegisterNodeRequest, context: grpc.aio.ServicerContext
                           ) -> coordinator_pb2.RegisterNodeResponse:
        """A node that joins (address normalised; aliases of known nodes and tokens in clear are refused)."""
        node_id = request.node_id
        if not 0 < len(node_id) <= 128 or "/" in node_id or text_problem(node_id):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "node_id must be 1-128 characters without '/' "
                                f"or control characters (it is part of DELETE /api/nodes/{{id}}), got {node_id!r}")
        try:
            added = self.registry.register_node(NodeConfig(request.node_id, request.address))
        except RegistryError as e:
            await context.abort(e.code, str(e))
        address = added.address if added else self.registry.nodes[request.node_id].address
        return coordinator_pb2.RegisterNodeResponse(added=added is not None, address=address)

    async def RemoveNode(self, request: coordinator_pb2.RemoveNodeRequest, context: grpc.aio.ServicerContext
                         ) -> coordinator_pb2.RemoveNodeResponse:
        """Forgets a node (FAILED_PRECONDITION naming the models on it; with drain they move off it first)."""
        try:
            node = await self.registry.remove_node(request.node_id, request.drain)
        except RegistryError as e:
            await context.abort(e.code, str(e))
        return coordinator_pb2.RemoveNodeResponse(address=node.address)

    async def RebalanceModel(self, request: coordinator_pb2.RebalanceRequest, context: grpc.aio.ServicerContext
                             ) -> coordinator_pb2.RebalanceResponse:
        """Moves a serving model to the plan made now, when it is faster (or ``force``); answers once it serves there
        and the old layout is unloaded, or why it stays."""
        if request.remeasure:
            for node_id in self.registry.nodes:
                self.registry.profiles.forget(node_id)
        try:
            outcome = await self.registry.rebalancer.rebalance(
                request.name, "asked for", min_gain=None if request.force else EXPLICIT_GAIN)
        except RegistryError as e:
            await context.abort(e.code, str(e))
        except grpc.aio.AioRpcError as e:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"a node could not be measured or loaded: "
                                f"{e.code().name}: {e.details()}")
        return outcome_to_proto(outcome)


def outcome_to_proto(o: Outcome) -> coordinator_pb2.RebalanceResponse:
    def layout(stages: Layout) -> list[coordinator_pb2.StageLayout]:
        return [coordinator_pb2.StageLayout(node_ids=nodes, layers=wire.layer_range_to_proto(r)) for nodes, r in stages]

    return coordinator_pb2.RebalanceResponse(
        name=o.model, changed=o.changed, reason=o.reason, trigger=o.trigger, before=layout(o.before),
        after=layout(o.after), before_tps=o.before_tps or 0.0, after_tps=o.after_tps or 0.0,
        expected_concurrency=o.streams, moved_requests=o.moved, seconds=o.seconds, generation=o.generation)
