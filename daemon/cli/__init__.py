"""The ``provisiond`` command (console script ``daemon.cli:main``).

One module per group of commands; :mod:`daemon.cli.common` holds what they
share. Only `python -m daemon` (daemon.__main__) imports it.
"""

from __future__ import annotations

from pathlib import Path

import click

from daemon import __version__
from daemon.cli import check, cycle, explain, mfa, saml, state

CONFIG_HELP = "Configuration file (YAML). Env: PROVISIOND_CONFIG."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="PROVISIOND_CONFIG",
    help=CONFIG_HELP,
)
@click.pass_context
def main(ctx: click.Context, config_path: Path | None) -> None:
    """provisiond: keep applications in step with your directory.

    Watches or polls a directory (file, LDAP, Active Directory, JumpCloud),
    works out what changed, and provisions each configured target; see
    `provisiond COMMAND --help`.
    """
    ctx.obj = config_path


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(f"provisiond {__version__}")


for command in (
    cycle.run,
    cycle.sync,
    cycle.plan,
    check.check,
    state.status,
    explain.explain,
    state.held,
    state.approve,
    state.reject,
    saml.saml,
    saml.passwd,
    mfa.mfa,
):
    main.add_command(command)

__all__ = ["main"]
