"""`onnxsplit costgraph`: write the solver's view of a model."""

from __future__ import annotations

import argparse
from typing import Any

from onnxsplit.cli import common
from onnxsplit.cli.split_cmd import add_phase_flags, add_state_flags, phase_options, state_options


def add_parser(sub) -> None:
    p = sub.add_parser("costgraph", help="write a model's cost graph (onnxsplit or paper format)")
    p.add_argument("model", help="the ONNX model")
    common.add_devices(p)
    common.add_inputs(p)
    common.add_costs(p)
    add_phase_flags(p)
    add_state_flags(p)
    p.add_argument("--format", default=common.COSTGRAPH_FORMATS[0], choices=common.COSTGRAPH_FORMATS,
                   help="file format (default onnxsplit)")
    common.add_output(p, what="file to write (default: print the cost graph on stdout)", required=False)
    common.add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    out = None if args.output is None else common.check_output_file(args.output, force=args.force)
    from onnxsplit.costgraph_io import dump_costgraph
    from onnxsplit.fileio import write_json_atomic
    from onnxsplit.splitting import cost_model

    devices = common.parse_devices(args.devices, memory=args.device_memory)
    options: dict[str, Any] = dict(costs=args.costs, profile_path=args.profile, **phase_options(args),
                                   **state_options(args))
    if args.inputs is not None:
        options["inputs"] = args.inputs
    with common.status("profiling and building the cost graph..."):
        prepared = cost_model(args.model, devices, input_shapes=common.input_shapes(args.input_shape),
                              **options).prepared
    doc = dump_costgraph(prepared.graph, devices, fmt=args.format)
    if out is None:  # the graph itself is the result: one JSON document, --json or not
        common.print_json(doc)
        return 0
    with common.writing(out):
        write_json_atomic(out, doc)
    g = prepared.graph
    summary = {"output": str(out), "format": args.format, "nodes": g.n, "tensors": len(g.tensors),
               "groups": len(g.groups)}
    if args.json:
        common.print_json(summary)
    else:
        print(f"wrote {out}: {g.n} nodes, {len(g.tensors)} tensors, {len(g.groups)} co-location groups")
    return 0
