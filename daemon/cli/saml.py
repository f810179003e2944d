"""``provisiond saml keygen``, ``provisiond saml info`` and ``provisiond passwd``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final, NoReturn

import argon2
import click

from daemon.config import Config, ConfigError
from daemon.plugins import PluginError, plugin_manager
from daemon.saml.errors import SamlConfigError
from daemon.saml.keys import generate_signing_key, load_signing_key, write_signing_key
from daemon.saml.signon import SignOnBlock, SignOnOptions, endpoint_path
from daemon.secrets import SECRETS, SecretError, resolve_secret_path
from daemon.service import read_config

MIN_PASSWORD_LENGTH: Final = 8


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {SECRETS.redact(message)}", err=True)
    sys.exit(2)


def _config(ctx: click.Context) -> Config:
    try:
        return read_config(ctx.obj, plugin_manager())
    except (ConfigError, PluginError) as exc:
        _fail(str(exc))


@click.group()
def saml() -> None:
    """SAML identity provider: signing keys and what to paste into an application."""


@saml.command()
@click.option(
    "--key",
    "key_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key file to write (mode 0600).",
)
@click.option(
    "--cert",
    "cert_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Certificate file to write (PEM).",
)
@click.option(
    "--days", default=3650, show_default=True, type=click.IntRange(1, 36500), help="Validity."
)
@click.option("--cn", default="provisiond SAML IdP", show_default=True, help="Common name.")
@click.option("--key-size", default=2048, show_default=True, type=click.Choice(["2048", "3072"]))
@click.option("--force", is_flag=True, help="Overwrite existing files.")
def keygen(key_path: Path, cert_path: Path, days: int, cn: str, key_size: str, force: bool) -> None:
    """Make an RSA signing key and a self-signed certificate.

    For a rotation, write the new pair to new files, publish the new
    certificate as ``sso.next_cert_file`` first, and switch ``key_file`` and
    ``cert_file`` once the application has the new certificate.
    """
    for path in (key_path, cert_path):
        if path.exists() and not force:
            _fail(f"{path} exists; pass --force to overwrite it")
        if not path.parent.is_dir():
            _fail(f"directory {path.parent} does not exist")
    try:
        key = generate_signing_key(cn, key_size=int(key_size), valid_days=days)
        write_signing_key(key, key_path, cert_path)
    except (SamlConfigError, OSError) as exc:
        _fail(str(exc))
    click.echo(f"wrote {key_path} (mode 0600) and {cert_path}, valid for {days} days")


@saml.command()
@click.argument("target")
@click.pass_context
def info(ctx: click.Context, target: str) -> None:
    """Print what to paste into TARGET's SAML form: SSO URL, sign-out URL, certificate."""
    config = _config(ctx)
    settings = next((t for t in config.settings.targets if t.name == target), None)
    if settings is None:
        _fail(f"no target named {target!r} in the configuration")
    # Any target kind whose options carry an ``sso`` block of the core's shape.
    options = config.target_options[target]
    no_sign_in = f"target {target!r} (kind {settings.kind}) has no SAML sign-in"
    if not isinstance(options, SignOnOptions):
        _fail(no_sign_in)
    sso = options.sso
    if sso is not None and not isinstance(sso, SignOnBlock):
        _fail(no_sign_in)
    if sso is None or not sso.enabled:
        _fail(f"target {target!r} has no options.sso block, or it is disabled")
    public = config.settings.http.public
    base = (public.base_url or f"http://{public.host}:{public.port}").rstrip("/")
    try:
        key = load_signing_key(
            resolve_secret_path(sso.key_file, config.config_dir), config.resolve(sso.cert_file)
        )
    except (SamlConfigError, SecretError) as exc:
        _fail(str(exc))
    idp_url = base + endpoint_path(sso, target)
    click.echo(f"SSO URL:            {idp_url}")
    click.echo(f"Sign-out URL:       {idp_url}/slo")
    click.echo(f"Metadata:           {idp_url}/metadata")
    click.echo(f"Audience (SP ID):   {options.audience}")
    click.echo(f"ACS URL:            {options.acs_url}")
    click.echo("Certificate (paste everything below, line breaks kept):")
    click.echo(key.certificate_pem, nl=False)
    if not public.enabled:
        click.echo("note: http.public.enabled is false; these URLs are not served yet", err=True)


@click.command()
@click.argument("username")
@click.option("--stdin", "from_stdin", is_flag=True, help="Read the password from standard input.")
def passwd(username: str, from_stdin: bool) -> None:
    """Print an argon2id password_hash line for USERNAME's portal password.

    The `file` source is read-only to provisiond, so this prints the line to
    paste into the user's record in the directory file instead of editing it.
    The password is read twice from the terminal without echo, or once from
    standard input with --stdin.
    """
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt(
            f"New password for {username}", hide_input=True, confirmation_prompt=True
        )
    if len(password) < MIN_PASSWORD_LENGTH:
        _fail(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    hashed = argon2.PasswordHasher().hash(password)
    click.echo(f"# user {username}: add this line to their record in the directory file", err=True)
    click.echo(f"password_hash: '{hashed}'")
