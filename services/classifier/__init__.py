"""The classifier service: serves ONNX models from a Triton-like repository
(repository.py, manifest.py) through ONNX Runtime (runtime.py) with per-model dynamic
batching and admission by a learned cost model (batcher.py); pipeline.py turns texts
into windows, runs cascades (a cheap stage, then the encoder for uncertain texts) and
shadow models, and answers PARTIAL rather than late; server.py is the gRPC surface only.
The offline model build and evaluation (the top-level `modelbuild` package, not shipped in
the image) produce the repository; tokenize.py is shared with it, so the build and the
service cut texts the same way."""
