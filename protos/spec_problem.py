"""How a model spec's rule says no (protos/model_spec.py, protos/speculation_spec.py), and the integer rule."""

from __future__ import annotations


class SpecProblem(ValueError):
    """A field of a model spec breaks its rule. ``field`` is the spec's key (``nodes``), ``where`` what inside
    it (``[1]``), ``message`` what was wrong and what is allowed."""

    def __init__(self, field: str, message: str, where: str = "") -> None:
        self.field, self.where, self.message = field, where, message
        super().__init__(f"{field}{where} {message}")

    @property
    def detail(self) -> str:
        """The message without the field's name (for errors that name the field by themselves)."""
        return f"{self.where} {self.message}".strip()


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def one_of(field: str, value: object, allowed: tuple[str, ...], what: str = "") -> str:
    if value not in allowed:
        raise SpecProblem(field, f"must be one of {list(allowed)}{what}, got {value!r}")
    return value  # type: ignore[return-value]


def int_in(field: str, value: object, low: int, high: int, what: str = "") -> int:
    if not is_int(value) or not low <= value <= high:  # type: ignore[operator]
        raise SpecProblem(field, f"must be an integer in {low}..{high}{what}, got {value!r}")
    return value  # type: ignore[return-value]
