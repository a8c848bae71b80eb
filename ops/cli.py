"""The `shardline` command: `shardline up` starts the local cluster, `shardline models` prepares models."""

from __future__ import annotations

import sys


def main() -> None:
    commands = {"up": "ops.launcher", "models": "ops.models"}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit("usage: shardline {up,models} [options]   (shardline up --help for options)")
    import importlib

    module = importlib.import_module(commands[sys.argv[1]])
    module.main(sys.argv[2:])


if __name__ == "__main__":
    main()
