"""The free-capacity index and a pass's overlay of it, without I/O: the overlay must yield exactly
what a copy of the index with the same changes would."""

from __future__ import annotations

import random

from federation.core.capacity import Free
from federation.core.index import FreeIndex


def _free(rng: random.Random) -> Free:
    cores = rng.randrange(0, 9)
    return Free(
        cores=list(range(cores)),
        gpus=[str(g) for g in range(rng.randrange(0, 3))],
        memory=rng.randrange(0, 4) * 2**30,
        slots=1,
    )


class Copy:
    """What a pass used to do: a full copy of the index, changed in place (the reference)."""

    def __init__(self, base: FreeIndex) -> None:
        self.index = FreeIndex()
        for name, key in base.key.items():
            self.index.keys.append(key)
            self.index.key[name] = key
        self.index.keys.sort()


def test_an_overlay_yields_what_a_changed_copy_would_and_leaves_the_region_s_index_alone() -> None:
    rng = random.Random(21)
    for _ in range(200):
        base = FreeIndex()
        names = [f"n{i:03d}" for i in range(rng.randrange(0, 40))]
        for name in names:
            base.put(name, _free(rng))
        before = (list(base.keys), dict(base.key))
        overlay, reference = base.overlay(), Copy(base).index
        for _ in range(rng.randrange(0, 30)):
            name = rng.choice([*names, "ghost"])
            if rng.random() < 0.6:
                free = _free(rng)
                overlay.put(name, free)
                reference.put(name, free)
            else:
                overlay.discard(name)
                reference.discard(name)
            assert len(overlay) == len(reference)
            assert all((n in overlay) == (n in reference) for n in [*names, "ghost"])
            gpus, cores, memory = rng.randrange(0, 3), rng.randrange(0, 9), rng.randrange(0, 4) * 2**30
            assert list(overlay.ascending(gpus, cores, memory)) == list(
                reference.ascending(gpus, cores, memory)
            )
            assert list(overlay.descending(gpus)) == list(reference.descending(gpus))
        assert (base.keys, base.key) == before  # the region's index is never changed by a pass
