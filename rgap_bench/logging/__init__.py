"""Run tracking (W&B or nothing), result files and terminal summaries."""

from rgap_bench.logging.base import NullLogger, RunLogger
from rgap_bench.logging.console import print_layer_table, print_summary
from rgap_bench.logging.factory import make_logger
from rgap_bench.logging.files import (
    ImageRow,
    atomic_write,
    save_comparison,
    save_image_rows,
    to_jsonable,
    write_json,
)

__all__ = [
    "ImageRow",
    "NullLogger",
    "RunLogger",
    "atomic_write",
    "make_logger",
    "print_layer_table",
    "print_summary",
    "save_comparison",
    "save_image_rows",
    "to_jsonable",
    "write_json",
]
