"""List the registered models, methods and tasks: python -m bench.list"""

from __future__ import annotations

import argparse
import sys

from bench.method import METHODS
from bench.models import MODELS
from bench.tasks import TASKS


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m bench.list", description=__doc__).parse_args(argv)
    print("models:")
    for name, entry in MODELS.items():
        print(f"  {name:10s} {entry.description}  [family {entry.family}; tasks {', '.join(entry.tasks)}; "
              f"checkpoint {entry.checkpoint}]")
    print("methods:")
    for name in METHODS.names():
        doc = (sys.modules[METHODS.get(name).__module__].__doc__ or "").strip()
        print(f"  {name:10s} {doc.splitlines()[0] if doc else ''}")
    print("tasks:")
    for name in TASKS.names():
        print(f"  {name:10s} {TASKS.target(name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
