"""What a name must be to go into folder names, paths and log lines (model names, cache folders)."""

from __future__ import annotations

import unicodedata

FOLDER_NAME_MAX_BYTES = 255  # NAME_MAX: longer folder names cannot exist
FOLDER_NAME_RULE = ("a folder name of the model cache: at most 255 bytes as UTF-8, not '.' or '..', not starting "
                    "with '.', without '/', '\\' or control characters")


def text_problem(value: str) -> str:
    """Why ``value`` cannot go into names, paths and log lines ('' if it can): control, format or line-separator
    characters (they forge log lines and hide text)."""
    bad = next((ch for ch in value if unicodedata.category(ch)[0] == "C" or unicodedata.category(ch) in ("Zl", "Zp")),
               None)
    return "" if bad is None else f"must not contain control characters, got {bad!r}"


def folder_name_problem(value: str) -> str:
    """Why ``value`` cannot name a folder of the model cache ('' if it can); half-written conversions are
    '.name.partial'."""
    if not value:
        return "must not be empty"
    if len(value.encode("utf-8", "surrogatepass")) > FOLDER_NAME_MAX_BYTES:
        return f"is {len(value.encode('utf-8', 'surrogatepass'))} bytes as UTF-8; a folder name has at most 255"
    if value in (".", ".."):
        return f"must not be {value!r}"
    if value.startswith("."):
        return f"must not start with '.' (hidden and half-written '.partial' folders), got {value!r}"
    if "/" in value or "\\" in value:
        return f"must not contain '/' or '\\' (it is one folder of the model cache), got {value!r}"
    return text_problem(value)
