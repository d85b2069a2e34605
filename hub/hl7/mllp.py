"""MLLP framing (HL7 v2 Minimal Lower Layer Protocol, release 2): ``<SB> message <EB><CR>``.

:class:`FrameDecoder` is incremental and never raises on bad input: it turns a byte stream
into events the listener answers or logs:

* :class:`Frame` - a complete message;
* :class:`Oversized` - a frame longer than the limit; its first bytes are kept (to read MSH
  for the reject) and the rest is skipped until its end;
* :class:`Garbage` - bytes outside any frame (discarded; counted, never logged as content);
* :class:`Abandoned` - a frame cut short by a new start block (a half frame).

A missing ``<CR>`` after ``<EB>`` is tolerated.
"""

from __future__ import annotations

from dataclasses import dataclass

SB = 0x0B
EB = 0x1C
CR = 0x0D
HEAD = 4096  # bytes of an oversized frame kept to read its MSH


def frame(message: bytes | str, encoding: str = "utf-8") -> bytes:
    data = message.encode(encoding) if isinstance(message, str) else message
    return b"\x0b" + data + b"\x1c\x0d"


@dataclass(frozen=True)
class Frame:
    payload: bytes


@dataclass(frozen=True)
class Oversized:
    head: bytes  # the first HEAD bytes
    size: int


@dataclass(frozen=True)
class Garbage:
    size: int


@dataclass(frozen=True)
class Abandoned:
    size: int


Event = Frame | Oversized | Garbage | Abandoned

_OUT, _IN, _SKIP = 0, 1, 2


class FrameDecoder:
    def __init__(self, max_bytes: int = 1 << 20) -> None:
        self.max_bytes = max_bytes
        self._state = _OUT
        self._buf = bytearray()
        self._scan = 0  # where to resume looking for EB in _buf
        self._skipped = 0  # bytes of an oversized frame
        self._after_eb = False  # swallow one CR right after EB

    @property
    def in_frame(self) -> bool:
        """A frame has started and not ended (for the frame timeout)."""
        return self._state != _OUT

    @property
    def buffered(self) -> int:
        return self._skipped if self._state == _SKIP else len(self._buf)

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        view = memoryview(data)
        i, n = 0, len(data)
        while i < n:
            if self._after_eb:
                self._after_eb = False
                if view[i] == CR:
                    i += 1
                    continue
            if self._state == _OUT:
                start = data.find(b"\x0b", i)
                if start < 0:
                    events.append(Garbage(n - i))
                    break
                if start > i:
                    events.append(Garbage(start - i))
                self._state = _IN
                self._buf.clear()
                self._scan = 0
                i = start + 1
            elif self._state == _IN:
                end = data.find(b"\x1c", i)
                chunk_end = n if end < 0 else end
                restart = data.find(b"\x0b", i, chunk_end)
                if restart >= 0:  # a new frame starts before this one ended: drop the half frame
                    events.append(Abandoned(len(self._buf) + restart - i))
                    self._buf.clear()
                    i = restart + 1
                    continue
                if len(self._buf) + (chunk_end - i) > self.max_bytes:
                    total = len(self._buf) + (chunk_end - i)
                    take = min(max(0, HEAD - len(self._buf)), chunk_end - i)
                    self._buf += view[i : i + take]
                    del self._buf[HEAD:]
                    self._skipped = total
                    self._state = _SKIP
                    if end < 0:
                        break
                    events.append(Oversized(bytes(self._buf[:HEAD]), self._skipped))
                    self._reset()
                    self._after_eb = True
                    i = end + 1
                    continue
                self._buf += view[i:chunk_end]
                if end < 0:
                    break
                events.append(Frame(bytes(self._buf)))
                self._reset()
                self._after_eb = True
                i = end + 1
            else:  # _SKIP: inside an oversized frame
                end = data.find(b"\x1c", i)
                if end < 0:
                    self._skipped += n - i
                    break
                self._skipped += end - i
                events.append(Oversized(bytes(self._buf[:HEAD]), self._skipped))
                self._reset()
                self._after_eb = True
                i = end + 1
        return events

    def _reset(self) -> None:
        self._state = _OUT
        self._buf = bytearray()
        self._skipped = 0
