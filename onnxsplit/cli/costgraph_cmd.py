"""`onnxsplit costgraph`: write the solver's view of a model."""

from __future__ import annotations

import argparse
from pathlib import Path

from onnxsplit.cli.common import parse_devices
from onnxsplit.shapes import parse_input_shapes


def add_parser(sub) -> None:
    p = sub.add_parser("costgraph", help="write a model's cost graph (onnxsplit or paper format)")
    p.add_argument("model", help="the ONNX model")
    p.add_argument("--devices", default="1", help="number of identical devices, or a devices.toml file")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME:DxD", help="fix an input's shape")
    p.add_argument("--costs", default="measure", choices=("measure", "estimate"), help="how node times are found")
    p.add_argument("--profile", default=None, help="use this profile.json for node times")
    p.add_argument("--format", default="onnxsplit", choices=("onnxsplit", "paper"), help="file format")
    p.add_argument("-o", "--output", required=True, help="file to write")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from onnxsplit.costgraph_io import dump_costgraph
    from onnxsplit.fileio import write_json_atomic
    from onnxsplit.splitting import prepare

    devices = parse_devices(args.devices)
    prepared = prepare(args.model, devices, input_shapes=parse_input_shapes(args.input_shape), costs=args.costs,
                       profile_path=args.profile)
    write_json_atomic(Path(args.output), dump_costgraph(prepared.graph, devices, fmt=args.format))
    g = prepared.graph
    print(f"wrote {args.output}: {g.n} nodes, {len(g.tensors)} tensors, {len(g.groups)} co-location groups")
    return 0
