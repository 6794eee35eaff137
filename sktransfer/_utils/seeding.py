"""Seeding that never changes the caller's global random state."""

import contextlib

import torch


@contextlib.contextmanager
def seeded(random_state):
    """Run a block with torch's global RNG seeded, restoring it afterwards.

    ``random_state=None`` leaves the RNG alone. The global state is forked and
    restored so that fitting an estimator never changes the caller's RNG.
    """
    if random_state is None:
        yield
        return
    seed = seed_from(random_state)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def seed_from(random_state):
    from sklearn.utils import check_random_state

    if isinstance(random_state, (int,)) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(0, 2**31 - 1))
