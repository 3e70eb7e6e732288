"""Parser of the original system's text log (``timing_*.log``) into stagewatch Step records.

The format, one block per step::

    ================================================================================
    Step 1
    ================================================================================
    Forward total                            :   280.00ms ( 45.2%) [avg:   280.00ms]
    VRT                                      :   150.00ms ( 24.2%) [avg:   150.00ms]
      - Stage1                              :    25.00ms [avg:    25.00ms]
    Total-----------------------------------:   620.00ms

A ``  - Sub`` line is a child of the line before it one level up (``VRT/Stage1``); deeper
levels indent by two more spaces (``    - stage8``), as stagewatch's own text log writes them.
The Total line becomes the step's ``wall_ms``: the original logger wrote the sum of its
top-level names there, the only step time such a log holds (:mod:`tui.source.nesting`
then infers which top-level names nest in which, and the timed total replaces it). A
block ends at its Total line, or at the next ``Step`` header when a Total line is missing.
A ``Step`` count that begins again (the logger restarted, appending to the file) is numbered
on after the last block, so both processes' steps count; so is a block going on with such an
earlier count (processes appending to one file in turn). A block with no region and no
time (a ``Step`` header a crash or a flush left) is not a step: it is counted
(:attr:`TextLogParser.blank`), never a 0 ms step in the figures. Values outside the record
format's limits (``nan``, ``inf``, negative, 1e12 ms and more) are refused as lines not
understood.
Lines stagewatch's writer adds are understood too: ``(not timed itself)`` parents, ``xN``
call counts, and the derived ``Unaccounted`` / ``Overlap`` lines and ``Timing summary``
block, which are skipped.
"""

from __future__ import annotations

import re

from stagewatch.records import MAX_INT, MAX_MS, MAX_NAME_CHARS, Step

# "Step 12", and the variants a user's logger may print: "STEP 12", "Step: 12",
# "Step 12/1000", "Step 12 (epoch 3)". Up to 12 digits (< MAX_INT); longer: not understood
_STEP_RE = re.compile(
    r"^\s*Step\s*:?\s+(\d{1,12})\s*(?:/\s*\d+\s*)?(?:\([^()]*\)\s*)?$", re.IGNORECASE
)
_TOTAL_RE = re.compile(
    r"^\s*Total[\s-]*:\s*([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)\s*ms\b", re.IGNORECASE
)
_ENTRY_RE = re.compile(
    r"^(?P<indent> *)(?P<dash>-\s+)?(?P<name>\S(?:.*?\S)??)\s*:\s*"
    r"(?:(?P<ms>(?:-0(?:\.0*)?(?=\s*ms)|[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?))\s*ms\b"
    r"(?P<rest>.*)"
    r"|-\s*\(not timed itself\))\s*$"
)
# the same line with a tail as the loggers write it (share, running average, call count):
# tried when the tail holds another colon, so a name holding ": 3.00ms" is not cut there
_ENTRY_EXACT_RE = re.compile(
    _ENTRY_RE.pattern.replace(
        r"(?P<rest>.*)",
        r"(?P<rest>(?:\s*\(\s*[0-9.]+\s*%\))?(?:\s*\[avg:\s*[0-9.eE+-]+\s*ms\])?(?:\s+x\d+)?)",
    )
)
_CALLS_RE = re.compile(r"\bx(\d+)\s*$")
# stdout in the same file: a log message, and the debug mode's per-module lines
# ("VRT Stage1: 25.00ms, output shape torch.Size([...])", "TSA scale0: 6 blocks, ...")
_LEVEL_RE = re.compile(r"(?:\[(?:DEBUG|INFO|WARNING|WARN|ERROR)\]|(?:DEBUG|INFO|WARNING|ERROR):)")
_DEBUG_RE = re.compile(r"shape|Size\(|->|\bblocks?\b|/block|\boutput\b", re.IGNORECASE)
_SUMMARY_RE = re.compile(r"^\s*Timing summary\b", re.IGNORECASE)
_DERIVED = ("Unaccounted", "Overlap")
_PANEL = ("│", "┌", "└", "├", "┐", "┘")  # the original's console panel, if stdout was logged too
_COLOURED_PANEL_RE = re.compile(r"\s*(?:\x1b\[[0-9;]*m\s*)+[│┌└├┐┘]")  # its lines coloured
# the panel redrawn in place: cursor moves and erases (not colours), which a terminal obeys
# and does not show
_CURSOR_RE = re.compile(r"\x1b\[[0-9;]*[ABCDEFGHJK]")
# a tqdm bar a line was written after: tqdm writes "\r" + bar and no newline, so the next
# line of the file follows it ("Epoch 1:  12%|█▏   | 12/100 [00:24<02:56, 2.00s/it]Step 13")
_TQDM_RE = re.compile(r"^[^|]*?\d+%\|[^|]*\|[^\[\]|]*\[[^\]]*\]")
MAX_COUNTS = 64  # counts a restart left that are remembered
#: why a file several processes wrote into is read as one rank, not split into theirs
INTERLEAVED_WHY = (
    "the original logger's blocks carry no rank, process id or time, and the processes' "
    "Step counts run alike, so which process wrote a block is not known (only guessed from "
    "its running averages, which this version does not do): its figures mix the processes"
)
_RULE_RE = re.compile(r"^\s*[=\-─]{5,}\s*$")
# an entry whose time is not a number of ms a record may hold (nan, inf, negative)
_BAD_MS_RE = re.compile(r"^ *(?:-\s+)?\S.*?:\s*(?:[-+]\S*|nan|inf)\s*ms\b", re.IGNORECASE)


