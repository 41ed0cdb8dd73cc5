"""IdempotencyIndex: answers per request, slots, TTL, capacity, snapshots, threads."""

import hashlib
import threading

import pytest

from instapay import _core
from instapay._core import (
    RESERVE_FULL,
    RESERVE_IN_FLIGHT,
    RESERVE_MISMATCH,
    RESERVE_NEW,
    RESERVE_REPLAY,
    RESERVE_TENANT_FULL,
    IdempotencyIndex,
)

TTL_S = 100


def fingerprint(content: bytes) -> bytes:
    return hashlib.sha256(content).digest()


FP_A = fingerprint(b"amount=100")
FP_B = fingerprint(b"amount=999")


@pytest.fixture
def index() -> IdempotencyIndex:
    return IdempotencyIndex(capacity_max=1000, ttl_seconds=TTL_S)


def reserve_one(
    index: IdempotencyIndex, key: bytes, fp: bytes = FP_A, now_s: int = 0
) -> tuple[int, int]:
    [answer] = index.reserve_batch([key], [fp], now_s)
    return answer


def finish(index: IdempotencyIndex, key: bytes, ref: int, now_s: int = 0) -> None:
    status, slot = reserve_one(index, key, now_s=now_s)
    assert status == RESERVE_NEW
    index.complete_batch([slot], [ref])


def test_a_finished_key_is_replayed_with_its_reference(index: IdempotencyIndex) -> None:
    finish(index, b"order-1", ref=2**64 - 1)
    assert reserve_one(index, b"order-1") == (RESERVE_REPLAY, 2**64 - 1)
    assert len(index) == 1


def test_a_finished_key_with_other_content_is_a_mismatch(index: IdempotencyIndex) -> None:
    finish(index, b"order-1", ref=7)
    assert reserve_one(index, b"order-1", FP_B) == (RESERVE_MISMATCH, 0)


def test_the_same_key_twice_in_one_batch_is_new_then_in_flight(index: IdempotencyIndex) -> None:
    answers = index.reserve_batch([b"k", b"k", b"k"], [FP_A, FP_A, FP_B], 0)
    (first, slot), second, third = answers
    assert first == RESERVE_NEW
    assert second == (RESERVE_IN_FLIGHT, slot)
    assert third == (RESERVE_MISMATCH, 0)
    assert len(index) == 1


def test_a_released_key_can_be_retried_with_corrected_content(index: IdempotencyIndex) -> None:
    _, slot = reserve_one(index, b"k", FP_A)
    index.release_batch([slot])
    assert len(index) == 0
    assert reserve_one(index, b"k", FP_B)[0] == RESERVE_NEW


@pytest.mark.parametrize("length", [1, _core.IDEMPOTENCY_KEY_LEN_MAX])
def test_keys_of_1_to_1024_bytes_are_accepted(index: IdempotencyIndex, length: int) -> None:
    assert reserve_one(index, b"k" * length)[0] == RESERVE_NEW


@pytest.mark.parametrize("length", [0, _core.IDEMPOTENCY_KEY_LEN_MAX + 1])
def test_keys_outside_1_to_1024_bytes_are_refused_by_index(
    index: IdempotencyIndex, length: int
) -> None:
    with pytest.raises(ValueError, match=rf"keys\[1\] is {length} bytes long"):
        index.reserve_batch([b"ok", b"k" * length], [FP_A, FP_A], 0)
    assert len(index) == 0, "a refused batch reserves nothing"


@pytest.mark.parametrize("fp", [b"", FP_A[:31], FP_A + b"\0"])
def test_fingerprints_must_be_sha256_digests(index: IdempotencyIndex, fp: bytes) -> None:
    with pytest.raises(ValueError, match=r"fingerprints\[0\] is \d+ bytes long"):
        index.reserve_batch([b"k"], [fp], 0)


def test_batch_arguments_are_checked(index: IdempotencyIndex) -> None:
    with pytest.raises(ValueError, match="same length"):
        index.reserve_batch([b"a", b"b"], [FP_A], 0)
    with pytest.raises(TypeError, match="keys must be a sequence of bytes"):
        index.reserve_batch(b"abc", [FP_A] * 3, 0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"keys\[0\] must be bytes, not str"):
        index.reserve_batch(["k"], [FP_A], 0)  # type: ignore[list-item]
    with pytest.raises(OverflowError, match="now_s"):
        index.reserve_batch([b"k"], [FP_A], -1)


def test_an_entry_is_kept_at_exactly_its_ttl_and_removed_a_second_later(
    index: IdempotencyIndex,
) -> None:
    finish(index, b"k", ref=1, now_s=1_000)
    assert index.expire(1_000 + TTL_S) == 0
    assert reserve_one(index, b"k", now_s=1_000 + TTL_S) == (RESERVE_REPLAY, 1)
    assert index.expire(1_000 + TTL_S + 1) == 1
    assert reserve_one(index, b"k", now_s=1_000 + TTL_S + 1)[0] == RESERVE_NEW


