"""A network's parameters as groups ordered from input to output.

What freezing the first N groups, smaller rates for earlier groups and the
layer names of ``layers=`` are counted in (:attr:`Backbone.param_groups
<sktransfer.backbones.Backbone.param_groups>`).
"""

from torch.nn.parameter import is_lazy

__all__ = ["ordered_param_groups"]


def ordered_param_groups(module, max_share=0.3):
    """Split ``module``'s parameters into groups ordered input -> output.

    Starts from the top-level children, in registration order (for
    sequential networks and for torchvision, timm and Hugging Face models,
    the order data flows), and opens any child that holds more than
    ``max_share`` of all parameters and is a container of blocks (it has a
    child with children of its own), so that a network with one big
    ``encoder`` or ``layer4`` still gets a group per block, while a block of
    plain layers stays one group. Parameters registered directly on a
    container become a group named after it.

    Returns
    -------
    list of (str, list of str)
        ``(module name, [full parameter names])`` for every group that holds
        parameters.

    Examples
    --------
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(2, 4), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 1)))
    >>> [name for name, _ in ordered_param_groups(net)]
    ['0', '1']
    """
    def numel(params):
        return sum(0 if is_lazy(p) else p.numel() for p in params)

    total = numel(module.parameters()) or 1

    def has_params(mod):
        return any(True for _ in mod.parameters())

    def is_block_container(mod):
        # Most of its parametrized children are blocks with children of their
        # own (resnet's layer4, BERT's encoder), unlike a block of plain layers.
        kids = [c for c in mod.children() if has_params(c)]
        return sum(any(True for _ in c.children()) for c in kids) * 2 >= len(kids)

    groups = []

    def visit(prefix, mod):
        direct = [f"{prefix}{n}" for n, _ in mod.named_parameters(recurse=False)]
        if direct:
            groups.append((prefix.rstrip("."), direct))
        for name, child in mod.named_children():
            if not has_params(child):
                continue
            full = f"{prefix}{name}"
            size = numel(child.parameters())
            if size > max_share * total and is_block_container(child):
                visit(full + ".", child)
            else:
                groups.append((full, [f"{full}.{n}" for n, _ in child.named_parameters()]))

    visit("", module)
    return groups
