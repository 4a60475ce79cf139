"""Equalises an image's histogram into 8-bit levels."""

from __future__ import annotations

from typing import Any

from corral.pipeline import Arguments, BasePrimitive


class HistogramEqualizer(BasePrimitive):
    def _perform(self) -> Any:
        import numpy as np

        image = np.nan_to_num(self.action.args.image)
        levels, inverse, counts = np.unique(image.ravel(), return_inverse=True, return_counts=True)
        cdf = np.cumsum(counts).astype("float64")
        span = cdf[-1] - cdf[0]
        scaled = (cdf - cdf[0]) / span * 255 if span else np.zeros_like(cdf)
        equalized = scaled[inverse].reshape(image.shape).astype("uint8")
        return Arguments(name=self.action.args.name, image=equalized, levels=len(levels))
