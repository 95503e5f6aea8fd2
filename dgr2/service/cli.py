"""``dgr2 serve``: flags mirror :class:`service.settings.Settings`; ``DGR2_*`` env vars are the defaults.

The flags are generated from the settings fields, so a new setting is a new flag with no second
list to keep in sync. Precedence: flag > environment > built-in default.
"""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError

from dgr2.service.settings import Settings

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        if isinstance(default, dict):
            default = ",".join(f"{k}={v:g}" for k, v in default.items()) or None
        if isinstance(default, list):
            default = ",".join(default) or None
        shown = "unset" if default is None else default
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, metavar=name.upper(),
                            help=f"{field.description} (env DGR2_{name.upper()}; default: {shown})")


def _resolve_models(settings: Settings) -> None:
    """A store or reference that names nothing is the user's mistake: one line before the server starts
    (verifying and loading the checkpoints stays the server's start-up, whose log tells its faults)."""
    from dgr2.errors import UserError
    from dgr2.model_store import ModelStore

    if not settings.store.is_dir():
        raise UserError(f"--store {settings.store}: not a folder; give a model store root (dgr2 model list "
                        "--store DIR shows what one holds)")
    store = ModelStore(settings.store)
    for model in settings.served_models:
        for decoder in ("ar", "diffusion"):
            try:
                store.resolve(model, settings.ref(decoder))
            except UserError as e:
                raise UserError(f"--store {settings.store}: {e} "
                                f"(see dgr2 model list --store {settings.store})") from None


def run(args: argparse.Namespace) -> int:
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None}
    try:
        settings = Settings(**given)
    except ValidationError as e:
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"])
            if where:
                print(f"dgr2 serve: error: --{where.replace('_', '-')}: {err['msg']}", file=sys.stderr)
            else:  # a rule between settings names them itself
                print(f"dgr2 serve: error: {err['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    _resolve_models(settings)
    from dgr2.service.app import create_app
    from dgr2.service.server import EXIT_WARM_UP_FAILED, build_server

    server = build_server(create_app(settings), settings.host, settings.port, settings.log_level)
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits when start-up fails (e.g. a checkpoint fails verification)
        if server.started:
            raise
        log.error("the service did not start (see the error above)")
        return e.code if isinstance(e.code, int) and e.code else 1
    if server.fatal_error:
        print(f"dgr2 serve: error: {server.fatal_error}", file=sys.stderr)
        return EXIT_WARM_UP_FAILED
    return 0