def test_in_flight_reservations_never_expire(index: IdempotencyIndex) -> None:
    _, slot = reserve_one(index, b"k", now_s=0)
    assert index.expire(10**12) == 0
    assert reserve_one(index, b"k") == (RESERVE_IN_FLIGHT, slot)


def test_a_full_index_refuses_new_keys_and_still_answers_known_ones() -> None:
    index = IdempotencyIndex(capacity_max=2, ttl_seconds=TTL_S)
    finish(index, b"a", ref=5)
    _, slot_b = reserve_one(index, b"b")
    assert index.reserve_batch([b"c", b"a", b"b"], [FP_A] * 3, 0) == [
        (RESERVE_FULL, 0),
        (RESERVE_REPLAY, 5),
        (RESERVE_IN_FLIGHT, slot_b),
    ]
    assert len(index) == 2
    assert index.expire(TTL_S + 1) == 1
    assert reserve_one(index, b"c", now_s=TTL_S + 1)[0] == RESERVE_NEW


def test_completing_a_slot_that_is_not_in_flight_is_an_error(index: IdempotencyIndex) -> None:
    _, slot = reserve_one(index, b"k")
    index.complete_batch([slot], [1])
    for bad in ([slot], [slot + 1], [2**64 - 1]):
        with pytest.raises(ValueError, match=r"slots\[0\] = \d+ is not an in-flight reservation"):
            index.complete_batch(bad, [2])
    with pytest.raises(ValueError, match="not an in-flight reservation"):
        index.release_batch([slot])
    assert reserve_one(index, b"k") == (RESERVE_REPLAY, 1), "the first reference stands"


def test_a_batch_with_one_bad_slot_applies_nothing(index: IdempotencyIndex) -> None:
    answers = index.reserve_batch([b"a", b"b"], [FP_A, FP_A], 0)
    slots = [slot for _, slot in answers]
    with pytest.raises(ValueError, match=r"slots\[2\]"):
        index.complete_batch([*slots, slots[0]], [1, 2, 3])
    assert index.in_flight() == 2
    index.complete_batch(slots, [1, 2])
    assert index.reserve_batch([b"a", b"b"], [FP_A, FP_A], 0) == [
        (RESERVE_REPLAY, 1),
        (RESERVE_REPLAY, 2),
    ]


def test_slot_and_reference_items_must_be_u64(index: IdempotencyIndex) -> None:
    _, slot = reserve_one(index, b"k")
    with pytest.raises(ValueError, match=r"refs\[0\] must be an integer from 0 to 2\*\*64 - 1"):
        index.complete_batch([slot], [-1])
    with pytest.raises(ValueError, match=r"refs\[0\] must be an integer"):
        index.complete_batch([slot], [2**64])
    with pytest.raises(TypeError, match=r"slots\[0\] must be int, not str"):
        index.complete_batch(["1"], [1])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="slots and refs must have the same length"):
        index.complete_batch([slot], [])
    assert index.in_flight() == 1


@pytest.mark.parametrize(
    ("capacity_max", "ttl_seconds"),
    [
        (0, 1),
        (_core.IDEMPOTENCY_CAPACITY_MAX + 1, 1),
        (1, 0),
        (1, _core.IDEMPOTENCY_TTL_SECONDS_MAX + 1),
    ],
)
def test_settings_outside_their_range_are_refused(capacity_max: int, ttl_seconds: int) -> None:
    with pytest.raises(ValueError, match="must be between"):
        IdempotencyIndex(capacity_max, ttl_seconds)


def test_the_default_ttl_is_24_hours() -> None:
    assert IdempotencyIndex(10).ttl_seconds == 24 * 60 * 60 == _core.IDEMPOTENCY_TTL_SECONDS_DEFAULT


def small_dump() -> bytes:
    index = IdempotencyIndex(capacity_max=10, ttl_seconds=TTL_S)
    finish(index, b"order-1", ref=11)
    finish(index, b"order-2", ref=22, now_s=5)
    reserve_one(index, b"order-3")
    return index.dump()


def test_a_dump_keeps_finished_keys_and_drops_reservations() -> None:
    loaded = IdempotencyIndex.load(small_dump())
    assert (len(loaded), loaded.capacity_max, loaded.ttl_seconds) == (2, 10, TTL_S)
    answers = loaded.reserve_batch([b"order-1", b"order-2", b"order-3"], [FP_A] * 3, 5)
    assert answers[:2] == [(RESERVE_REPLAY, 11), (RESERVE_REPLAY, 22)]
    assert answers[2][0] == RESERVE_NEW


