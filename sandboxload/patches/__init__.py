"""One module per patched library; each adapts signatures and calls :mod:`sandboxload.loader`."""
