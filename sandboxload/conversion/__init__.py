"""Pickle checkpoint -> safetensors, parsed only in the sandbox and verified bit for bit.

:mod:`.tensors` turns a sandboxed load's result into the name -> tensor map safetensors can
hold (shared tensors as safetensors' own conversion treats them); :mod:`.writer` writes one
file atomically and reads it back; :mod:`.folder` converts a model folder (shards and their
index, sentence-transformers module folders) into a new folder or in place.
"""
