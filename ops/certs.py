"""python -m ops.certs (make certs): a local CA, a certificate per service, and a cluster token.

Writes into --out (default certs/): ca.pem + ca-key.pem, then <name>.pem + <name>-key.pem for the coordinator,
the tokenizer, the api, a "client" (the launcher, tools and tests) and every node id of the config. Each
certificate is valid for server and client authentication and names: the service, the host of its configured
address (after SHARDLINE_ADDRESSES, so run it with the addresses of the deployment), localhost, 127.0.0.1 and
every --san. A CA already in --out is reused (certificates stay mutually trusted); --force makes a new one.
Private keys and the token are written 0600. Then point the config's ``security`` section at them:

    "security": {"tls_ca": "certs/ca.pem", "tls_cert": "certs/{name}.pem", "tls_key": "certs/{name}-key.pem",
                 "tls_mutual": true, "cluster_token_file": "certs/cluster-token"}
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import secrets
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protos.config import Config, ConfigError, default_config_path, load_config

LOCAL_NAMES = ("localhost", "127.0.0.1")


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for n in dict.fromkeys(names):  # ordered, without repeats
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            entries.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(entries)


def make_ca(out: Path, days: int) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Shardline local CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    _write(out / "ca-key.pem", _key_pem(key), private=True)
    _write(out / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def load_ca(out: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = serialization.load_pem_private_key((out / "ca-key.pem").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey), "ca-key.pem must be an EC key made by this command"
    return key, x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())


def issue(out: Path, name: str, hosts: list[str], ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate,
          days: int) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(_san([name, *hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write(out / f"{name}-key.pem", _key_pem(key), private=True)
    _write(out / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))


def service_hosts(config: Config) -> dict[str, list[str]]:
    """Each service's name -> the hosts it is dialled at (besides its own name and the local names)."""
    def host(address: str) -> list[str]:
        h = address.rsplit(":", 1)[0]
        return [] if h in ("0.0.0.0", "::") else [h]

    names = {"coordinator": host(config.coordinator.address), "tokenizer": host(config.tokenizer.address),
             "api": [config.api.host] if config.api.host not in ("0.0.0.0", "::") else [], "client": []}
    for n in config.nodes:
        names[n.id] = host(n.address)
    return names


def make_all(config: Config, out: Path, extra_sans: list[str], days: int = 825, force: bool = False) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    if force or not (out / "ca.pem").is_file() or not (out / "ca-key.pem").is_file():
        ca_key, ca = make_ca(out, days)
    else:
        ca_key, ca = load_ca(out)
    made = []
    for name, hosts in service_hosts(config).items():
        issue(out, name, [*hosts, *LOCAL_NAMES, *extra_sans], ca_key, ca, days)
        made.append(name)
    token = out / "cluster-token"
    if force or not token.is_file():
        _write(token, (secrets.token_hex(32) + "\n").encode(), private=True)
    return made


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m ops.certs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=default_config_path())
    p.add_argument("--out", default="certs", help="folder for the CA, certificates, keys and token")
    p.add_argument("--san", action="append", default=[],
                   help="another name or IP every certificate is valid for (repeat), e.g. *.shard-node")
    p.add_argument("--days", type=int, default=825, help="validity in days")
    p.add_argument("--force", action="store_true", help="a new CA and token even if --out has them")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        sys.exit(f"certs: {e}")
    out = Path(args.out)
    made = make_all(config, out, args.san, args.days, args.force)
    sys.stdout.write(f"CA {out / 'ca.pem'}; certificates for {', '.join(made)}; token {out / 'cluster-token'}\n"
                     f"Enable them in {args.config}:\n"
                     f'  "security": {{"tls_ca": "{out}/ca.pem", "tls_cert": "{out}/{{name}}.pem", '
                     f'"tls_key": "{out}/{{name}}-key.pem", "tls_mutual": true, '
                     f'"cluster_token_file": "{out}/cluster-token"}}\n')


if __name__ == "__main__":
    main()
