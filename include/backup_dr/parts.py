"""How a stream of unknown length is cut into the parts of one S3 multipart upload.

Pure, so the rules can be proven: S3 takes at most 10,000 parts of 5 MiB to 5 GiB each (the last
may be smaller) and objects of up to 5 TiB. Fixed 16 MiB parts would stop an artifact at 160 GiB,
and the size of a pg_dump or pg_basebackup stream is not known when its upload starts. So parts
stay at 16 MiB for the first tenth of the parts (15.6 GiB: most artifacts never grow), then
double every hundredth of the parts up to a ceiling: the smallest part size that lets the
remaining parts reach 5 TiB. The ceiling keeps the largest part, and with it the upload's
memory, as small as the 5 TiB promise allows (604 MiB with the defaults).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB
#: S3's limits for one multipart upload.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * TiB
#: The part size of every artifact under FIRST_PART_SIZE x MAX_PARTS // 10 (15.6 GiB).
FIRST_PART_SIZE = 16 * MiB
#: Parts an upload holds while they are small; bigger ones share that memory (`parts_in_memory`).
BUFFERED_PARTS = 4


@dataclass(frozen=True)
class PartPlan:
    """The size of every part of one upload: `first` for the first `limit // 10` parts, then
    doubling every `limit // 100` parts (at least one) up to `ceiling`."""

    first: int = FIRST_PART_SIZE
    limit: int = MAX_PARTS
    #: The largest stream the plan must hold, when `limit` parts of MAX_PART_SIZE can.
    largest: int = MAX_OBJECT_SIZE

    def __post_init__(self) -> None:
        if not MIN_PART_SIZE <= self.first <= MAX_PART_SIZE:
            raise ValueError(
                f"first part of {self.first} bytes: S3 takes parts of {MIN_PART_SIZE} to "
                f"{MAX_PART_SIZE} bytes"
            )
        if not 1 <= self.limit <= MAX_PARTS:
            raise ValueError(f"a limit of {self.limit} parts: S3 takes 1 to {MAX_PARTS}")

    @property
    def _flat(self) -> int:
        return max(1, self.limit // 10)

    @property
    def _step(self) -> int:
        return max(1, self.limit // 100)

    def _stages(self, ceiling: int) -> Iterator[tuple[int, int]]:
        """(parts, size) of each run of equal parts, in order, `limit` parts in all."""
        yield self._flat, self.first
        done, doublings = self._flat, 1
        while done < self.limit:
            count = min(self._step, self.limit - done)
            yield count, min(self.first << min(doublings, 40), ceiling)
            done, doublings = done + count, doublings + 1

    def _capacity(self, ceiling: int) -> int:
        return sum(count * size for count, size in self._stages(ceiling))

    @cached_property
    def ceiling(self) -> int:
        """The largest part: the smallest whole MiB (at least `first`) whose plan holds
        `largest`, or MAX_PART_SIZE when even that cannot."""
        if self._capacity(MAX_PART_SIZE) < self.largest:
            return MAX_PART_SIZE
        low, high = -(-self.first // MiB), MAX_PART_SIZE // MiB  # in MiB; capacity grows
        while low < high:
            middle = (low + high) // 2
            if self._capacity(max(self.first, middle * MiB)) >= self.largest:
                high = middle
            else:
                low = middle + 1
        return max(self.first, low * MiB)

    @cached_property
    def capacity(self) -> int:
        """The longest stream `limit` parts hold."""
        return self._capacity(self.ceiling)

    def sizes(self) -> Iterator[int]:
        """The size of part 1, 2, ... `limit`: never smaller than the one before."""
        for count, size in self._stages(self.ceiling):
            for _ in range(count):
                yield size


def parts_in_memory(part_size: int) -> int:
    """How many parts of `part_size` an upload may hold: BUFFERED_PARTS while they are
    FIRST_PART_SIZE (one being read while the others upload), then as many as fit in the same
    memory, but always two, so that reading never waits for a whole part's upload.
    With the next part (at most twice as big) read meanwhile, an upload holds at most 80 MiB
    while parts are 16 MiB, and 2 x `PartPlan.ceiling` (1.2 GiB) near 5 TiB."""
    return max(2, BUFFERED_PARTS * FIRST_PART_SIZE // part_size)
