"""Event-driven pipelines, the DRP framework's model over corral's shared, durable queue.

A pipeline declares an event table (event → action, new state, next event); primitives check,
perform and check again; the ``Framework`` runs the loop in one process, or in many that share
a queue hosted by a queue server. A DRPF pipeline ports by changing its imports::

    from corral.pipeline import Arguments, BasePipeline, BasePrimitive, Framework
"""

from corral.pipeline.config import FrameworkConfig
from corral.pipeline.data_set import DataSet
from corral.pipeline.framework import EXIT_EVENT, Framework
from corral.pipeline.pipeline import BasePipeline, UnknownEvent, load_pipeline
from corral.pipeline.primitives import (
    Action,
    Arguments,
    BasePrimitive,
    PostConditionFailed,
    ProcessingContext,
)

__all__ = [
    "EXIT_EVENT",
    "Action",
    "Arguments",
    "BasePipeline",
    "BasePrimitive",
    "DataSet",
    "Framework",
    "FrameworkConfig",
    "PostConditionFailed",
    "ProcessingContext",
    "UnknownEvent",
    "load_pipeline",
]
