"""Native core of instapay (Rust, PyO3): SHA-256, HMAC-SHA256, batch signing and verification,
the idempotency index and the ledger state.

Batches whose hashing work is large enough release the GIL, and larger ones are spread over a
thread pool (see ``set_parallelism``). Nothing here ever prints or returns key material.
"""

from collections.abc import Mapping, Sequence, Set
from os import PathLike
from typing import Any, Final, Protocol, TypeAlias, final

__all__ = [
    "AMOUNT_MAX",
    "BALANCE_MAX",
    "BATCH_LEN_MAX",
    "FINGERPRINT_LEN",
    "HISTORY_SCHEMA_VERSION",
    "IDEMPOTENCY_CAPACITY_MAX",
    "IDEMPOTENCY_KEY_LEN_MAX",
    "IDEMPOTENCY_TENANT_KEYS_MIN",
    "IDEMPOTENCY_TENANT_SHARE_PERCENT_DEFAULT",
    "IDEMPOTENCY_TTL_SECONDS_DEFAULT",
    "IDEMPOTENCY_TTL_SECONDS_MAX",
    "ID_LEN_MAX",
    "KEYS_MAX",
    "KID_LEN_MAX",
    "PROBLEM_BAD_TIMESTAMP",
    "PROBLEM_DUPLICATE",
    "PROBLEM_KEY_UNSIGNED",
    "PROBLEM_MISMATCH",
    "PROBLEM_MISSING",
    "PROBLEM_NONE",
    "PROBLEM_NOT_HEX",
    "PROBLEM_NOT_PAIR",
    "PROBLEM_NO_KID",
    "PROBLEM_NO_TIMESTAMP",
    "PROBLEM_REQUEST_V1_COUNT",
    "PROBLEM_STALE",
    "PROBLEM_TOO_LONG",
    "PROBLEM_TWO_SCHEMES",
    "PROBLEM_UNKNOWN_FIELD",
    "PROBLEM_UNKNOWN_KID",
    "PROBLEM_V1_COUNT",
    "PROBLEM_WRONG_LENGTH",
    "RESERVE_FULL",
    "RESERVE_IN_FLIGHT",
    "RESERVE_MISMATCH",
    "RESERVE_NEW",
    "RESERVE_REPLAY",
    "RESERVE_TENANT_FULL",
    "SCAN_BAD_CRC",
    "SCAN_BAD_HEADER",
    "SCAN_BAD_LSN",
    "SCAN_END",
    "SCAN_TORN",
    "SECONDS_PER_DAY",
    "SECRET_LEN_MAX",
    "SIGNATURE_HEADER_LEN_MAX",
    "VERIFY_MISMATCH",
    "VERIFY_NOT_HEX",
    "VERIFY_UNKNOWN_KID",
    "VERIFY_VALID",
    "VERIFY_WRONG_LENGTH",
    "WAL_HEADER_LEN",
    "WAL_RECORD_LEN_MAX",
    "HistoryProjector",
    "HistoryReadConnection",
    "IdempotencyIndex",
    "KeyRing",
    "Ledger",
    "MerchantTable",
    "ResultTypes",
    "Results",
    "StagedBatch",
    "__version__",
    "client_key_problem",
    "crc32c",
    "hmac_sha256",
    "is_currency",
    "is_id",
    "lsn_in_id",
    "parallelism",
    "parse_json_object",
    "parse_payment_bodies",
    "parse_refund_bodies",
    "parse_signature_header",
    "payload_signature",
    "replay_run",
    "route",
    "set_parallelism",
    "sha256",
    "sha256_batch",
    "stage_batch",
    "wal_encode",
    "wal_next_valid",
    "wal_scan",
    "wal_scan_extent",
]

_Buffer: TypeAlias = bytes | bytearray
"""Batch items: ``bytes`` are read in place, a ``bytearray`` is copied first."""

