"""Reads a FITS image (its first HDU with data) into the arguments of the next event."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corral.pipeline import Arguments, BasePrimitive


class SimpleFitsReader(BasePrimitive):
    def _pre_condition(self) -> bool:
        name = getattr(self.action.args, "name", "")
        return Path(name).is_file()

    def _perform(self) -> Any:
        from astropy.io import fits

        name = self.action.args.name
        with fits.open(name) as hdus:
            data = next(hdu.data for hdu in hdus if hdu.data is not None)
            return Arguments(name=name, image=data.astype("float64"))
