"""Detach keys as docker has them: `--detach-keys "ctrl-p,ctrl-q"` (the default), a sequence of
`ctrl-<key>` or single characters. Keys that start the sequence are held back until the next
key shows whether the whole sequence was typed: if it was, the session detaches and nothing of
it reaches the container; if not, the held keys go to the container with that next key, in
order (so ctrl-p alone still recalls history in the shell inside).
"""

from __future__ import annotations

from common.errors import UsageError

DEFAULT = "ctrl-p,ctrl-q"
_CTRL_SPECIALS = {"@": 0, "[": 27, "\\": 28, "]": 29, "^": 30, "_": 31}


def parse(text: str) -> bytes:
    """"ctrl-p,ctrl-q" -> b"\\x10\\x11"."""
    out = bytearray()
    for part in (text or "").split(","):
        key = part.strip()
        low = key.lower()
        if low.startswith("ctrl-") and len(key) == 6:
            ch = low[5]
            if "a" <= ch <= "z":
                out.append(ord(ch) - ord("a") + 1)
                continue
            if ch in _CTRL_SPECIALS:
                out.append(_CTRL_SPECIALS[ch])
                continue
        elif len(key) == 1 and 32 <= ord(key) < 127:
            out.append(ord(key))
            continue
        raise UsageError(f"--detach-keys {text!r}: {key!r} is not a key (use ctrl-a..ctrl-z, "
                         "ctrl-@, ctrl-[, ctrl-\\, ctrl-], ctrl-^, ctrl-_ or one character, "
                         "separated by commas)")
    if not out:
        raise UsageError(f"--detach-keys {text!r}: no keys")
    return bytes(out)


class DetachMatcher:
    """Feed it what the user typed; it says what to send on and whether to detach."""

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """(bytes for the container, True when the sequence is complete)."""
        out = bytearray()
        for b in data:
            cand = self.held + bytes([b])
            if self.keys.startswith(cand):
                if cand == self.keys:
                    self.held = b""
                    return bytes(out), True
                self.held = cand
                continue
            # not the sequence: what was held goes on, then look at this key afresh
            out += self.held
            self.held = b""
            if self.keys.startswith(bytes([b])):
                self.held = bytes([b])
            else:
                out.append(b)
        return bytes(out), False


DETACH_KEYS = parse(DEFAULT)      # ctrl-p ctrl-q, as docker
