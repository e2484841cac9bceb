"""The model as the solver and the rewrite see it: loaded, shaped, its dataflow known, costed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from onnxsplit.costgraph import CostGraph
from onnxsplit.graphinfo import GraphInfo
from onnxsplit.model import Model
from onnxsplit.shapes import TensorType


@dataclass(frozen=True)
class Loaded:
    """A normalised model at fixed input shapes, every tensor the rewrite may hand off typed."""

    model: Model
    info: GraphInfo
    types: Mapping[str, TensorType]
    shapes: Mapping[str, tuple[int, ...]]  # every model input's concrete shape
    # The user's representative inputs (name -> value), when given: what probes run on.
    feeds: Mapping[str, Any] | None = field(default=None, kw_only=True, compare=False, repr=False)


@dataclass(frozen=True)
class Prepared(Loaded):
    """A loaded model with its cost graph (node ids of ``graph`` are ``info``'s node indices)."""

    graph: CostGraph
