"""One JSON object per load decision.

Lines go to the ``SANDBOXLOAD_AUDIT_LOG`` target (a path, or ``-`` for stderr) and to the
``sandboxload.audit`` logger. Each line is written with a single ``write`` on an ``O_APPEND``
descriptor, so processes sharing one file never interleave partial lines.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

from .errors import PolicyError

logger = logging.getLogger("sandboxload.audit")


def record(target: str | None, **fields: Any) -> None:
    """Emit one decision. ``fields`` should hold file, format, decision, reason, bytes, ms."""
    entry = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "pid": os.getpid(),
        **fields,
    }
    line = json.dumps(entry, separators=(",", ":"), default=str)
    logger.info(line)
    if target is None:
        return
    data = (line + "\n").encode()
    if target == "-":
        sys.stderr.flush()
        os.write(sys.stderr.fileno(), data)
        return
    try:
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise PolicyError(
            f"SANDBOXLOAD_AUDIT_LOG={target!r}: cannot open the audit log ({exc.strerror}); "
            "point it at a writable file or '-' for stderr"
        ) from exc
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
