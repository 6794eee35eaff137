"""The inference engine: a fitted network made ready to run, once, and reused.

An estimator builds an engine on its first ``transform`` / ``predict`` after
``fit`` or loading (:mod:`~sktransfer.engine.resident`), for its device,
``runtime``, ``quantize`` and precision, and every later call (from any
thread) runs through it:

- :mod:`~sktransfer.engine.snapshot` keeps what an engine is built from (a
  frozen copy of each fitted module) and checks, on every call, that the
  fitted module has not changed since: weights, submodules, buffers, plain
  attributes;
- :mod:`~sktransfer.engine.module` holds the network an engine runs: a
  private, eval-mode copy of the fitted one (weights shared on the CPU,
  resident on an accelerator), with the layer taps and output head of the
  call built in, so the whole computation is one ``nn.Module``;
- :mod:`~sktransfer.engine.runtimes` runs it eagerly or through
  ``torch.compile``;
- :mod:`~sktransfer.engine.onnx` exports it once to ONNX Runtime (fp32, or
  dynamically quantized to int8);
- :mod:`~sktransfer.engine.openvino` compiles that export for the CPU with
  OpenVINO (fp32, or bf16 where the CPU has bf16 units).

This package imports no estimator; the estimators import it.
"""
