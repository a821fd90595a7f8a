# Put on PYTHONPATH by `python -m sandboxload --site-dir`: runs the sitecustomize this one
# shadows, then activates sandboxload.
import os

from sandboxload.bootstrap import run_sitecustomize

run_sitecustomize(os.path.dirname(os.path.abspath(__file__)))
