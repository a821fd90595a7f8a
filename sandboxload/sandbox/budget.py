"""What rebuilding one description may cost this process: time and hashing.

The child's work is bounded by its deadline and rlimits; the parent's rebuild is bounded
here. Every step counts against the same deadline as the child (one timeout for the whole
load). Hashing is where a description can make the parent pay beyond its size: distinct keys
with one hash make each dict insertion scan all the others (quadratic: 40,000 colliding
``torch.Size`` keys took minutes), and ints and tuples have hashes a file can choose; a key
nested deep enough exhausts the C stack when hashed. Honest data has neither.
"""

from __future__ import annotations

import time
from typing import Any

from ..errors import SandboxTimeoutError
from .validate import check

# Distinct keys sharing a hash that one load may contain: never in honest data (64-bit hashes),
# and few enough that inserting them costs nothing.
MAX_COLLISIONS = 64
# Dict keys and set members are hashed recursively in C: bounded nesting (the C stack) and
# size (each insertion rehashes the whole key). Honest keys are names, ints, short tuples.
MAX_KEY_HEIGHT = 64
MAX_KEY_SIZE = 1 << 16


class Budget:
    """The budget of one rebuild: a step counter against the deadline, and its keys."""

    def __init__(self, name: str, deadline: tuple[float, float] | None) -> None:
        self.name = name
        # (time.monotonic() to end by, the timeout setting it came from) and a step counter.
        self.deadline, self.steps = deadline, 0
        # Every hashed key's hash -> the first key seen with it; distinct keys that shared a
        # hash with an earlier one; sizes of nested keys already measured.
        self.hashes: dict[int, Any] = {}
        self.collisions = 0
        self.key_sizes: dict[int, tuple[int, int]] = {}

    def tick(self, steps: int = 1) -> None:
        """Count ``steps`` of work; every 4096, check the load's deadline."""
        before, self.steps = self.steps, self.steps + steps
        crossed = before >> 12 != self.steps >> 12
        if crossed and self.deadline and time.monotonic() > self.deadline[0]:
            raise SandboxTimeoutError(self.name, self.deadline[1], "rebuilding")

    def hashed(self, key: Any) -> Any:
        """``key``, about to be hashed into a dict or set: a few collisions are tolerated,
        more refused before any is inserted; a nested key's height and size are bounded,
        and its size counted against the deadline (every insertion rehashes it)."""
        self.tick(self._key_size(key))
        h = hash(key)  # TypeError for an unhashable key, as pickle itself would fail
        first = self.hashes.setdefault(h, key)
        if first is not key and not _equal(first, key):
            self.collisions += 1
            check(self.collisions <= MAX_COLLISIONS, "keys whose hashes collide (a hash flood)")
        return key

    def _key_size(self, key: Any) -> int:
        """How many objects hashing ``key`` visits, with its nesting height checked; each
        tuple or frozenset is measured once (memo by identity: the objects stay alive)."""
        if not isinstance(key, (tuple, frozenset)):
            return 1
        sizes = self.key_sizes  # id -> (size, height)
        stack: list[tuple[Any, bool]] = [(key, False)]
        while stack:
            item, children_done = stack.pop()
            if id(item) in sizes:
                continue
            nested = [x for x in item if isinstance(x, (tuple, frozenset))]
            if not children_done:
                stack.append((item, True))
                stack.extend((x, False) for x in nested if id(x) not in sizes)
                continue
            size = 1 + len(item) - len(nested) + sum(sizes[id(x)][0] for x in nested)
            height = 1 + max((sizes[id(x)][1] for x in nested), default=0)
            check(height <= MAX_KEY_HEIGHT, "a key nested too deeply to hash")
            check(size <= MAX_KEY_SIZE, "a key too large to hash")
            sizes[id(item)] = (size, height)
        return sizes[id(key)][0]


def _equal(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # a tensor inside a tuple compares elementwise
        return False
