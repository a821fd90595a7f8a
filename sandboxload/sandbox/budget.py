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
from collections.abc import Callable
from typing import Any

from ..errors import SandboxTimeoutError
from .validate import check

# Keys of one dict or set sharing a hash with an earlier one: never in honest data (64-bit
# hashes, and a pickled dict has no duplicate keys), and few enough to cost nothing.
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
        # Sizes (and heights) of nested keys already measured.
        self.key_sizes: dict[int, tuple[int, int]] = {}
        # Classes the operator allowed (SANDBOXLOAD_ALLOW_GLOBALS): hashing or comparing an
        # instance would run their code, on attributes the file chose (and before they are
        # even set: a frozen dataclass as a key would hash empty and merge keys).
        self.opaque: set[type] = set()
        # Classes of a fixed table whose keys hash as a tuple of their fields: measured so.
        self.surrogates: dict[type, Callable[[Any], Any]] = {}

    def tick(self, steps: int = 1) -> None:
        """Count ``steps`` of work; every 4096, check the load's deadline."""
        before, self.steps = self.steps, self.steps + steps
        crossed = before >> 12 != self.steps >> 12
        if crossed and self.deadline and time.monotonic() > self.deadline[0]:
            raise SandboxTimeoutError(self.name, self.deadline[1], "rebuilding")

    def keys(self) -> Keys:
        """A guard for the keys of one dict or set, about to be inserted."""
        return Keys(self)

    def key_size(self, key: Any) -> int:
        """What hashing or comparing ``key`` costs: objects visited, and a string or bytes
        as one per 64 bytes (equal but distinct strings compare byte by byte). A tuple or
        frozenset is measured once (memo by identity: the objects stay alive), its nesting
        height checked on the way."""
        if isinstance(key, (str, bytes)):
            return 1 + len(key) // 64
        surrogate = self.surrogates.get(type(key))
        if surrogate is not None:
            return self.key_size(surrogate(key))
        if not isinstance(key, (tuple, frozenset)):
            check(
                type(key) not in self.opaque,
                f"an instance of the allowed class {type(key).__qualname__} as a dict key or "
                "set member (hashing it would run its code)",
            )
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
            flat = sum(self.key_size(x) for x in item if not isinstance(x, (tuple, frozenset)))
            size = 1 + flat + sum(sizes[id(x)][0] for x in nested)
            height = 1 + max((sizes[id(x)][1] for x in nested), default=0)
            check(height <= MAX_KEY_HEIGHT, "a key nested too deeply to hash")
            check(size <= MAX_KEY_SIZE, "a key too large to hash")
            sizes[id(item)] = (size, height)
        return sizes[id(key)][0]


class Keys:
    """The keys of one dict or set. Only keys of the same container are ever compared
    (when their hashes are equal), so that is where collisions are counted: a few are
    tolerated, more refused before they are inserted; each comparison the insertion will
    make is counted against the deadline. No key is compared here."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.seen: dict[int, int] = {}  # hash -> keys so far with it
        self.collisions = 0

    def admit(self, key: Any) -> Any:
        size = self.budget.key_size(key)
        h = hash(key)  # TypeError for an unhashable key, as pickle itself would fail
        earlier = self.seen.get(h, 0)
        if earlier:
            self.collisions += 1
            check(self.collisions <= MAX_COLLISIONS, "keys whose hashes collide (a hash flood)")
        self.seen[h] = earlier + 1
        self.budget.tick(size * (1 + earlier))  # hashed once, compared with each earlier
        return key
