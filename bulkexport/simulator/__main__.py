"""``python -m bulkexport.simulator``: serve the simulator until SIGINT or SIGTERM.

The URL goes to stdout on its own line (and is flushed) so scripts and tests can wait for
it; stopping is a normal, silent exit 0 because stopping is the only way it ends.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from datetime import date

from ._server import Simulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bulkexport.simulator",
        description="Serve a simulated Braze GET /sends/data_series on loopback.",
    )
    parser.add_argument("--port", type=int, required=True, help="0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--api-key", default="demo-key")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rate-limit", type=int, default=250_000)
    parser.add_argument("--rate-window", type=float, default=3600.0, help="seconds")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument("--extras", action="store_true", help="serve undocumented fields")
    parser.add_argument("--cache-size", type=int, default=4096, help="rendered bodies kept (default 4096)")
    parser.add_argument(
        "--anchor-date", type=date.fromisoformat, default=None, help="YYYY-MM-DD; default today"
    )
    return parser


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Simulator(
        api_key=args.api_key,
        seed=args.seed,
        anchor_date=args.anchor_date,
        rate_limit=args.rate_limit,
        rate_window=args.rate_window,
        latency=args.latency,
        extras=args.extras,
        host=args.host,
        port=args.port,
        cache_size=args.cache_size,
    ) as sim:
        print(sim.url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        asyncio.run(_serve(args))
    except OSError as exc:  # typically the port is taken: say so, no traceback
        print(f"cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
