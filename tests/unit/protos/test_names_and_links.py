"""Model names and sources are one visible folder of the model cache (config, API and coordinator share one rule),
and the cluster token never travels in plaintext beyond this machine (every client channel checks it)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from pydantic import ValidationError

from api.admin_schemas import AddModelRequest, RegisterNodeRequest
from api.clients import CoordinatorClient, TokenizerClient
from coordinator.registry import ModelRegistry, RegistryError
from coordinator.service import CoordinatorServicer
from protos import coordinator_pb2, security
from protos.addresses import canonical_address, is_local
from protos.config import ConfigError, NodeConfig, parse_config
from protos.names import folder_name_problem
from tests.unit.fakes import Aborted, FakeContext

BAD_NAMES = [".", "..", ".smol.partial", "a/b", "a\\b", "a\nb", "\x1b[31mred", "a\u202eb", "é" * 128]
GOOD_NAMES = ["smollm2-135m-instruct", "Qwen2.5-0.5B", "a..b", "x.partial", "modèle"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_folder_names_are_refused_everywhere(name: str) -> None:
    assert folder_name_problem(name)
    with pytest.raises(ConfigError, match=r"models\[0\]\.name"):
        parse_config({"models": [{"name": name}], "nodes": [{"id": "a", "address": "127.0.0.1:1"}]})
    for field in ("name", "source"):
        with pytest.raises(ValidationError) as e:
            AddModelRequest(**{"name": "ok", field: name})
        assert e.value.errors()[0]["loc"] == (field,) and "allowed" in str(e.value)


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_folder_names_pass(name: str) -> None:
    assert folder_name_problem(name) == ""
    AddModelRequest(name=name, source=name)


def test_config_sources_may_be_paths_but_not_control_characters() -> None:
    nodes = [{"id": "a", "address": "127.0.0.1:1"}]
    parse_config({"models": [{"name": "m", "source": "../checkpoints/model.gguf"}], "nodes": nodes})
    with pytest.raises(ConfigError, match=r"models\[0\]\.source"):
        parse_config({"models": [{"name": "m", "source": "x\ny"}], "nodes": nodes})


@pytest.mark.parametrize(("name", "source", "field"), [("..", "", "name"), ("ok", "/etc", "source"),
                                                       ("ok", ".ok.partial", "source"), ("a\rb", "", "name")])
def test_the_coordinator_refuses_bad_names_over_grpc(name: str, source: str, field: str) -> None:
    added: list[Any] = []

    async def add(request: Any) -> str:
        added.append(request)
        return "serving"

    registry = SimpleNamespace(engines={}, membership=None, add=add)
    servicer = CoordinatorServicer(registry)  # type: ignore[arg-type] - only AddModel's validation runs
    with pytest.raises(Aborted) as e:
        asyncio.run(servicer.AddModel(coordinator_pb2.AddModelRequest(name=name, source=source), FakeContext()))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and str(e.value).startswith(field)
    assert added == []


# ----- addresses and the cluster token --------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "canonical"), [
    ("LOCALHOST:050051", "localhost:50051"), ("127.1:50051", "127.0.0.1:50051"),
    ("[::ffff:127.0.0.1]:50051", "127.0.0.1:50051"), ("[0:0::1]:7", "[::1]:7"), ("Node-3.:9", "node-3:9"),
    ("10.233.0.2:50051", "10.233.0.2:50051")])
def test_addresses_have_one_spelling(given: str, canonical: str) -> None:
    assert canonical_address(given) == canonical


@pytest.mark.parametrize("bad", ["::1:5", "host", "host:0", "host:65536", "a b:5", "[nope]:5", "h:５"])
def test_bad_addresses_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        canonical_address(bad)
    with pytest.raises(ValidationError):
        RegisterNodeRequest(id="n", address=bad)


@pytest.fixture
def token_without_tls() -> Iterator[None]:
    security.install(security.ClusterSecurity(name="coordinator", token="secret"))
    try:
        yield
    finally:
        security.install(security.ClusterSecurity())


def test_loopback_is_local_and_the_rest_is_not() -> None:
    assert all(is_local(a) for a in ["127.0.0.1:1", "127.9.9.9:1", "localhost:1", "[::1]:1", "[::ffff:127.0.0.1]:1",
                                     "0.0.0.0:1", "unix:/tmp/s"])
    assert not any(is_local(a) for a in ["10.233.0.2:1", "node1:1", "example.com:1", "[2001:db8::1]:1", "garbage"])


def test_the_token_is_never_dialled_in_clear_beyond_loopback(token_without_tls: None) -> None:
    async def scenario() -> None:
        for make in (CoordinatorClient, TokenizerClient):  # API -> coordinator, API -> tokenizer
            with pytest.raises(security.TokenInClear, match="security.tls_ca"):
                make("10.233.0.2:50050")
            await make("127.0.0.1:50050").close()  # loopback is fine
        with pytest.raises(security.TokenInClear):
            security.channel("node1:50051")  # the blocking variant (launcher, tools)

    asyncio.run(scenario())


def test_with_tls_the_token_goes_anywhere() -> None:
    security.install(security.ClusterSecurity(token="secret", ca=b"ca", cert=b"c", key=b"k"))
    try:
        security.check_link("10.233.0.2:50051")
    finally:
        security.install(security.ClusterSecurity())


def test_the_coordinator_refuses_a_remote_node_and_a_remote_config(token_without_tls: None) -> None:
    async def scenario() -> None:
        config = parse_config({"model_name": "m", "nodes": [{"id": "a", "address": "127.0.0.1:47001"}]})
        registry = ModelRegistry(config)
        with pytest.raises(RegistryError) as e:
            registry.register_node(NodeConfig("far", "10.233.0.9:50051"))
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION and "enable TLS" in str(e.value)
        assert "far" not in registry.nodes
        await registry.membership.stop()
        remote = parse_config({"model_name": "m", "nodes": [{"id": "a", "address": "10.233.0.2:50051"}]})
        with pytest.raises(ConfigError, match="10.233.0.2:50051"):  # coordinator/__main__ exits with this message
            ModelRegistry(remote)

    asyncio.run(scenario())


@pytest.mark.parametrize("node_id", ["", "a/b", "a\nb", "x" * 129])
def test_node_ids_are_checked_over_grpc(node_id: str) -> None:
    registry = SimpleNamespace(engines={}, membership=None, register_node=lambda node: pytest.fail("registered"))
    servicer = CoordinatorServicer(registry)  # type: ignore[arg-type] - only RegisterNode's validation runs
    request = coordinator_pb2.RegisterNodeRequest(node_id=node_id, address="127.0.0.1:47009")
    with pytest.raises(Aborted) as e:
        asyncio.run(servicer.RegisterNode(request, FakeContext()))
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT and "node_id" in str(e.value)
