"""The storages of a description: byte ranges of the checkpoint or the memfd, mapped
zero-copy, and views of them; every range and every tensor view checked against its bounds."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch

from .budget import Budget
from .protocol import ALIGN, DTYPE_SIZES, PACKED_DTYPES, SOURCES, STORAGE_FIELDS
from .validate import MAX_ELEMENTS, check, int_, ints, str_


class Storages:
    def __init__(
        self,
        sources: dict[str, tuple[Callable[[], Any], int]],
        budget: Budget,
        restore: Callable[[Any, str], Any],
    ) -> None:
        self.sources = sources
        self.budget = budget
        self.restore = restore
        # (untyped storage, dtype, nbytes, is a view)
        self.entries: list[tuple[Any, str, int, bool]] = []

    def build(self, entries: Any) -> None:
        """One torch storage per entry. File and memfd ranges must be aligned as torch and
        the child align them, and may not overlap (two tensors never alias unless the pickle
        shared them, which it says with a view of an earlier storage)."""
        check(isinstance(entries, list), "storages must be a list")
        # Every storage costs the pickle at least one byte (its persistent id).
        check(len(entries) <= self.sources["file"][1] + 64, "more storages than file bytes")
        ranges: dict[str, list[tuple[int, int]]] = {"file": [], "memfd": []}
        for index, entry in enumerate(entries):
            self.budget.tick()
            check(isinstance(entry, list) and len(entry) == len(STORAGE_FIELDS), "storage entry")
            dtype, nbytes, source, offset, location, base = entry
            check(dtype in DTYPE_SIZES, "storage dtype")
            check(source in SOURCES, "storage source")
            location = str_(location, "storage location", 64)
            if source == "view":
                self.entries.append(self._view(index, dtype, nbytes, offset, base))
                continue
            check(base is None, "only a view has a base storage")
            getter, limit = self.sources[source]
            nbytes = int_(nbytes, "storage size", 0, limit)
            offset = int_(offset, "storage offset", 0, limit)
            check(offset + nbytes <= limit, "storage lies outside its source")
            check(nbytes % DTYPE_SIZES[dtype] == 0, "storage size is not whole elements")
            if nbytes:
                check(offset % ALIGN == 0, f"storage at {offset} is not {ALIGN}-byte aligned")
                ranges[source].append((offset, offset + nbytes))
            storage = getter()[offset : offset + nbytes] if nbytes else torch.UntypedStorage(0)
            self.entries.append((self.restore(storage, location), dtype, nbytes, False))
        for spans in ranges.values():
            spans.sort()
            for (_, end), (start, _) in itertools.pairwise(spans):
                check(start >= end, "two storages overlap: every storage has its own record")

    def _view(self, index: int, dtype: str, nbytes: Any, offset: Any, base: Any) -> Any:
        check(type(base) is int and 0 <= base < index, "a view names an earlier storage")
        storage, _, base_nbytes, is_view = self.entries[base]
        check(not is_view, "a view names a base storage, not another view")
        nbytes = int_(nbytes, "view size", 0, base_nbytes)
        offset = int_(offset, "view offset", 0, base_nbytes)
        check(offset + nbytes <= base_nbytes, "view runs past its base storage")
        check(nbytes % DTYPE_SIZES[dtype] == 0, "view size is not whole elements")
        if storage.device.type == "meta":  # meta storages have no bytes to share
            return torch.UntypedStorage(nbytes, device="meta"), dtype, nbytes, True
        return storage[offset : offset + nbytes], dtype, nbytes, True

    def get(self, sid: Any) -> tuple[Any, str]:
        check(type(sid) is int and 0 <= sid < len(self.entries), "storage reference")
        storage, dtype, _, _ = self.entries[sid]
        return storage, dtype

    def bounded_view(self, sid: Any, dtype: Any, offset: Any, size: Any, stride: Any) -> tuple:
        """A view's fields, checked to lie inside storage ``sid`` at ``dtype``'s item size."""
        check(type(sid) is int and 0 <= sid < len(self.entries), "tensor storage")
        storage, _, nbytes, _ = self.entries[sid]
        check(dtype in DTYPE_SIZES, "tensor dtype")
        offset = int_(offset, "storage offset")
        size, stride = ints(size, "size"), ints(stride, "stride")
        check(len(size) == len(stride), "size and stride differ in rank")
        numel = math.prod(size)
        check(numel <= MAX_ELEMENTS, "tensor too large")
        if dtype in PACKED_DTYPES:
            # Kernels walk these as packed bytes from the offset, whatever the strides say.
            check(stride == _contiguous(size), "packed quantized tensors are contiguous")
            per = PACKED_DTYPES[dtype]
            check(offset + -(-numel // per) <= nbytes, "tensor view outside its storage")
        elif numel:
            last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
            check((last + 1) * DTYPE_SIZES[dtype] <= nbytes, "tensor view outside its storage")
        return storage, offset, size, stride


def _contiguous(size: list[int]) -> list[int]:
    strides, step = [], 1
    for n in reversed(size):
        strides.append(step)
        step *= max(n, 1)
    return strides[::-1]
