"""What both families' prepare stages share: the per-split counters of rows read, kept and
dropped (with the first few locations per reason) that go into a data folder's manifest, and the
check that refuses a file in another encoding instead of dropping most of its rows."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
MAX_EXAMPLES_PER_REASON = 5


class PrepareError(RuntimeError):
    pass


WRONG_ENCODING_MIN_ROWS = 10


def check_encoding(path: str | Path, invalid: int, non_ascii: int) -> None:
    """A file in another encoding is not "a few bad rows": dropping them would keep only its
    accent-free rows, a biased subset. Refused when at least WRONG_ENCODING_MIN_ROWS rows, and
    most of the rows holding non-ASCII bytes, are not UTF-8 (a UTF-8 file's stray bad lines sit
    among many valid accented ones)."""
    if invalid >= WRONG_ENCODING_MIN_ROWS and invalid > non_ascii / 2:
        raise PrepareError(
            f"{path}: {invalid} of its {non_ascii} rows with non-ASCII bytes are not UTF-8: the file looks like "
            "another encoding (Latin-1, cp1252?); convert it first, e.g. iconv -f cp1252 -t utf-8"
        )


@dataclass
class SplitStats:
    """Rows read, kept and dropped (per reason, with the first few locations)."""

    source: str
    rows_read: int = 0
    rows_kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    dropped_examples: list[str] = field(default_factory=list)

    def drop(self, where: str, reason: str, detail: str = "") -> None:
        self.dropped[reason] += 1
        if self.dropped[reason] <= MAX_EXAMPLES_PER_REASON:
            message = f"{where}: {reason}" + (f" ({detail})" if detail else "")
            self.dropped_examples.append(message)
            log.warning("dropped %s", message)

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_dropped": sum(self.dropped.values()),
            "dropped_by_reason": dict(sorted(self.dropped.items())),
            "dropped_examples": self.dropped_examples,
        }
