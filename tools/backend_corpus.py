"""Split and validate every model of the onnx package's backend test suite.

    python tools/backend_corpus.py [--sample N --seed S] [--jobs J] [--timeout S]
                                   [--only PATTERN] [--json OUT]

The corpus is what the installed onnx wheel ships: the backend test models
(``onnx/backend/test/data/{simple,pytorch-converted,pytorch-operator}/*/
model.onnx`` with ``test_data_set_0/input_*.pb``; ``light/light_*.onnx``,
which have no inputs, get seeded random ones) and the node test cases of
``onnx.backend.test.case.node.collect_testcases()``, whose models and inputs
are written to a scratch folder first.

Every model that onnxruntime (CPU) runs on those inputs is split twice, and
each split is validated on the same inputs:

- ``solver``: two devices, placed by the solver on estimated costs;
- ``plan``: a forced plan file cutting the topological node order into
  ``min(#nodes, 4)`` runs of equal length, naming nodes by their index.

Each case ends as one of: validated, refused (an ``OnnxSplitError``; its
message should be one line naming the construct), traceback (any other
exception: a bug), FAILED (validate did not pass) or timeout (the model took
longer than ``--timeout`` seconds; its worker process is killed). Models
onnxruntime cannot run count as "ort cannot run" and are not split.

Only the public API (``onnxsplit.split``, ``onnxsplit.validate``) is used, so
this measures what a user gets. The functions are importable too
(``sys.path.insert(0, 'tools')``): ``list_corpus``, ``select``, ``run_corpus``
and ``summarise``.
"""

from __future__ import annotations

import argparse
import fnmatch
import inspect
import json
import multiprocessing
import os
import random
import re
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import numpy_helper

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
CORPORA = ("simple", "pytorch-converted", "pytorch-operator", "light", "node")
CASES = ("solver", "plan")
OUTCOMES = ("validated", "refused", "traceback", "FAILED", "timeout")
ORT_CANNOT_RUN = "ort cannot run"
MAX_PLAN_STAGES = 4
FEED_SEED = 0


@dataclass(frozen=True)
class Entry:
    """One model of the corpus. ``inputs`` is a folder of input_K.pb files, or None for random inputs."""

    corpus: str
    name: str
    model: str = ""
    inputs: str | None = None

    @property
    def key(self) -> str:
        return f"{self.corpus}/{self.name}"


@dataclass(frozen=True)
class Record:
    """The outcome of one case of one model; ``case`` is '-' for a model onnxruntime cannot run."""

    corpus: str
    name: str
    case: str
    outcome: str
    message: str = ""
    phase: str = ""
    seconds: float = 0.0
    traceback: str = ""


# ---------------------------------------------------------------- the corpus

def _node_cases() -> list[Any]:
    from onnx.backend.test.case.node import collect_testcases

    # The case generators compute expected outputs with numpy, loudly (overflow, log(0)).
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return collect_testcases()


def list_corpus(*, node_cases: Sequence[Any] | None = None) -> list[Entry]:
    """Every model of the corpus, in a fixed order. Node cases are named but not yet written."""
    entries: list[Entry] = []
    for corpus in CORPORA[:3]:
        for folder in sorted((DATA / corpus).iterdir()):
            if (folder / "model.onnx").is_file():
                entries.append(Entry(corpus, folder.name, str(folder / "model.onnx"), str(folder / "test_data_set_0")))
    for path in sorted((DATA / "light").glob("light_*.onnx")):
        entries.append(Entry("light", path.stem, str(path), None))
    cases = _node_cases() if node_cases is None else node_cases
    entries.extend(Entry("node", case.name) for case in sorted(cases, key=lambda c: c.name))
    return entries


def select(entries: Sequence[Entry], *, only: str | None = None, sample: int | None = None,
           seed: int = 0) -> list[Entry]:
    """Filter by a glob on ``name`` or ``corpus/name``, then take a seeded sample spread over the corpora.

    Each corpus gets its share of ``sample`` in proportion to its size, at
    least one model; the result keeps the corpus order and does not depend on
    anything but the arguments.
    """
    chosen = [e for e in entries
              if only is None or fnmatch.fnmatchcase(e.name, only) or fnmatch.fnmatchcase(e.key, only)]
    if sample is None or sample >= len(chosen):
        return chosen
    by_corpus: dict[str, list[Entry]] = defaultdict(list)
    for e in chosen:
        by_corpus[e.corpus].append(e)
    share = {c: min(len(es), max(1, round(sample * len(es) / len(chosen)))) for c, es in by_corpus.items()}
    while sum(share.values()) > sample:  # rounding up the small corpora overshoots: take it from the largest
        share[max(share, key=share.__getitem__)] -= 1
    rng = random.Random(seed)
    picked = {e.key for c, es in by_corpus.items() for e in rng.sample(es, share[c])}
    return [e for e in chosen if e.key in picked]


