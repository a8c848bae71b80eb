"""The cluster and admin routes through the app with a fake backend: /api/cluster, /api/models (list, add,
remove), /api/nodes (register, remove), with the coordinator's refusals as HTTP statuses."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from api.routes.cluster import LAUNCHER_STATE_ENV
from protos import coordinator_pb2
from tests.unit.api.conftest import FakeApi
from tests.unit.api.fakes import MODEL, model_info

ADD = {"name": "tiny", "source": "tiny-src", "replicas": 2, "nodes": ["n1", ["n2", "n3"]], "layer_ranges": [[0, 1],
                                                                                                        [1, 2]]}


def test_cluster_lists_nodes_models_replicas_and_launcher_processes(api: FakeApi, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "children.json"
    state.write_text(json.dumps({"children": [{"name": "n1", "state": "running", "restarts": 0}]}))
    monkeypatch.setenv(LAUNCHER_STATE_ENV, str(state))
    r = api.client.get("/api/cluster")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(n["id"], n["state"], n["last_seen"]) for n in body["nodes"]] == [("n1", "ready", None)]
    assert body["models"][0]["name"] == MODEL and body["models"][0]["replicas"][0]["layers"] == [0, 2]
    assert body["processes"] == [{"name": "n1", "state": "running", "restarts": 0, "exit_code": None}]


def test_cluster_gives_each_model_its_recent_traffic(api: FakeApi) -> None:
    traffic = coordinator_pb2.TrafficHistory(model=MODEL, interval_s=2.0)
    traffic.stages.add(node_id="n1", busy_share=[0.0, 0.123456, 1.0])
    traffic.links.add(src="coordinator", dst="n1", bytes_per_s=[0.0, 1234.567, 10.0], rtt_ms=[-1.0, 0.25, 3.14159])
    api.coordinator.traffic = [traffic, coordinator_pb2.TrafficHistory(model="not-listed", interval_s=2.0)]
    api.coordinator.models_served["quiet"] = model_info("quiet")
    r = api.client.get("/api/cluster")
    assert r.status_code == 200, r.text
    models = {m["name"]: m for m in r.json()["models"]}
    assert models[MODEL]["history"] == {
        "interval_s": 2.0,
        "stages": [{"node": "n1", "busy_share": [0.0, 0.1235, 1.0]}],
        "links": [{"src": "coordinator", "dst": "n1", "bytes_per_s": [0.0, 1234.6, 10.0],
                   "rtt_ms": [None, 0.25, 3.142]}]}
    assert models["quiet"]["history"] is None  # no micro-batch yet
    assert "not-listed" not in models


def test_cluster_without_a_launcher_lists_no_processes(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LAUNCHER_STATE_ENV, raising=False)
    assert api.client.get("/api/cluster").json()["processes"] == []


def test_cluster_with_the_coordinator_down_is_503(api: FakeApi) -> None:
    api.coordinator.list_error = grpc.StatusCode.UNAVAILABLE
    r = api.client.get("/api/cluster")
    assert r.status_code == 503 and "the coordinator (" in r.json()["error"]["message"], r.text


def test_list_models_gives_states_placement_and_node_memory(api: FakeApi) -> None:
    api.coordinator.models_served["p"] = model_info("p", state="pending", ready=False, reason="does not fit")
    r = api.client.get("/api/models")
    assert r.status_code == 200, r.text
    models = {m["name"]: m for m in r.json()["models"]}
    assert models["p"]["state"] == "pending" and models["p"]["reason"] == "does not fit"
    assert models[MODEL]["placement"][0] == {"stage": 0, "layers": [0, 2], "node": "n1", "state": "ready",
                                             "weight_bytes": 1000, "kv_capacity_tokens": 1024}
    assert r.json()["nodes"] == [{"node": "n1", "budget_bytes": None, "used_bytes": 1000, "rss_bytes": 10}]


def test_add_model_sends_the_placement_and_answers_201(api: FakeApi) -> None:
    r = api.client.post("/api/models", json=ADD)
    assert r.status_code == 201 and r.json()["name"] == "tiny" and r.json()["state"] == "serving", r.text
    name, request = api.coordinator.admin_calls[0]
    assert name == "add_model" and request.source == "tiny-src" and request.replicas == 2
    assert [list(s.node_ids) for s in request.stages] == [["n1"], ["n2", "n3"]]
    assert [(r.start, r.end) for r in request.layer_ranges] == [(0, 1), (1, 2)]


def test_a_pending_model_is_202(api: FakeApi, monkeypatch: pytest.MonkeyPatch) -> None:
    async def pending(request: object, timeout_s: float) -> object:
        return model_info("big", state="pending", ready=False, reason="waits for memory")

    monkeypatch.setattr(api.coordinator, "add_model", pending)
    r = api.client.post("/api/models", json={"name": "big"})
    assert r.status_code == 202 and r.json()["reason"] == "waits for memory", r.text


@pytest.mark.parametrize(("code", "status"), [(grpc.StatusCode.ALREADY_EXISTS, 409), (grpc.StatusCode.NOT_FOUND, 404),
                                              (grpc.StatusCode.ABORTED, 409), (grpc.StatusCode.INVALID_ARGUMENT, 400)])
def test_add_model_refusals_keep_their_status_and_message(api: FakeApi, code: grpc.StatusCode, status: int) -> None:
    api.coordinator.admin_error, api.coordinator.admin_details = code, f"refused: {code.name}"
    r = api.client.post("/api/models", json={"name": "tiny"})
    assert r.status_code == status and r.json()["error"]["message"] == f"refused: {code.name}", r.text


def test_add_model_checks_its_body(api: FakeApi) -> None:
    r = api.client.post("/api/models", json={"name": "tiny", "dtype": "int3"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "dtype", r.text
    assert api.coordinator.admin_calls == []


def test_remove_model_drains_with_the_default_or_given_timeout(api: FakeApi) -> None:
    r = api.client.delete(f"/api/models/{MODEL}")
    assert r.status_code == 200, r.text
    assert r.json() == {"name": MODEL, "removed": True,
                        "nodes": [{"node": "n1", "rss_before_bytes": 200, "rss_after_bytes": 100}]}
    drain = api.app.state.config.coordinator.drain_timeout_s
    assert api.coordinator.admin_calls == [("remove_model", (MODEL, drain))]
    api.client.delete(f"/api/models/{MODEL}", params={"timeout_s": 5})
    assert api.coordinator.admin_calls[-1] == ("remove_model", (MODEL, 5.0))
    assert api.client.delete(f"/api/models/{MODEL}", params={"timeout_s": 0}).status_code == 422


def test_removing_an_unknown_model_is_404(api: FakeApi) -> None:
    api.coordinator.admin_error, api.coordinator.admin_details = grpc.StatusCode.NOT_FOUND, "model 'x' is not served"
    r = api.client.delete("/api/models/x")
    assert r.status_code == 404 and r.json()["error"]["message"] == "model 'x' is not served", r.text


def test_register_node(api: FakeApi) -> None:
    r = api.client.post("/api/nodes", json={"id": "n2", "address": "127.0.0.1:7002"})
    assert r.status_code == 200 and r.json() == {"id": "n2", "added": True}, r.text
    assert api.coordinator.admin_calls == [("register_node", ("n2", "127.0.0.1:7002"))]


def test_registering_a_known_node_under_a_new_id_is_409(api: FakeApi) -> None:
    api.coordinator.admin_error, api.coordinator.admin_details = grpc.StatusCode.ALREADY_EXISTS, "an alias of n1"
    r = api.client.post("/api/nodes", json={"id": "n2", "address": "127.0.0.1:1"})
    assert r.status_code == 409 and r.json()["error"]["type"] == "conflict_error", r.text


def test_remove_node(api: FakeApi) -> None:
    r = api.client.delete("/api/nodes/n1")
    assert r.status_code == 200 and r.json() == {"id": "n1", "address": "127.0.0.1:9", "removed": True}, r.text
    assert api.client.delete("/api/nodes/n2?drain=true").status_code == 200
    assert api.coordinator.admin_calls == [("remove_node", ("n1", False)), ("remove_node", ("n2", True))]


@pytest.mark.parametrize(("code", "status"), [(grpc.StatusCode.FAILED_PRECONDITION, 409),
                                              (grpc.StatusCode.NOT_FOUND, 404)])
def test_removing_a_node_in_use_is_409_and_an_unknown_one_404(api: FakeApi, code: grpc.StatusCode,
                                                              status: int) -> None:
    api.coordinator.admin_error, api.coordinator.admin_details = code, "node n1 holds a shard of m"
    r = api.client.delete("/api/nodes/n1")
    assert r.status_code == status and r.json()["error"]["message"] == "node n1 holds a shard of m", r.text


def test_rebalance_answers_the_move(api: FakeApi) -> None:
    r = api.client.post("/api/models/m/rebalance", json={"force": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["changed"] and body["generation"] == 2 and body["moved_requests"] == 3
    assert body["before"] == [{"nodes": ["n1"], "layers": [0, 15]}, {"nodes": ["n2"], "layers": [15, 30]}]
    assert body["after"] == [{"nodes": ["n3"], "layers": [0, 30]}]
    assert body["predicted_tps_before"] == 10.0 and body["predicted_tps_after"] == 20.0
    [(call, sent)] = api.coordinator.admin_calls
    assert call == "rebalance_model" and sent.name == "m" and sent.force and not sent.remeasure
    assert api.client.post("/api/models/m/rebalance", json={}).status_code == 200  # the defaults
    assert api.client.post("/api/models/m/rebalance").status_code == 415  # a body-less cross-site form cannot


@pytest.mark.parametrize(("code", "status"), [(grpc.StatusCode.FAILED_PRECONDITION, 409),
                                              (grpc.StatusCode.NOT_FOUND, 404), (grpc.StatusCode.UNAVAILABLE, 503)])
def test_rebalance_errors(api: FakeApi, code: grpc.StatusCode, status: int) -> None:
    api.coordinator.admin_error, api.coordinator.admin_details = code, "model 'm' cannot be re-placed now: loading"
    r = api.client.post("/api/models/m/rebalance", json={})
    assert r.status_code == status and "re-placed" in r.json()["error"]["message"], r.text
    assert api.client.post("/api/models/m/rebalance", json={"force": "maybe"}).status_code in (400, 422)
