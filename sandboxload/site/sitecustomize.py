# Put on PYTHONPATH by `python -m sandboxload --site-dir`: runs the sitecustomize this one
# shadows, then activates sandboxload.
import os

_here = os.path.dirname(os.path.abspath(__file__))
try:
    from sandboxload.bootstrap import run_sitecustomize
except ModuleNotFoundError as _exc:
    if _exc.name != "sandboxload":
        raise
    # An interpreter without sandboxload sees this directory (a PYTHONPATH meant for another
    # environment): one line that says so, not a traceback; the shadowed file still runs.
    import sys
    from importlib.machinery import PathFinder
    from importlib.util import module_from_spec

    sys.stderr.write(
        f"sandboxload: {sys.executable} cannot import sandboxload, so model loads in it are "
        "NOT protected; install sandboxload in this environment, or drop "
        f"{_here} from PYTHONPATH\n"
    )
    _rest = [p for p in sys.path if os.path.realpath(p or os.curdir) != os.path.realpath(_here)]
    _spec = PathFinder.find_spec("sitecustomize", _rest)
    if _spec is not None and _spec.loader is not None:
        _spec.loader.exec_module(module_from_spec(_spec))
else:
    run_sitecustomize(_here)
