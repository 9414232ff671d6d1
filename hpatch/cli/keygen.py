"""``hpatch keygen``: an Ed25519 key pair for signing packages and releases."""

from __future__ import annotations

import click

from hpatch.package.signing import generate_key, key_id, load_public_key
from hpatch.text import path_text, plain


@click.command()
@click.argument("key_path", metavar="KEY", type=click.Path(dir_okay=False))
def keygen(key_path: str) -> None:
    """Create an Ed25519 signing key: KEY (private) and KEY.pub (public)."""
    public_path = generate_key(key_path)
    key = load_public_key(public_path)
    click.echo(
        f"private key {plain(path_text(key_path))}\npublic key {plain(path_text(public_path))}\n"
        f"key id {key_id(key).hex()}"
    )
