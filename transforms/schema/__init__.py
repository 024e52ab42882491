"""The output contract, one module a part, so that writers, readers, the trainer and tests cannot drift apart
(like a TFX feature spec): ``layout`` (the names inside OUTDIR), ``fields`` (what a record holds and how keys are
made), ``example`` and ``parquet`` (the two shard codecs), ``framing`` (TFRecord framing), ``manifest`` (the set
as a whole), and ``elements`` (what flows between the stages: a raw ``Record``, a ``Failure``).
"""
