"""TLS for the HTTP API: the server context (--tls-*) and the context for calls to other nodes."""

import os
import ssl

from node.config import NodeConfig


class TlsConfigError(Exception):
    """A --tls-* file is missing or unusable; the message is one line for the operator."""


def _check_file(flag: str, path: str) -> None:
    if not os.path.isfile(path):
        raise TlsConfigError(f"{flag} {path}: no such file")


def server_context(config: NodeConfig) -> ssl.SSLContext | None:
    """The context the HTTP API serves with, or None when --tls-cert is not given."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    _check_file("--tls-cert", config.tls_cert)
    _check_file("--tls-key", config.tls_key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(
            f"--tls-cert {config.tls_cert} / --tls-key {config.tls_key}: "
            f"not a certificate and its private key ({_reason(exc)})"
        ) from exc
    if config.tls_client_ca is not None:
        _check_file("--tls-client-ca", config.tls_client_ca)
        try:
            context.load_verify_locations(cafile=config.tls_client_ca)
        except (ssl.SSLError, OSError) as exc:
            raise TlsConfigError(
                f"--tls-client-ca {config.tls_client_ca}: not a PEM CA bundle ({_reason(exc)})"
            ) from exc
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def peer_context(config: NodeConfig) -> ssl.SSLContext:
    """How this node verifies other nodes (--join over https): --tls-ca or the system store.

    The node's own certificate goes along as a client certificate, so joining a
    cluster that runs with --tls-client-ca works when the same CA signed both.
    """
    if config.tls_ca is not None:
        _check_file("--tls-ca", config.tls_ca)
    try:
        context = ssl.create_default_context(cafile=config.tls_ca)
    except (ssl.SSLError, OSError) as exc:
        raise TlsConfigError(
            f"--tls-ca {config.tls_ca}: not a PEM CA bundle ({_reason(exc)})"
        ) from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.tls_cert is not None and config.tls_key is not None:
        try:
            context.load_cert_chain(config.tls_cert, config.tls_key)
        except (ssl.SSLError, OSError) as exc:
            raise TlsConfigError(
                f"--tls-cert {config.tls_cert} / --tls-key {config.tls_key}: "
                f"not a certificate and its private key ({_reason(exc)})"
            ) from exc
    return context


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason)
    return str(exc).replace("\n", " ") or type(exc).__name__
