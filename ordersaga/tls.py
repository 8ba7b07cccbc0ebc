"""TLS for the three connections a process makes (Postgres, NATS, Temporal), from `TlsSettings`."""

from __future__ import annotations

import ssl

from temporalio.service import TLSConfig

from ordersaga.settings import TlsSettings


def ssl_context(tls: TlsSettings) -> ssl.SSLContext | None:
    """A client context that verifies the server (chain and host name), or None when TLS is off.
    A file that cannot be read or parsed fails here, at start, naming the file."""
    if not tls.on:
        return None
    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file) if tls.ca_file else None)
        if tls.cert_file is not None:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as error:
        files = ", ".join(str(f) for f in (tls.ca_file, tls.cert_file, tls.key_file) if f)
        raise ValueError(f"TLS files {files} could not be loaded: {error}") from error
    return context


def temporal_tls(tls: TlsSettings, *, api_key: bool = False) -> TLSConfig | bool:
    """The SDK's TLS argument: a config with our files, True for the system's trust store (an API
    key is only ever sent over TLS), False for plain gRPC."""
    if not tls.on:
        return api_key
    try:
        ca = tls.ca_file.read_bytes() if tls.ca_file is not None else None
        cert = tls.cert_file.read_bytes() if tls.cert_file is not None else None
        key = tls.key_file.read_bytes() if tls.key_file is not None else None
    except OSError as error:
        raise ValueError(f"TLS file could not be read: {error}") from error
    return TLSConfig(
        server_root_ca_cert=ca, client_cert=cert, client_private_key=key, domain=tls.server_name
    )
