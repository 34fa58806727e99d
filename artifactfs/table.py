"""``Table``: the one W&B media type ``Artifact.add``/``get`` store, in W&B's own file format.

``artifact.add(Table(columns=[...], data=[...]), "name")`` writes ``name.table.json`` as the
SDK writes a table into an artifact: a JSON object with ``_type: "table"``, ``columns``,
``data`` (rows), ``ncols``, ``nrows``, ``column_types`` (W&B's ``typedDict`` of per-column types)
and ``log_mode``, keys sorted.  So the SDK's ``artifact.get("name")`` reads a table logged here,
and ``Artifact.get`` here reads one logged by the SDK (its plain JSON values; media cells such as
images, which would need the other media types, are refused with a clear error).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .errors import InvalidArgument

SUFFIX = ".table.json"
LOG_TYPE = "table"


def _cell_type(value: Any) -> str:
    """W&B's name for the JSON type of a cell (its ``_dtypes`` registry names)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    raise InvalidArgument(
        f"Table cell {value!r} of type {type(value).__name__} is not supported: artifactfs tables hold "
        "numbers, strings, booleans and None (W&B media cells such as images are not implemented)"
    )


def _type_json(names: set[str]) -> dict[str, Any]:
    if not names:
        return {"wb_type": "none"}
    if len(names) == 1:
        return {"wb_type": next(iter(names))}
    return {"wb_type": "union", "params": {"allowed_types": [{"wb_type": n} for n in sorted(names)]}}


class Table:
    """A table of rows, as ``wandb.Table(columns=..., data=...)``.

    Cells may be numbers, strings, booleans or None.  ``Table(dataframe=df)`` takes a pandas
    DataFrame's columns and rows when pandas is installed."""

    def __init__(
        self,
        columns: Sequence[str] | None = None,
        data: Iterable[Sequence[Any]] | None = None,
        rows: Iterable[Sequence[Any]] | None = None,
        dataframe: Any = None,
        *,
        allow_mixed_types: bool = False,
    ) -> None:
        if dataframe is not None:
            columns = [str(c) for c in dataframe.columns]
            data = dataframe.itertuples(index=False, name=None)
        rows_in = data if data is not None else rows
        self.data: list[list[Any]] = [list(r) for r in rows_in] if rows_in is not None else []
        if columns is None:
            width = len(self.data[0]) if self.data else 0
            columns = [f"Column {i}" for i in range(1, width + 1)]
        self.columns: list[str] = [str(c) for c in columns]
        if len(set(self.columns)) != len(self.columns):
            raise InvalidArgument(f"Table columns must be unique: {self.columns}")
        self.allow_mixed_types = allow_mixed_types
        for row in self.data:
            self._check_row(row)

    def _check_row(self, row: Sequence[Any]) -> None:
        if len(row) != len(self.columns):
            raise InvalidArgument(f"Table row {list(row)!r} has {len(row)} cells, expected {len(self.columns)}")
        for cell in row:
            _cell_type(cell)
            if isinstance(cell, float) and not math.isfinite(cell):
                raise InvalidArgument(f"Table cell {cell!r} is not a finite number (JSON cannot hold it)")

    def add_data(self, *values: Any) -> None:
        row = list(values)
        self._check_row(row)
        self.data.append(row)

    def get_column(self, name: str) -> list[Any]:
        try:
            index = self.columns.index(name)
        except ValueError as exc:
            raise InvalidArgument(f"Table has no column {name!r}") from exc
        return [row[index] for row in self.data]

    def iterrows(self) -> Iterator[tuple[int, list[Any]]]:
        yield from enumerate(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Table) and self.columns == other.columns and self.data == other.data

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by content

    def __repr__(self) -> str:
        return f"<Table {len(self.columns)} columns, {len(self.data)} rows>"

    @staticmethod
    def with_suffix(name: str) -> str:
        return name if name.endswith(SUFFIX) else name + SUFFIX

    def to_json(self) -> dict[str, Any]:
        type_map: dict[str, Any] = {}
        for index, column in enumerate(self.columns):
            type_map[column] = _type_json({_cell_type(row[index]) for row in self.data})
        return {
            "_type": LOG_TYPE,
            "columns": list(self.columns),
            "data": [list(r) for r in self.data],
            "ncols": len(self.columns),
            "nrows": len(self.data),
            "column_types": {"wb_type": "typedDict", "params": {"type_map": type_map}},
            "log_mode": "IMMUTABLE",
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, obj: Any) -> Table:
        if not isinstance(obj, dict) or obj.get("_type") not in (LOG_TYPE, "table-file"):
            raise InvalidArgument("not a W&B table file (its _type is not 'table')")
        columns, data = obj.get("columns"), obj.get("data")
        if not isinstance(columns, list) or not isinstance(data, list):
            raise InvalidArgument("W&B table file without columns or data")
        for row in data:
            for cell in row if isinstance(row, list) else [row]:
                if isinstance(cell, dict):
                    raise InvalidArgument(
                        f"table cell of W&B type {cell.get('_type')!r} is not supported: "
                        "artifactfs reads tables of numbers, strings, booleans and None"
                    )
        return cls(columns=columns, data=data, allow_mixed_types=True)
