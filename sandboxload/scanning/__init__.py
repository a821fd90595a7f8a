"""``sandboxload scan`` as a gate: what to scan (:mod:`.units`), the checks of one unit
(:mod:`.check`), and the report in text, JSON lines or SARIF (:mod:`.report`, :mod:`.sarif`).
"""
