"""A text network run over a call's texts in chunks of similar length.

The graph's tokenizer pads every text of a call to the longest one, and a
transformer's cost grows with the padded length: a call of many short texts
and one long one pays for the long one everywhere. sktransfer's own engine
sorts texts by token count and runs them in batches of ``batch_size``; the
exported graph does the same in ONNX operators: :func:`in_chunks` wraps the
network in a ``Loop`` that takes the texts in order of length, ``batch_size``
(or fewer: the chunks are of equal size) at a time, each cut to its own
longest text, and puts the outputs back in the callers' order. One text is
one chunk of one.
"""

import onnx
from onnx import TensorProto, helper

#: The attention mask: which tokens of each padded row are real.
MASK = "attention_mask"


def in_chunks(model, batch_size):
    """``model`` (text inputs ``(N, L)`` -> ``output`` ``(N, ...)``) run in length-sorted chunks.

    Parameters
    ----------
    model : onnx.ModelProto
        The exported network: graph inputs named by the tokenizer's keys
        (``attention_mask`` among them), one output named ``output``.
    batch_size : int
        The most rows a chunk holds.

    Returns
    -------
    onnx.ModelProto
        The same inputs and output; the network's nodes and weights in the
        body of a ``Loop``.
    """
    graph = model.graph
    inputs = [i.name for i in graph.input]
    if MASK not in inputs or [o.name for o in graph.output] != ["output"]:
        raise ValueError(f"a text network takes {MASK!r} and gives 'output'; this one takes "
                         f"{inputs} and gives {[o.name for o in graph.output]}")
    nodes = [
        _const("ck_one", [1]), _const("ck_batch", [batch_size]),
        _const("ck_axis_1", [1]), _const("ck_zero_s", 0), _const("ck_one_s", 1),
        helper.make_node("Constant", [], ["ck_true"], value=helper.make_tensor(
            "ck_true", TensorProto.BOOL, [], [True])),
        # Token counts, and the rows in order of them (longest first).
        helper.make_node("Cast", [MASK], ["ck_mask_i64"], to=TensorProto.INT64),
        helper.make_node("ReduceSum", ["ck_mask_i64", "ck_axis_1"], ["ck_lengths"], keepdims=0),
        helper.make_node("Shape", [MASK], ["ck_n"], start=0, end=1),
        helper.make_node("TopK", ["ck_lengths", "ck_n"], ["ck_sorted_lengths", "ck_order"], axis=0,
                         largest=1, sorted=1),
        # chunks = ceil(n / batch); per chunk = ceil(n / chunks): equal chunks; the
        # positions past n (at most chunks - 1) repeat the shortest row, so that the
        # last chunk stays as short as its texts.
        helper.make_node("Sub", ["ck_batch", "ck_one"], ["ck_batch_less_one"]),
        helper.make_node("Add", ["ck_n", "ck_batch_less_one"], ["ck_n_up"]),
        helper.make_node("Div", ["ck_n_up", "ck_batch"], ["ck_chunks"]),
        helper.make_node("Sub", ["ck_chunks", "ck_one"], ["ck_chunks_less_one"]),
        helper.make_node("Add", ["ck_n", "ck_chunks_less_one"], ["ck_n_up_chunks"]),
        helper.make_node("Div", ["ck_n_up_chunks", "ck_chunks"], ["ck_per"]),
        helper.make_node("Mul", ["ck_chunks", "ck_per"], ["ck_total"]),
        helper.make_node("Squeeze", ["ck_total"], ["ck_total_s"]),
        helper.make_node("Squeeze", ["ck_n"], ["ck_n_s"]),
        helper.make_node("Squeeze", ["ck_chunks"], ["ck_chunks_s"]),
        helper.make_node("Range", ["ck_zero_s", "ck_total_s", "ck_one_s"], ["ck_positions"]),
        helper.make_node("Sub", ["ck_n_s", "ck_one_s"], ["ck_last"]),
        helper.make_node("Min", ["ck_positions", "ck_last"], ["ck_clamped"]),
        helper.make_node("Gather", ["ck_order", "ck_clamped"], ["ck_padded_order"], axis=0),
        helper.make_node("Gather", ["ck_sorted_lengths", "ck_clamped"], ["ck_padded_lengths"],
                         axis=0),
        helper.make_node("Loop", ["ck_chunks_s", "ck_true"], ["ck_chunk_outputs"],
                         body=_body(model, inputs)),
        # (chunks, per, ...) -> (chunks * per, ...): rows in sorted order.
        helper.make_node("Shape", ["ck_chunk_outputs"], ["ck_trailing"], start=2),
        _const("ck_minus_one", [-1]),
        helper.make_node("Concat", ["ck_minus_one", "ck_trailing"], ["ck_flat_shape"], axis=0),
        helper.make_node("Reshape", ["ck_chunk_outputs", "ck_flat_shape"],
                         ["ck_sorted_outputs"]),
        # Back in the callers' order: row order[k] of the result is sorted row k.
        helper.make_node("Range", ["ck_zero_s", "ck_n_s", "ck_one_s"], ["ck_ranks"]),
        helper.make_node("ScatterElements", ["ck_order", "ck_order", "ck_ranks"],
                         ["ck_rank_of"], axis=0),
        helper.make_node("Gather", ["ck_sorted_outputs", "ck_rank_of"], ["output"], axis=0),
    ]
    _named(nodes)
    wrapper = helper.make_graph(nodes, graph.name + "_in_chunks", list(graph.input),
                                list(graph.output))
    result = helper.make_model(wrapper, opset_imports=list(model.opset_import),
                               ir_version=model.ir_version)
    result.producer_name = model.producer_name
    return result


