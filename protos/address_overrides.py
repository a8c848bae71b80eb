"""``SHARDLINE_ADDRESSES``: one config.json for every deployment, where services have other names than 127.0.0.1
(containers, pods, network namespaces); ports, models and everything else stay as written."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from protos.config_checks import ConfigError, check_address, require

if TYPE_CHECKING:
    from protos.config import NodeConfig

ADDRESSES_ENV = "SHARDLINE_ADDRESSES"


def _override_address(template: str, old: str, key: str, **fields: Any) -> str:
    """``host`` (keeps the port) or ``host:port``; ``{id}`` and ``{index}`` are filled in."""
    try:
        value = template.format(**fields)
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f"{ADDRESSES_ENV} entry {key}={template!r}: bad placeholder ({e}); allowed: {{id}}, "
                          f"{{index}}") from None
    if ":" not in value:
        value = f"{value}:{old.rsplit(':', 1)[1]}"
    return check_address(value, f"{ADDRESSES_ENV} entry {key}")


def apply_address_overrides(spec: str, nodes: tuple[NodeConfig, ...], sections: dict[str, Any]
                            ) -> tuple[tuple[NodeConfig, ...], dict[str, Any]]:
    """Rewrites addresses from ``SHARDLINE_ADDRESSES``: comma-separated ``key=value`` pairs.

    ``key`` is ``coordinator``, ``tokenizer``, ``nodes`` (every node) or a node id (that node; it wins over
    ``nodes``). ``value`` is a host (the configured port is kept) or ``host:port``, where ``{id}`` is the node's
    id and ``{index}`` its position in ``nodes`` (0-based, like a StatefulSet ordinal). Examples:
    compose ``coordinator=coordinator,tokenizer=tokenizer,nodes={id}``; Kubernetes
    ``coordinator=coordinator,tokenizer=tokenizer,nodes=shard-node-{index}.shard-node:50051``.
    """
    node_ids = [n.id for n in nodes]
    allowed = ["coordinator", "tokenizer", "nodes", *node_ids]
    pairs: dict[str, str] = {}
    for item in (x.strip() for x in spec.split(",")):
        if not item:
            continue
        key, sep, value = (x.strip() for x in item.partition("="))
        require(sep == "=" and key != "" and value != "", ADDRESSES_ENV,
                 f"entries must be key=host or key=host:port, got {item!r}")
        require(key in allowed, ADDRESSES_ENV, f"unknown key {key!r}; allowed: {allowed}")
        require(key not in pairs, ADDRESSES_ENV, f"{key!r} is given twice")
        pairs[key] = value
    new_nodes = []
    for i, n in enumerate(nodes):
        template = pairs.get(n.id, pairs.get("nodes"))
        if template is not None:
            key = n.id if n.id in pairs else "nodes"
            n = replace(n, address=_override_address(template, n.address, key, id=n.id, index=i))
        new_nodes.append(n)
    addrs = [n.address for n in new_nodes]
    require(len(set(addrs)) == len(addrs), ADDRESSES_ENV, f"node addresses must stay unique, got {addrs}")
    sections = dict(sections)
    for key in ("coordinator", "tokenizer"):
        if key in pairs:
            sec = sections[key]
            sections[key] = replace(sec, address=_override_address(pairs[key], sec.address, key, id=key, index=0))
    return tuple(new_nodes), sections
