"""The pinned requirements of the package and some of its extras, read from pyproject.toml (standard library only).

The images install these before copying any source, so that a change of the code does not reinstall them:

    python requirements.py pyproject.toml node,coordinator > requirements.txt && pip install -r requirements.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    pending, seen = list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"{pyproject} has no extra {extra!r} (it has {', '.join(sorted(optional))})")
        seen.add(extra)
        for requirement in optional[extra]:
            if requirement.startswith(f"{project['name']}["):  # the package's own extras, by reference
                pending += requirement.split("[", 1)[1].rstrip("]").split(",")
            else:
                out.append(requirement)
    return list(dict.fromkeys(out))


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise SystemExit("usage: python requirements.py PYPROJECT EXTRA[,EXTRA...]")
    sys.stdout.write("".join(f"{r}\n" for r in requirements(Path(argv[0]), [e for e in argv[1].split(",") if e])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
