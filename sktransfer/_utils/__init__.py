"""Private utilities the rest of the package builds on.

Each module here is a leaf: it imports nothing from sktransfer outside
``_utils``, so any room of the package may use it without a cycle.

- :mod:`.seeding`: seeded blocks that leave the caller's RNG alone;
- :mod:`.launch`: reading a torchrun / accelerate / srun launch from the environment;
- :mod:`.device`: device and precision resolution, moving batches;
- :mod:`.files`: atomic writes and folder I/O;
- :mod:`.validation`: declarative parameter constraints, one message style;
- :mod:`.signature`: keyword-only parameters that still take a positional
  call, with a warning, for one release.
"""
