"""JSON-constrained decoding: an incremental JSON syntax checker that tells which next text
keeps the reply a valid JSON prefix, and how to close it where it stops."""

from __future__ import annotations

JSON_CANDIDATES = 64
"""In JSON mode, how many of the likeliest tokens to try before giving up and closing."""
_JSON_MAX_BLANKS = 24
"""Longest run of whitespace allowed between JSON tokens (tiny models can loop on newlines)."""


class JsonGuide:
    """Accepts only text that stays a valid JSON prefix; remembers the last closable point."""

    def __init__(self, prefill: str) -> None:
        self.state = JsonState()
        self.text = ""
        self.good_len = 0
        self.good_suffix = ""
        if not self.advance(prefill):
            raise ValueError(f"JSON prefill {prefill!r} is not a JSON prefix")

    def advance(self, text: str, *, pending_bytes: bool = False) -> bool:
        """Move to ``text`` (an extension of the current text) if it is still valid JSON.

        ``pending_bytes``: an incomplete UTF-8 character follows ``text``, which
        can only be valid inside a string.
        """
        if not text.startswith(self.text):
            return False
        state = self.state.copy()
        if not state.feed(text[len(self.text) :]) or (pending_bytes and state.mode != "string"):
            return False
        self.state, self.text = state, text
        suffix = state.completion()
        if suffix is not None:
            self.good_len, self.good_suffix = len(text), suffix
        return True


_LITERALS = {"t": "rue", "f": "alse", "n": "ull"}
NUMBER_ENDS = {"zero", "int", "frac", "exp_int"}
BLANKS = " \t\n\r"


class JsonState:
    """Incremental JSON syntax checker (a small pushdown automaton), one char at a time.

    ``completion()`` gives the shortest text that closes what is open, or None
    where no simple closing exists (a dangling key, an escape, a bare ``-``).
    """

    __slots__ = ("stack", "mode", "key", "escape", "number", "literal", "blanks")

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.mode = "value"
        self.key = False
        self.escape = 0  # 1 after a backslash, 2..5 inside \uXXXX
        self.number = ""
        self.literal = ""
        self.blanks = 0

    def copy(self) -> JsonState:
        other = JsonState.__new__(JsonState)
        for name in self.__slots__:
            setattr(other, name, getattr(self, name))
        other.stack = list(self.stack)
        return other

    @property
    def done(self) -> bool:
        return self.mode == "done"

    def feed(self, text: str) -> bool:
        return all(self._step(char) for char in text)

    def completion(self) -> str | None:
        closers = "".join("}" if c == "{" else "]" for c in reversed(self.stack))
        mode = self.mode
        if mode == "done":
            return ""
        if mode in ("after", "first_key", "first_value"):
            return closers
        if mode == "string":
            return '"' + closers if not self.key and self.escape == 0 else None
        if mode == "number":
            return closers if self.number in NUMBER_ENDS else None
        if mode == "literal":
            return self.literal + closers
        return None

    def _step(self, char: str) -> bool:
        mode = self.mode
        if mode == "string":
            return self._string_step(char)
        if mode == "number":
            following = number_next(self.number, char)
            if following is not None:
                self.number = following
                return True
            if self.number not in NUMBER_ENDS:
                return False
            self._end_value()
            mode = self.mode
        if mode == "literal":
            if char != self.literal[0]:
                return False
            self.literal = self.literal[1:]
            if not self.literal:
                self._end_value()
            return True
        if mode == "done":
            return False
        if char in BLANKS:
            self.blanks += 1
            return self.blanks <= _JSON_MAX_BLANKS
        self.blanks = 0
        if mode in ("value", "first_value"):
            if mode == "first_value" and char == "]":
                return self._close()
            return self._start_value(char)
        if mode in ("first_key", "key"):
            if mode == "first_key" and char == "}":
                return self._close()
            if char == '"':
                self.mode, self.key = "string", True
                return True
            return False
        if mode == "colon":
            if char == ":":
                self.mode = "value"
                return True
            return False
        # mode == "after": a value just ended inside a container
        if char == ",":
            self.mode = "key" if self.stack[-1] == "{" else "value"
            return True
        if char == ("}" if self.stack[-1] == "{" else "]"):
            return self._close()
        return False

    def _string_step(self, char: str) -> bool:
        if self.escape == 1:
            if char == "u":
                self.escape = 2
            elif char in '"\\/bfnrt':
                self.escape = 0
            else:
                return False
        elif self.escape >= 2:
            if char not in "0123456789abcdefABCDEF":
                return False
            self.escape = self.escape + 1 if self.escape < 5 else 0
        elif char == "\\":
            self.escape = 1
        elif char == '"':
            if self.key:
                self.mode, self.key = "colon", False
            else:
                self._end_value()
        elif ord(char) < 0x20:
            return False
        return True

    def _start_value(self, char: str) -> bool:
        if char in "{[":
            self.stack.append(char)
            self.mode = "first_key" if char == "{" else "first_value"
        elif char == '"':
            self.mode, self.key = "string", False
        elif char == "-":
            self.mode, self.number = "number", "sign"
        elif char in "0123456789":
            self.mode, self.number = "number", "zero" if char == "0" else "int"
        elif char in _LITERALS:
            self.mode, self.literal = "literal", _LITERALS[char]
        else:
            return False
        return True

    def _close(self) -> bool:
        self.stack.pop()
        self._end_value()
        return True

    def _end_value(self) -> None:
        self.mode = "after" if self.stack else "done"


def number_next(state: str, char: str) -> str | None:
    digit = char in "0123456789"
    if state == "sign":
        return "zero" if char == "0" else "int" if digit else None
    if state in ("zero", "int"):
        if digit and state == "int":
            return "int"
        return "dot" if char == "." else "exp" if char in "eE" else None
    if state in ("dot", "frac"):
        return "frac" if digit else "exp" if state == "frac" and char in "eE" else None
    if state == "exp":
        return "exp_int" if digit else "exp_sign" if char in "+-" else None
    if state in ("exp_sign", "exp_int"):
        return "exp_int" if digit else None
    return None
