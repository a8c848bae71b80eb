"""Names of a model's shards on the nodes. A model's first layout uses its own name; each live re-placement
(coordinator/rebalance.py) loads the new layout beside the old under the next generation's name, ``name/g2``,
``name/g3``... so both can be held by one node at once. A model name never holds '/' (it is one folder of the model
cache), so no model's shards can be taken for another's."""

from __future__ import annotations

SEPARATOR = "/g"


def shard_name(model: str, generation: int) -> str:
    """What the nodes call generation ``generation`` (1 = the first layout) of ``model``'s shards."""
    return model if generation <= 1 else f"{model}{SEPARATOR}{generation}"


def served_model(shard: str) -> str:
    """The model a shard name belongs to."""
    return shard.split(SEPARATOR, 1)[0] if SEPARATOR in shard else shard


def generation_of(shard: str) -> int:
    _, _, tail = shard.partition(SEPARATOR)
    return int(tail) if tail.isdigit() else 1
