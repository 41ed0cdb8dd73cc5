"""IdempotencyIndex against a plain Python model: any sequence of reserve, complete, release,
expire and dump/load must give the same answers, and the same keys per tenant, as the dict-based
model below. The index starts nearly full: tenant "bulk" just short of its share, and a crowd of
keys without a tenant, old enough for the first expiry to remove (bulk's keys stay). So within a
few steps bulk reaches its share, is refused borrowing while the crowd is there (the index keeps
a share free), borrows once the crowd has gone, and the index fills up."""

from dataclasses import dataclass, field

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from instapay._core import (
    IDEMPOTENCY_TENANT_KEYS_MIN,
    RESERVE_FULL,
    RESERVE_IN_FLIGHT,
    RESERVE_MISMATCH,
    RESERVE_NEW,
    RESERVE_REPLAY,
    RESERVE_TENANT_FULL,
    IdempotencyIndex,
)

# Shares of 1 % are the floor, IDEMPOTENCY_TENANT_KEYS_MIN keys. "bulk" starts 2 keys short of
# its share; with the crowd the index has room for 4 more keys, without it bulk at its share may
# borrow while the index holds at most SHARE_MAX + 2 keys.
SHARE_MAX = IDEMPOTENCY_TENANT_KEYS_MIN
BULK_KEYS = SHARE_MAX - 2
CROWD_KEYS = SHARE_MAX + 1
CAPACITY_MAX = BULK_KEYS + CROWD_KEYS + 4
TTL_S = 50
KEYS = [b"a", b"b", b"c", b"order-42", b"\x00", b"x" * 255, b"y" * 254 + b"\xff"]
# A key always comes from one tenant (the engine scopes keys by merchant).
TENANT_OF = {key: ("bulk", "shop")[n % 2] for n, key in enumerate(KEYS)}
FINGERPRINTS = [bytes([n]) * 32 for n in range(2)]
U64 = st.integers(0, 2**64 - 1)


@dataclass
class Entry:
    fingerprint: bytes
    created_s: int
    slot: int
    tenant: str
    ref: int | None = None


@dataclass
class IndexModel:
    """The documented behaviour with a dict; finished keys are listed in the order they finished."""

    entries: dict[bytes, Entry] = field(default_factory=dict)
    finished: list[bytes] = field(default_factory=list)

    def tenant_len(self, tenant: str) -> int:
        return sum(entry.tenant == tenant for entry in self.entries.values())

    def admits(self, tenant: str) -> bool:
        """Within its share always; at or over it only if a whole share stays free after."""
        if self.tenant_len(tenant) < SHARE_MAX:
            return True
        return len(self.entries) + 1 + SHARE_MAX <= CAPACITY_MAX

    def expected(
        self, key: bytes, fingerprint: bytes, *, enforce_shares: bool
    ) -> tuple[int, int | None]:
        """The answer to one request; None stands for the slot a NEW reservation will get."""
        entry = self.entries.get(key)
        if entry is None:
            if enforce_shares and not self.admits(TENANT_OF[key]):
                return RESERVE_TENANT_FULL, SHARE_MAX
            return (RESERVE_FULL, 0) if len(self.entries) >= CAPACITY_MAX else (RESERVE_NEW, None)
        if entry.fingerprint != fingerprint:
            return RESERVE_MISMATCH, 0
        if entry.ref is None:
            return RESERVE_IN_FLIGHT, entry.slot
        return RESERVE_REPLAY, entry.ref

    def key_of(self, slot: int) -> bytes:
        return next(
            key for key, entry in self.entries.items() if entry.ref is None and entry.slot == slot
        )

    def expire(self, now_s: int) -> int:
        removed = 0
        while self.finished and now_s - self.entries[self.finished[0]].created_s > TTL_S:
            del self.entries[self.finished.pop(0)]
            removed += 1
        return removed


class IndexMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.index = IdempotencyIndex(CAPACITY_MAX, TTL_S, tenant_share_percent=1)
        self.model = IndexModel()
        self.now_s = 1_000
        self.retired_slots: set[int] = set()
        self.finish_keys(b"crowd", CROWD_KEYS, None, self.now_s - 2 * TTL_S)
        self.finish_keys(b"bulk", BULK_KEYS, "bulk", self.now_s)

    def finish_keys(self, prefix: bytes, count: int, tenant: str | None, now_s: int) -> None:
        """Keys `prefix-0`, `prefix-1`, ... of `tenant` (None: no tenant) finished at `now_s`."""
        keys = [b"%s-%d" % (prefix, n) for n in range(count)]
        tenants = None if tenant is None else [tenant] * count
        answers = self.index.reserve_batch(keys, [FINGERPRINTS[0]] * count, now_s, tenants)
        self.index.complete_batch([slot for _, slot in answers], [0] * count)
        for key in keys:
            self.model.entries[key] = Entry(FINGERPRINTS[0], now_s, -1, tenant or "", ref=0)
            self.model.finished.append(key)

    def in_flight_slots(self) -> list[int]:
        return sorted(entry.slot for entry in self.model.entries.values() if entry.ref is None)

    def draw_in_flight_slots(self, data: st.DataObject) -> list[int]:
        return data.draw(st.lists(st.sampled_from(self.in_flight_slots()), min_size=1, unique=True))

    @rule(delta_s=st.integers(min_value=-10, max_value=2 * TTL_S))
    def clock_moves(self, delta_s: int) -> None:
        self.now_s = max(0, self.now_s + delta_s)

    @rule(
        batch=st.lists(
            st.tuples(st.sampled_from(KEYS), st.sampled_from(FINGERPRINTS)), min_size=1, max_size=8
        ),
        enforce_shares=st.booleans(),
    )
    def reserve(self, batch: list[tuple[bytes, bytes]], enforce_shares: bool) -> None:
        keys = [key for key, _ in batch]
        fingerprints = [fingerprint for _, fingerprint in batch]
        tenants = [TENANT_OF[key] for key in keys]
        answers = self.index.reserve_batch(
            keys, fingerprints, self.now_s, tenants, enforce_shares=enforce_shares
        )
        assert len(answers) == len(batch)
        for (key, fingerprint), (status, value) in zip(batch, answers, strict=True):
            expected_status, expected_value = self.model.expected(
                key, fingerprint, enforce_shares=enforce_shares
            )
            assert status == expected_status, (key, fingerprint, status, value)
            if expected_value is not None:
                assert value == expected_value
            else:
                assert value not in self.in_flight_slots(), "a slot is handed out twice"
                assert value not in self.retired_slots, "a retired slot came back"
                self.model.entries[key] = Entry(fingerprint, self.now_s, value, TENANT_OF[key])

    @precondition(lambda self: self.in_flight_slots())
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        slots = self.draw_in_flight_slots(data)
        refs = data.draw(st.lists(U64, min_size=len(slots), max_size=len(slots)))
        self.index.complete_batch(slots, refs)
        for slot, ref in zip(slots, refs, strict=True):
            key = self.model.key_of(slot)
            self.model.entries[key].ref = ref
            self.model.finished.append(key)
            self.retired_slots.add(slot)

    @precondition(lambda self: self.in_flight_slots())
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        slots = self.draw_in_flight_slots(data)
        self.index.release_batch(slots)
        for slot in slots:
            del self.model.entries[self.model.key_of(slot)]
            self.retired_slots.add(slot)

    @rule(data=st.data(), release=st.booleans())
    def a_batch_with_a_slot_not_in_flight_changes_nothing(
        self, data: st.DataObject, release: bool
    ) -> None:
        good = self.in_flight_slots()
        bad = data.draw(st.sampled_from(sorted(self.retired_slots)) if self.retired_slots else U64)
        if bad in good:
            return
        slots = [*good, bad]
        refs = [0] * len(slots)
        with pytest.raises(ValueError, match=rf"slots\[{len(good)}\] = {bad} is not an in-flight"):
            self.index.release_batch(slots) if release else self.index.complete_batch(slots, refs)

    @rule()
    def expire(self) -> None:
        assert self.index.expire(self.now_s) == self.model.expire(self.now_s)

    @rule()
    def dump_and_load(self) -> None:
        """A loaded index has the finished keys, no reservations, and a slot space of its own."""
        self.index = IdempotencyIndex.load(self.index.dump())
        for key in [key for key, entry in self.model.entries.items() if entry.ref is None]:
            del self.model.entries[key]
        self.retired_slots.clear()

    @invariant()
    def counts_agree(self) -> None:
        assert len(self.index) == len(self.model.entries)
        assert self.index.in_flight() == len(self.in_flight_slots())
        for tenant in ("bulk", "shop"):
            assert self.index.tenant_len(tenant) == self.model.tenant_len(tenant), tenant


TestIdempotencyIndexAgainstModel = IndexMachine.TestCase
