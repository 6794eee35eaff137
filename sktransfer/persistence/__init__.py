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
  :class:`~sktransfer.persistence.modules.PickledModule` estimators pickle;
- :mod:`.format`: the layout of a model file (manifest, checksums, where
  the sktransfer estimators sit in a scikit-learn graph);
- :mod:`.writer` / :mod:`.reader`: :func:`sktransfer.save` and
  :func:`sktransfer.load`.

This package imports none of its submodules: the estimators import
:mod:`.modules` and :mod:`.codec`, while :mod:`.writer` and :mod:`.reader`
import the estimators; an eager import here would close that circle.
"""
