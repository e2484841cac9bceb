"""Export a tiny GPT-2 with random weights and a KV cache to ONNX, the way Hugging Face Optimum exports decoders.

    python tools/export_gpt2.py [--out models/gpt2_tiny.onnx]

Needs torch, transformers and optimum-onnx (``pip install torch transformers
optimum-onnx``), which are export-time tools only: onnxsplit and its tests
never import them; the tests read the committed file. The model is made from
a config, with weights drawn at a fixed seed, so nothing is downloaded. The
ONNX file has Optimum's decoder I/O: inputs ``input_ids``,
``attention_mask``, ``position_ids`` and ``past_key_values.N.key`` /
``.value``; outputs ``logits`` and ``present.N.key`` / ``.value``. Weights
are inlined in the one file.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path

SEED = 1013


def export(out: Path, *, layers: int = 2, hidden: int = 32, heads: int = 4, vocab: int = 128,
           positions: int = 64, seed: int = SEED) -> Path:
    """Write the exported model to ``out``; return it."""
    import onnx
    import torch
    from optimum.exporters.onnx import main_export
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    # GPT-2's usual 0.02 init leaves logits so flat that a rounding difference could change a greedy token;
    # a wider one keeps the top two logits apart, so a split model's generation can be compared token by token.
    config = GPT2Config(n_layer=layers, n_embd=hidden, n_head=heads, vocab_size=vocab, n_positions=positions,
                        bos_token_id=0, eos_token_id=0, initializer_range=0.3)
    model = GPT2LMHeadModel(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        source, exported = Path(tmp) / "hf", Path(tmp) / "onnx"
        model.save_pretrained(source)
        main_export(str(source), output=str(exported), task="text-generation-with-past", no_post_process=True,
                    device="cpu", do_validation=False, local_files_only=True)
        proto = onnx.load(str(exported / "model.onnx"))
    proto.producer_name = "onnxsplit.tools.export_gpt2 (optimum)"
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(proto, str(out))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: export the model."""
    default = Path(__file__).resolve().parent.parent / "models" / "gpt2_tiny.onnx"
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(default), help="the ONNX file to write (default: models/gpt2_tiny.onnx)")
    args = parser.parse_args(argv)
    path = export(Path(args.out))
    print(f"{path}  {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
