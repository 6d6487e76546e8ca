"""Command line: the thin layer between a person and the core. Exit codes: 0 ok/allowed,
1 blocked (or a verdict that is not 'ok'), 2 error."""

from __future__ import annotations

import click

from netguard import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="netguard")
def main() -> None:
    """netguard keeps container pulls inside the registries your organization allows.

    It runs inside the Linux VM that pulls images (Docker Desktop's VM, a WSL 2 distribution, a
    Vagrant box, any Linux host), reads DNS answers and the names in new connections (TLS SNI,
    HTTP Host/CONNECT, QUIC), and resets connections to registries the policy does not allow.

    \b
    First steps:
      netguard doctor                 can this machine enforce? what is missing?
      netguard check ghcr.io          what would the policy do with this host, and why
      netguard policy show            the effective allow/block table
      netguard run                    enforce (as root), default policy unless --policy
    """
