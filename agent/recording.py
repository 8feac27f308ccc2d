"""A support session's asciicast v2 recording, written by the agent and sent up in `recording_chunk` pieces.

One `Recorder` per session (not per shell): a new shell after an exit goes on in the same recording.
Format: docs/sessions.md "Recording"; each chunk is whole NDJSON lines, seq 0 starts with the header.
"""

from __future__ import annotations

import codecs
import json
import time
from collections import deque
from collections.abc import Callable, Iterator

from agent import protocol

TERM = "xterm-256color"
CHUNK_BYTES = 64 * 1024  # a chunk's data, UTF-8 bytes: far below the frame limit even once JSON-escaped
MAX_LINE_BYTES = 32 * 1024  # a longer event is split into several events at the same time (< CHUNK_BYTES)


class Recorder:
    """Accumulates the events of one session's recording and hands them out as chunks."""

    def __init__(
        self,
        session_id: str,
        cols: int,
        rows: int,
        *,
        record_input: bool = False,
        shell_path: str = "/bin/bash",
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        chunk_bytes: int = CHUNK_BYTES,
        continue_at: int = 0,
        elapsed: float = 0.0,
    ) -> None:
        """`continue_at` > 0: this recorder continues a recording whose chunks up to `continue_at` - 1 the cloud
        already holds (the agent restarted): no header, chunks from that seq, times from `elapsed` seconds."""
        self.session_id = session_id
        self.record_input = record_input
        self.cols, self.rows = cols, rows
        self.seq = continue_at  # of the next chunk
        self.finished = False  # the final chunk was taken
        self._clock = clock
        self._started = clock() - (elapsed if continue_at else 0.0)
        self._chunk_bytes = chunk_bytes
        self._lines: deque[tuple[int, str]] = deque()  # (UTF-8 size, line with its newline)
        self.pending_bytes = 0
        # Incremental: a character split across two reads of the PTY is decoded whole, not as two U+FFFD.
        self._output = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._input = codecs.getincrementaldecoder("utf-8")(errors="replace")
        header = {
            "version": 2,
            "width": cols,
            "height": rows,
            "timestamp": int(wall_clock()),
            "env": {"TERM": TERM, "SHELL": shell_path},
            "title": f"kaiden session {session_id}",
        }
        if not continue_at:
            self._append(_dumps(header))

    # ------------------------------------------------------------ events

    def output(self, data: bytes) -> None:
        """Bytes the terminal printed: an "o" event."""
        if not self.finished:
            self._event("o", self._output.decode(data))

    def input(self, data: bytes) -> None:
        """Bytes typed into the terminal: an "i" event, only when the session records input."""
        if self.record_input and not self.finished:
            self._event("i", self._input.decode(data))

    def resize(self, cols: int, rows: int) -> None:
        """An "r" event, when the size really changed."""
        if (cols, rows) != (self.cols, self.rows) and not self.finished:
            self.cols, self.rows = cols, rows
            self._event("r", f"{cols}x{rows}")

    def _now(self) -> float:
        return round(self._clock() - self._started, 6)

    def _event(self, code: str, text: str) -> None:
        if not text:
            return  # e.g. the first bytes of a split character: they come out with the next read
        for line in _event_lines(self._now(), code, text):
            self._append(line)

    def _append(self, line: str) -> None:
        line += "\n"
        size = len(line.encode("utf-8"))
        self._lines.append((size, line))
        self.pending_bytes += size

    # ------------------------------------------------------------ chunks

    def take_chunk(self, final: bool = False) -> protocol.RecordingChunkPayload | None:
        """The next chunk: the whole lines since the last one, at most `chunk_bytes` of them (None: nothing new).

        With `final`, pending bytes of a split character are flushed and the chunk that empties the recorder
        is marked `final` (sent even when empty); call again until it comes. Afterwards: always None.
        """
        if self.finished:
            return None
        if final:
            self._event("o", self._output.decode(b"", final=True))
            if self.record_input:
                self._event("i", self._input.decode(b"", final=True))
        if not self._lines and not final:
            return None
        parts: list[str] = []
        size = 0
        while self._lines and (not parts or size + self._lines[0][0] <= self._chunk_bytes):
            line_size, line = self._lines.popleft()
            parts.append(line)
            size += line_size
        self.pending_bytes -= size
        last = final and not self._lines
        data = "".join(parts)
        chunk = protocol.RecordingChunkPayload(session_id=self.session_id, seq=self.seq, data=data, final=last)
        self.seq += 1
        self.finished = last
        return chunk

    def take_chunks(self, final: bool = False) -> list[protocol.RecordingChunkPayload]:
        """Every chunk there is to take now; with `final`, up to and including the final one."""
        chunks = []
        while (chunk := self.take_chunk(final)) is not None:
            chunks.append(chunk)
            if chunk.final:
                break
        return chunks


_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _dumps(value: object) -> str:
    """JSON in UTF-8, with the characters some readers take for line breaks escaped (NEL, U+2028/9)."""
    return json.dumps(value, ensure_ascii=False).translate(_LINE_BREAKS)


def _event_lines(t: float, code: str, text: str) -> Iterator[str]:
    """One event's NDJSON line(s): text whose line would pass MAX_LINE_BYTES is cut into several events."""
    if len(text) > MAX_LINE_BYTES:  # certainly too long (a character is at least one byte): cut cheaply first
        for start in range(0, len(text), MAX_LINE_BYTES // 2):
            yield from _event_lines(t, code, text[start : start + MAX_LINE_BYTES // 2])
        return
    line = _dumps([t, code, text])
    if len(line.encode("utf-8")) <= MAX_LINE_BYTES - 1 or len(text) <= 1:
        yield line
        return
    middle = len(text) // 2  # escaping (control characters: 6 bytes each) made it too long: halve
    yield from _event_lines(t, code, text[:middle])
    yield from _event_lines(t, code, text[middle:])
