"""`onnxsplit split`: cut a model into stage models for N devices."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from onnxsplit.choices import CONTIGUOUS_SOLVERS, PHASES
from onnxsplit.cli import common
from onnxsplit.errors import OutputExists, UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("split", help="split a model into one standalone ONNX model per device")
    p.add_argument("model", help="the ONNX model to split")
    common.add_devices(p)
    common.add_inputs(p)
    common.add_costs(p)
    common.add_solver(p, solvers=CONTIGUOUS_SOLVERS)
    p.add_argument("--plan", default=None, metavar="PLAN.json",
                   help="use this plan (node name -> stage, or a plan.json) instead of solving")
    add_state_flags(p)
    common.add_number(p, "--refine", kind=int, zero=True, default=0, metavar="N",
                      help="run the pipeline, rescale costs by measured stage times, re-solve; up to N rounds")
    add_phase_flags(p)
    common.add_output(p, what="folder to write stage_K.onnx, manifest.json, plan.json")
    p.add_argument("--report", default=None, metavar="REPORT.html",
                   help="also write the plan report (HTML, see `onnxsplit report`) to this file after the split")
    common.add_json(p)
    p.set_defaults(run=run)


def add_state_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("state (decoders with a KV cache)")
    g.add_argument("--state", action="append", default=[], metavar="IN:OUT",
                   help="an input fed each step with an output of the step before, kept on one stage with its "
                        "layer (repeatable; past_key_values.N.key:present.N.key and the like are found by name)")
    common.add_max_seq_len(g)
    common.add_number(g, "--max-batch", kind=int, default=None, metavar="B",
                      help="with --max-seq-len: count the caches at this batch (default: the input shapes' batch)")


def state_options(args: argparse.Namespace) -> dict[str, Any]:
    from onnxsplit.state import parse_state

    if args.max_batch is not None and args.max_seq_len is None:
        raise UsageError("--max-batch needs --max-seq-len")
    options: dict[str, Any] = {}
    if args.state:
        options["state"] = tuple(parse_state(s) for s in args.state)
    if args.max_seq_len is not None:
        options.update(max_seq_len=args.max_seq_len, max_batch=args.max_batch)
    return options


def add_phase_flags(p: argparse.ArgumentParser, *, weight: bool = True) -> None:
    """The decoder phase flags (``weight``: --decode-weight too); defaults None tell a flag the user gave."""
    p.add_argument("--phase", choices=[c for c in PHASES if c != "auto"], default=None,
                   help="the phase of a decoder with a KV cache to cost: prefill (a prompt, empty cache), decode "
                        "(one token, a cache) or both weighted (default: decode for a decoder, else prefill)")
    common.add_number(p, "--cache-length", kind=int, zero=True, default=None, metavar="L",
                      help="decode: the past length of the cache (default: from --input-shape, else 128)")
    common.add_number(p, "--prompt-length", kind=int, default=None, metavar="P",
                      help="prefill: the prompt's length in tokens (default: from --input-shape, else 32)")
    if weight:
        common.add_number(p, "--decode-weight", zero=True, default=None, metavar="W",
                          help="both: costs = W x decode + (1 - W) x prefill, W in [0, 1] (default 0.9)")


def phase_options(args: argparse.Namespace) -> dict[str, Any]:
    """The library's phase options from the flags; UsageError for a flag the chosen phase does not use."""
    phase = args.phase or "auto"
    weight = getattr(args, "decode_weight", None)
    if weight is not None and phase != "both":
        raise UsageError("--decode-weight weighs the phases of --phase both")
    if args.cache_length is not None and phase == "prefill":
        raise UsageError("--cache-length is the decode phase's; --phase prefill has an empty cache")
    if args.prompt_length is not None and phase not in ("prefill", "both"):
        raise UsageError("--prompt-length is the prefill phase's; give --phase prefill or both")
    if args.inputs is not None and (args.phase or args.cache_length is not None or args.prompt_length is not None):
        raise UsageError("--inputs fix every input shape: --phase, --cache-length and --prompt-length cannot "
                         "be combined with them")
    options: dict[str, Any] = dict(phase=phase, prompt_length=args.prompt_length, cache_length=args.cache_length)
    if weight is not None:
        if not 0 <= weight <= 1:
            raise UsageError(f"--decode-weight {weight:g}: must lie in [0, 1]")
        options["decode_weight"] = weight
    return options


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


def _manifest_state(outdir: Path) -> tuple[int, int] | None:
    """Identity of OUTDIR's manifest (inode, mtime), to tell afterwards whether a new split was put in place."""
    try:
        st = os.stat(outdir / "manifest.json")
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


