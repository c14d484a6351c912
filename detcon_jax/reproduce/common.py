"""The reproduction's error type, console log and JSON files."""

from __future__ import annotations

import datetime
import json
import os
import statistics
from collections.abc import Sequence
from typing import Any


class ReproduceError(RuntimeError):
    """A bad argument, missing data or a failed stage; reported as one ``error:`` line."""


def log(message: str) -> None:
    """A time-stamped progress line on stdout."""
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[reproduce {stamp}] {message}", flush=True)


def duration(seconds: float) -> str:
    """``12m05s``."""
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s"


def read_json(path: str) -> dict[str, Any]:
    """The JSON object in ``path``, or ``{}`` when there is no such file."""
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_json(path: str, value: Any) -> None:
    """Writes ``value`` atomically (a temporary file renamed over ``path``)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2, default=str)
        f.write("\n")
    os.replace(tmp, path)


def mean_std(values: Sequence[float]) -> dict[str, Any]:
    """``values``, their ``mean`` and sample standard deviation ``std`` (None for one value):
    a table cell over pretraining seeds."""
    return {"values": list(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else None}


def write_table(out: str, name: str, results: dict[str, Any], markdown: str) -> None:
    """Writes a table's ``OUT/NAME.json`` and ``OUT/NAME.md`` and logs where."""
    write_json(os.path.join(out, f"{name}.json"), results)
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(markdown)
    log(f"{name} table done in {duration(results['wall_time_s'])}: "
        f"{os.path.join(out, f'{name}.md')}")