def _write_node_case(case: Any, folder: Path) -> Entry:
    """Write a node test case as a backend test folder: model.onnx and test_data_set_0/input_K.pb."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(case.model, str(folder / "model.onnx"))
    data = folder / "test_data_set_0"
    data.mkdir(exist_ok=True)
    inputs = _graph_inputs(case.model)
    for k, (value, vi) in enumerate(zip(case.data_sets[0][0], inputs)):
        (data / f"input_{k}.pb").write_bytes(_to_proto(value, vi).SerializeToString())
    return Entry("node", case.name, str(folder / "model.onnx"), str(data))


def _to_proto(value: Any, vi: onnx.ValueInfoProto) -> Any:
    kind = vi.type.WhichOneof("value")
    if kind == "sequence_type":
        return numpy_helper.from_list(list(value), vi.name)
    if kind == "optional_type":
        return numpy_helper.from_optional(value, vi.name)
    if isinstance(value, onnx.TensorProto):
        return value
    return numpy_helper.from_array(np.asarray(value), vi.name)


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


# ---------------------------------------------------------------- one model

def load_inputs(entry: Entry, model: onnx.ModelProto) -> dict[str, Any]:
    """The model's own test inputs (input_K.pb in graph input order), or seeded random ones."""
    inputs = _graph_inputs(model)
    if entry.inputs is None:
        return _random_feeds(inputs)
    feeds: dict[str, Any] = {}
    for k, vi in enumerate(inputs):
        raw = (Path(entry.inputs) / f"input_{k}.pb").read_bytes()
        kind = vi.type.WhichOneof("value")
        if kind == "sequence_type":
            feeds[vi.name] = numpy_helper.to_list(onnx.SequenceProto.FromString(raw))
        elif kind == "optional_type":
            feeds[vi.name] = numpy_helper.to_optional(onnx.OptionalProto.FromString(raw))
        else:
            feeds[vi.name] = numpy_helper.to_array(onnx.TensorProto.FromString(raw))
    return feeds


