"""How sktransfer's models travel as data: pickles and ``.skt`` model files.

Nothing stored by sktransfer runs code when read. A network travels as a
config of plain values plus its tensors, never as a pickled module object,
and a class is imported only when it is trusted.

- :mod:`.trust`: which class names may be imported (by identity, never by
  spelling), which attribute keys a file may set, and
  :class:`~sktransfer.persistence.trust.UntrustedTypeError`;
- :mod:`.checks`: a stored module tree checked whole (classes, keys, tags)
  before anything is built from it;
- :mod:`.codec`: the one codec of values: tensors to numpy arrays and back,
  and the tagged JSON forms of parameters, module attributes and optimizer
  state;
- :mod:`.modules`: any ``nn.Module`` as a config tree plus arrays, and the
  :class:`~sktransfer.persistence.modules.PickledModule` estimators pickle.

Model files themselves (:func:`sktransfer.save` and :func:`sktransfer.load`)
are :mod:`sktransfer.saving`'s, the room above the estimators. This one sits
below them: the estimators import :mod:`.modules` and :mod:`.codec` to pickle
their networks, so these four modules import no estimator and nothing of
:mod:`sktransfer.saving`. The only exceptions are the old paths
``sktransfer.persistence.format``, ``.reader`` and ``.writer``: code aliases
of :mod:`sktransfer.saving`'s modules (listed in
:data:`sktransfer._utils.aliases.MOVED`) that warn on import and go in the
release it names.

This package imports none of its submodules, so that importing one of them
(as the estimators do) loads only what it needs.
"""
