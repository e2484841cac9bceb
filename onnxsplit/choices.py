"""The names a user chooses among: cost sources, solvers, objectives, file formats, export backends.

Kept free of imports so that the command line can offer them as flag choices
without loading the modules that implement them (numpy, onnx, python-mip).
The library takes its lists from here too, so a flag and the function it
reaches accept the same names.
"""

from __future__ import annotations

from typing import Literal

Costs = Literal["measure", "estimate"]

# How node times are found: measured with onnxruntime's profiler, or estimated from FLOPs and bytes.
COSTS: tuple[Costs, ...] = ("measure", "estimate")

# Every solver of onnxsplit.solve.select.REGISTRY, in its order.
SOLVERS: tuple[str, ...] = ("auto", "dp", "ip", "linear", "greedy", "local", "expert")

# Solvers whose plans are contiguous, so that their stages form a pipeline that `split` can cut.
CONTIGUOUS_SOLVERS: tuple[str, ...] = ("auto", "dp", "ip", "linear", "greedy")

# The values of onnxsplit.solve.plan.Objective.
OBJECTIVES: tuple[str, ...] = ("throughput", "latency")

# Which phase of a decoder a split is costed for (auto: decode for a decoder with a KV cache, else prefill).
PHASES: tuple[str, ...] = ("auto", "prefill", "decode", "both")

# python-mip backends for the integer programs.
MIP_SOLVERS: tuple[str, ...] = ("cbc", "highs")

# Cost-graph file formats: onnxsplit's own, and the reference graphs' (the paper's).
COSTGRAPH_FORMATS: tuple[str, ...] = ("onnxsplit", "paper")

# How a split's stages run: threads in this process, or Ray actors (on one machine or a cluster).
ENGINES: tuple[str, ...] = ("inproc", "ray")

# Ray placement-group strategies for the stages' bundles, as the command line spells them.
PLACEMENTS: tuple[str, ...] = ("pack", "spread", "strict-spread")

__all__ = ["COSTGRAPH_FORMATS", "COSTS", "CONTIGUOUS_SOLVERS", "Costs", "ENGINES", "MIP_SOLVERS", "OBJECTIVES",
           "PHASES", "PLACEMENTS", "SOLVERS"]

# What runs each stage of an exported Triton model repository: Triton's onnxruntime backend, or its Python backend.
TRITON_BACKENDS: tuple[str, ...] = ("onnxruntime", "python")

# max_batch_size of an exported Triton repository whose models share a symbolic batch dim.
TRITON_MAX_BATCH = 8
