"""The engine: a batched pipeline (`pipeline`) over the state (`state`) and one handler per
operation (`handlers`), fed by `intake`, logging typed records (`records`), recovered by
`recovery`; see docs/ARCHITECTURE.md. The names embedders and tools use are
re-exported here."""

from instapay.engine.handlers import ReplayMismatchError
from instapay.engine.pipeline import (
    BATCH_SIZE_MAX_DEFAULT,
    IDEMPOTENCY_CAPACITY_DEFAULT,
    PIPELINE_BATCHES_MAX,
    QUEUE_DEPTH_MAX_DEFAULT,
    SNAPSHOT_EVERY_RECORDS_DEFAULT,
    Engine,
    FsyncMode,
)
from instapay.engine.records import RECORD_FIELDS, SECRET_REDACTED, RecordType, named, redacted
from instapay.engine.recovery import SNAPSHOT_STATE_LEN
from instapay.engine.stats import BucketCounts, EngineStats
from instapay.protocol import PAYMENTS_PATH, payment_id, payment_lsn, refund_id, refund_lsn

__all__ = [
    "BATCH_SIZE_MAX_DEFAULT",
    "IDEMPOTENCY_CAPACITY_DEFAULT",
    "PAYMENTS_PATH",
    "PIPELINE_BATCHES_MAX",
    "QUEUE_DEPTH_MAX_DEFAULT",
    "RECORD_FIELDS",
    "SECRET_REDACTED",
    "SNAPSHOT_EVERY_RECORDS_DEFAULT",
    "SNAPSHOT_STATE_LEN",
    "BucketCounts",
    "Engine",
    "EngineStats",
    "FsyncMode",
    "RecordType",
    "ReplayMismatchError",
    "named",
    "payment_id",
    "payment_lsn",
    "redacted",
    "refund_id",
    "refund_lsn",
]
