"""Running an exported graph, and finding the steps of a model that the export converts.

:func:`inference_session` is what a server does with the file (ONNX Runtime,
with onnxruntime-extensions' operators when the graph tokenizes text); it
imports no torch and no sktransfer estimator, so the export's self-check
runs the graph as it will be served.
"""

from sklearn.compose import ColumnTransformer
from sklearn.pipeline import FeatureUnion, Pipeline

#: The operator domain of onnxruntime-extensions (tokenizers).
EXTENSIONS_DOMAIN = "ai.onnx.contrib"


def inference_session(model, threads=None):
    """An ``onnxruntime.InferenceSession`` of ``model`` (bytes or a path).

    Registers onnxruntime-extensions' operators when the graph uses them
    (an ImportError names the package otherwise).

    Examples
    --------
    >>> import numpy as np
    >>> from onnx import TensorProto, helper
    >>> x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [None])
    >>> y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None])
    >>> graph = helper.make_graph([helper.make_node("Neg", ["X"], ["Y"])], "g", [x], [y])
    >>> model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    >>> model.ir_version = 9
    >>> inference_session(model.SerializeToString()).run(None, {"X": np.ones(2, np.float32)})
    [array([-1., -1.], dtype=float32)]
    """
    import onnx
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    proto = onnx.load_model_from_string(model) if isinstance(model, bytes) else \
        onnx.load_model(model, load_external_data=False)
    if any(o.domain == EXTENSIONS_DOMAIN for o in proto.opset_import):
        try:
            from onnxruntime_extensions import get_library_path
        except ImportError as exc:
            raise ImportError("this graph tokenizes text with onnxruntime-extensions' "
                              "operators: pip install onnxruntime-extensions") from exc
        options.register_custom_ops_library(get_library_path())
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def parts(model):
    """The leaf estimators of ``model``, through pipelines, unions and column transformers."""
    if isinstance(model, Pipeline):
        return [p for _, step in model.steps if step not in (None, "passthrough")
                for p in parts(step)]
    if isinstance(model, FeatureUnion):
        return [p for _, step in model.transformer_list if step not in (None, "drop")
                for p in parts(step)]
    if isinstance(model, ColumnTransformer):
        fitted = getattr(model, "transformers_", model.transformers)
        return [p for _, step, _ in fitted if step not in ("drop", "passthrough")
                for p in parts(step)]
    return [model]


def sktransfer_steps(model):
    """The sktransfer estimators among ``model``'s :func:`parts`, in order."""
    from .convert import ALIASES  # the estimator classes the converters know

    return [p for p in parts(model) if type(p) in ALIASES]