def _clean(line: str) -> str:
    """The line as a terminal shows it: what stdout's progress bars and redraws left."""
    if "\r" in line:  # a progress bar's carriage returns: the last part, as a terminal
        line = line.rstrip("\r").rsplit("\r", 1)[-1]
    line = line.lstrip("\ufeff")  # a byte-order mark (a file saved on Windows)
    if "\0" in line:  # a crash left the file's tail as NULs (unwritten blocks), then appended
        line = line.replace("\0", "")
    if "\x1b[" in line:
        line = _CURSOR_RE.sub("", line)
    if "%|" in line and (t := _TQDM_RE.match(line)) is not None and line[t.end() :].strip():
        line = line[t.end() :]
    return line


class TextLogParser:
    """Incremental: feed complete lines, get the Step records of the blocks they complete."""

    def __init__(self) -> None:
        self.malformed = 0
        self.last_error = ""
        self._step: int | None = None
        self._regions: dict[str, tuple[float, int]] = {}
        self._stack: list[str] = []  # full names of the last line at each depth
        self._in_summary = False
        self.native = False  # stagewatch's own writer: its Total is the step wall time
        # the logger restarted: its count began again at the file's first number (the
        # original counts from 1 in every process) after higher ones. Blocks from there are
        # numbered on after the last one, so no step is superseded by the new process's.
        # Any other number going back is a stray block: the newest of a number wins.
        self.restarts = 0
        self._first: int | None = None  # the number of the file's first block
        self._last_raw = 0  # the number the last block had in the file
        self._last = 0  # the number it was given
        self._offset = 0
        # the last numbers of the counts that a restart left (the blocks of another process
        # appending to the same file may go on from one of them)
        self._ended: list[int] = []
        self.interleaved = 0  # blocks that went on with such a count
        self.blank = 0  # blocks with no region and no time (a header a crash or flush left)

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]

    def feed(self, line: str) -> Step | None:
        """One line (without its newline). Returns a Step when the line completes a block."""
        line = _clean(line)
        if not line.strip() or _RULE_RE.match(line):
            return None
        first = line.lstrip()[:1]
        if first in _PANEL or (first == "\x1b" and _COLOURED_PANEL_RE.match(line)):
            self._bad(f"the console panel, not a block line: {line[:80]!r}")
            return None
        m = _STEP_RE.match(line)
        if m:
            done = self._finish(None)
            self._step = int(m.group(1))
            self._regions = {}
            self._stack = []
            self._in_summary = False
            return done
        m = _TOTAL_RE.match(line)
        if m and ("[avg:" in line or "%)" in line):
            m = None  # a region the user named "Total": the loggers' Total line has no tail
        if m and not self._in_summary:
            total = float(m.group(1))
            return self._finish(total if total < MAX_MS else None)
        if _SUMMARY_RE.match(line):
            done = self._finish(None)
            self._in_summary = True
            return done
        if self._in_summary:
            return None
        m = _ENTRY_RE.match(line)
        if m:
            rest = m.group("rest")
            if rest and rest.count(":") > rest.count("[avg:"):
                m = _ENTRY_EXACT_RE.match(line) or m  # cut at a ": 3.00ms" inside the name?
            elif (rest and "[avg:" not in rest and _DEBUG_RE.search(rest)) or (
                line[:1] in "[DIWE" and _LEVEL_RE.match(line)
            ):
                self._bad(f"a log or debug message, not a block line: {line[:80]!r}")
                return None
        if m and self._step is not None:
            return self._entry(m, line)
        if self._step is not None and _BAD_MS_RE.match(line):
            self._bad(f"not a time (0 <= ms < {MAX_MS:.0e}): {line[:80]!r}")
            return None
        self._bad(f"unrecognised line: {line[:80]!r}")
        return None

    def _entry(self, m: re.Match[str], line: str) -> None:
        """A region line of the block being read."""
        name = m.group("name")
        depth = (len(m.group("indent")) + 1) // 2 if m.group("dash") else 0
        if depth == 0 and name in _DERIVED:
            self.native = True
            return None
        if depth > len(self._stack):
            self._bad(f"nested line without a parent: {line[:80]!r}")
            return None
        full = f"{self._stack[depth - 1]}/{name}" if depth else name
        if len(full) > MAX_NAME_CHARS:
            self._bad(f"region name longer than {MAX_NAME_CHARS} characters: {line[:80]!r}")
            return None
        del self._stack[depth:]
        self._stack.append(full)
        if m.group("ms") is None:
            return None  # a parent that was not timed itself
        ms = abs(float(m.group("ms")))  # ("-0.00": a timer's jitter rounded, zero)
        c = _CALLS_RE.search(m.group("rest") or "")
        n = int(c.group(1)) if c and len(c.group(1)) < 14 else 1 if c is None else MAX_INT
        old = self._regions.get(full)
        new = (old[0] + ms, old[1] + n) if old else (ms, n)
        if new[0] >= MAX_MS or new[1] >= MAX_INT:  # the record format's limits
            self._bad(f"not a time (0 <= ms < {MAX_MS:.0e}): {line[:80]!r}")
            return None
        self._regions[full] = new
        return None

    def pending(self) -> bool:
        """Whether a block is open (its Total line not read yet)."""
        return self._step is not None

    def flush(self) -> Step | None:
        """The pending block, if any (end of a finished file without a Total line)."""
        return self._finish(None)

    def _bad(self, msg: str) -> None:
        self.malformed += 1
        self.last_error = msg

    def _finish(self, total: float | None) -> Step | None:
        if self._step is None:
            if total is not None:
                self._bad("Total line outside a step block")
            return None
        regions = self._regions
        if total is None:
            total = sum(ms for k, (ms, _) in regions.items() if "/" not in k)
        if total >= MAX_MS:  # a record's limit on the step's times: the block is refused
            self._bad(f"step {self._step}: times sum to {total:.3g} ms, over the limit")
            self._step = None
            return None
        raw = number = self._step
        if raw >= 1:  # (a block numbered below 1 is refused by the caller, as in JSONL)
            if self._first is None:
                self._first = raw
            elif raw == self._first and raw <= self._last_raw:  # the count began again
                self.restarts += 1
                self._ended = [*self._ended[-MAX_COUNTS + 1 :], self._last_raw]
                self._offset = self._last
            elif raw != self._last_raw + 1 and raw - 1 in self._ended:
                # an earlier count goes on: several processes append to one file (the same
                # name, started in the same second), each 50 blocks at a time. Numbered on,
                # so that no process's blocks supersede another's
                self.interleaved += 1
                self._ended.remove(raw - 1)
                self._ended.append(self._last_raw)
                self._offset = self._last + 1 - raw
            number = raw + self._offset
            if number >= MAX_INT:
                self._bad(f"step {raw}: numbered on after a restart, {number} is over the limit")
                self._step = None
                return None
            self._last_raw, self._last = raw, number
        self._step = None
        self._regions = {}
        self._stack = []
        if not regions and not total:  # nothing measured: not a 0 ms step in the figures
            self.blank += 1
            return None
        return Step(step=number, time=0.0, wall_ms=total, regions=regions, samples=0)


def is_step_header(line: str) -> bool:
    """Whether ``line`` begins a block (``Step 12``, as the parser reads it)."""
    return _STEP_RE.match(_clean(line)) is not None


def parse_text(text: str) -> tuple[list[Step], int]:
    """Every step of a whole text log, and the number of lines not understood."""
    p = TextLogParser()
    out = [s for line in text.splitlines() if (s := p.feed(line)) is not None]
    last = p.flush()
    if last is not None:
        out.append(last)
    return out, p.malformed
