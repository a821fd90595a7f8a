"""The sandbox child's entry point: ``worker.main()`` with ``key=value`` config arguments.

Standard library only, and only its cheap C-backed parts (start-up time is on every load's
critical path). Order matters and is the point of this file:
1. import everything the parse needs (nothing can be imported once the filter is in);
2. move the inherited descriptors to fixed numbers, set rlimits;
3. read the BPF program from stdin and install it (or report that it cannot be);
4. only then read the first byte of the checkpoint.
The answer (a :mod:`~sandboxload.sandbox.protocol` description, or an error) is JSON on
stdout.
"""

import _json
import _socket
import array
import io
import os
import sys

from .. import protocol as p
from . import allowlist, confine, describe, readers
from .errors import Malformed, Refused, Unsupported

# The C encoder behind json.dumps, without importing json (which imports re).
_encode = _json.make_encoder(
    None, None, _json.encode_basestring_ascii, None, ":", ",", False, False, True
)


def parse_config(argv: list) -> dict:
    config: dict = {"probe": "", "extra_globals": ()}
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in p.CONFIG_INTS:
            config[key] = int(value)
        elif key == "extra_globals":
            config[key] = tuple(x for x in value.split(",") if x)
        else:
            config[key] = value
    return config


def _emit(payload: dict) -> None:
    view = memoryview("".join(_encode(payload, 0)).encode())
    while view:
        view = view[os.write(1, view) :]


def _error(kind: str, message: str, **extra: object) -> dict:
    return {"version": p.VERSION, "error": {"kind": kind, "message": message, **extra}}


def parse(config: dict) -> dict:
    fmt = config["format"]
    out = readers.Output(p.MEMFD_FD, config["memfd_capacity"])
    if fmt == p.READ_ZIP:
        root = readers.read_zip(p.CKPT_FD, config["size"], out, config["pickle_cap"])
    else:
        raw = io.FileIO(p.CKPT_FD, "rb", closefd=False)
        f = io.BufferedReader(raw, buffer_size=1 << 16)
        if fmt == p.READ_TAR:
            root = readers.read_tar(f, p.CKPT_FD, out)
        elif fmt == p.READ_LEGACY:
            root = readers.read_legacy(f, p.CKPT_FD, out)
        elif fmt == p.READ_DCP:
            root = readers.read_dcp_metadata(f)
        else:
            raise Malformed(f"unknown reader {fmt!r}")
    if config["probe"]:
        _probe(config["probe"])
    d = describe.Describer(out.write_bytes)
    root_id = d.describe(root)
    return {
        "version": p.VERSION,
        "root": root_id,
        "nodes": d.nodes,
        "storages": out.storages,
    }


def _probe(what: str) -> None:
    """Attempt a forbidden operation after confinement (tests and ``doctor`` prove the filter)."""
    if what == "open":
        os.open("/etc/hostname", os.O_RDONLY)
    elif what == "socket":
        sys.modules["_socket"].socket()
    elif what == "fork":
        os.fork()
    elif what == "execve":
        os.execv("/bin/true", ["true"])
    elif what == "write_ckpt":
        os.write(p.CKPT_FD, b"x")
    elif what == "exec_memory":
        mmap = sys.modules["mmap"]
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC)


def _preload(config: dict) -> None:
    """Imports some paths need, done now: after the filter, importing is itself forbidden."""
    if config["format"] == p.READ_TAR:
        import tarfile  # noqa: F401
    if config["probe"]:
        import _socket  # noqa: F401
        import mmap  # noqa: F401


def _wait_for_request(sock_fd: int) -> "list | None":
    """Block until the parent sends the config and the two descriptors on ``sock_fd``."""
    sock = _socket.socket(fileno=sock_fd)
    msg, anc, _flags, _addr = sock.recvmsg(1 << 16, _socket.CMSG_LEN(8))
    sock.close()
    fds = array.array("i")
    for level, kind, data in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    if not msg or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        return None  # the parent went away (or sent nonsense): nothing to do
    lines = msg.decode().split("\n")
    return [*lines, f"ckpt_fd={fds[0]}", f"memfd={fds[1]}"]


def main() -> None:
    """A spawned worker: the config in ``argv``, the filter program on stdin."""
    run(sys.argv[1:], None)


def serve(sock_fd: int, program: bytes) -> None:
    """A worker forked by the zygote (:mod:`.zygote`): wait for the request on ``sock_fd``,
    then run it with the filter program the zygote read once (inherited in memory)."""
    request = _wait_for_request(sock_fd)
    if request is not None:
        run(request, program)


def run(argv: list, program: "bytes | None") -> None:
    config = parse_config(argv)
    confine.arrange_fds(config["ckpt_fd"], config["memfd"])
    confine.set_limits(config["memory_bytes"], config["cpu_seconds"], config["memfd_capacity"])
    allowlist.admit_extra(config["extra_globals"])
    _preload(config)
    if program is None:
        program = sys.stdin.buffer.read()
    if config["seccomp"]:
        try:
            confine.install_filter(program)
        except OSError as exc:
            _emit(_error(p.ERR_SECCOMP, str(exc)))
            return
    try:
        result = parse(config)
    except Refused as exc:
        result = _error(p.ERR_UNSAFE_GLOBAL, str(exc), module=exc.module, name=exc.name)
    except Unsupported as exc:
        result = _error(p.ERR_UNSUPPORTED, str(exc))
    except MemoryError:
        result = _error(p.ERR_MEMORY, "the child ran out of its memory limit")
    except RecursionError:
        result = _error(p.ERR_MALFORMED, "structure nested too deeply")
    except Malformed as exc:
        result = _error(p.ERR_MALFORMED, str(exc))
    except Exception as exc:  # malformed input of any kind is an answer, not a crash
        result = _error(p.ERR_MALFORMED, f"{type(exc).__name__}: {exc}")
    _emit(result)
    # The answer is out: skip the interpreter's teardown (milliseconds the parent would wait).
    sys.stderr.flush()
    os._exit(0)
