"""What the fuzz and fault tests share: their size and a watchdog against hangs.

``DRIFTLINE_FAULTS_SCALE=full`` runs them at full size (``make faults`` on demand);
unset, they run bounded, small enough for every CI run.
"""

from __future__ import annotations

import faulthandler
import os
import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

FULL = os.environ.get("DRIFTLINE_FAULTS_SCALE", "").lower() == "full"


def scaled(ci: int, full: int) -> int:
    """``ci`` normally, ``full`` with DRIFTLINE_FAULTS_SCALE=full."""
    return full if FULL else ci


def fuzz_settings(ci_examples: int = 500, full_examples: int = 20_000) -> settings:
    """Hypothesis settings of the decoder fuzz tests: a per-example deadline (a slow or
    stuck example fails the test), no health check about generated sizes."""
    return settings(
        max_examples=scaled(ci_examples, full_examples),
        deadline=timedelta(seconds=2),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def _address_space() -> int:
    """This process's virtual memory size in bytes (Linux), 0 if unknown."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@contextmanager
def watchdog(seconds: float, memory_headroom: int = 4 << 30) -> Iterator[None]:
    """Ends the process with every thread's traceback if the block is not done within
    ``seconds``. Hypothesis' deadline only judges an example once it returns; this also
    catches one that never returns, even inside native code holding the GIL.

    The block also runs with at most ``memory_headroom`` more address space, so a
    decoder that asks for absurd amounts of memory fails this process (a Rust allocation
    failure aborts it) instead of pushing the machine into the OOM killer."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    current = _address_space()
    capped = current > 0 and (soft == resource.RLIM_INFINITY or soft > current + memory_headroom)
    if capped:
        resource.setrlimit(resource.RLIMIT_AS, (current + memory_headroom, hard))
    faulthandler.dump_traceback_later(seconds, exit=True, file=sys.stderr)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        if capped:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def watchdog_fixture(seconds: float) -> Any:
    """An autouse fixture that runs each test of a module under :func:`watchdog`."""

    @pytest.fixture(autouse=True)
    def _watchdog() -> Iterator[None]:
        with watchdog(seconds):
            yield

    return _watchdog
