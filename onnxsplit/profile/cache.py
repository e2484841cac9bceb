"""The profile cache: measured profiles kept between commands, keyed by what a time depends on.

An entry is a profile.json under ``<cache>/profiles/``, named by a digest
of the model's sha256, the input shapes, the provider and its options, the
thread count and the onnxruntime version. A missing or broken entry is
measured again; a cache that cannot be written only costs a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from onnxsplit.model import Model
from onnxsplit.feeds import check_feeds
from onnxsplit.profile import measure  # by module, so that a test can count the measurements
from onnxsplit.profile.store import (Profile, ProfileError, load_profile, profile_from_dict, profile_to_dict,
                                     save_profile)
from onnxsplit.providers import CPU, resolve_provider
from onnxsplit.shapes import resolve_input_shapes

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$ONNXSPLIT_CACHE``, else ``~/.cache/onnxsplit``."""
    env = os.environ.get("ONNXSPLIT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "onnxsplit"


def cache_key(model_sha256: str, input_shapes: dict[str, tuple[int, ...]], provider: str,
              provider_options: dict[str, str], threads: int, ort_version: str, *, feeds_sha256: str = "") -> str:
    """A stable digest of everything a measured time depends on.

    The onnxruntime version is part of it: kernels and fusions change between
    releases, so a profile from another version would be stale. So are the
    user's input arrays (``feeds_sha256``, from :func:`feeds_digest`; empty
    for seeded random inputs), which may steer control flow.
    """
    fields = {"model": model_sha256, "shapes": {k: list(v) for k, v in sorted(input_shapes.items())},
              "provider": provider, "options": dict(sorted(provider_options.items())), "threads": threads,
              "onnxruntime": ort_version}
    if feeds_sha256:  # absent for random inputs, so that entries stored before stay valid
        fields["feeds"] = feeds_sha256
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def feeds_digest(feeds: Mapping[str, np.ndarray]) -> str:
    """Hex sha256 of input arrays: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(feeds):
        array = np.ascontiguousarray(feeds[name])
        digest.update(json.dumps([name, str(array.dtype), list(array.shape)]).encode())
        digest.update(array.tobytes() if array.dtype != object else json.dumps(array.tolist()).encode())
    return digest.hexdigest()


def cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / "profiles" / f"{key[:32]}.json"


def read_cached(path: Path) -> Profile | None:
    """A cached profile, or None when absent or unreadable (a broken cache entry is measured again)."""
    if not path.is_file():
        return None
    try:
        return load_profile(path)
    except ProfileError as exc:
        log.warning("ignoring a broken cached profile (%s)", exc)
        return None


def write_cached(profile: Profile, path: Path) -> None:
    """Store a profile in the cache; a cache that cannot be written only costs a warning."""
    try:
        save_profile(profile, path)
    except ProfileError as exc:
        log.warning("could not cache the profile: %s", exc)


def cached_profile(model: Model, *, input_shapes: dict[str, tuple[int, ...]], provider: str = CPU,
                   provider_options: dict[str, str] | None = None, threads: int = 1, runs: int = 20,
                   warmup: int = 5, cache_dir: Path | None = None,
                   feeds: Mapping[str, np.ndarray] | None = None) -> Profile:
    """The stored profile for these conditions, or a fresh measurement that is then stored.

    ``provider``: a short or full name. ``cache_dir``: default
    :func:`default_cache_dir`. ``feeds``: the user's input arrays to
    measure with (checked against the model), else seeded random ones. A
    first and a cached answer are equal.
    """
    import onnxruntime as ort

    provider = resolve_provider(provider)
    options = dict(provider_options or {})
    shapes = resolve_input_shapes(model, input_shapes)
    if feeds is not None:
        check_feeds(model, feeds, shapes=shapes)
    key = cache_key(model.sha256, shapes, provider, options, threads, ort.__version__,
                    feeds_sha256=feeds_digest(feeds) if feeds is not None else "")
    path = cache_path(cache_dir if cache_dir is not None else default_cache_dir(), key)
    cached = read_cached(path)
    if cached is not None and cached.model_sha256 == model.sha256 and cached.input_shapes == shapes:
        log.info("using the cached profile %s", path)
        return cached
    measured = measure.profile_model(model, input_shapes=shapes, provider=provider, provider_options=options,
                                     threads=threads, runs=runs, warmup=warmup,
                                     feeds=dict(feeds) if feeds is not None else None)
    # As stored, so that a first and a cached answer are equal.
    profile = profile_from_dict(profile_to_dict(measured))
    write_cached(profile, path)
    return profile
