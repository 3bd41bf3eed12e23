"""A sensor's memory between ticks, which Dagster stores as a string: every sensor's is a typed model written as
JSON, read back with `parse` (an empty or missing cursor is a fresh one)."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel


class Cursor(BaseModel):
    @classmethod
    def parse(cls, raw: str | None) -> Self:
        return cls.model_validate_json(raw) if raw else cls()

    def dump(self) -> str:
        return self.model_dump_json()
