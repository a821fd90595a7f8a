"""The sandbox child: ``python -I -S -B -c 'import worker; worker.main()' key=value ...``.

Standard library only, and only its cheap C-backed parts (start-up time is on every load's
critical path). Order matters and is the point of this file:
1. import everything the parse needs (nothing can be imported once the filter is in);
2. move the inherited descriptors to fixed numbers, set rlimits;
3. read the BPF program from stdin and install it (or report that it cannot be);
4. only then read the first byte of the checkpoint.
The answer (a :mod:`protocol` description, or an error) is JSON on stdout.
"""

import _json
import _socket
import array
import io
import os
import sys

import confine
import describe
import readers
import unpickler
from protocol import DTYPE_SIZES, STORAGE_DTYPES, VERSION

# The C encoder behind json.dumps, without importing json (which imports re).
_encode = _json.make_encoder(
    None, None, _json.encode_basestring_ascii, None, ":", ",", False, False, True
)
INT_KEYS = (
    "ckpt_fd",
    "memfd",
    "size",
    "memfd_capacity",
    "pickle_cap",
    "memory_bytes",
    "cpu_seconds",
    "seccomp",
)


def parse_config(argv: list) -> dict:
    config: dict = {"probe": "", "extra_globals": ()}
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in INT_KEYS:
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
    return {"version": VERSION, "error": {"kind": kind, "message": message, **extra}}


def parse(config: dict) -> dict:
    fmt = config["format"]
    out = readers.Output(confine.MEMFD_FD, config["memfd_capacity"])
    if fmt == "torch-zip":
        root = readers.read_zip(confine.CKPT_FD, config["size"], out, config["pickle_cap"])
    else:
        raw = io.FileIO(confine.CKPT_FD, "rb", closefd=False)
        f = io.BufferedReader(raw, buffer_size=1 << 16)
        if fmt == "torch-tar":
            root = readers.read_tar(f, confine.CKPT_FD, out)
        else:
            root = readers.read_legacy(f, confine.CKPT_FD, out)
    if config["probe"]:
        _probe(config["probe"])
    d = describe.Describer(out.write_bytes)
    root_id = d.describe(root)
    return {
        "version": VERSION,
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
        os.write(confine.CKPT_FD, b"x")
    elif what == "exec_memory":
        mmap = sys.modules["mmap"]
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC)


def _preload(config: dict) -> None:
    """Imports some paths need, done now: after the filter, importing is itself forbidden."""
    if config["format"] == "torch-tar":
        import tarfile  # noqa: F401
    if config["probe"]:
        import _socket  # noqa: F401
        import mmap  # noqa: F401


def _wait_for_request(argv: list) -> "list | None":
    """Spare mode: block until the parent sends the config and the two descriptors."""
    sock_fd = int(next(a for a in argv if a.startswith("sock=")).partition("=")[2])
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
    argv = sys.argv[1:]
    if "spare=1" in argv:
        request = _wait_for_request(argv)
        if request is None:
            return
        argv = request
    config = parse_config(argv)
    confine.arrange_fds(config["ckpt_fd"], config["memfd"])
    confine.set_limits(config["memory_bytes"], config["cpu_seconds"], config["memfd_capacity"])
    unpickler.configure(STORAGE_DTYPES, tuple(DTYPE_SIZES), config["extra_globals"])
    _preload(config)
    program = sys.stdin.buffer.read()
    if config["seccomp"]:
        try:
            confine.install_filter(program)
        except OSError as exc:
            _emit(_error("seccomp_unavailable", str(exc)))
            return
    try:
        result = parse(config)
    except unpickler.Refused as exc:
        result = _error("unsafe_global", str(exc), module=exc.module, name=exc.name)
    except unpickler.Unsupported as exc:
        result = _error("unsupported", str(exc))
    except MemoryError:
        result = _error("memory", "the child ran out of its memory limit")
    except RecursionError:
        result = _error("malformed", "structure nested too deeply")
    except Exception as exc:  # malformed input of any kind is an answer, not a crash
        result = _error("malformed", f"{type(exc).__name__}: {exc}")
    _emit(result)


if __name__ == "__main__":
    main()
