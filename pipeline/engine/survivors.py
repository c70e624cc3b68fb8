"""What the global phases decided about a part's rows, and which rows are still in.

Each global stage (exact dedup, near dedup, alignment, diversity) leaves per-part results: the rows it
dropped (reason, detail) and columns it gives the rows it kept. Enrichments (OCR, synthetic captions) only
add columns. Later phases read a part's survivors through `surviving_batches`, finalize joins everything.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from vlmforge.common.storage import parquet_file, read_parquet, read_parquet_schema
from vlmforge.pipeline.cache.layout import Layout
from vlmforge.pipeline.engine.executor import resolve
from vlmforge.pipeline.registry import GLOBAL, PHASES, Phase

DROP_SCHEMA = pa.schema(
    [("id", pa.string()), ("stage", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)
# Enrichments: model passes that add columns to the rows that will be written, and drop nothing.
ENRICHMENTS = tuple(p for p in PHASES if p.model and p.stage)


def stage_results(layout: Layout, stage: Phase, part: str) -> pa.Table | None:
    """One part's results of `stage`: id, reason (null = kept), detail and the stage's columns; None when
    the stage is not in the recipe or has not run."""
    if not layout.has(stage.name):
        return None
    if stage.name == "exact_dedup":
        from vlmforge.pipeline.dedup.exact import losers_of_part

        return losers_of_part(layout.dir(stage.name), part) if layout.dir(stage.name).is_dir() else None
    path = layout.dir(stage.name) / f"{part}.parquet"
    return read_parquet(path) if path.is_file() else None


def results_of_part(
    layout: Layout, part: str, stages: tuple[Phase, ...] = GLOBAL
) -> list[tuple[Phase, pa.Table]]:
    """The results of each of `stages` that ran, for one part, each read once."""
    found = [(stage, stage_results(layout, stage, part)) for stage in stages]
    return [(stage, results) for stage, results in found if results is not None and results.num_rows]


def dropped_rows(results: list[tuple[Phase, pa.Table]]) -> pa.Table:
    """(id, stage, reason, detail) of the rows the stages' `results` dropped, earliest stage first."""
    pieces = [DROP_SCHEMA.empty_table()]
    for stage, table in results:
        dropped = table.filter(pc.is_valid(table["reason"]))
        stage_col = pa.array([stage.name] * dropped.num_rows, pa.string())
        pieces.append(
            pa.table([dropped["id"], stage_col, dropped["reason"], dropped["detail"]], schema=DROP_SCHEMA)
        )
    return pa.concat_tables(pieces)


def surviving_batches(
    layout: Layout, part: str, columns: list[str], stages: tuple[Phase, ...], batch_rows: int = 1024
) -> Iterator[pa.Table]:
    """The part's phase-1 rows that `stages` kept, `columns` only, in batches."""
    dropped = dropped_rows(results_of_part(layout, part, stages))["id"]
    for batch in parquet_file(layout.phase1(part)[0]).iter_batches(batch_size=batch_rows, columns=columns):
        table = pa.Table.from_batches([batch])
        if len(dropped):
            table = table.filter(pc.invert(pc.is_in(table["id"], value_set=dropped)))
        if table.num_rows:
            yield table


def surviving_rows(layout_json: str, part: str, columns: list[str], stages: tuple[Phase, ...]) -> pa.Table:
    """All of `surviving_batches` as one table (for text columns; picklable as a partial for Ray tasks, with
    the layout's JSON or a reference to it from `executor.put`)."""
    layout = Layout.from_json(resolve(layout_json))
    schema = read_parquet_schema(layout.phase1(part)[0])
    empty = pa.schema([schema.field(c) for c in columns]).empty_table()
    return pa.concat_tables([empty, *surviving_batches(layout, part, columns, stages)])


def kept_columns(layout: Layout, part: str, results: list[tuple[Phase, pa.Table]]) -> list[pa.Table]:
    """The kept-row columns the global stages' `results` and every finished enrichment give this part
    (id first)."""
    tables = [table.select(["id", *stage.adds]) for stage, table in results if stage.adds]
    for phase in ENRICHMENTS:
        path = layout.dir(phase.name) / f"{part}.parquet" if layout.has(phase.name) else None
        if path is not None and path.is_file():
            tables.append(read_parquet(path, columns=["id", *phase.adds]))
    return tables


def attach(table: pa.Table, annotations: list[pa.Table]) -> pa.Table:
    """`table` with each annotation's columns joined by id (null where an annotation has no row)."""
    for ann in annotations:
        idx = pc.index_in(table["id"], value_set=ann["id"])
        for name in ann.column_names[1:]:
            col = pc.take(ann[name], idx)
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, col)
            else:
                table = table.append_column(name, col)
    return table
