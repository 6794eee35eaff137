"""What the ONNX preprocessing graphs share: the opset, a node-by-node builder, the
served input's description and the refusal of what no graph expresses."""

from dataclasses import dataclass

import numpy as np
from onnx import helper, numpy_helper

#: The opset of every graph built here, and of the exported network they feed
#: (torch's exporter writes 18 natively).
OPSET = 18


class UnsupportedPreprocessing(ValueError):
    """A backbone's preprocessing that no ONNX graph here expresses (the message names it)."""


@dataclass(frozen=True)
class ServingInput:
    """What the served graph takes: the dtype and shape of ``"X"`` (None: any length),
    and the layout in words (recorded in the graph's metadata)."""

    dtype: type
    shape: tuple
    layout: str


class GraphBuilder:
    """A few helpers to write a graph node by node, with unique names."""

    def __init__(self, prefix="pp"):
        self.nodes, self.initializers, self.domains = [], [], {}
        # A subgraph gets a prefix of its own: ONNX names are unique across
        # a graph and the graphs nested in it.
        self.prefix = prefix

    def name(self, stem):
        return f"{self.prefix}_{stem}_{len(self.nodes) + len(self.initializers)}"

    def const(self, value):
        value = np.asarray(value)
        if value.dtype.kind == "i":
            value = value.astype(np.int64)
        name = self.name("c")
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(self, op, inputs, output=None, domain="", outputs=None, **attrs):
        names = outputs or [output or self.name(op.lower())]
        if domain:
            self.domains.setdefault(domain, 1)  # a version set beforehand stays
        self.nodes.append(helper.make_node(op, inputs, names, name=self.name(op), domain=domain,
                                           **attrs))
        return names[0] if len(names) == 1 else names

    def rename(self, name, new):
        """Call the output ``name`` of an earlier node ``new`` (a graph output's name,
        say) where nothing reads it yet: no copy, as an Identity node would make."""
        for node in self.nodes:
            assert name not in node.input, f"{name!r} is already read"
            for i, out in enumerate(node.output):
                if out == name:
                    node.output[i] = new

    def model(self, graph_input, outputs, output_types=None):
        types = output_types or {}
        outs = [helper.make_tensor_value_info(o, types.get(o, helper.TensorProto.FLOAT), None)
                for o in outputs]
        graph = helper.make_graph(self.nodes, "preprocess", [graph_input], outs,
                                  self.initializers)
        opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, v)
                                                      for d, v in self.domains.items()]
        model = helper.make_model(graph, opset_imports=opsets)
        model.ir_version = min(model.ir_version, 10)
        return model
