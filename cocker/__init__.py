"""cocker's command line."""

import gc

# Every command starts by allocating ~100k long-lived objects (click, then the modules of its
# path). At the default gen-0 threshold (700) that runs ~25 collections over them for nothing:
# ~5 ms of a 100 ms `container run`. Cycles are still collected, every 50k allocations.
gc.set_threshold(50_000)
