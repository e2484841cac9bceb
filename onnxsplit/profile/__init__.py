"""Node costs: measured with onnxruntime, or estimated from shapes."""
