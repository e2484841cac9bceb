"""Input feeds: random ones for any model, the user's from an .npz, and checks that they fit the model's inputs."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np

from onnxsplit.errors import UsageError
from onnxsplit.model import Model
from onnxsplit.valuetypes import dtype_name


def random_array(dtype: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random values safe for any model: small non-negative ints, bools, floats in [-1, 1)."""
    if dtype == "bool":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dtype.startswith(("int", "uint")):
        # Small ids stay inside any vocabulary or gather range a test model has.
        return rng.integers(0, 4, size=shape).astype(dtype)
    if dtype == "str":
        return np.array(rng.integers(0, 10, size=shape).astype(str), dtype=object)
    return rng.uniform(-1.0, 1.0, size=shape).astype(dtype)


def random_feeds(specs: list[tuple[str, str, tuple[int, ...]]], *, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: random_array(dtype, shape, rng) for name, dtype, shape in specs}


def load_feeds(path: str | os.PathLike, expected: list[str]) -> dict[str, np.ndarray]:
    """Arrays of an .npz file, one for each name in ``expected`` and no others; UsageError naming the file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            feeds = {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"{path}: not a readable .npz file of input arrays ({exc})") from None
    except Exception as exc:  # a damaged zip member (BadZipFile, zlib.error) is a bad file, not a bug
        raise UsageError(f"{path}: not a readable .npz file of input arrays ({type(exc).__name__}: {exc})") from None
    _check_names(feeds, expected, where=str(path))
    return feeds


def _check_names(feeds: Mapping[str, object], expected: Sequence[str], *, where: str) -> None:
    """UsageError unless ``feeds`` has an entry for every expected input and nothing else."""
    missing = [n for n in expected if n not in feeds]
    if missing:
        raise UsageError(f"{where}: no array for model input {missing[0]!r} (has {sorted(feeds)})")
    extra = sorted(set(feeds) - set(expected))
    if extra:
        raise UsageError(f"{where}: {extra[0]!r} is not an input of the model (inputs: {sorted(expected)})")


def _dims(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape)) or "a scalar"


def check_feeds(model: Model, feeds: Mapping[str, np.ndarray], *,
                shapes: Mapping[str, tuple[int, ...]] = MappingProxyType({}), where: str = "the inputs") -> None:
    """Raise UsageError (one line, prefixed ``where``) unless ``feeds`` fit the model's inputs.

    Checks, in order: an array for every input and none for anything else,
    each array's dtype against the input's element type, its rank, the dims
    the model fixes, and, for inputs in ``shapes``, the whole shape.
    """
    from onnxsplit.shapes import fixed_dim

    inputs = {vi.name: vi for vi in model.inputs}
    _check_names(feeds, list(inputs), where=where)
    for name, vi in inputs.items():
        if vi.type.WhichOneof("value") != "tensor_type":
            continue  # a sequence, optional or map: onnxruntime checks its elements
        array = np.asarray(feeds[name])
        tt = vi.type.tensor_type
        if tt.elem_type:
            want = dtype_name(tt.elem_type)
            ok = array.dtype.kind in "OUS" if want == "str" else array.dtype.name == want
            if not ok:
                raise UsageError(f"{where}: input {name!r} is an array of {array.dtype.name}, the model takes {want}")
        if tt.HasField("shape"):
            dims = tt.shape.dim
            if array.ndim != len(dims):
                raise UsageError(f"{where}: input {name!r} has rank {array.ndim} ({_dims(array.shape)}), "
                                 f"the model takes rank {len(dims)}")
            for axis, (d, have) in enumerate(zip(dims, array.shape)):
                fixed = fixed_dim(d)
                if fixed is not None and fixed != have:
                    raise UsageError(f"{where}: input {name!r} has {have} in dim {axis}, the model fixes it to "
                                     f"{fixed}")
        if name in shapes and tuple(array.shape) != tuple(shapes[name]):
            raise UsageError(f"{where}: input {name!r} has shape {_dims(array.shape)}, expected "
                             f"{_dims(shapes[name])}")


def model_feeds(model: Model, shapes: Mapping[str, tuple[int, ...]], *,
                feeds: Mapping[str, np.ndarray] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays to run ``model`` on: the user's ``feeds``, checked, or seeded random ones at ``shapes``.

    ``shapes`` holds a concrete shape for every model input (see
    :func:`onnxsplit.shapes.resolve_input_shapes`). User feeds must fit the
    model and these shapes (:func:`check_feeds`); random ones are small
    non-negative integers, bools or floats in [-1, 1) (:func:`random_array`).
    Values that steer control flow (an ``If`` condition, a ``Loop`` count)
    are only right in the user's feeds.
    """
    if feeds is not None:
        check_feeds(model, feeds, shapes=shapes)
        return {vi.name: np.asarray(feeds[vi.name]) for vi in model.inputs}
    specs = [(vi.name, dtype_name(vi.type.tensor_type.elem_type), tuple(shapes[vi.name])) for vi in model.inputs]
    return random_feeds(specs, seed=seed)
