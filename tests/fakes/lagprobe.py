"""How late an idle event loop wakes on this machine right now: the scheduling noise a load
generator's send lag cannot be below.

Runs the generator's own loop (uvloop) and sleeps ``--sleep-ms`` at a time until stdin closes (or
``--max-s``), then prints one JSON line: ``{"samples": [[monotonic_t, late_s], ...]}``. The benchmark
reads the samples of the generator's counted window, so both figures cover the same seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import uvloop


async def probe(sleep_s: float, max_s: float) -> list[tuple[float, float]]:
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    loop.add_reader(sys.stdin.fileno(), lambda: done.done() or done.set_result(None))
    samples: list[tuple[float, float]] = []
    end = time.monotonic() + max_s
    while not done.done() and time.monotonic() < end:
        t = time.monotonic()
        await asyncio.sleep(sleep_s)
        now = time.monotonic()
        samples.append((now, now - t - sleep_s))
    return samples


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sleep-ms", type=float, default=2.0)
    p.add_argument("--max-s", type=float, default=300.0)
    args = p.parse_args()
    samples = uvloop.run(probe(args.sleep_ms / 1000.0, args.max_s))
    print(json.dumps({"samples": samples}), flush=True)


if __name__ == "__main__":
    main()
