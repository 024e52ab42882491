"""A feature record as a Parquet row (``--format parquet``): ``key``, ``label`` and ``split`` (strings, null when
absent) and one ``FixedSizeList<float32>`` (or ``<float16>``) column per output, named as the output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from transforms.schema.fields import KEY, LABEL, SPLIT, OutputSpec
from transforms.schema.layout import FORMAT_VERSION

__all__ = ["arrow_schema", "arrow_table", "iter_parquet"]


def arrow_schema(outputs: Sequence[OutputSpec]):
    """The Parquet shards' schema: key, label, split, then one fixed-size list column per output."""
    import pyarrow as pa

    fields = [pa.field(KEY, pa.string(), nullable=False), pa.field(LABEL, pa.string()), pa.field(SPLIT, pa.string())]
    for out in outputs:
        value = pa.float16() if out.dtype == "float16" else pa.float32()
        fields.append(pa.field(out.name, pa.list_(value, out.dim), nullable=False))
    return pa.schema(fields, metadata={b"featurebeam.format_version": str(FORMAT_VERSION).encode()})


def arrow_table(keys: Sequence[str], labels: Sequence[str | None], splits: Sequence[str | None],
                vectors: Mapping[str, np.ndarray], outputs: Sequence[OutputSpec]):
    """Rows of a Parquet shard; ``vectors[name]`` is an ``(n, dim)`` array per output."""
    import pyarrow as pa

    columns = [pa.array(list(keys), pa.string()), pa.array(list(labels), pa.string()),
               pa.array(list(splits), pa.string())]
    for out in outputs:
        x = np.asarray(vectors[out.name], np.float32).reshape(len(keys), out.dim)
        flat = x.reshape(-1).astype(np.float16 if out.dtype == "float16" else np.float32)
        columns.append(pa.FixedSizeListArray.from_arrays(pa.array(flat), out.dim))
    return pa.Table.from_arrays(columns, schema=arrow_schema(outputs))


def iter_parquet(path: str, outputs: Sequence[OutputSpec], batch_rows: int = 4096):
    """``(keys, labels, splits, {output: (n, dim) float32})`` blocks of one Parquet shard, a row group at a time
    (local, gs:// or s3://, through Beam's FileSystems)."""
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path, compression_type="uncompressed") as f:
        reader = pq.ParquetFile(f)
        names = list(reader.schema_arrow.names)
        missing = [c for c in (KEY, LABEL, SPLIT, *(o.name for o in outputs)) if c not in names]
        if missing:
            raise ValueError(f"{path} has no column {missing[0]!r}")
        for batch in reader.iter_batches(batch_size=batch_rows, columns=[KEY, LABEL, SPLIT] +
                                         [o.name for o in outputs]):
            n = batch.num_rows
            vectors = {}
            for out in outputs:
                column = batch.column(out.name)
                values = column.flatten().to_numpy(zero_copy_only=False)
                if len(values) != n * out.dim:
                    raise ValueError(f"{path}: output {out.name!r} does not hold {out.dim} values a row")
                vectors[out.name] = values.astype(np.float32).reshape(n, out.dim)
            yield (batch.column(KEY).to_pylist(), batch.column(LABEL).to_pylist(), batch.column(SPLIT).to_pylist(),
                   vectors)
