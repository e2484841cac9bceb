"""Serve a split over HTTP with the KServe v2 / Triton inference protocol, with optional dynamic batching.

:mod:`~onnxsplit.serve.protocol` reads and writes the protocol's messages,
:mod:`~onnxsplit.serve.batching` joins requests into batches,
:mod:`~onnxsplit.serve.app` is the HTTP application around a split's pipeline,
and :mod:`~onnxsplit.serve.server` runs it (``onnxsplit serve``). Only the
last two import the web stack (starlette, uvicorn), so this package itself
imports nothing heavy.
"""

from __future__ import annotations
