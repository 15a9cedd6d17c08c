"""`data.fields`: the file's own column names mapped onto ours (`{instruction: question, output: answer}`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gpt_finetune.errors import UserError


def check_fields(fields: Mapping[str, Any] | None, ours: Sequence[str], kind: str) -> dict[str, str]:
    """`data.fields` as {our field: the file's column}; one line for a key that is not one of `ours` (the
    fields of `kind` data) or a column that is not a name."""
    if fields is None:
        return {}
    if not isinstance(fields, Mapping):
        raise UserError(f"data.fields={fields!r} is not a mapping; write data.fields={{{ours[0]}: COLUMN}}")
    for key, column in fields.items():
        if key not in ours:
            raise UserError(
                f"data.fields: {key!r} is not a field of {kind} data; map columns onto {', '.join(ours)}"
            )
        if not isinstance(column, str) or not column:
            raise UserError(f"data.fields.{key}={column!r}: give the file's column name as a string")
    return dict(fields)


def renamed(item: Any, fields: Mapping[str, str], source: str, where: str) -> Any:
    """`item` with each mapped column also under our name; a mapped column it lacks is a one-line error
    naming the columns it has. Not a dict (the reader's checks report it): `item` as it is."""
    if not fields or not isinstance(item, dict):
        return item
    for ours, column in fields.items():
        if column not in item:
            raise UserError(
                f"{source}: {where} has no column {column!r} (data.fields.{ours}){columns_of(item)}; "
                f"set data.fields.{ours} to one of them"
            )
    return {**item, **{ours: item[column] for ours, column in fields.items()}}


def columns_of(item: Mapping[str, Any]) -> str:
    """` (its columns: a, b, c)` for a message about a record's fields."""
    names = [shown_column(str(key)) for key in item]
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f" (its columns: {shown})" if names else " (it has no columns)"


def shown_column(name: str) -> str:
    """`name` as it is, or quoted with its escapes where it would not show plainly in a one-line message
    (empty, a line break, edge spaces)."""
    return name if name and name.isprintable() and name == name.strip() else repr(name)
