"""``python -m bench [name ...]``: run the registered benchmarks, each printing JSON.

Each benchmark runs as its own process (``python -m bench.<name>``) so one that fails or
is missing does not stop the others, and none shares an event loop or a database with
another. ``BENCH_QUICK=1`` (or ``--quick``) asks every benchmark for a short run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys

# In the order they run; modules other helpers own are included when present.
REGISTERED = ["verify_bench", "fanout_bench", "journey_bench"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: {REGISTERED})")
    parser.add_argument("--quick", action="store_true", help="short runs (smoke test)")
    args = parser.parse_args(argv)
    names = args.names or REGISTERED
    env = dict(os.environ)
    if args.quick:
        env["BENCH_QUICK"] = "1"
    failed = []
    for name in names:
        module = f"bench.{name}"
        if importlib.util.find_spec(module) is None:
            print(f'{{"benchmark": "{name}", "skipped": "not present"}}', flush=True)
            continue
        print(f"# {name}", file=sys.stderr, flush=True)
        result = subprocess.run([sys.executable, "-m", module], env=env, check=False)
        if result.returncode != 0:
            failed.append(name)
    if failed:
        print(f"# failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
