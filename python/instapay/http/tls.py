"""HTTPS: `instapay serve --tls-cert FILE --tls-key FILE` (or `tls_cert` / `tls_key` in the
configuration's `[server]` table). The server speaks TLS 1.2 or newer, with the `ssl` module's
defaults for ciphers; the files are PEM, the key unencrypted (the server starts unattended)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path


class TlsError(ValueError):
    """The certificate or key cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path

    def context(self) -> ssl.SSLContext:
        """The server's context; `TlsError` if a file is missing, unreadable or not a matching
        certificate and key."""
        for path in (self.cert, self.key):
            if not path.is_file():
                raise TlsError(f"{path}: no such file")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.cert, self.key)
        except OSError as error:  # ssl.SSLError is one: a bad PEM, a key not matching
            reason = getattr(error, "reason", None) or error.strerror or str(error)
            raise TlsError(
                f"{self.cert} and {self.key}: not a usable certificate and key ({reason})"
            ) from None
        return context


def tls_files(cert: Path | None, key: Path | None) -> TlsFiles | None:
    """Both files, or neither (plain HTTP); one without the other is a `TlsError`."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise TlsError("--tls-cert and --tls-key go together: give both, or neither")
    return TlsFiles(cert, key)
