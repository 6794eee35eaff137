"""How a fine-tuner pickles: networks as config and arrays, never ``torch.save`` bytes.

The skorch net is rebuilt when needed; pickles hold the networks as config +
numpy arrays (no ``torch.save`` bytes, so they load without CUDA and run no
inner pickle), the history and, only when ``keep_optimizer`` is set, the
optimizer's state.
"""

from ..backbones import adapter_from_state, adapter_state
from ..persistence.codec import from_plain, to_plain
from ..persistence.modules import pack_modules, unpack_modules


class PicklesPlainly:
    """Mixin of the fine-tuners: ``__getstate__`` / ``__setstate__`` without torch pickles."""

    def __getstate__(self):
        # A copy: BaseEstimator may hand back the live __dict__.
        state = dict(super().__getstate__())
        net = state.pop("net_", None)
        if net is not None and self.keep_optimizer:
            state["_optimizer_state"] = net.optimizer_.state_dict()
        elif not self.keep_optimizer:
            state.pop("_optimizer_state", None)
        if state.get("_optimizer_state") is not None:
            # Tensors as numpy arrays, the rest plain values: no torch.save bytes.
            state["_optimizer_state"] = to_plain(state["_optimizer_state"])
        adapter = state.get("adapter")
        if adapter is not None and not isinstance(adapter, str):
            # A peft config travels as the checked plain fields a model file
            # holds, not as peft objects.
            state["adapter"] = {"__adapter__": adapter_state(adapter)}
        # The head, the penalty and a module given as ``backbone`` travel as
        # config + arrays (backbone_ handles itself: Backbone.__getstate__).
        return pack_modules(state, ("head_", "l2sp_", "backbone"))

    def __setstate__(self, state):
        state = unpack_modules(state)
        adapter = state.get("adapter")
        if isinstance(adapter, dict) and set(adapter) == {"__adapter__"}:
            state["adapter"] = adapter_from_state(adapter["__adapter__"])
        if state.get("_optimizer_state") is not None:
            state["_optimizer_state"] = from_plain(state["_optimizer_state"])
        super().__setstate__(state)