__version__: Final[str]
# No balance may exceed this, nor go below minus this on overdraft.
BALANCE_MAX: Final[int]
# The length of the UTC day a mandate's daily limit counts in.
SECONDS_PER_DAY: Final[int]

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

RESERVE_NEW: Final[int]
"""0: the key is now reserved; the value is its slot."""
RESERVE_REPLAY: Final[int]
"""1: finished before with the same fingerprint; the value is the reference ``complete`` stored."""
RESERVE_MISMATCH: Final[int]
"""2: the key was used with a different fingerprint; the value is 0."""
RESERVE_IN_FLIGHT: Final[int]
"""3: reserved and not finished yet; the value is the reservation's slot."""
RESERVE_FULL: Final[int]
"""4: a new key, but the index holds ``capacity_max`` keys; the value is 0."""
RESERVE_TENANT_FULL: Final[int]
"""5: a new key, but its tenant holds its share of the index and may borrow no more (one share
stays free for the others); the value is the share in keys."""
IDEMPOTENCY_TENANT_SHARE_PERCENT_DEFAULT: Final[int]
"""25: a tenant's share is a quarter of the index (a lone tenant may borrow up to three)."""
IDEMPOTENCY_TENANT_KEYS_MIN: Final[int]
"""1000: the floor of a tenant's share, in keys (never more than the capacity)."""
IDEMPOTENCY_KEY_LEN_MAX: Final[int]
"""1024: keys are 1 to 1024 bytes (the engine's scoped keys exceed 255)."""
IDEMPOTENCY_CAPACITY_MAX: Final[int]
IDEMPOTENCY_TTL_SECONDS_DEFAULT: Final[int]
"""86400 (24 h), the retention Stripe documents."""
IDEMPOTENCY_TTL_SECONDS_MAX: Final[int]
FINGERPRINT_LEN: Final[int]
"""32: request fingerprints are SHA-256 digests."""

PROBLEM_NONE: Final[int]
PROBLEM_MISSING: Final[int]
PROBLEM_TOO_LONG: Final[int]
PROBLEM_NOT_PAIR: Final[int]
PROBLEM_DUPLICATE: Final[int]
PROBLEM_UNKNOWN_FIELD: Final[int]
PROBLEM_NO_TIMESTAMP: Final[int]
PROBLEM_BAD_TIMESTAMP: Final[int]
PROBLEM_V1_COUNT: Final[int]
PROBLEM_NO_KID: Final[int]
PROBLEM_REQUEST_V1_COUNT: Final[int]
PROBLEM_STALE: Final[int]
PROBLEM_UNKNOWN_KID: Final[int]
PROBLEM_MISMATCH: Final[int]
PROBLEM_WRONG_LENGTH: Final[int]
PROBLEM_NOT_HEX: Final[int]
PROBLEM_TWO_SCHEMES: Final[int]
PROBLEM_KEY_UNSIGNED: Final[int]
"""Why a signature header or signed request is refused (0: it is not); rust/signature.rs
documents each code and its detail."""
SIGNATURE_HEADER_LEN_MAX: Final[int]

def parse_signature_header(
    header: str,
) -> tuple[int, str, int, str | None, list[str], str | None]:
    """``(problem, detail, t, kid, v1 values, v2)`` of an ``Instapay-Signature`` header."""

AMOUNT_MAX: Final[int]
"""10**15: the largest amount, in minor units."""
ID_LEN_MAX: Final[int]
"""255: ids are 1 to 255 printable ASCII characters without spaces."""

def is_id(id: str) -> bool:
    """DESIGN.md's id rule, defined once (in Rust): 1 to ``ID_LEN_MAX`` printable ASCII
    characters, no spaces. Body fields and key ids are checked by the same function."""

def is_currency(currency: str) -> bool:
    """DESIGN.md's currency rule, defined once (in Rust): 3 uppercase ASCII letters."""

_PaymentFields: TypeAlias = tuple[str, str, str, int, str, str | None, dict[str, str] | None, bytes]
"""merchant_id, order_id, payer, amount, currency, description, metadata, fingerprint."""

