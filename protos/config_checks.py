"""The checks config.json parsing is made of (protos/config.py, protos/address_overrides.py): each error names the
field that is wrong (e.g. ``nodes[2].address``) and what is allowed."""

from __future__ import annotations

from typing import Any

from protos.model_spec import SpecProblem


class ConfigError(ValueError):
    """Invalid configuration; the message names the field."""


def require(cond: bool, field_name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"config field {field_name}: {msg}")


def non_empty_list(value: Any, field_name: str) -> list[Any]:
    """``value`` when it is a non-empty JSON list."""
    require(isinstance(value, list) and len(value) > 0, field_name, "must be a non-empty list")
    return value


def spec_error(problem: SpecProblem, where: str) -> ConfigError:
    """A model spec's problem (protos/model_spec.py) as the ConfigError of ``where`` (``models[0]``)."""
    return ConfigError(f"config field {where}.{problem.field}{problem.where}: {problem.message}")


def check_keys(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    require(not unknown, where, f"unknown key(s) {unknown}; allowed: {sorted(allowed)}")


def check_address(value: Any, field_name: str) -> str:
    require(isinstance(value, str) and ":" in value, field_name, f"must be 'host:port', got {value!r}")
    host, port = value.rsplit(":", 1)
    require(bool(host) and port.isdigit() and 0 < int(port) < 65536, field_name,
            f"must be 'host:port' with a port in 1..65535, got {value!r}")
    return value


def positive_number(obj: dict[str, Any], key: str, default: float, where: str) -> float:
    value = obj.get(key, default)
    require(isinstance(value, int | float) and not isinstance(value, bool) and value > 0, f"{where}.{key}",
            f"must be a positive number, got {value!r}")
    return float(value)


def counter(obj: dict[str, Any], key: str, where: str, what: str) -> int:
    """An integer >= 0 (0 = automatic / no limit, as ``what`` says)."""
    value = obj.get(key, 0)
    require(isinstance(value, int) and not isinstance(value, bool) and value >= 0, f"{where}.{key}",
            f"must be an integer >= 0 ({what}), got {value!r}")
    return value


PIPELINED_PREFILL = ("auto", "always", "never")  # coordinator.pipelined_prefill


ZERO_MEANS_OFF = {"replace_after_s", "metrics_port"}  # numbers of a section where 0 turns it off


def _section_value(key: str, name: str, value: Any, default: Any) -> Any:
    """One field of a section, checked against the type of its default."""
    where = f"{key}.{name}"
    if name == "address":
        return check_address(value, where)
    if name == "host":
        require(isinstance(value, str) and value != "", where, "must be a host name or IP")
    elif name == "pipelined_prefill":
        require(value in PIPELINED_PREFILL, where, f"must be one of {list(PIPELINED_PREFILL)}, got {value!r}")
    elif isinstance(default, bool):
        require(isinstance(value, bool), where, f"must be true or false, got {value!r}")
    elif isinstance(default, str):
        require(isinstance(value, str), where, f"must be a string, got {value!r}")
    elif isinstance(default, tuple):
        require(isinstance(value, list) and all(isinstance(x, str) and x for x in value), where,
                f"must be a list of non-empty strings, got {value!r}")
        return tuple(value)
    else:
        require(isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int)),
                where, f"must be a {type(default).__name__}, got {value!r}")
        if name in ZERO_MEANS_OFF:
            require(not isinstance(value, bool) and value >= 0, where, f"must be >= 0 (0 = off), got {value!r}")
        else:
            require(not isinstance(value, bool) and value > 0, where, f"must be positive, got {value!r}")
    return value


def parse_section(raw: dict[str, Any], key: str, cls: type) -> Any:
    """A flat section (coordinator, tokenizer, api, security, limits) into its dataclass ``cls``."""
    section = raw.get(key, {})
    require(isinstance(section, dict), key, "must be an object")
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    check_keys(section, set(fields), key)
    return cls(**{name: _section_value(key, name, value, fields[name].default) for name, value in section.items()})