def run(args: argparse.Namespace) -> int:
    if args.refine and args.plan:
        raise UsageError("--refine re-plans; it cannot be combined with --plan")
    devices = common.parse_devices(args.devices, memory=args.device_memory)
    options: dict[str, Any] = dict(devices=devices, input_shapes=common.input_shapes(args.input_shape),
                                   plan=args.plan, solver=args.solver, time_limit=args.time_limit, force=args.force,
                                   costs=args.costs, profile_path=args.profile, objective=args.objective,
                                   **phase_options(args))
    if args.inputs is not None:
        options["inputs"] = args.inputs
    options.update(state_options(args))
    outdir = Path(args.output)
    if args.report is not None:
        common.check_output_file(args.report, force=args.force, flag="--report")
    before = _manifest_state(outdir)
    try:
        rounds = []
        with common.status("profiling, solving and writing stages..."):
            if args.refine:
                from onnxsplit.refine import refine_split

                result, rounds = refine_split(args.model, outdir, rounds=args.refine, **options)
            else:
                from onnxsplit.splitting import split

                result = split(args.model, outdir, **options)
        for w in result.warnings:
            common.warn(w)
        if args.report is not None:
            _write_report(args, result)
        if args.json:
            common.print_json(_document(args, result, rounds))
        else:
            _print_tables(args, result, rounds)
    except OutputExists:
        raise UsageError(f"{outdir} already exists (use --force to replace it)") from None
    except KeyboardInterrupt:
        now = _manifest_state(outdir)
        if now is not None and now != before:
            raise common.Interrupted(f"the split in {outdir} had completed") from None
        raise
    return 0


def _write_report(args: argparse.Namespace, result) -> None:
    from onnxsplit.export.report import write_report

    report = Path(args.report)
    with common.status("writing the report..."), common.writing(report, flag="--report"):
        write_report(result.outdir, report, model_path=args.model, profile_path=args.profile, costs=args.costs,
                     devices=result.devices)


def _stage_rows(result) -> list[dict[str, Any]]:
    m = result.manifest
    bottleneck = max(m.stages, key=lambda s: s.predicted.load_ms).index
    handoff_bytes = {h.name: h.bytes_per_sample or 0 for h in m.handoffs}
    rows = []
    for s in m.stages:
        rows.append({
            "index": s.index, "device": s.device, "device_kind": s.device_kind, "nodes": s.nodes,
            "predicted_ms": s.predicted.load_ms, "weight_bytes": s.weight_bytes,
            "bytes_in": sum(handoff_bytes.get(i.name, 0) for i in s.inputs if i.producer is not None),
            "bytes_out": sum(handoff_bytes.get(o.name, 0) for o in s.outputs if o.consumers),
            "bottleneck": s.index == bottleneck,
        })
    return rows


def _document(args: argparse.Namespace, result, rounds) -> dict[str, Any]:
    plan = result.plan
    return {
        "model": str(args.model), "outdir": str(result.outdir), "solver": str(plan.solver),
        "objective": str(plan.objective), "value": plan.value, "lower_bound": plan.lower_bound, "gap": plan.gap,
        "seconds": result.seconds, "stages": _stage_rows(result), "warnings": list(result.warnings),
        "refine": [r.as_dict() for r in rounds],
        **({"state": [p.to_json() for p in result.manifest.state]} if result.manifest.state else {}),
    }


def _print_tables(args: argparse.Namespace, result, rounds) -> None:
    from rich.table import Table

    plan = result.plan
    table = Table(title=f"{args.model} -> {args.output} ({plan.solver} solver)")
    for col in ("stage", "device", "nodes", "predicted ms", "weights", "in", "out", ""):
        table.add_column(col, justify="right" if col not in ("", "device") else "left")
    for r in _stage_rows(result):
        table.add_row(str(r["index"]), f"{r['device_kind']}:{r['device']}", str(r["nodes"]),
                      f"{r['predicted_ms']:.4f}", _mb(r["weight_bytes"]), _mb(r["bytes_in"]), _mb(r["bytes_out"]),
                      "bottleneck" if r["bottleneck"] else "")
    console = common.console()
    console.print(table)
    console.print(f"predicted bottleneck {plan.value:.4f} ms (lower bound {plan.lower_bound:.4f}, gap {plan.gap:.1%}); "
                  f"split in {result.seconds:.2f} s")
    if result.manifest.state:
        per_stage = ", ".join(f"stage {s.index}: {len(result.manifest.state_of(s.index))}"
                              for s in result.manifest.stages if result.manifest.state_of(s.index))
        console.print(f"{len(result.manifest.state)} state pairs kept on their stages ({per_stage})")
    for r in rounds:
        console.print(f"refine round {r.index}: predicted bottleneck {r.predicted_bottleneck_ms:.4f} ms, measured "
                      f"{r.measured_bottleneck_ms:.4f} ms, {r.samples_per_s:.1f} samples/s" + (" (kept)" if r.kept else ""))
