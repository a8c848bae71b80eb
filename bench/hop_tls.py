"""TLS and the cluster token for the hop measurement (bench/hop.py): a throwaway CA, certificates for the echo node
and the client (ops/certs.py, the same code as `make certs`), a random token, and how each side installs them
(protos/security.py, as every service does): mutual TLS + token, the setting `make certs` recommends."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ops.certs import LOCAL_NAMES, issue, make_ca
from protos import security

ECHO_NAME = "echo"
CLIENT_NAME = "client"
DESCRIPTION = "mutual TLS + cluster token"


@dataclass(frozen=True)
class HopTls:
    folder: Path
    token: str

    def env(self) -> dict[str, str]:
        """The echo node's environment: what protos/security.py's load_security reads."""
        return {security.ENV["tls_ca"]: str(self.folder / "ca.pem"),
                security.ENV["tls_cert"]: str(self.folder / "{name}.pem"),
                security.ENV["tls_key"]: str(self.folder / "{name}-key.pem"),
                security.ENV["tls_mutual"]: "true", security.TOKEN_ENV: self.token}

    def client(self) -> security.ClusterSecurity:
        read = lambda name: (self.folder / name).read_bytes()  # noqa: E731
        return security.ClusterSecurity(name=CLIENT_NAME, ca=read("ca.pem"), cert=read(f"{CLIENT_NAME}.pem"),
                                        key=read(f"{CLIENT_NAME}-key.pem"), mutual=True, token=self.token)


def make_hop_tls(folder: Path, hosts: list[str]) -> HopTls:
    """A CA valid for a day and certificates naming ``hosts`` and the local names, in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca = make_ca(folder, days=1)
    for name in (ECHO_NAME, CLIENT_NAME):
        issue(folder, name, [*hosts, *LOCAL_NAMES], ca_key, ca, days=1)
    return HopTls(folder, secrets.token_hex(32))


@contextmanager
def installed(sec: security.ClusterSecurity) -> Iterator[None]:
    """``sec`` as this process's security for the duration (channels opened inside follow it)."""
    previous = security.current()
    security.install(sec)
    try:
        yield
    finally:
        security.install(previous)
