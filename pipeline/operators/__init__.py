"""The pipeline's RxPY operators, one module each, in dataflow order."""

from pipeline.operators.batch import batch
from pipeline.operators.coalesce import coalesce
from pipeline.operators.enrich import enrich
from pipeline.operators.infer import infer
from pipeline.operators.parse import parse
from pipeline.operators.window import window

__all__ = ["batch", "coalesce", "enrich", "infer", "parse", "window"]
