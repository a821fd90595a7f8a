"""``sandboxload convert``: pickle checkpoint -> safetensors, parsed only in the sandbox.

Reserved: not built yet (the dispatcher in :mod:`sandboxload.cli` says so and exits 2). It
will take :func:`sandboxload.routes.route` for each file, as ``scan`` does.
"""
