"""What a LoadShard request asks for, checked before anything is loaded: the checkpoint's shape (read through
protos.hf_config), the layers, dtype, device, KV budget and the bytes it will hold."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from protos import shard_pb2, tensors, wire
from protos.data_structures import LayerRange
from protos.hf_config import HfConfigError, ModelNotPrepared, read_hf_config
from protos.model_spec import DEFAULT_DEVICE, DEFAULT_QUANTIZATION, SpecProblem, check_dtype, check_quantization
from shard_node.architectures import ModelSpec, UnsupportedArchitecture
from shard_node.host import pick_device
from shard_node.quantize import kernel_description, quantize_shard
from shard_node.shard_model import ShardModel


@dataclass(frozen=True)
class ShardSize:
    weight_bytes: int
    layer_weight_bytes: int
    kv_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes


def shard_size(spec: ModelSpec, layers: LayerRange, dtype: torch.dtype, kv_cache_tokens: int,
               quantization: str = DEFAULT_QUANTIZATION) -> ShardSize:
    """Exact bytes a shard would hold, from its modules built (and quantized) on the meta device."""
    model = ShardModel.on_meta(spec, layers).to(dtype)  # as loaded: in dtype, then quantized
    quantize_shard(model, quantization)
    elem = torch.empty(0, dtype=dtype).element_size()
    kv = kv_cache_tokens * 2 * layers.length * spec.num_kv_heads * spec.head_dim * elem
    return ShardSize(model.weight_bytes(), model.layer_weight_bytes(), kv)


class LoadRefused(Exception):
    """A LoadShard that cannot go ahead: the gRPC status code and a message naming what is wrong."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class LoadPlan:
    model: str
    model_dir: Path
    spec: ModelSpec
    layers: LayerRange
    dtype_name: str
    device: torch.device
    kv_tokens: int
    size: ShardSize
    quantization: str = DEFAULT_QUANTIZATION

    @property
    def dtype(self) -> torch.dtype:
        return tensors.DTYPES[self.dtype_name]

    def dry_run_info(self) -> shard_pb2.ShardInfo:
        """What the shard would hold, without loading it."""
        spec, layers, size = self.spec, self.layers, self.size
        return shard_pb2.ShardInfo(
            model=self.model, layers=wire.layer_range_to_proto(layers), num_layers_total=spec.num_layers,
            dtype=self.dtype_name, device=str(self.device), architecture=spec.model_type,
            has_embedding=layers.start == 0, has_head=layers.end == spec.num_layers, weight_bytes=size.weight_bytes,
            layer_weight_bytes=size.layer_weight_bytes, kv_capacity_tokens=self.kv_tokens,
            kv_capacity_bytes=size.kv_bytes, hidden_size=spec.hidden_size, vocab_size=spec.vocab_size,
            quantization=self.quantization, kernel=kernel_description(self.quantization, self.device))


def plan_load(request: shard_pb2.LoadShardRequest, default_kv_tokens: int) -> LoadPlan:
    """The checked request; LoadRefused (INVALID_ARGUMENT, or NOT_FOUND for a model that is not prepared)."""
    if not request.model:
        raise LoadRefused(grpc.StatusCode.INVALID_ARGUMENT, "model name is empty")
    model_dir = Path(request.model_path)
    try:
        dtype_name = check_dtype(request.dtype)
        quantization = check_quantization(request.quantization or DEFAULT_QUANTIZATION)
        spec = ModelSpec.from_hf_config(read_hf_config(model_dir))
        layers = wire.layer_range_from_proto(request.layers)
        if layers.end > spec.num_layers:
            raise ValueError(f"layer range {layers} is outside the model's {spec.num_layers} layers")
        device = pick_device(request.device or DEFAULT_DEVICE)
    except ModelNotPrepared as e:
        raise LoadRefused(grpc.StatusCode.NOT_FOUND, str(e)) from None
    except (SpecProblem, HfConfigError, UnsupportedArchitecture, ValueError) as e:
        raise LoadRefused(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
    kv_tokens = request.kv_cache_tokens or default_kv_tokens
    size = shard_size(spec, layers, tensors.DTYPES[dtype_name], kv_tokens, quantization)
    return LoadPlan(request.model, model_dir, spec, layers, dtype_name, device, kv_tokens, size, quantization)