def _body(model, inputs):
    """The Loop's body: chunk ``i`` of the sorted rows, cut to its longest, through the network."""
    net = model.graph
    local = {name: f"ck_chunk_{name}" for name in inputs}
    local["output"] = "ck_chunk_output"
    nodes = [
        helper.make_node("Mul", ["ck_i", "ck_per"], ["ck_start"]),
        helper.make_node("Add", ["ck_start", "ck_per"], ["ck_end"]),
        _const("ck_zero", [0]),
        helper.make_node("Slice", ["ck_padded_order", "ck_start", "ck_end", "ck_zero"],
                         ["ck_rows"]),
    ]
    # Rows are longest first: the chunk's first row is its longest.
    nodes.append(helper.make_node("Slice", ["ck_padded_lengths", "ck_start", "ck_end", "ck_zero"],
                                  ["ck_chunk_lengths"]))
    nodes.append(helper.make_node("Slice", ["ck_chunk_lengths", "ck_zero", "ck_one", "ck_zero"],
                                  ["ck_longest"]))
    for name in inputs:
        nodes.append(helper.make_node("Gather", [name, "ck_rows"], [f"ck_rows_{name}"], axis=0))
    for name in inputs:
        nodes.append(helper.make_node(
            "Slice", [f"ck_rows_{name}", "ck_zero", "ck_longest", "ck_axis_1"], [local[name]]))
    for node in net.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [local.get(n, n) for n in node.input]
        copy.output[:] = [local.get(n, n) for n in node.output]
        nodes.append(copy)
    nodes.append(helper.make_node("Identity", ["ck_cond"], ["ck_cond_out"]))
    _named(nodes)
    output_type = net.output[0].type.tensor_type
    body = helper.make_graph(
        nodes, "chunk",
        [helper.make_tensor_value_info("ck_i", TensorProto.INT64, []),
         helper.make_tensor_value_info("ck_cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("ck_cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("ck_chunk_output", output_type.elem_type,
                                       [None] * len(output_type.shape.dim))],
        initializer=list(net.initializer),
        value_info=[v for v in net.value_info if v.name not in local])
    return body


def _named(nodes):
    """Name each unnamed node by its first output (unique): a graph copied into
    another is named node by node."""
    for node in nodes:
        if not node.name:
            node.name = node.output[0]


def _const(name, value):
    dims = [] if isinstance(value, int) else [len(value)]
    values = [value] if isinstance(value, int) else list(value)
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(
        name, TensorProto.INT64, dims, values))
