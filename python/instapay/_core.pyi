"""Native core of instapay (Rust, PyO3): SHA-256, HMAC-SHA256, batch signing and verification.

Batches whose hashing work is large enough release the GIL, and larger ones are spread over a
thread pool (see ``set_parallelism``). Nothing here ever prints or returns key material.
"""

from collections.abc import Sequence
from typing import Final, TypeAlias, final

__all__ = [
    "BATCH_LEN_MAX",
    "KEYS_MAX",
    "KID_LEN_MAX",
    "SECRET_LEN_MAX",
    "VERIFY_MISMATCH",
    "VERIFY_NOT_HEX",
    "VERIFY_UNKNOWN_KID",
    "VERIFY_VALID",
    "VERIFY_WRONG_LENGTH",
    "KeyRing",
    "__version__",
    "hmac_sha256",
    "parallelism",
    "set_parallelism",
    "sha256",
    "sha256_batch",
]

_Buffer: TypeAlias = bytes | bytearray
"""Batch items: ``bytes`` are read in place, a ``bytearray`` is copied first."""

__version__: Final[str]

BATCH_LEN_MAX: Final[int]
"""The most items one batch call accepts (ValueError above it)."""
KEYS_MAX: Final[int]
KID_LEN_MAX: Final[int]
SECRET_LEN_MAX: Final[int]

VERIFY_VALID: Final[int]
"""0: the MAC is right."""
VERIFY_MISMATCH: Final[int]
"""1: the MAC is wrong."""
VERIFY_UNKNOWN_KID: Final[int]
"""2: the key id is not in the ring (checked before the MAC's format)."""
VERIFY_WRONG_LENGTH: Final[int]
"""3: the MAC is not 32 bytes."""
VERIFY_NOT_HEX: Final[int]
"""4: the hex MAC is not valid hex (``verify_batch_hex`` only)."""

def sha256(data: bytes) -> bytes: ...
def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104); any key length, keys over 64 bytes are hashed first."""

def sha256_batch(items: Sequence[_Buffer]) -> list[bytes]: ...
def parallelism() -> int:
    """How many threads one large batch may use (default: one per available core)."""

def set_parallelism(threads: int) -> None:
    """Caps the threads of one batch; 1 keeps all hashing on the calling thread.

    ValueError unless 1 <= threads <= the number of available cores.
    """

@final
class KeyRing:
    """HMAC-SHA256 keys by key id, kept as precomputed inner/outer states.

    Thread-safe: frozen, with the map behind a lock; a batch works on a snapshot of the keys, so
    rotating keys never blocks or disturbs a batch being verified in another thread. Kids are 1 to
    255 printable ASCII characters without spaces; secrets 1 to 1024 bytes.
    """

    def __new__(cls) -> KeyRing: ...
    def insert(self, kid: str, secret: bytes) -> None:
        """Adds a key or replaces a kid's secret.

        ValueError for a bad kid or secret, or when the ring is full.
        """

    def remove(self, kid: str) -> bool: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object, /) -> bool: ...
    def kids(self) -> list[str]:
        """The key ids, sorted."""

    def sign_batch(self, kids: Sequence[str], messages: Sequence[_Buffer]) -> list[bytes]:
        """32-byte MAC per message; KeyError naming the first unknown kid and its index."""

    def verify_batch(
        self, kids: Sequence[str], messages: Sequence[_Buffer], macs: Sequence[bytes]
    ) -> list[int]:
        """Per item a VERIFY_* status (0 to 3); the comparison is constant-time."""

    def verify_batch_hex(
        self, kids: Sequence[str], messages: Sequence[_Buffer], macs: Sequence[str]
    ) -> list[int]:
        """``verify_batch`` for hex MACs (either case), as they arrive in headers; adds status 4."""
