"""Packet delay without netem: holds every packet an iptables NFQUEUE rule hands it for DELAY ms, then accepts it.

    python -m bench.netdelay --queue 7 --delay-ms 5 --lifetime 1800

Runs until SIGTERM/SIGINT or its lifetime ends (bounded, so a crashed bench leaves nothing running); on exit
it lets every held packet through. Rules should use ``--queue-bypass`` so traffic flows when it is gone.
Needs the ``netfilterqueue`` package (libnetfilter-queue) and root.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import select
import signal
import sys
import time
from typing import Any


def run(queue_num: int, delay_s: float, lifetime_s: float) -> int:
    from netfilterqueue import COPY_META, NetfilterQueue

    held: list[tuple[float, int, Any]] = []  # (release time, tie-breaker, packet)
    order = itertools.count()
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def hold(pkt: Any) -> None:
        heapq.heappush(held, (time.monotonic() + delay_s, next(order), pkt))

    nfq = NetfilterQueue()
    nfq.bind(queue_num, hold, max_len=8192, mode=COPY_META)  # only the verdict matters: no payload copy
    fd = nfq.get_fd()
    end = time.monotonic() + lifetime_s
    passed = 0
    print(f"netdelay: queue {queue_num}, {delay_s * 1e3:.1f} ms, lifetime {lifetime_s:.0f} s", flush=True)  # noqa: T201
    try:
        while not stop and time.monotonic() < end:
            wait = min(0.5, max(0.0, held[0][0] - time.monotonic())) if held else 0.5
            readable, _, _ = select.select([fd], [], [], wait)
            if readable:
                nfq.run(block=False)
            now = time.monotonic()
            while held and held[0][0] <= now:
                heapq.heappop(held)[2].accept()
                passed += 1
    finally:
        for _, _, pkt in held:
            pkt.accept()
        nfq.unbind()
        print(f"netdelay: queue {queue_num} done, {passed} packets delayed", flush=True)  # noqa: T201
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queue", type=int, required=True)
    p.add_argument("--delay-ms", type=float, default=5.0)
    p.add_argument("--lifetime", type=float, default=1800.0, help="seconds before it exits by itself")
    args = p.parse_args()
    return run(args.queue, args.delay_ms / 1e3, args.lifetime)


if __name__ == "__main__":
    sys.exit(main())
