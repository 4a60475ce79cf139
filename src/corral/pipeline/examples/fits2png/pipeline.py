"""The example's event table: next_file → read → equalise → save."""

from __future__ import annotations

from typing import ClassVar

from corral.pipeline import BasePipeline
from corral.pipeline.pipeline import TableEntry


class Fits2PngPipeline(BasePipeline):
    event_table: ClassVar[dict[str, TableEntry]] = {
        "next_file": ("simple_fits_reader", "file_ingested", "file_ingested"),
        "file_ingested": ("histogram_equalizer", "equalized", "equalized"),
        "equalized": ("save_png", "saved", None),
    }
    primitive_path: ClassVar[tuple[str, ...]] = ("corral.pipeline.examples.fits2png.primitives",)