def parse_payment_bodies(bodies: Sequence[_Buffer]) -> list[_PaymentFields | str]:
    """Strictly parses payment bodies: per body its fields or the message refusing it.

    UTF-8 JSON only; unknown or duplicate fields (also in ``metadata``), fractions, exponents,
    strings or booleans for the amount, and ids, amounts or currencies outside DESIGN.md's rules
    are refused. The fingerprint is a SHA-256 over a canonical encoding of the fields.
    """

def parse_json_object(body: bytes) -> dict[str, object] | str:
    """A JSON object under the strict rules of signed bodies, or the message refusing it.

    UTF-8 only; a key twice in any object, NaN, Infinity or a top level other than an object is
    refused. Numbers are ``int`` only when written as integers (a fraction, an exponent or an
    integer beyond 64 bits is a ``float``), so a caller's ``int`` check refuses them.
    """

def parse_refund_bodies(
    bodies: Sequence[_Buffer],
) -> list[tuple[int | None, str | None, bytes] | str]:
    """Per refund body ``(amount or None for the rest, reason, fingerprint)`` or the message."""

WAL_HEADER_LEN: Final[int]
"""20: length, CRC-32C, type, flags, LSN (layout in rust/wal.rs)."""
WAL_RECORD_LEN_MAX: Final[int]
"""The largest record payload, 1 MiB."""
SCAN_END: Final[int]
"""0: the data ended at a record boundary."""
SCAN_TORN: Final[int]
"""1: the data ends inside a record (a torn write at the tail)."""
SCAN_BAD_CRC: Final[int]
"""2: a record's checksum does not match."""
SCAN_BAD_HEADER: Final[int]
"""3: an impossible length, a zero type or non-zero flags."""
SCAN_BAD_LSN: Final[int]
"""4: a valid record with an LSN other than the next one."""

def crc32c(data: bytes) -> int: ...
def wal_encode(lsn_first: int, types: Sequence[int], payloads: Sequence[_Buffer]) -> bytes:
    """Frames one batch of records, numbered from ``lsn_first``, for a single write.

    ValueError for a type outside 1..65535 or a payload over WAL_RECORD_LEN_MAX.
    """

def wal_scan(
    data: bytes, offset: int, lsn_next: int
) -> tuple[list[tuple[int, int, bytes]], int, int]:
    """Reads records from ``offset`` while they are valid and numbered from ``lsn_next`` on.

    Returns ``([(lsn, type, payload), ...], end_offset, SCAN_* reason)``.
    """

def wal_scan_extent(data: bytes, offset: int, lsn_next: int) -> tuple[int, int, int]:
    """``wal_scan`` without a Python object per record: ``(record count, end_offset, SCAN_*
    reason)``."""

def wal_next_valid(data: bytes, offset: int, lsn_min: int) -> int | None:
    """The first offset after ``offset`` where a valid record with LSN >= ``lsn_min`` starts."""

def route(method: str, path: str) -> str | tuple[str, str, int] | None:
    """A signed request's endpoint: None for a payment (POST /v1/payments), the payment id for a
    refund of it (POST /v1/payments/pay_<lsn>/refunds), else the refusal (code, message,
    HTTP status)."""

def client_key_problem(key: str) -> str | None:
    """Why a client's Idempotency-Key is refused (DESIGN.md's id rule), None when it is not."""

def lsn_in_id(id: str, prefix: str) -> int | None:
    """The LSN an id such as ``pay_12`` names (the prefix, then ASCII digits without a leading
    zero, at most a u64), None if it names none."""

class _SignedRequest(Protocol):
    """What ``stage_batch`` reads of each request (``instapay.signing.SignedRequest``)."""

    @property
    def header(self) -> str | None: ...
    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def body(self) -> bytes: ...
    @property
    def idempotency_key(self) -> str | None: ...

