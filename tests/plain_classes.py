"""Classes for the SANDBOXLOAD_ALLOW_GLOBALS tests (importable as tests.plain_classes)."""

from __future__ import annotations


class TrainConfig:
    """A plain data class: rebuilt by object.__new__ + __dict__, no code of its own runs."""

    def __init__(self, lr: float, layers: list[int]) -> None:
        self.lr = lr
        self.layers = layers


class WithSetstate:
    """Has code that unpickling would run: never admitted, even when allowed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __setstate__(self, state: dict[str, str]) -> None:
        open(state["path"], "w").close()  # what a real unpickle would do
        self.__dict__.update(state)


def touch(path: str) -> None:
    """A function, as a payload would name one (a test admits it to torch's safe globals)."""
    open(path, "w").close()


class Touch:
    """Pickles to a call of :func:`touch`."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (touch, (self.path,))


class Scratch:
    """Plain attributes, but a __del__ that acts on them: garbage collection would run it with
    attributes the file chose (an attack review deleted a file so)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __del__(self) -> None:
        import os

        if getattr(self, "path", None):
            os.unlink(self.path)


class ScratchChild(Scratch):
    """Its __del__ is inherited: the rule looks at the whole MRO."""


class Fancy:
    """Code runs on any attribute read, ``__dict__`` included."""

    def __getattribute__(self, name: str) -> object:
        open(object.__getattribute__(self, "__dict__").get("path", "/dev/null"), "a").close()
        return object.__getattribute__(self, name)


@__import__("dataclasses").dataclass(frozen=True)
class Key:
    """A frozen dataclass: hashing runs its generated __hash__ on its fields."""

    name: str
