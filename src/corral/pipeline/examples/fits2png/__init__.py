"""The DRP framework's example: every FITS image of a directory to a PNG.

    corral pipeline run corral.pipeline.examples.fits2png -d DIR [-c config.cfg]

Each file's ingestion event reads the image (astropy), equalises its histogram, and saves a
PNG in ``output_directory`` (Pillow): the ``fits`` extra.
"""

from corral.pipeline.examples.fits2png.pipeline import Fits2PngPipeline

__all__ = ["Fits2PngPipeline"]
