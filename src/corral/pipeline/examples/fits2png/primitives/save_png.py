"""Saves the equalised image as ``<output_directory>/<name>.png``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from corral.pipeline import Arguments, BasePrimitive


class SavePng(BasePrimitive):
    def _perform(self) -> Any:
        from PIL import Image

        out = Path(self.config.output_directory)
        out.mkdir(parents=True, exist_ok=True)
        target = out / (Path(self.action.args.name).name.split(".")[0] + ".png")
        # written aside, then renamed: a PNG is there whole, or not at all
        partial = target.with_suffix(".png.part")
        Image.fromarray(self.action.args.image[::-1]).save(partial, format="PNG")
        partial.rename(target)
        self.logger.info("saved %s", target)
        return Arguments(name=str(target))

    def _post_condition(self) -> bool:
        return True
