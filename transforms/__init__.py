"""Beam transforms and the pure functions under them, by stage: ``read/`` -> ``decode/`` -> ``embed/`` -> ``write/``.

Beside the stages: ``schema/`` is the output contract and the elements passed between stages; ``keys/`` answers
per-key questions on the workers (fingerprints, spilled packs, done keys, de-duplication); ``worker/`` is what a
worker process readies once (storage, quiet logs, freed memory). Importing changes no global state
(``transforms.worker.process.WorkerDoFn`` readies a worker process where work starts).
"""
