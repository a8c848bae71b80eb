"""Which node a registration names: addresses in their canonical spelling, one registration per endpoint."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import grpc

from protos import security
from protos.addresses import canonical_address, endpoint_key
from protos.config import NodeConfig


class RegistryError(ValueError):
    """A request the registry refuses; ``code`` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def endpoint(address: str) -> tuple[str, int]:
    """What two addresses share when they reach the same node (an unparsable configured one: itself)."""
    try:
        return endpoint_key(address)
    except ValueError:
        return address, 0


def check_new_node(nodes: Mapping[str, NodeConfig], node: NodeConfig) -> NodeConfig | None:
    """``node`` with its address in the canonical spelling, or None if it is known as it is. Refuses (RegistryError)
    a bad address, a token in clear, a known id at another address and an alias of a known node's address."""
    try:
        node = replace(node, address=canonical_address(node.address))
        security.check_link(node.address)
    except security.TokenInClear as e:
        raise RegistryError(grpc.StatusCode.FAILED_PRECONDITION, str(e)) from None
    except ValueError as e:
        raise RegistryError(grpc.StatusCode.INVALID_ARGUMENT, str(e)) from None
    key = endpoint(node.address)
    known = nodes.get(node.id)
    if known is not None:
        if endpoint(known.address) != key:
            raise RegistryError(grpc.StatusCode.ALREADY_EXISTS, (
                f"node {node.id!r} is already registered at {known.address}; remove it first "
                f"(DELETE /api/nodes/{node.id}) to register it at {node.address}"))
        return None
    other = next((n for n in nodes.values() if endpoint(n.address) == key), None)
    if other is not None:
        raise RegistryError(grpc.StatusCode.ALREADY_EXISTS, (
            f"address {node.address} reaches node {other.id!r} (registered at {other.address}); a node is "
            "registered once"))
    return node
