"""CPU runtime settings for the recipe scripts: OpenMP waiting, thread count
and oneDNN's primitive cache.

Two calls, one on each side of ``import torch``::

    from icefall.threads import set_thread_env   # before torch is imported
    set_thread_env()
    import torch
    ...
    from icefall.threads import apply_num_threads
    apply_num_threads()                          # after, before any work

Why: PyTorch's CPU ops run on an OpenMP thread pool whose idle threads, by
default, spin for a while before they sleep.  When other work shares the
cores (a data loader, another training, a colleague's job), every parallel
region then waits for a spinning thread to get a core back: decode.py took
273-304 s with the default and 30.5 s with ``OMP_WAIT_POLICY=passive`` on a
shared 2-core machine (issue 14; benchmarks/README.md, "Threads and OpenMP
waiting").  The policy is read once, when OpenMP starts inside
``import torch``, so it has to be in the environment before that.

Thread count, first match wins:

  1. ``ICEFALL_NUM_THREADS`` (this toolkit's knob),
  2. ``OMP_NUM_THREADS`` (the usual one; torch also reads it),
  3. min(usable cores, DEFAULT_MAX_THREADS).

oneDNN's primitive cache: on CPU, PyTorch runs bfloat16 matrix products and
all convolutions through oneDNN, which compiles a "primitive" for every new
input shape and keeps the last ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` of them
(1024 by default).  Training batches come in hundreds of shapes (the
number of utterances and the padded length vary from batch to batch) and a
step of a small model needs a few hundred primitives, so with the default
the cache holds a handful of shapes and most steps compile their primitives
again: a bfloat16 epoch of run.sh's model took 490 s with the default and
356 s with a capacity of 65536 (RESULTS.md, section "2026-12-01 (sixth)").
``set_thread_env`` sets the variable to ``PRIMITIVE_CACHE_CAPACITY`` unless
the user set it; like the OpenMP policy it is read once, when torch first
uses oneDNN.

This module must not import torch (set_thread_env runs before it is loaded).
"""

import os
import sys
import warnings
from typing import Optional

__all__ = ["DEFAULT_MAX_THREADS", "PRIMITIVE_CACHE_CAPACITY", "set_thread_env", "apply_num_threads",
           "usable_cores"]

# Threads used when the user sets none (fewer if there are fewer cores).
# Decode-like work on a 2-core machine shared with other jobs, with passive
# waiting: 2 threads took 0.75-1.19x the time of 1 (median of three runs
# 1.06x), and up to 1.5x less when the other core was free; with the
# default waiting, 8-11x the time (benchmarks/README.md).
DEFAULT_MAX_THREADS = 2

_ENV_THREADS = "ICEFALL_NUM_THREADS"

# oneDNN primitives kept for reuse (see the module docstring); a primitive
# takes some tens of kB, so a full cache costs about 1-2 GB of memory.
PRIMITIVE_CACHE_CAPACITY = 65536
_ENV_CACHE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity), at least 1."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _threads_from(name: str) -> Optional[int]:
    """A positive int from environment variable ``name``, else None.

    Raises ValueError (naming the variable) for anything else.
    """
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{name}={value!r}: expected a positive whole number "
                         "of threads")
    return n


def chosen_num_threads() -> int:
    """The thread count by the rules in the module docstring."""
    for name in (_ENV_THREADS, "OMP_NUM_THREADS"):
        n = _threads_from(name)
        if n is not None:
            return n
    return min(usable_cores(), DEFAULT_MAX_THREADS)


def set_thread_env() -> int:
    """Set the OpenMP and oneDNN environment for torch; call it before ``import torch``.

    Sets ``OMP_WAIT_POLICY=passive`` unless the user set a policy,
    ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` to PRIMITIVE_CACHE_CAPACITY unless the
    user set one, and ``ICEFALL_NUM_THREADS`` to the chosen thread count (see the module
    docstring), so that processes started from this one (DDP workers, data
    loaders) inherit the same choice.  ``OMP_NUM_THREADS`` is left as the
    user set it: icefall.dist shares the cores among DDP processes only when
    it is unset.

    Returns the chosen number of threads.  A thread variable that is not a
    positive whole number is a user mistake: a one-line message naming it
    and exit code 2 (this runs at the top of a script, before its own error
    handling).
    """
    if "torch" in sys.modules and "OMP_WAIT_POLICY" not in os.environ:
        warnings.warn("set_thread_env() ran after torch was imported, so "
                      "OMP_WAIT_POLICY=passive comes too late for this "
                      "process; call it at the top of the script",
                      stacklevel=2)
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    os.environ.setdefault(_ENV_CACHE, str(PRIMITIVE_CACHE_CAPACITY))
    try:
        n = chosen_num_threads()
    except ValueError as e:
        prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] \
            else "python"
        print(f"{prog}: {e}", file=sys.stderr)
        raise SystemExit(2)
    os.environ[_ENV_THREADS] = str(n)
    return n


def apply_num_threads() -> int:
    """torch.set_num_threads(the chosen count); call it after importing torch,
    before any work (and before icefall.dist.setup_dist, which may lower it
    for several DDP processes).  Returns the count."""
    import torch

    n = chosen_num_threads()
    torch.set_num_threads(n)
    return n
