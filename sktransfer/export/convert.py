"""skl2onnx converters for sktransfer's estimators, registered the way add-on converters are.

After :func:`register_converters`, ``skl2onnx.to_onnx`` converts a fitted
:class:`~sktransfer.PretrainedFeatureTransformer`,
:class:`~sktransfer.FineTunedClassifier` or
:class:`~sktransfer.FineTunedRegressor`, alone or as a step of a scikit-learn
pipeline: each gets a shape calculator (what its outputs are) and a converter
that embeds its preprocessing and exported network graphs
(:mod:`.network`), then adds what ``transform`` / ``predict`` compute on the
network's output. The classifier has its own parser: it declares ``label``
and ``probabilities`` as plain tensors (no ZipMap), a classifier's outputs in
skl2onnx's names.
"""

import numpy as np
from skl2onnx import update_registered_converter
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType, StringTensorType
from skl2onnx.proto import onnx_proto

from ..backbones.onnx_graph import OPSET
from ..features import PretrainedFeatureTransformer
from ..finetune import FineTunedClassifier, FineTunedRegressor
from .embed import embed_model
from .network import ExportError, estimator_graphs

#: The converter options: ``quantize`` applies to the exported network graph.
OPTIONS = {"quantize": [None, "int8"]}

ALIASES = {PretrainedFeatureTransformer: "SktransferPretrainedFeatureTransformer",
           FineTunedClassifier: "SktransferFineTunedClassifier",
           FineTunedRegressor: "SktransferFineTunedRegressor"}


def register_converters():
    """Teach skl2onnx to convert sktransfer's estimators (call once per process).

    Afterwards ``skl2onnx.to_onnx(model, initial_types=...)`` converts a
    fitted estimator, or a pipeline holding one, into one graph; the input
    is what the estimator takes (see :func:`sktransfer.export_onnx`, which
    calls this and checks the graph it writes). A classifier's outputs are
    ``label`` and ``probabilities`` (no ZipMap). The option ``quantize``
    (``{id(step): {"quantize": "int8"}}``) quantizes the network.

    Examples
    --------
    >>> from sktransfer.export import register_converters
    >>> register_converters()
    """
    update_registered_converter(PretrainedFeatureTransformer,
                                ALIASES[PretrainedFeatureTransformer], _transformer_shape,
                                _convert, options=OPTIONS)
    update_registered_converter(FineTunedClassifier, ALIASES[FineTunedClassifier],
                                _classifier_shape, _convert, parser=_parse_classifier,
                                options=OPTIONS)
    update_registered_converter(FineTunedRegressor, ALIASES[FineTunedRegressor],
                                _regressor_shape, _convert, options=OPTIONS)


def _parse_classifier(scope, model, inputs, custom_parsers=None):
    operator = scope.declare_local_operator(ALIASES[FineTunedClassifier], model)
    operator.inputs = inputs
    label_type = Int64TensorType() if _integer_labels(model) else StringTensorType()
    operator.outputs.append(scope.declare_local_variable("label", label_type))
    operator.outputs.append(scope.declare_local_variable("probabilities", FloatTensorType()))
    return operator.outputs


def _integer_labels(model):
    classes = np.asarray(model.classes_)
    if _multilabel(model) or classes.dtype.kind in "iub":
        return True
    if classes.dtype.kind in "OU" and all(isinstance(c, str) for c in classes):
        return False
    raise ExportError(f"a classifier's labels must be integers or strings to be served by "
                      f"ONNX; this one's classes_ have dtype {classes.dtype}")


def _multilabel(model):
    return model.multilabel_


def _rows(operator):
    shape = operator.inputs[0].type.shape
    return shape[0] if shape else None


def _transformer_shape(operator):
    operator.outputs[0].type = FloatTensorType([_rows(operator),
                                                operator.raw_operator.n_features_out_])


def _only_as_last_step(operator):
    """Refuse a fine-tuner whose outputs another step reads: there scikit-learn
    calls its ``transform`` (the fine-tuned embeddings), and the converter gives
    its predictions. Shapes are computed step by step, before the next step's."""
    ours = {v.onnx_name for v in operator.outputs}
    readers = [op.type for op in operator.scope_inst.operators.values()
               if op is not operator and ours & {v.onnx_name for v in op.inputs}]
    if readers:
        raise ExportError(
            f"{type(operator.raw_operator).__name__} feeds another step ({readers[0]}): "
            f"scikit-learn calls its transform there, the fine-tuned embeddings, which "
            f"are not exported; a fine-tuner must be its pipeline's last step")


