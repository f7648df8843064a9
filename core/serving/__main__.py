"""`python -m opsloop.serving [OPTIONS]`: `opsloop serve` without the rest of the CLI.

The `local-http` deploy target starts servers this way, so that it does not
depend on how the `opsloop` command is assembled.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str] | None = None) -> int:
    import typer
    from opsloop.cli.serve import serve
    from opsloop.errors import OpsloopError

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)
    app.command()(serve)
    try:
        app(args=sys.argv[1:] if argv is None else argv, prog_name="opsloop serve", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (OpsloopError, OSError) as exc:
        if os.environ.get("OPSLOOP_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