def test_a_dump_holds_key_hashes_not_keys() -> None:
    assert b"order-1" not in small_dump()


def test_every_single_byte_flip_of_a_dump_is_refused() -> None:
    dump = small_dump()
    for at in range(len(dump)):
        corrupted = bytearray(dump)
        corrupted[at] ^= 0x20
        with pytest.raises(ValueError, match="not a valid idempotency index dump"):
            IdempotencyIndex.load(bytes(corrupted))


def test_every_truncation_of_a_dump_is_refused() -> None:
    dump = small_dump()
    for length in range(len(dump)):
        with pytest.raises(ValueError, match="not a valid idempotency index dump"):
            IdempotencyIndex.load(dump[:length])


def test_memory_grows_with_keys() -> None:
    index = IdempotencyIndex(capacity_max=100_000)
    empty = index.memory_bytes()
    keys = [b"key-%d" % n for n in range(10_000)]
    answers = index.reserve_batch(keys, [FP_A] * len(keys), 0)
    index.complete_batch([slot for _, slot in answers], list(range(len(keys))))
    assert index.memory_bytes() > empty + 48 * len(keys)


def test_threads_sharing_one_index_lose_no_key() -> None:
    index = IdempotencyIndex(capacity_max=100_000)
    threads_count, keys_per_thread = 4, 5_000

    def work(thread: int) -> None:
        for start in range(0, keys_per_thread, 500):
            keys = [b"t%d-%d" % (thread, n) for n in range(start, start + 500)]
            answers = index.reserve_batch(keys, [FP_A] * len(keys), 0)
            assert {status for status, _ in answers} == {RESERVE_NEW}
            index.complete_batch([slot for _, slot in answers], [thread] * len(keys))

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads_count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(index) == threads_count * keys_per_thread
    assert index.reserve_batch([b"t3-4999"], [FP_A], 0) == [(RESERVE_REPLAY, 3)]


# ---- tenants: one merchant cannot fill the index for the others ---------------------------------

SHARED_CAPACITY = 4 * _core.IDEMPOTENCY_TENANT_KEYS_MIN


def fill_share(index: IdempotencyIndex, tenant: str, count: int) -> None:
    keys = [b"%s-%d" % (tenant.encode(), n) for n in range(count)]
    answers = index.reserve_batch(keys, [FP_A] * count, 0, [tenant] * count)
    assert {status for status, _ in answers} == {RESERVE_NEW}
    index.complete_batch([slot for _, slot in answers], list(range(count)))


def test_a_tenant_borrows_beyond_its_share_until_one_share_is_left_for_the_others() -> None:
    index = IdempotencyIndex(SHARED_CAPACITY, TTL_S, tenant_share_percent=25)
    share = index.tenant_keys_max
    assert share == SHARED_CAPACITY // 4
    fill_share(index, "greedy", SHARED_CAPACITY - share)
    answers = index.reserve_batch(
        [b"greedy-more", b"greedy-7", b"honest-1"], [FP_A] * 3, 0, ["greedy", "greedy", "honest"]
    )
    assert answers[0] == (RESERVE_TENANT_FULL, share)
    assert answers[1] == (RESERVE_REPLAY, 7), "its own keys are still answered"
    assert answers[2][0] == RESERVE_NEW
    assert (index.tenant_len("greedy"), index.tenant_len("honest")) == (3 * share, 1)


