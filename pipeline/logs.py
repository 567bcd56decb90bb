"""Logging for every command: text for people, or one JSON object a line for a log
pipeline (``--log-format json``). Lifecycle events are logged at INFO (start, assignment,
pause and resume, breaker, stall, shutdown); nothing is logged per event at INFO."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Literal

import orjson

LogFormat = Literal["text", "json"]
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


WORKER = os.environ.get("PIPELINE_WORKER")  # set by `pipeline run --workers N` in each worker


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message"[, "worker"][, "exception"]}``, one line each."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if WORKER is not None:
            entry["worker"] = int(WORKER)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def setup(level: str, fmt: LogFormat = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        worker = f" [worker {WORKER}]" if WORKER is not None else ""
        formatter = logging.Formatter(TEXT_FORMAT.replace(" %(name)s", f"{worker} %(name)s"))
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # its INFO is per connection
