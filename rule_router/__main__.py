"""`cairn-router`: not built yet (see the open issue for this component)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("cairn-router: not built yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
