"""Encoder backends behind `rag.encoders.base.Embedder`: `sbert` (sentence-transformers on torch)
and `onnx` (ONNX Runtime, exported once from the same model)."""