@final
class MerchantTable:
    """The merchants the batch stage resolves: id, settlement account and kids, kept in step
    with ``instapay.merchants.Merchants``. Thread-safe."""

    def __new__(cls) -> MerchantTable: ...
    def put(self, merchant_id: str, settlement_account: str, kids: list[str]) -> None:
        """Adds a merchant, or replaces it with its current kids."""
    def merchant_of_kid(self, kid: str) -> str | None: ...

@final
class ResultTypes:
    """What ``StagedBatch.results`` builds: the ``PaymentResult`` and ``RefundResult`` named
    tuples (13 and 10 fields: ValueError otherwise), the ``Status`` members for succeeded and
    failed, the ``Failure`` members by code."""

    def __new__(
        cls,
        payment: type[tuple[object, ...]],
        refund: type[tuple[object, ...]],
        succeeded: object,
        failed: object,
        failures: Mapping[str, object],
    ) -> ResultTypes: ...

@final
class StagedBatch:
    """A run of signed requests applied in memory by ``stage_batch``, waiting for its frames to
    be durable. Thread-safe."""

    @property
    def lsn_first(self) -> int: ...
    @property
    def lsn_next(self) -> int: ...
    @property
    def records(self) -> int: ...
    @property
    def created_s(self) -> int: ...
    def frames(self) -> bytes:
        """The run's records as WAL frames, numbered from ``lsn_first``."""
    def refusals(self) -> list[tuple[int, tuple[str, str, int]]]:
        """Per refused request: (index, (code, message, HTTP status))."""
    def signature_problems(self) -> list[tuple[int, tuple[int, str]]]:
        """Per request refused for its signature: (index, (``PROBLEM_*`` code, detail))."""
    def known(self) -> list[tuple[int, tuple[int, int]]]:
        """Per request whose key the index knew: (index, (``RESERVE_*`` status, value))."""
    def applied(self) -> tuple[list[int], list[int]]:
        """(indexes, LSNs) of the applied requests, in LSN order."""
    def results(self, types: ResultTypes) -> list[Any]:
        """The applied requests' results, in ``applied()``'s order, as ``types`` builds them:
        as made (not replayed, nothing refunded)."""
    def lsn_of_slot(self, slot: int) -> int | None:
        """The LSN of the request of this run that reserved ``slot``, None if none did."""
    def commit(self, results: Results, index: IdempotencyIndex) -> dict[str, list[int]]:
        """After the frames are durable: adds the results, completes the keys (each key's
        reference is its result's LSN); returns each merchant's new LSNs. ValueError if called
        twice."""

def stage_batch(
    ledger: Ledger,
    results: Results,
    index: IdempotencyIndex,
    ring: KeyRing,
    merchants: MerchantTable,
    requests: Sequence[_SignedRequest],
    merchant_ids: Sequence[str | None],
    lsn_first: int,
    now_s: int,
    tolerance_s: int,
) -> StagedBatch:
    """Stages a run of signed payment and refund requests as records from ``lsn_first`` on, in
    one call: client key, signature (``merchant_ids[i]`` set: authenticated by the caller, not
    verified), route, body, merchant, refund checks, idempotency reservation (tenant: the
    merchant id), the ledger, the records (``rust/machine/``). Locks the ledger, the results and
    the index in that order."""

