"""gRPC addresses ``host:port``: one canonical spelling per endpoint, and whether an address stays on this machine.

``LOCALHOST:050051``, ``127.1:50051``, ``[::ffff:127.0.0.1]:50051`` and ``127.0.0.1:50051`` are one endpoint:
IP literals are rewritten by ``ipaddress`` (the short IPv4 forms ``getaddrinfo`` accepts, such as ``127.1`` or
``0x7f.1``, included), host names are lowercased, ports lose leading zeros, IPv6 literals keep their brackets.
"""

from __future__ import annotations

import ipaddress
import re
import socket

HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?$")  # DNS labels (compose and k8s names use '_' and '-')
IPV4_SHORT = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$")  # what inet_aton reads as an IPv4
LOCAL_NAMES = ("localhost",)
ADDRESS_RULE = "'host:port' with a host name, an IPv4 address or a bracketed IPv6 address ([::1]:50051), port 1-65535"


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if IPV4_SHORT.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def split_address(address: str) -> tuple[str, int]:
    """(canonical host, port); IPv6 hosts come back bracketed. ValueError names what is wrong."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {address!r} must be {ADDRESS_RULE}")
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        ip = _ip(host[1:-1])
        if ip is None:
            raise ValueError(f"address {address!r}: {host} is not an IPv6 address; must be {ADDRESS_RULE}")
    elif ":" in host:
        raise ValueError(f"address {address!r}: an IPv6 address needs brackets, e.g. [::1]:{int(port)}")
    else:
        host = host.removesuffix(".")
        ip = _ip(host)
        if ip is None and not HOST_NAME.match(host):
            raise ValueError(f"address {address!r}: {host!r} is not a host name or IP address; must be {ADDRESS_RULE}")
    if ip is not None:
        host = f"[{ip.compressed}]" if ip.version == 6 else str(ip)
    return host, int(port)


def canonical_address(address: str) -> str:
    """The one spelling of ``address`` (see the module's docstring); ValueError if it is not ``host:port``."""
    host, port = split_address(address)
    return f"{host}:{port}"


def is_local_host(host: str) -> bool:
    """Whether a (canonical) host is this machine: ``localhost``, 127.0.0.0/8, ::1, or the unspecified address."""
    if host in LOCAL_NAMES:
        return True
    ip = _ip(host.strip("[]"))
    return ip is not None and (ip.is_loopback or ip.is_unspecified)


def is_local(address: str) -> bool:
    """Whether a gRPC target stays on this machine (loopback, or a unix socket); False if it cannot be parsed."""
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    try:
        host, _ = split_address(address.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:"))
    except ValueError:
        return False
    return is_local_host(host)


def endpoint_key(address: str) -> tuple[str, int]:
    """What two addresses must share to reach the same node: every local spelling of a port is one endpoint."""
    host, port = split_address(address)
    return ("local" if is_local_host(host) else host), port