def _classifier_shape(operator):
    _only_as_last_step(operator)
    model, n = operator.raw_operator, _rows(operator)
    k = len(model.classes_)
    label_shape = [n, k] if _multilabel(model) else [n]
    label_type = Int64TensorType if _integer_labels(model) else StringTensorType
    operator.outputs[0].type = label_type(label_shape)
    operator.outputs[1].type = FloatTensorType([n, k])


def _regressor_shape(operator):
    _only_as_last_step(operator)
    operator.outputs[0].type = FloatTensorType([_rows(operator),
                                                operator.raw_operator.n_outputs_])


def _convert(scope, operator, container):
    model = operator.raw_operator
    if container.target_opset < OPSET:
        raise ExportError(f"sktransfer's graphs need ONNX opset {OPSET} or later; "
                          f"target_opset is {container.target_opset}")
    options = container.get_options(model, dict(quantize=None))
    x = operator.inputs[0]
    graphs = estimator_graphs(model, x.type.shape, options["quantize"])
    net_inputs = {i.name: scope.get_unique_variable_name(i.name)
                  for i in graphs.network.graph.input}
    pre_outputs = {o.name: net_inputs.get(o.name, scope.get_unique_variable_name(o.name))
                   for o in graphs.preprocess.graph.output}
    embed_model(scope, container, graphs.preprocess, {"X": x.full_name}, pre_outputs)
    out = (operator.outputs[0].full_name if isinstance(model, PretrainedFeatureTransformer)
           else scope.get_unique_variable_name("network_output"))
    embed_model(scope, container, graphs.network, net_inputs, {"output": out})
    if isinstance(model, FineTunedClassifier):
        _classifier_outputs(scope, operator, container, model, out)
    elif isinstance(model, FineTunedRegressor):
        _regressor_outputs(scope, operator, container, model, out)


def _classifier_outputs(scope, operator, container, model, logits):
    """``predict_proba`` (softmax, or a sigmoid per label) and ``predict`` of the logits."""
    label, proba = operator.outputs[0].full_name, operator.outputs[1].full_name
    if _multilabel(model):
        container.add_node("Sigmoid", [logits], [proba], name=scope.get_unique_operator_name(
            "Sigmoid"))
        half = _const(scope, container, "half", np.array(0.5, np.float32))
        above = scope.get_unique_variable_name("above")
        container.add_node("Greater", [proba, half], [above],
                           name=scope.get_unique_operator_name("Greater"))
        container.add_node("Cast", [above], [label], to=onnx_proto.TensorProto.INT64,
                           name=scope.get_unique_operator_name("Cast"))
        return
    container.add_node("Softmax", [logits], [proba], axis=1,
                       name=scope.get_unique_operator_name("Softmax"))
    index = scope.get_unique_variable_name("index")
    # ArgMax picks the first of equal maxima, as numpy's argmax in predict.
    container.add_node("ArgMax", [proba], [index], axis=1, keepdims=0,
                       name=scope.get_unique_operator_name("ArgMax"))
    classes = np.asarray(model.classes_)
    classes = classes.astype(np.int64) if _integer_labels(model) else classes.astype(object)
    table = _const(scope, container, "classes", classes)
    container.add_node("Gather", [table, index], [label], axis=0,
                       name=scope.get_unique_operator_name("Gather"))


def _regressor_outputs(scope, operator, container, model, scaled):
    """``predict``: the network's outputs in the scale of the targets fitted."""
    # The fitted target scaling (what the regressor's predict applies).
    scale = np.asarray(model.target_scale_, np.float32).reshape(1, -1)
    mean = np.asarray(model.target_mean_, np.float32).reshape(1, -1)
    times = scope.get_unique_variable_name("times_scale")
    container.add_node("Mul", [scaled, _const(scope, container, "scale", scale)], [times],
                       name=scope.get_unique_operator_name("Mul"))
    container.add_node("Add", [times, _const(scope, container, "mean", mean)],
                       [operator.outputs[0].full_name],
                       name=scope.get_unique_operator_name("Add"))


def _const(scope, container, stem, value):
    name = scope.get_unique_variable_name(stem)
    if value.dtype == object:
        container.add_initializer(name, onnx_proto.TensorProto.STRING, list(value.shape),
                                  [str(v).encode("utf-8") for v in value.ravel()])
    else:
        container.add_initializer(name, _onnx_type(value), list(value.shape),
                                  value.ravel().tolist())
    return name


def _onnx_type(value):
    return {np.dtype(np.float32): onnx_proto.TensorProto.FLOAT,
            np.dtype(np.int64): onnx_proto.TensorProto.INT64}[value.dtype]