def test_a_tenant_borrows_only_what_leaves_a_share_free_beside_the_others_keys() -> None:
    index = IdempotencyIndex(SHARED_CAPACITY, TTL_S, tenant_share_percent=25)
    share = index.tenant_keys_max
    fill_share(index, "honest", share // 2)
    fill_share(index, "greedy", share)
    keys = [b"more-%d" % n for n in range(SHARED_CAPACITY)]
    answers = index.reserve_batch(keys, [FP_A] * len(keys), 0, ["greedy"] * len(keys))
    borrowed = [status for status, _ in answers].count(RESERVE_NEW)
    assert borrowed == SHARED_CAPACITY - share - share // 2 - share
    assert {status for status, _ in answers[borrowed:]} == {RESERVE_TENANT_FULL}
    assert len(index) == SHARED_CAPACITY - share


def test_a_tenant_whose_share_is_the_whole_index_has_nothing_to_borrow() -> None:
    index = IdempotencyIndex(10, TTL_S, tenant_share_percent=25)
    assert index.tenant_keys_max == 10, "the floor, capped by the capacity"
    fill_share(index, "shop", 10)
    assert index.reserve_batch([b"more"], [FP_A], 0, ["shop"]) == [(RESERVE_TENANT_FULL, 10)]


def test_a_share_has_a_floor_and_never_exceeds_the_capacity() -> None:
    floor = _core.IDEMPOTENCY_TENANT_KEYS_MIN
    assert IdempotencyIndex(2 * floor, tenant_share_percent=1).tenant_keys_max == floor
    assert IdempotencyIndex(10).tenant_keys_max == 10
    assert IdempotencyIndex(10**6).tenant_keys_max == 250_000
    for share in (0, 101):
        with pytest.raises(ValueError, match="tenant_share_percent must be between 1 and 100"):
            IdempotencyIndex(10, tenant_share_percent=share)


def test_keys_without_a_tenant_are_bounded_by_the_capacity_alone() -> None:
    index = IdempotencyIndex(SHARED_CAPACITY, TTL_S, tenant_share_percent=1)
    keys = [b"k%d" % n for n in range(SHARED_CAPACITY)]
    answers = index.reserve_batch(keys, [FP_A] * len(keys), 0)
    assert {status for status, _ in answers} == {RESERVE_NEW}


def test_a_dump_loads_into_the_capacity_configured_now_but_never_drops_a_key() -> None:
    index = IdempotencyIndex(SHARED_CAPACITY, TTL_S, tenant_share_percent=25)
    fill_share(index, "shop", 10)
    resized = IdempotencyIndex.load(index.dump(), capacity_max=10)
    assert (resized.capacity_max, len(resized)) == (10, 10)
    with pytest.raises(ValueError, match="holds 10 idempotency keys, more than the capacity of 9"):
        IdempotencyIndex.load(index.dump(), capacity_max=9)


def test_tenant_counts_follow_release_expiry_and_a_dump() -> None:
    index = IdempotencyIndex(SHARED_CAPACITY, TTL_S, tenant_share_percent=25)
    fill_share(index, "shop", 10)
    [(_, dropped), (_, busy)] = index.reserve_batch(
        [b"dropped", b"busy"], [FP_A] * 2, TTL_S, ["shop", "shop"]
    )
    index.release_batch([dropped])
    assert index.tenant_len("shop") == 11
    loaded = IdempotencyIndex.load(index.dump())
    assert loaded.tenant_len("shop") == 10, "the reservation is not in the dump"
    assert loaded.tenant_share_percent == 25
    assert IdempotencyIndex.load(index.dump(), 50).tenant_share_percent == 50
    assert loaded.expire(TTL_S + 1) == 10
    assert loaded.tenant_len("shop") == 0
    index.complete_batch([busy], [1])
    assert index.expire(TTL_S + 1) == 10
    assert index.tenant_len("shop") == 1


def test_replayed_keys_are_kept_over_a_share() -> None:
    index = IdempotencyIndex(SHARED_CAPACITY, TTL_S, tenant_share_percent=25)
    fill_share(index, "shop", SHARED_CAPACITY - index.tenant_keys_max)
    [answer] = index.reserve_batch([b"logged"], [FP_A], 0, ["shop"], enforce_shares=False)
    assert answer[0] == RESERVE_NEW


@pytest.mark.parametrize("name", ["", "m" * 256])
def test_a_tenant_name_outside_1_to_255_bytes_is_refused(name: str) -> None:
    with pytest.raises(ValueError, match=r"tenants\[1\] is \d+ bytes long"):
        IdempotencyIndex(10).reserve_batch([b"a", b"b"], [FP_A] * 2, 0, ["ok", name])


def test_a_clock_past_2106_is_refused() -> None:
    with pytest.raises(ValueError, match="now_s must be between 0 and 4294967295"):
        IdempotencyIndex(10).reserve_batch([b"a"], [FP_A], 2**32)


# A dump written by the index before tenants (format version 1): 10 keys max, TTL 3600 s, three
# keys reserved at 1_700_000_000, the first two finished with references 11 and 22.
DUMP_V1 = bytes.fromhex(
    "49504944454d500001000000000000000a00000000000000100e0000000000009eb91cd7b583ed0fd56cb00f"
    "c05ef12c02000000000000002a1f96de39af40b785f06122dcac0969684757b168f6e4eb6bc47e03c71c0987"
    "0b0000000000000000f1536500000000bf205d68167d7497fffd0eaec1e4db1367ea17b905ac89625bf13d19"
    "9c089b47160000000000000000f15365000000003526b0c0"
)


def test_a_dump_from_before_tenants_still_loads() -> None:
    loaded = IdempotencyIndex.load(DUMP_V1)
    keys = [b"shop\x00o:order-1", b"shop\x00o:order-2"]
    answers = loaded.reserve_batch(keys, [fingerprint(key) for key in keys], 1_700_000_000)
    assert answers == [(RESERVE_REPLAY, 11), (RESERVE_REPLAY, 22)]
    assert loaded.tenant_len("shop") == 0, "old keys belong to no tenant"
    assert loaded.tenant_share_percent == _core.IDEMPOTENCY_TENANT_SHARE_PERCENT_DEFAULT
    assert loaded.expire(1_700_000_000 + 3601) == 2
