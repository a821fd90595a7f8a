"""Pickle checkpoint -> safetensors, parsed only in the sandbox and verified bit for bit.

:mod:`.source` parses one checkpoint in the sandbox; :mod:`.tensors` turns the result into
the name -> tensor map safetensors can hold; :mod:`.writer` writes one file atomically and
reads it back; :mod:`.layout` plans a folder's conversion and checks it before any write
(:mod:`.content`: nothing carried over holds a pickle); :mod:`.folder` carries the plan out,
into a new folder or in place.
"""