def sha256(data: bytes) -> bytes: ...
def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104); any key length, keys over 64 bytes are hashed first."""

def payload_signature(secrets: Sequence[bytes], timestamp_s: int, body: bytes) -> str:
    """``t=<timestamp_s>`` then one ``,v1=<hex>`` per secret, each an HMAC-SHA256 over
    ``b"<timestamp_s>." + body``: the signature header of a response or webhook."""

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

    def verify_requests(
        self,
        headers: Sequence[str | None],
        methods: Sequence[str],
        paths: Sequence[str],
        idempotency_keys: Sequence[str | None],
        bodies: Sequence[_Buffer],
        now_s: int,
        tolerance_s: int,
    ) -> list[str | tuple[int, str]]:
        """Checks whole signed requests: header parsed, timestamp checked, message built (a v2
        covers the request's ``Idempotency-Key``; a v1 with a key is PROBLEM_KEY_UNSIGNED), MAC
        verified (constant-time). Per request the authenticated kid or ``(PROBLEM_*, detail)``."""

    def verify_batch_hex(
        self, kids: Sequence[str], messages: Sequence[_Buffer], macs: Sequence[str]
    ) -> list[int]:
        """``verify_batch`` for hex MACs (either case), as they arrive in headers; adds status 4."""

@final
class IdempotencyIndex:
    """Idempotency keys and their outcome, bounded in size, at under 59 bytes per finished key.

    Keys are kept as a keyed 128-bit SipHash-1-3 (random seed, kept in dumps) with the first 16
    bytes of the request fingerprint, never as raw keys. Thread-safe: frozen, with the index behind
    a mutex; batches of 64 items or more run without the GIL.

    Tenants (the engine's merchants) share the index fairly: each has a share of
    ``tenant_keys_max`` keys, finished and in flight: ``tenant_share_percent`` of the capacity,
    at least IDEMPOTENCY_TENANT_KEYS_MIN and at most the capacity. A tenant within its share gets
    a key whenever the index has room; one at or over it may borrow unused room as long as a
    whole share stays free afterwards (``len + 1 + tenant_keys_max <= capacity_max``), so a lone
    tenant can hold ``capacity_max - tenant_keys_max`` keys, and nothing when its share is the
    whole capacity. Keys reserved without a tenant are bounded by the capacity alone.

    ValueError for a capacity outside 1..IDEMPOTENCY_CAPACITY_MAX, a TTL outside
    1..IDEMPOTENCY_TTL_SECONDS_MAX or a share outside 1..100; OverflowError for a negative one.
    """

    def __new__(
        cls, capacity_max: int, ttl_seconds: int = ..., tenant_share_percent: int = ...
    ) -> IdempotencyIndex: ...
    @property
    def capacity_max(self) -> int: ...
    @property
    def ttl_seconds(self) -> int: ...
    @property
    def tenant_share_percent(self) -> int: ...
    @property
    def tenant_keys_max(self) -> int:
        """A tenant's share in keys: what it may hold without borrowing."""

    def reserve_batch(
        self,
        keys: Sequence[_Buffer],
        fingerprints: Sequence[_Buffer],
        now_s: int,
        tenants: Sequence[str] | None = None,
        *,
        enforce_shares: bool = True,
    ) -> list[tuple[int, int]]:
        """Per request, in order, a ``(RESERVE_*, value)`` pair.

        A key twice in one batch: the first is NEW, the second IN_FLIGHT (MISMATCH if its
        fingerprint differs). Known keys are answered even when the index or its tenant is full;
        a new key of a tenant at its share that may not borrow is TENANT_FULL (before FULL).
        ``tenants[i]`` (1 to 255 bytes) names the tenant of key i; None: no tenant.
        ``enforce_shares=False`` is for keys that were accepted before (replayed from a log):
        they are never refused for a share.
        ValueError naming the index for a key outside 1..1024 bytes, a fingerprint that is not 32
        bytes or a tenant name outside 1..255 bytes; ValueError for ``now_s`` past 2**32 - 1.
        """

    def tenant_len(self, name: str) -> int:
        """Keys (finished and in flight) tenant ``name`` holds."""

    def complete_batch(self, slots: Sequence[int], refs: Sequence[int]) -> None:
        """Records the u64 result reference of NEW reservations, which are then replayed.

        All or nothing: ValueError, and nothing recorded, when a slot is not in flight (unknown,
        completed, released, or twice in the batch).
        """

    def release_batch(self, slots: Sequence[int]) -> None:
        """Drops reservations whose request failed before anything was applied (all or nothing)."""

    def expire(self, now_s: int) -> int:
        """Removes finished entries older than the TTL; returns how many.

        Oldest finished first, while ``now_s - reserved_at > ttl_seconds``: an entry is kept for at
        least its TTL (exactly at the boundary it stays); one that finished after a younger one is
        removed with it. In-flight reservations are never removed.
        """

    def __len__(self) -> int:
        """Finished and in-flight keys."""

    def in_flight(self) -> int: ...
    def memory_bytes(self) -> int:
        """Bytes the index has allocated: its hash table, sized for ``capacity_max`` from the
        start, and the entries and reservations it holds."""

    def dump(self) -> bytes:
        """The finished entries with their tenants as a versioned snapshot with a CRC-32C,
        without reservations (format version 2, rust/idempotency/snapshot.rs)."""

    @staticmethod
    def load(
        data: bytes,
        tenant_share_percent: int | None = None,
        capacity_max: int | None = None,
        ttl_seconds: int | None = None,
    ) -> IdempotencyIndex:
        """The index of a dump, with the dump's share, capacity and TTL unless others are given;
        version 1 dumps (before tenants) load their keys as keys of no tenant. ValueError for a
        truncated or corrupted one, or one holding more keys than `capacity_max`."""

# An account: id, currency, overdraft, balance, owner ("customer" or "merchant").
_AccountRow: TypeAlias = tuple[str, str, bool, int, str]
# A payment entry: payer, settlement account, amount, currency, refunded, its mandate's LSN.
_PaymentRow: TypeAlias = tuple[str, str, int, str, int, int | None]
# A mandate: LSN, account id, merchant id, amount_max_per_payment, amount_max_per_day,
# expires_at_s, created_s, revoked_s, spent_day, spent.
_MandateRow: TypeAlias = tuple[
    int, str, str, int, int | None, int | None, int, int | None, int, int
]

@final
class Ledger:
    """The ledger state in native memory: accounts (interned ids, i64 balances within
    +-BALANCE_MAX), the succeeded payments kept for refunds (40 bytes each, keyed by LSN: the
    payment ``pay_<lsn>``), mandates (``mdt_<lsn>``) and their daily spend, and the rules.

    Operations return None when they applied, else the decline code (a ``Failure`` value).
    ValueError for a negative amount or a payment LSN not above every held one's; KeyError for
    an unknown mandate to revoke or an unknown account to grant one; AssertionError names a
    breach of the invariants. Thread-safe: frozen, with the state behind a mutex.
    """

    def __new__(cls) -> Ledger: ...
    def __len__(self) -> int:
        """The number of accounts."""
    def open_account(
        self, account_id: str, currency: str, overdraft: bool, owner: str
    ) -> str | None: ...
    def settles_merchant(self, account_id: str) -> None: ...
    def deposit(self, account_id: str, amount: int, currency: str) -> str | None: ...
    def withdraw(self, account_id: str, amount: int, currency: str) -> str | None: ...
    def pay(
        self,
        lsn: int,
        payer: str,
        settlement: str,
        amount: int,
        currency: str,
        merchant_id: str,
        created_s: int,
    ) -> str | None: ...
    def pay_as_before_consent(
        self, lsn: int, payer: str, settlement: str, amount: int, currency: str
    ) -> str | None: ...
    def refund(self, payment_id: str, amount: int | None) -> tuple[int, str | None]:
        """The amount refunded (or asked for) and the decline code."""
    def grant_mandate(
        self,
        lsn: int,
        account_id: str,
        merchant_id: str,
        amount_max_per_payment: int,
        amount_max_per_day: int | None,
        expires_at_s: int | None,
        created_s: int,
    ) -> _MandateRow: ...
    def revoke_mandate(self, mandate_id: str, revoked_s: int) -> _MandateRow: ...
    def account(self, account_id: str) -> _AccountRow | None: ...
    def accounts(self) -> list[_AccountRow]: ...
    def payment(self, payment_id: str) -> _PaymentRow | None: ...
    def mandate(self, mandate_id: str) -> _MandateRow | None: ...
    def mandates_of(self, account_id: str) -> list[_MandateRow]: ...
    def current_mandate(self, account_id: str, merchant_id: str) -> _MandateRow | None: ...
    def check_invariants(self) -> None: ...
    def check_payments_made(self, results: Results) -> None: ...
    def evict(
        self, results: Results, durable_lsn: int, results_max: int, pinned: list[int]
    ) -> tuple[int, int]: ...
    def recall(
        self,
        results: Results,
        lsn: int,
        merchant_id: str,
        payer: str,
        settlement: str,
        amount: int,
        refunded: int,
        as_of: int,
    ) -> str: ...
    def kept_payments(self, results: Results) -> list[tuple[int, str, str, str, int, int]]: ...
    def payments_held(self) -> int: ...
    def to_snapshot(self) -> bytes: ...
    @staticmethod
    def from_snapshot(data: bytes) -> Ledger: ...
    @staticmethod
    def from_legacy_json(data: bytes) -> Ledger: ...

# A payment result: merchant id, order id, payer, amount, currency, succeeded, failure code,
# created_s, description, metadata (its JSON).
_PaymentResultRow: TypeAlias = tuple[
    str, str, str, int, str, bool, str | None, int, str | None, bytes | None
]
# A refund result: payment id, merchant id, amount, currency, succeeded, failure code, created_s,
# reason.
_RefundResultRow: TypeAlias = tuple[str, str, int, str, bool, str | None, int, str | None]

@final
class Results:
    """The durable payment and refund results in native memory, keyed by LSN: 48-byte entries,
    interned merchant, payer and currency names, the texts in one arena; the payments of each
    (merchant, order id) and the refunds of each payment indexed. Failure codes are ``Failure``
    values (ValueError for another one, or for an LSN not above every held one's). Thread-safe:
    frozen, with the state behind a mutex."""

    def __new__(cls) -> Results: ...
    def __len__(self) -> int: ...
    def __contains__(self, lsn: int, /) -> bool: ...
    def add_payment(
        self,
        lsn: int,
        merchant_id: str,
        order_id: str,
        payer: str,
        amount: int,
        currency: str,
        succeeded: bool,
        failure: str | None,
        created_s: int,
        description: str | None,
        metadata: bytes | None,
    ) -> None: ...
    def add_refund(
        self,
        lsn: int,
        payment_id: str,
        merchant_id: str,
        amount: int,
        currency: str,
        succeeded: bool,
        failure: str | None,
        created_s: int,
        reason: str | None,
    ) -> None: ...
    def payment(self, lsn: int) -> _PaymentResultRow | None: ...
    def refund(self, lsn: int) -> _RefundResultRow | None: ...
    def merchant_of(self, lsn: int) -> str | None: ...
    def lsns(self) -> list[int]: ...
    def lsns_by_merchant(self) -> dict[str, list[int]]: ...
    def payments_for_order(self, merchant_id: str, order_id: str) -> list[int]: ...
    def refunds_of(self, payment_id: str) -> list[int]: ...
    def amount_refunded(self, payment_id: str) -> int: ...
    def payments_made(self) -> tuple[list[int], list[str], list[int]]: ...
    def first_lsn(self) -> int | None: ...
    def heap_bytes(self) -> int: ...
    def to_snapshot(self) -> bytes: ...
    @staticmethod
    def from_snapshot(data: bytes) -> Results: ...

HISTORY_SCHEMA_VERSION: Final[int]
"""The history database's schema version (``projection.schema_version``) this code writes."""

@final
class HistoryReadConnection:
    """A read-only connection to a history database through the SQLite compiled into this
    module, the one the projector writes with (Python's `sqlite3` is another copy, whose locks
    the projector's do not see). Never creates the file; OSError when SQLite fails. Every call
    releases the GIL. Thread-safe: frozen, the connection behind a mutex."""

    def __new__(cls, path: str | PathLike[str], busy_timeout_ms: int) -> HistoryReadConnection: ...
    def fetch(self, sql: str, params: Sequence[int | str | None]) -> list[tuple[Any, ...]]: ...
    def execute(self, sql: str) -> None: ...
    def close(self) -> None: ...

@final
class HistoryProjector:
    """The one writer of a history database (rust/history/): opens or creates it (owner-only,
    WAL mode, the schema in one transaction; ValueError for another schema version or a file
    that is no history database, left unchanged; OSError when SQLite fails). Every call releases
    the GIL. Thread-safe: frozen, with the state behind a mutex."""

    def __new__(cls, path: str | PathLike[str]) -> HistoryProjector: ...
    @property
    def lsn(self) -> int:
        """The last LSN applied: every record up to it is committed, none after it."""
    @property
    def durable_lsn(self) -> int:
        """The last LSN applied by a synced commit (the log before it may go)."""
    def project(
        self, data: bytes, offset: int, records_max: int, lsn_last: int
    ) -> tuple[int, int, int, int, int, tuple[int, int, bytes] | None]:
        """Applies the whole WAL frames of ``data`` from ``offset`` in one transaction: at most
        ``records_max`` records above ``lsn``, none above ``lsn_last``; those at or below ``lsn``
        are skipped. Returns ``(offset where it stopped, lsn, durable_lsn, records, rows,
        legacy)``: legacy is ``(lsn, type, payload)`` of the version-0 record of a projected
        operation it stopped before (convert it to the current version, project it, go on after
        it). ValueError for a gap (naming both LSNs) or a record that does not decode, OSError
        when SQLite fails; either way nothing of the call is applied."""
    def seed(
        self,
        lsn: int,
        accounts: Sequence[tuple[str, str, int]],
        payments: Sequence[
            tuple[int, str, str, str, str, int, str, str | None, int, str | None, str | None, int]
        ],
        refunds: Sequence[tuple[int, str, str, int, str, str | None, str | None, int]],
    ) -> int:
        """Seeds this new database from a snapshot at ``lsn`` in one synced transaction: each
        account ``(id, currency, balance)`` with an 'opening' entry of its balance, the payments
        ``(lsn, merchant, order id, payer, settlement account, amount, currency, failure code,
        amount refunded, description, metadata JSON, created)`` and refunds ``(lsn, payment id,
        merchant, amount, currency, failure code, reason, created)`` without entries, and
        ``lsn`` projected. Returns the rows written. ValueError for a database with any row or
        projected past 0, OSError when SQLite fails; either way nothing is written."""
    def sync(self) -> int:
        """Makes every commit durable unless a reader keeps the checkpoint from finishing;
        returns ``durable_lsn``."""
    def close(self) -> int:
        """Syncs and closes the database (again: nothing); returns ``durable_lsn``."""

def replay_run(
    ledger: Ledger,
    results: Results,
    index: IdempotencyIndex,
    data: bytes,
    offset: int,
    end: int,
    lsn_after: int,
    lsn_next: int,
    webhook_merchants: Set[str],
) -> tuple[
    int,
    int,
    dict[str, list[int]],
    list[tuple[int, str, int]],
    list[tuple[int, int, bytes]] | str | None,
]:
    """Replays the payments and refunds of the WAL frames in ``data[offset:end]`` (a scan found
    them valid; those at or below ``lsn_after`` are skipped), the first expected at ``lsn_next``,
    into the ledger, the results and the index (their keys), until the end or a record the
    Python path must apply (any other operation, a version-0 record, one that does not replay
    without an error). Returns ``(offset after the records taken, LSN expected next, event LSNs
    by merchant, (LSN, merchant id, due at ms) of the events of ``webhook_merchants``, stop)``;
    stop is None at the end, ``[(lsn, type, payload), ...]`` of the records for Python to apply
    (that record and the records of other operations right after it; taken: the offset is after
    them), or the detail of a ``ReplayMismatchError``. AssertionError for a record not numbered
    ``lsn_next``."""
