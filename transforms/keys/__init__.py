"""Per-key questions answered on the workers, never in one process: keys as fingerprints packed by bucket
(``fingerprints``), packs spilled to scratch files (``spill``), the keys an earlier run committed (``done_keys``)
and each key once (``dedupe``)."""
