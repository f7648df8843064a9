"""`opsloop deploy status|remove`: (being built in this change; see issue 11, item 6)."""

from __future__ import annotations

import typer

deploy_app = typer.Typer(help="Where the model is deployed, and taking it down.", no_args_is_help=True)
