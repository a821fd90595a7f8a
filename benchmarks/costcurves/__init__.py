"""Cost curves of sandboxload against the loaders it guards, in one run (``benchmarks/run``).

Modules: :mod:`routes` (what is compared with what), :mod:`checkpoints` (the files),
:mod:`probe` (what runs in each fresh interpreter), :mod:`measure` (running the probes),
:mod:`services` (SentenceTransformer, infinity, start-up), :mod:`report` and :mod:`plots`
(the outputs), :mod:`cli` (the command).
"""
