"""Malicious checkpoints: many techniques, each creating a canary file if it ever runs.

Each technique is hand-assembled pickle opcodes (so the tests do not depend on any class's
``__reduce__``), then wrapped in every form a loader accepts: a raw pickle, a torch zip
(``archive/data.pkl``) and a legacy torch file (the payload as the main pickle after a valid
magic number, protocol version and sys_info).
"""

from __future__ import annotations

import io
import marshal
import pickle
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def X(text: str) -> bytes:
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def B(data: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(data)) + data


def G(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def call(fn: bytes, *args: bytes) -> bytes:
    """fn(*args): MARK args TUPLE REDUCE."""
    return fn + b"(" + b"".join(args) + b"tR"


def src(canary: str) -> str:
    return f"import os; os.system({f'touch {canary}'!r})"


def module(name: str) -> bytes:
    return call(G("importlib", "import_module"), X(name))


def method(name: str, *args: bytes) -> bytes:
    return call(G("operator", "methodcaller"), X(name), *args)


def _os_system(c: str) -> bytes:
    return call(G("os", "system"), X(f"touch {c}"))


TECHNIQUES: dict[str, Callable[[str], bytes]] = {
    "os.system": _os_system,
    "posix.system": lambda c: call(G("posix", "system"), X(f"touch {c}")),
    "subprocess.getoutput": lambda c: call(G("subprocess", "getoutput"), X(f"touch {c}")),
    "subprocess.check_call": lambda c: call(
        G("subprocess", "check_call"), b"]" + X("touch") + b"a" + X(c) + b"a"
    ),
    "builtins.eval": lambda c: call(
        G("builtins", "eval"), X(f"__import__('os').system('touch {c}')")
    ),
    "builtins.exec": lambda c: call(G("builtins", "exec"), X(src(c))),
    "builtins.exec+compile": lambda c: call(
        G("builtins", "exec"), call(G("builtins", "compile"), X(src(c)), X("<x>"), X("exec"))
    ),
    "builtins.open": lambda c: call(G("builtins", "open"), X(c), X("w")),
    "io.open": lambda c: call(G("io", "open"), X(c), X("w")),
    "codecs.open": lambda c: call(G("codecs", "open"), X(c), X("w")),
    "os.open": lambda c: call(G("os", "open"), X(c), b"K\x41"),
    "getattr+__import__": lambda c: call(
        call(G("builtins", "getattr"), call(G("builtins", "__import__"), X("os")), X("system")),
        X(f"touch {c}"),
    ),
    "importlib.import_module": lambda c: call(
        call(G("builtins", "getattr"), module("os"), X("system")), X(f"touch {c}")
    ),
    "runpy._run_code": lambda c: call(G("runpy", "_run_code"), X(src(c)), b"}"),
    "operator.methodcaller": lambda c: call(method("system", X(f"touch {c}")), module("os")),
    "operator.attrgetter": lambda c: call(
        call(call(G("operator", "attrgetter"), X("system")), module("os")), X(f"touch {c}")
    ),
    "functools.partial": lambda c: call(
        call(G("functools", "partial"), G("os", "system"), X(f"touch {c}"))
    ),
    "pkgutil.resolve_name": lambda c: call(
        call(G("pkgutil", "resolve_name"), X("os:system")), X(f"touch {c}")
    ),
    "ctypes.CDLL": lambda c: call(
        call(G("builtins", "getattr"), call(G("ctypes", "CDLL"), b"N"), X("system")),
        B(f"touch {c}".encode()),
    ),
    "marshal.loads+exec": lambda c: call(
        G("builtins", "exec"),
        call(G("marshal", "loads"), B(marshal.dumps(compile(src(c), "<x>", "exec")))),
    ),
    "INST opcode": lambda c: b"(" + X(f"touch {c}") + b"ios\nsystem\n",
    "OBJ opcode": lambda c: b"(" + G("os", "system") + X(f"touch {c}") + b"o",
    "NEWOBJ pathlib": lambda c: call(
        method("touch"), G("pathlib", "PosixPath") + b"(" + X(c) + b"t\x81"
    ),
    "BUILD setstate": lambda c: (
        G("functools", "partial")
        + b"("
        + G("builtins", "print")
        + b"t\x81"
        + b"("
        + G("os", "system")
        + b"("
        + X(f"touch {c}")
        + b"t}Ntb"
        + b"(tR"
    ),
    "STACK_GLOBAL": lambda c: (
        b"\x80\x04" + X("os") + X("system") + b"\x93(" + X(f"touch {c}") + b"tR"
    ),
    "memo indirection": lambda c: G("os", "system") + b"q\x050h\x05(" + X(f"touch {c}") + b"tR",
    "payload before truncation": lambda c: _os_system(c) + b"X\xff\xff\xff\x7f",
    "nested pickle.loads": lambda c: call(G("pickle", "loads"), B(_os_system(c) + b".")),
    "nested _pickle.loads": lambda c: call(G("_pickle", "loads"), B(_os_system(c) + b".")),
    "os.popen": lambda c: call(method("read"), call(G("os", "popen"), X(f"touch {c}"))),
    "timeit.timeit": lambda c: call(
        G("timeit", "timeit"), X(src(c)), X("pass"), G("time", "perf_counter"), b"K\x01"
    ),
    "code.InteractiveInterpreter": lambda c: call(
        method("runsource", X(src(c))), call(G("code", "InteractiveInterpreter"))
    ),
    "sys.modules traversal": lambda c: call(
        call(
            G("builtins", "getattr"),
            call(G("operator", "getitem"), G("sys", "modules"), X("os")),
            X("system"),
        ),
        X(f"touch {c}"),
    ),
    "shutil.copyfile": lambda c: call(G("shutil", "copyfile"), X("/etc/passwd"), X(c)),
    "os.spawnlp": lambda c: call(G("os", "spawnlp"), b"K\x00", X("touch"), X("touch"), X(c)),
    "py2 __builtin__.eval": lambda c: call(
        G("__builtin__", "eval"), X(f"__import__('os').system('touch {c}')")
    ),
    "numpy runstring": lambda c: call(
        G("numpy.testing._private.utils", "runstring"), X(src(c)), b"}"
    ),
    "zipfile.ZipFile": lambda c: call(G("zipfile", "ZipFile"), X(c), X("w")),
    "pathlib write_text": lambda c: call(
        method("write_text", X("x")), call(G("pathlib", "Path"), X(c))
    ),
    "torch internals": lambda c: call(
        G("torch.serialization", "_get_restore_location"), call(G("builtins", "exec"), X(src(c)))
    ),
}


def payload(technique: str, canary: Path) -> bytes:
    return TECHNIQUES[technique](str(canary)) + b"."


def torch_zip(
    data_pkl: bytes, *, compress: int = zipfile.ZIP_STORED, extra: dict[str, bytes] | None = None
) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compress) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", b"little")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
        zf.writestr("archive/version", b"3\n")
    return buf.getvalue()


