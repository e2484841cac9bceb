"""``python -m onnxsplit``: the command line."""

from onnxsplit.cli.main import main

raise SystemExit(main())
