"""Links between services with mutual TLS and a cluster token (certificates from `python -m ops.certs`, as
`make certs` runs it): the whole stack serves through them, and a client without the token, with a wrong one,
without a certificate, with a certificate of another CA, or in plaintext is refused on every internal service."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import pytest

from ops.certs import make_all
from protos import coordinator_pb2, coordinator_pb2_grpc, shard_pb2, shard_pb2_grpc, tokenizer_pb2, tokenizer_pb2_grpc
from protos.config import parse_config
from protos.security import TOKEN_KEY
from tests.conftest import ROOT, RunningCluster, start_cluster, tiny_cluster_config

pytestmark = pytest.mark.cluster
MODEL = "tiny-secure"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, smol_dir: Path) -> Iterator[tuple[RunningCluster, Path]]:
    work = tmp_path_factory.mktemp("security")
    config = tiny_cluster_config(work, smol_dir, MODEL, ["node1", "node2"], kv_tokens=2048, seed=11)
    certs = work / "certs"
    r = subprocess.run([sys.executable, "-m", "ops.certs", "--config", "-", "--out", str(certs)],
                       capture_output=True, text=True, cwd=ROOT)  # no such config: the CLI must say so
    assert r.returncode != 0 and "config" in r.stderr
    make_all(parse_config(config), certs, [])
    config["security"] = {"tls_ca": f"{certs}/ca.pem", "tls_cert": f"{certs}/{{name}}.pem",
                          "tls_key": f"{certs}/{{name}}-key.pem", "tls_mutual": True,
                          "cluster_token_file": f"{certs}/cluster-token"}
    cluster = start_cluster(config, work / "cluster")
    try:
        yield cluster, certs
    finally:
        cluster.stop()


def _creds(certs: Path, name: str = "client", with_cert: bool = True) -> grpc.ChannelCredentials:
    ca = (certs / "ca.pem").read_bytes()
    if not with_cert:
        return grpc.ssl_channel_credentials(ca)
    return grpc.ssl_channel_credentials(ca, (certs / f"{name}-key.pem").read_bytes(),
                                        (certs / f"{name}.pem").read_bytes())


def _token(certs: Path) -> tuple[tuple[str, str], ...]:
    return ((TOKEN_KEY, (certs / "cluster-token").read_text().strip()),)


def _calls(cluster: RunningCluster) -> list[tuple[str, object]]:
    """(address, a function(channel, metadata) making one harmless RPC) for each internal service."""
    return [
        (cluster.coordinator_address, lambda ch, md: coordinator_pb2_grpc.CoordinatorStub(ch).ListModels(
            coordinator_pb2.ListModelsRequest(), metadata=md, timeout=10)),
        (cluster.tokenizer_address, lambda ch, md: tokenizer_pb2_grpc.TokenizerStub(ch).Encode(
            tokenizer_pb2.EncodeRequest(model=MODEL, text="hi"), metadata=md, timeout=10)),
        (cluster.node_address("node1"), lambda ch, md: shard_pb2_grpc.ShardNodeStub(ch).Info(
            shard_pb2.InfoRequest(), metadata=md, timeout=10)),
        (cluster.node_address("node2"), lambda ch, md: list(shard_pb2_grpc.ShardNodeStub(ch).Handoff(  # node to node
            iter([shard_pb2.HandoffRequest(model=MODEL, pipeline_id="probe", batch_id=1, want_ack=True)]),
            metadata=md, timeout=10))),
    ]


def test_the_stack_serves_over_mutual_tls_with_the_token(secured: tuple[RunningCluster, Path]) -> None:
    cluster, certs = secured
    r = httpx.post(f"{cluster.api_url}/api/model/process", json={"text": "Hello there", "max_tokens": 8,
                                                                "chat": False}, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] == 8
    for address, call in _calls(cluster):
        with grpc.secure_channel(address, _creds(certs)) as ch:
            call(ch, _token(certs))  # raises if refused
    log = (cluster.run_dir / "coordinator.log").read_text()
    assert "mutual TLS, cluster token required" in log
    assert "cannot hand over" not in (cluster.run_dir / "node1.log").read_text()  # node1 -> node2 went over TLS


@pytest.mark.parametrize("case", ["no token", "wrong token"])
def test_a_client_without_the_right_token_is_refused(secured: tuple[RunningCluster, Path], case: str) -> None:
    cluster, certs = secured
    metadata = () if case == "no token" else ((TOKEN_KEY, "not-the-token"),)
    for address, call in _calls(cluster):
        with grpc.secure_channel(address, _creds(certs)) as ch, pytest.raises(grpc.RpcError) as e:
            call(ch, metadata)
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, (address, e.value)
        assert "cluster token" in e.value.details()


@pytest.mark.parametrize("case", ["plaintext", "no client certificate", "certificate of another CA"])
def test_a_client_without_the_right_certificate_is_refused(secured: tuple[RunningCluster, Path], case: str,
                                                           tmp_path: Path) -> None:
    cluster, certs = secured
    if case == "certificate of another CA":
        make_all(parse_config(cluster.config), tmp_path / "other", [])
        creds = grpc.ssl_channel_credentials((certs / "ca.pem").read_bytes(),
                                             (tmp_path / "other" / "client-key.pem").read_bytes(),
                                             (tmp_path / "other" / "client.pem").read_bytes())
    for address, call in _calls(cluster):
        if case == "plaintext":
            ch = grpc.insecure_channel(address)
        elif case == "no client certificate":
            ch = grpc.secure_channel(address, _creds(certs, with_cert=False))
        else:
            ch = grpc.secure_channel(address, creds)
        with ch, pytest.raises(grpc.RpcError) as e:
            call(ch, _token(certs))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE, (address, e.value)


def test_health_checks_need_no_token_but_tls(secured: tuple[RunningCluster, Path]) -> None:
    """The container HEALTHCHECK (python -m ops.healthcheck) works against a secured service."""
    cluster, _ = secured
    for role, address in (("coordinator", cluster.coordinator_address), ("tokenizer", cluster.tokenizer_address),
                          ("node", cluster.node_address("node2"))):
        r = subprocess.run([sys.executable, "-m", "ops.healthcheck", role, "--config", str(cluster.config_path),
                            "--address", address], capture_output=True, text=True, cwd=ROOT, timeout=60,
                           env={"SHARDLINE_NODE_ID": "node2", "PATH": "/usr/bin:/bin"})
        assert r.returncode == 0, (role, r.stderr)