def _random_feeds(inputs: list[onnx.ValueInfoProto]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(FEED_SEED)
    feeds = {}
    for vi in inputs:
        tt = vi.type.tensor_type
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim)
        if np.issubdtype(dtype, np.floating):
            feeds[vi.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            feeds[vi.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[vi.name] = rng.integers(0, 4, shape).astype(dtype)
    return feeds


def _ort_run(path: str, feeds: dict[str, Any]) -> None:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    session.run(None, feeds)


def _adapt(fn: Callable[..., Any], **options: Any) -> dict[str, Any]:
    """Keyword arguments for ``fn``: each option is (new name, old name, value); the first name ``fn`` takes wins.

    split() and validate() are renaming some parameters (``plan_path`` to
    ``plan``, ``inputs_path`` to ``inputs``); an option neither name of which
    ``fn`` takes is dropped.
    """
    params = inspect.signature(fn).parameters
    out = {}
    for new, old, value in options.values():
        for name in (new, old):
            if name in params:
                out[name] = value
                break
    return out


def _input_shapes(model: onnx.ModelProto, feeds: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Shapes of the tensor feeds whose model input declares a rank: split sizes everything at those."""
    shapes = {}
    for vi in _graph_inputs(model):
        value = feeds.get(vi.name)
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape") and isinstance(value, np.ndarray):
            shapes[vi.name] = tuple(int(d) for d in value.shape)
    return shapes


def equal_runs(names: Sequence[str], *, stages: int = MAX_PLAN_STAGES) -> dict[str, int]:
    """Cut the node order into min(#nodes, stages) runs whose lengths differ by at most one."""
    k = min(len(names), stages)
    return {name: i * k // len(names) for i, name in enumerate(names)}


def _last_line(exc: BaseException) -> str:
    """'Type: first line of the message (file:line in function)', the innermost frame of the package."""
    text = str(exc).strip().splitlines()
    where = ""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "onnxsplit" in f.filename]
    if frames:
        f = frames[-1]
        tail = f.filename[f.filename.rfind("onnxsplit"):]
        where = f" ({tail}:{f.lineno} in {f.name})"
    return f"{type(exc).__name__}: {text[0] if text else ''}{where}"


def _failure(report: Any) -> str:
    bad = [c for c in list(report.outputs) + list(report.handoffs) if not c.passed]
    return "; ".join(f"{c.name} max_abs={c.max_abs:.3g} max_rel={c.max_rel:.3g}" for c in bad[:3]) or "did not pass"


def _split_case(entry: Entry, case: str, *, model_path: str, model: onnx.ModelProto, feeds: dict[str, Any],
                npz: Path | None, work: Path) -> Record:
    from onnxsplit import OnnxSplitError, split, validate

    start = time.perf_counter()
    # The model's own test inputs go to split (probes, sizes) and validate alike.
    # A path works for every API that takes inputs; only a dict carries sequences and optionals.
    options: dict[str, Any] = {
        "costs": ("costs", "costs", "estimate"),
        "input_shapes": ("input_shapes", "input_shapes", _input_shapes(model, feeds)),
        "inputs": ("inputs", "inputs_path", str(npz) if npz is not None else feeds),
    }
    work.mkdir(parents=True, exist_ok=True)
    outdir = work / "split"
    devices = 2
    phase = "split"
    try:
        if case == "plan":
            # Nodes by their index: a valid graph lists them in topological order, the order split numbers them in.
            plan = equal_runs([str(i) for i in range(len(model.graph.node))])
            plan_file = work / "plan.json"
            plan_file.write_text(json.dumps(plan))
            options["plan"] = ("plan", "plan_path", str(plan_file))
            devices = max(plan.values()) + 1
        split(model_path, outdir, devices=devices, **_adapt(split, **options))
        phase = "validate"
        report = validate(outdir, **_adapt(validate, inputs=options["inputs"]))
    except OnnxSplitError as exc:
        return Record(entry.corpus, entry.name, case, "refused", str(exc), phase, time.perf_counter() - start)
    except Exception as exc:  # anything else is a bug of the package: record it and go on
        return Record(entry.corpus, entry.name, case, "traceback", _last_line(exc), phase,
                      time.perf_counter() - start, traceback.format_exc())
    outcome, message = ("validated", "") if report.passed else ("FAILED", _failure(report))
    return Record(entry.corpus, entry.name, case, outcome, message, phase, time.perf_counter() - start)


def check_model(entry: Entry, work: Path, send: Callable[[str, Any], None]) -> None:
    """Run the model in onnxruntime, then split and validate it both ways; ``send('record', r)`` each Record.

    ``send('ran', None)`` tells that onnxruntime ran the model, before the splits start.
    """
    start = time.perf_counter()
    try:
        model = onnx.load(entry.model)
        feeds = load_inputs(entry, model)
        _ort_run(entry.model, feeds)
    except Exception as exc:
        send("record", Record(entry.corpus, entry.name, "-", ORT_CANNOT_RUN, _last_line(exc), "onnxruntime",
                              time.perf_counter() - start))
        return
    send("ran", None)
    npz = None
    if all(isinstance(v, np.ndarray) for v in feeds.values()):
        npz = work / "inputs.npz"
        # An npz holds strings as fixed-width unicode; an object array would need pickle to load.
        np.savez(npz, **{k: v.astype(str) if v.dtype == object else v for k, v in feeds.items()})
    # A graph without nodes has nothing to cut by a plan.
    for case in CASES if len(model.graph.node) else CASES[:1]:
        send("record", _split_case(entry, case, model_path=entry.model, model=model, feeds=feeds, npz=npz,
                                   work=work / case))


# ---------------------------------------------------------------- workers

def _silence() -> None:
    """Keep the terminal to the parent's table: library logs, warnings and onnxruntime's C++ log go nowhere."""
    import logging

    logging.getLogger().setLevel(logging.CRITICAL)
    logging.getLogger("onnxsplit").setLevel(logging.CRITICAL)
    warnings.simplefilter("ignore")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        import onnxruntime as ort

        ort.set_default_logger_severity(4)
    except ImportError:
        pass


def _worker_main(conn: Any, scratch: str, quiet: bool) -> None:
    if quiet:
        _silence()
    os.environ["ONNXSPLIT_CACHE"] = str(Path(scratch) / "cache")
    import onnxruntime  # noqa: F401  (imported before the clock starts: a model's time is its own)

    import onnxsplit  # noqa: F401

    conn.send(("ready", None))
    while True:
        entry = conn.recv()
        if entry is None:
            return
        work = Path(tempfile.mkdtemp(prefix="model-", dir=scratch))
        try:
            check_model(entry, work, lambda kind, value: conn.send((kind, value)))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        conn.send(("done", None))


@dataclass
class _Worker:
    process: Any
    conn: Any
    entry: Entry | None = None
    ready: bool = False
    started: float = 0.0
    ran: bool = False
    cases: list[str] = field(default_factory=list)


def run_corpus(entries: Sequence[Entry], *, jobs: int = 1, timeout: float = 60.0,
               node_cases: Sequence[Any] | None = None, scratch: str | os.PathLike | None = None, quiet: bool = True,
               progress: Callable[[Record], None] | None = None) -> list[Record]:
    """Check every entry in ``jobs`` worker processes; a model over ``timeout`` seconds has its worker killed.

    Node entries are written to the scratch folder (made and removed here
    unless given) from ``node_cases`` (collected if not given). Records come
    back in the order of ``entries``, cases in the order of CASES.
    """
    own_scratch = scratch is None
    root = Path(tempfile.mkdtemp(prefix="onnxsplit-corpus-") if own_scratch else scratch)
    try:
        entries = _materialise(entries, root, node_cases)
        records = _dispatch(entries, jobs=jobs, timeout=timeout, scratch=root, quiet=quiet, progress=progress)
    finally:
        if own_scratch:
            shutil.rmtree(root, ignore_errors=True)
    order = {e.key: i for i, e in enumerate(entries)}
    case_order = {c: i for i, c in enumerate(("-", *CASES))}
    return sorted(records, key=lambda r: (order[f"{r.corpus}/{r.name}"], case_order[r.case]))


def _materialise(entries: Sequence[Entry], root: Path, node_cases: Sequence[Any] | None) -> list[Entry]:
    wanted = {e.name for e in entries if e.corpus == "node" and not e.model}
    if not wanted:
        return list(entries)
    cases = {c.name: c for c in (_node_cases() if node_cases is None else node_cases) if c.name in wanted}
    written = {name: _write_node_case(case, root / "node" / name) for name, case in cases.items()}
    return [written[e.name] if e.corpus == "node" and not e.model else e for e in entries]


def _dispatch(entries: Sequence[Entry], *, jobs: int, timeout: float, scratch: Path, quiet: bool,
              progress: Callable[[Record], None] | None) -> list[Record]:
    ctx = multiprocessing.get_context("spawn")
    pending = list(reversed(entries))
    records: list[Record] = []

    def emit(record: Record) -> None:
        records.append(record)
        if progress is not None:
            progress(record)

    def start() -> _Worker:
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_worker_main, args=(child, str(scratch), quiet), daemon=True)
        process.start()
        child.close()
        return _Worker(process, parent)

    def finish(w: _Worker, outcome: str, message: str) -> None:
        """The worker is gone mid-model: every case it did not report gets ``outcome``."""
        e = w.entry
        assert e is not None
        if not w.ran and outcome != "timeout":
            emit(Record(e.corpus, e.name, "-", ORT_CANNOT_RUN, message, "onnxruntime", time.monotonic() - w.started))
        else:
            for case in CASES:
                if case not in w.cases:
                    emit(Record(e.corpus, e.name, case, outcome, message, "", time.monotonic() - w.started))
        w.entry = None

    workers = [start() for _ in range(max(1, min(jobs, len(entries))))]
    try:
        while True:
            for w in workers:
                if w.ready and w.entry is None and pending:
                    w.entry, w.started, w.ran, w.cases = pending.pop(), time.monotonic(), False, []
                    w.conn.send(w.entry)
            busy = [w for w in workers if w.entry is not None or not w.ready]
            if not pending and not any(w.entry is not None for w in workers):
                break
            deadlines = [w.started + timeout for w in busy if w.entry is not None]
            left = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
            ready = wait([w.conn for w in busy], timeout=left)
            for w in busy:
                if w.conn in ready:
                    try:
                        kind, value = w.conn.recv()
                    except (EOFError, OSError):
                        w.process.join(5)
                        if w.entry is None:
                            raise RuntimeError(f"a worker process failed to start (exit code {w.process.exitcode})")
                        finish(w, "traceback", f"worker process died (exit code {w.process.exitcode})")
                        workers[workers.index(w)] = start()
                        continue
                    if kind == "ready":
                        w.ready = True
                    elif kind == "ran":
                        w.ran = True
                    elif kind == "record":
                        w.cases.append(value.case)
                        emit(value)
                    elif kind == "done":
                        w.entry = None
                elif w.entry is not None and time.monotonic() >= w.started + timeout:
                    w.process.kill()
                    w.process.join()
                    finish(w, "timeout", f"no result within {timeout:g} s")
                    workers[workers.index(w)] = start()
    finally:
        for w in workers:
            if w.process.is_alive():
                try:
                    w.conn.send(None)
                except OSError:
                    pass
        for w in workers:
            w.process.join(10)
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
    return records


# ---------------------------------------------------------------- report

def summarise(records: Iterable[Record]) -> dict[str, Any]:
    """Counts per corpus: models, ort cannot run, and per outcome the cases (one model has two)."""
    table: dict[str, Counter[str]] = {c: Counter() for c in CORPORA}
    models: dict[str, set[str]] = defaultdict(set)
    for r in records:
        table.setdefault(r.corpus, Counter())[r.outcome] += 1
        models[r.corpus].add(r.name)
    out = {c: {"models": len(models[c]), ORT_CANNOT_RUN: t[ORT_CANNOT_RUN], **{o: t[o] for o in OUTCOMES}}
           for c, t in table.items() if models[c]}
    out["total"] = {k: sum(v[k] for v in out.values()) for k in ("models", ORT_CANNOT_RUN, *OUTCOMES)}
    return out


def message_group(message: str) -> str:
    """A message with its names and numbers blanked, so that one cause is one group."""
    where = re.search(r" \(onnxsplit/[^)]*\)$", message)
    text = message[:where.start()] if where else message
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", text)
    text = re.sub(r"(?<![\w/])[A-Za-z]\w*_\w*\d\w*|(?<![\w/])[A-Za-z]\w*_\w*_\w+", "…", text)  # generated names
    text = re.sub(r"(?<![\w.])\d+(\.\d+)?", "N", text)
    return text + (where.group(0) if where else "")


def print_report(records: Sequence[Record], seconds: float) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(120, Console().width))
    summary = summarise(records)
    table = Table(title=f"backend corpus: {summary['total']['models']} models in {seconds:.0f} s",
                  caption="outcomes count cases: each model is split by the solver at 2 devices and by a forced plan")
    columns = ("models", ORT_CANNOT_RUN, *OUTCOMES)
    table.add_column("corpus")
    for col in columns:
        table.add_column(col, justify="right")
    for corpus, row in summary.items():
        table.add_row(corpus, *(str(row[c]) for c in columns), style="bold" if corpus == "total" else None)
    console.print(table)

    for outcome, title in (("refused", "Refusals"), ("traceback", "Tracebacks"), ("FAILED", "FAILED"),
                           ("timeout", "Timeouts")):
        chosen = [r for r in records if r.outcome == outcome]
        if not chosen:
            continue
        groups: dict[str, list[Record]] = defaultdict(list)
        for r in chosen:
            groups[message_group(r.message) if outcome in ("refused", "traceback") else r.message].append(r)
        console.print(f"\n[bold]{title}[/bold] ({len(chosen)} cases, {len(groups)} kinds)", highlight=False)
        for _, group in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
            console.print(f"  {len(group)} x {group[0].message}", highlight=False, markup=False, soft_wrap=True)
            names = ", ".join(f"{r.corpus}/{r.name}[{r.case}{':' + r.phase if r.phase else ''}]" for r in group)
            console.print(f"      {names}", highlight=False, markup=False, soft_wrap=True)


def _progress_printer(total: int) -> Callable[[Record], None]:
    seen: set[str] = set()

    def show(record: Record) -> None:
        seen.add(f"{record.corpus}/{record.name}")
        if record.outcome not in ("validated", ORT_CANNOT_RUN):
            print(f"[{len(seen)}/{total}] {record.corpus}/{record.name} {record.case}: {record.outcome} "
                  f"{record.message}", file=sys.stderr, flush=True)
    return show


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, help="check a seeded sample of N models spread over the corpora")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per model before it counts as a timeout")
    parser.add_argument("--only", metavar="PATTERN", help="glob on a model's name or corpus/name")
    parser.add_argument("--json", metavar="OUT", help="write every case's record to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    if args.sample is not None and args.sample < 1 or args.jobs < 1 or not args.timeout > 0:
        parser.error("--sample and --jobs take a positive count, --timeout a positive number of seconds")

    cases = _node_cases()
    entries = select(list_corpus(node_cases=cases), only=args.only, sample=args.sample, seed=args.seed)
    if not entries:
        parser.error(f"--only {args.only!r} matches no model")
    start = time.perf_counter()
    records = run_corpus(entries, jobs=args.jobs, timeout=args.timeout, node_cases=cases,
                         progress=None if args.quiet else _progress_printer(len(entries)))
    seconds = time.perf_counter() - start
    if args.json:
        doc = {"seconds": seconds, "summary": summarise(records), "records": [asdict(r) for r in records]}
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")
    print_report(records, seconds)
    bad = sum(1 for r in records if r.outcome in ("traceback", "FAILED", "timeout"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
