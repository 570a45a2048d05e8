"""Bounds on the shape of a pushed manifest, checked before any JSON parser sees it.

A manifest is a stranger's JSON: nesting a few thousand levels deep makes Python's parser
raise RecursionError, and a manifest that lists a hundred thousand layers is a cheap way
to make every later walk of it expensive. Both are refused as `400 MANIFEST_INVALID`, with
the bound that was passed named in the message.
"""

from __future__ import annotations

import json
import re

from srepo_server.http_store import ApiError

MAX_DEPTH = 32  # a real manifest is 4 deep (manifest > layers > descriptor > annotations)
MAX_ENTRIES = 10_000  # layers of a manifest or entries of an index

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET = re.compile(rb"[^\[\]{}]")
_INNERMOST = re.compile(rb"\{\}|\[\]")


def json_depth_exceeds(data: bytes, limit: int) -> bool:
    """True when the brackets of `data` nest deeper than `limit` (or do not balance).

    Strings are removed first (a bracket inside one does not count), then innermost
    pairs are peeled off one level per pass: each pass is one C-speed regex, and there
    are at most `limit` of them."""
    brackets = _NOT_BRACKET.sub(b"", _STRING.sub(b"", data))
    for _ in range(limit):
        if not brackets:
            return False
        brackets = _INNERMOST.sub(b"", brackets)
    return bool(brackets)


def check_manifest_shape(data: bytes, *, max_depth: int = MAX_DEPTH,
                         max_entries: int = MAX_ENTRIES) -> None:
    """Raise ApiError(400, MANIFEST_INVALID) when `data` is too deep or lists too much."""
    if json_depth_exceeds(data, max_depth):
        raise ApiError(400, "MANIFEST_INVALID",
                       f"manifest JSON nests deeper than {max_depth} levels (or its brackets "
                       "do not balance)")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, "MANIFEST_INVALID", f"manifest is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ApiError(400, "MANIFEST_INVALID", "manifest is not a JSON object")
    for key in ("layers", "manifests"):
        entries = doc.get(key)
        if isinstance(entries, list) and len(entries) > max_entries:
            raise ApiError(400, "MANIFEST_INVALID",
                           f"manifest lists {len(entries)} {key} (at most {max_entries})")
