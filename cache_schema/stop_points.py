"""Named points of the commit protocol where a kill test can freeze a writer and then kill it exactly there.

With ``ADACOMED_STOP_AT=<point>[:<n>]`` in its environment, a process sends itself SIGSTOP the n-th time (first by
default) it reaches ``<point>``; the test sees it stopped and sends SIGKILL. So a kill lands at a named step of the
protocol, whatever the machine's speed. Unset (always, outside tests) a point costs one environment lookup.

Points, in the order a run meets them:

* ``planning``: ``fingerprint.json`` is written, ``plan.json`` is not;
* ``shard-written``: a shard's data file is complete in ``_tmp/``, not yet renamed;
* ``shard-renamed``: the data file is in ``shards/``, its commit record is not (the commit window);
* ``committed``: the shard's commit record is written;
* ``finalizing``: every shard is committed, ``index.json`` is not written;
* ``finalized``: ``index.json`` is written, claims and garbage are not yet cleaned up.
"""

from __future__ import annotations

import os
import signal

STOP_AT_ENV = "ADACOMED_STOP_AT"
POINTS = ("planning", "shard-written", "shard-renamed", "committed", "finalizing", "finalized")
_reached: dict[str, int] = {}


def stop_point(name: str) -> None:
    """Stop this process here if ``ADACOMED_STOP_AT`` names this point and this is its n-th visit."""
    wanted = os.environ.get(STOP_AT_ENV)
    if not wanted:
        return
    point, _, nth = wanted.partition(":")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGSTOP)
