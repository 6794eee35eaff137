"""A finished ONNX graph copied into the graph skl2onnx is building.

skl2onnx converters write into a container node by node. An estimator's
graphs (its preprocessing, its exported network) are whole models already:
:func:`embed_model` copies their nodes and initializers in, every name given
a prefix unique in the container (subgraphs included: a Loop's body refers
to the outer graph's names), the model's inputs and outputs wired to the
variables the converter was handed.
"""

from onnx import AttributeProto

#: Operator domains whose version the container must declare when a copied node uses them.
_STANDARD = ("", "ai.onnx")


def embed_model(scope, container, model, inputs, outputs):
    """Copy ``model``'s graph into ``container``.

    Parameters
    ----------
    scope : skl2onnx Scope
        Gives the unique prefix.
    container : skl2onnx ModelComponentContainer
    model : onnx.ModelProto
    inputs, outputs : dict of {str: str}
        The model's graph input and output names -> the container's names.
        A graph input missing from ``inputs`` is an error; an input the
        graph does not read (the exporter drops unused ones) is skipped.
    """
    graph = model.graph
    prefix = scope.get_unique_variable_name("skt") + "_"
    mapping = dict(inputs)
    mapping.update(outputs)
    missing = [i.name for i in graph.input if i.name not in mapping]
    if missing:
        raise ValueError(f"the graph's inputs {missing} are not wired to any variable")

    def rename(name):
        if not name:
            return name  # an omitted optional input
        return mapping.get(name, prefix + name)

    for init in graph.initializer:
        copy = type(init)()
        copy.CopyFrom(init)
        copy.name = rename(init.name)
        container.initializers.append(copy)
    for node in graph.node:
        container.nodes.append(_renamed_node(node, rename, prefix))
    for opset in model.opset_import:
        if opset.domain not in _STANDARD:
            container.node_domain_version_pair_sets.add((opset.domain, opset.version))


def _renamed_node(node, rename, prefix):
    copy = type(node)()
    copy.CopyFrom(node)
    copy.name = prefix + (node.name or node.op_type)
    copy.input[:] = [rename(n) for n in node.input]
    copy.output[:] = [rename(n) for n in node.output]
    for attr in copy.attribute:
        if attr.type == AttributeProto.GRAPH:
            _rename_graph(attr.g, rename, prefix)
        elif attr.type == AttributeProto.GRAPHS:
            for g in attr.graphs:
                _rename_graph(g, rename, prefix)
    return copy


def _rename_graph(graph, rename, prefix):
    """Rename a subgraph in place with the same rule, so names it reads from outside match."""
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        value.name = rename(value.name)
    for init in graph.initializer:
        init.name = rename(init.name)
    nodes = [_renamed_node(n, rename, prefix) for n in graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
