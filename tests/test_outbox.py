"""The outbox's delivery state on its own: rounds (a redelivery replaces the round in progress),
stale queue entries, and snapshots."""

from instapay.outbox import DeliveryOutcome, DeliveryStatus, Outbox

MERCHANT = "shop"


def test_a_stale_rounds_outcome_joins_the_history_and_changes_nothing_else() -> None:
    outbox = Outbox()
    outbox.add_event(MERCHANT, 7)
    outbox.schedule_new(MERCHANT, 7, at_ms=1_000)
    assert outbox.take_due(MERCHANT, now_ms=1_000, count_max=10) == [7]
    outbox.schedule(MERCHANT, 7, at_ms=2_000)  # an admin redelivers while round 0 is in flight
    outbox.record(MERCHANT, DeliveryOutcome(7, 1_500, "500", False, None, round=0))
    assert outbox.delivery_json(7)["status"] == "pending", "round 0 giving up ends nothing"
    assert outbox.take_due(MERCHANT, now_ms=2_000, count_max=10) == [7]
    outbox.record(MERCHANT, DeliveryOutcome(7, 2_100, "200", True, None, round=1))
    delivery = outbox.delivery_json(7)
    assert delivery["status"] == "delivered"
    assert [a["outcome"] for a in delivery["attempts"]] == ["500", "200"]
    assert outbox.pending == 0


def test_a_taken_delivery_leaves_the_queue_until_requeued() -> None:
    outbox = Outbox()
    outbox.schedule_new(MERCHANT, 3, at_ms=10)
    assert outbox.take_due(MERCHANT, now_ms=10, count_max=1) == [3]
    assert outbox.take_due(MERCHANT, now_ms=10, count_max=1) == []
    outbox.requeue(3)
    assert outbox.take_due(MERCHANT, now_ms=10, count_max=1) == [3]


def test_deliveries_survive_a_snapshot_with_their_rounds() -> None:
    outbox = Outbox()
    for lsn in (1, 2, 3):
        outbox.add_event(MERCHANT, lsn)
        outbox.schedule_new(MERCHANT, lsn, at_ms=100 * lsn)
    outbox.record(MERCHANT, DeliveryOutcome(1, 150, "503", False, 5_000))
    outbox.record(MERCHANT, DeliveryOutcome(2, 250, "200", True, None))
    outbox.schedule(MERCHANT, 2, at_ms=9_000)  # redelivered: round 1
    restored = Outbox()
    restored.restore(outbox.to_snapshot())
    assert {lsn: restored.delivery_json(lsn) for lsn in (1, 2, 3)} == {
        lsn: outbox.delivery_json(lsn) for lsn in (1, 2, 3)
    }
    assert restored.round_of(2) == 1
    assert restored.pending == 3
    assert sorted(restored.take_due(MERCHANT, now_ms=10_000, count_max=10)) == [1, 2, 3]
    assert restored.delivery_json(1)["status"] == DeliveryStatus.PENDING.value
