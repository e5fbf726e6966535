"""The outcome of validating frames against a pandera contract: counts by check and a sample
of failure cases, as the blocking checks of the raw tables and of the marts report them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pandera.errors
import pandera.pandas as pa

FAILURE_SAMPLE_ROWS = 10


@dataclass
class ContractResult:
    """Validation of one or more frames against a contract, accumulated."""

    rows: int = 0
    failures: int = 0
    failures_by_check: dict[str, int] = field(default_factory=dict)
    failure_sample: list[dict[str, str]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.failures == 0

    def validate(self, schema: pa.DataFrameSchema, frame: pd.DataFrame) -> None:
        """Validate ``frame`` lazily (every failure, not the first) and add what failed."""
        self.rows += len(frame)
        try:
            schema.validate(frame, lazy=True)
        except pandera.errors.SchemaErrors as exc:
            cases = exc.failure_cases
            self.failures += len(cases)
            for check, n in cases["check"].astype(str).value_counts().items():
                self.failures_by_check[str(check)] = self.failures_by_check.get(
                    str(check), 0
                ) + int(n)
            room = FAILURE_SAMPLE_ROWS - len(self.failure_sample)
            sample = cases.head(max(room, 0))[["column", "check", "failure_case", "index"]]
            self.failure_sample += [
                {k: str(v) for k, v in row.items()} for row in sample.to_dict("records")
            ]

    def metadata(self) -> dict[str, Any]:
        """Failure counts and sample as check metadata (Dagster reads dicts and lists as JSON)."""
        return {
            "failures": self.failures,
            "failures_by_check": self.failures_by_check,
            "failure_sample": self.failure_sample,
        }