def legacy(main_pickle: bytes) -> bytes:
    head = b"".join(
        pickle.dumps(x, protocol=2)
        for x in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True})
    )
    return head + main_pickle + pickle.dumps([], protocol=2)


FORMS: dict[str, Callable[[bytes], bytes]] = {
    "raw": lambda p: p,
    "zip": torch_zip,
    "legacy": legacy,
}


def zip_tricks(canary: Path) -> dict[str, bytes]:
    """Attacks on the container rather than the pickle."""
    evil = payload("os.system", canary)
    benign = pickle.dumps({}, protocol=2)
    dup = io.BytesIO()
    with zipfile.ZipFile(dup, "w") as zf:
        zf.writestr("archive/data.pkl", benign)
        zf.writestr("archive/data.pkl", evil)
        zf.writestr("archive/version", b"3\n")
    mismatch = bytearray(torch_zip(evil))
    at = mismatch.index(b"archive/data.pkl")  # first occurrence: the local header
    mismatch[at : at + 16] = b"archive/data.pkX"
    return {
        "zip: compressed data.pkl": torch_zip(evil, compress=zipfile.ZIP_DEFLATED),
        "zip: duplicate data.pkl": dup.getvalue(),
        "zip: local/central name mismatch": bytes(mismatch),
        "zip: TorchScript disguise": torch_zip(
            evil, extra={"archive/constants.pkl": evil, "archive/code/x.py": b""}
        ),
        "zip: legacy payload polyglot": evil + torch_zip(benign),
        "zip: payload in a nested archive prefix": torch_zip(
            benign, extra={"other/data.pkl": evil}
        ),
    }
