"""Run ``robustdistill.distill(**json.loads(argv[1]))`` the way the CLI is meant to run it under a
scheduler: SIGTERM behaves like Ctrl-C, and an interruption prints one ``error:`` line and exits
with ``128 + signal`` (143 for SIGTERM). Used by tests/test_signals.py in a real subprocess.
"""

from __future__ import annotations

import json
import sys

from robustdistill import distill
from robustdistill.signals import as_interrupted, terminate_as_interrupt


def main(options: dict) -> int:
    with terminate_as_interrupt():
        try:
            distill(**options)
        except KeyboardInterrupt as exc:
            stop = as_interrupted(exc)
            print(f"error: {stop.message()}", file=sys.stderr, flush=True)
            return stop.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(json.loads(sys.argv[1])))
