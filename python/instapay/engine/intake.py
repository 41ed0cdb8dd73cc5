"""Intake: a run of signed payment and refund requests staged in one native call
(`_core.stage_batch`, rust/machine/): verified, routed, parsed, reserved in the idempotency
index, applied to the ledger and encoded as WAL frames. The requests refused before the index
are answered here, with the RequestError each got from the Python intake before it."""

from __future__ import annotations

from instapay import _core
from instapay.engine.jobs import Job
from instapay.engine.state import State
from instapay.model import RequestError
from instapay.signing import TOLERANCE_S_DEFAULT, _problem_error


def stage(state: State, jobs: list[Job], lsn_first: int, now_s: int) -> _core.StagedBatch:
    """Stages the run's requests as records from `lsn_first` on; refused jobs are answered
    here, the others by the caller (once durable, or from the index's answer)."""
    requests = [job.request for job in jobs if job.request is not None]
    if len(requests) != len(jobs):
        raise TypeError("a run of signed requests holds a job without one")
    staged = _core.stage_batch(
        state.ledger.native,
        state.results.native,
        state.index,
        state.merchants.ring,
        state.merchants.table,
        requests,
        [None if job.merchant is None else job.merchant.id for job in jobs],
        lsn_first,
        now_s,
        TOLERANCE_S_DEFAULT,
    )
    for index, (code, message, status) in staged.refusals():
        jobs[index].answer(RequestError(code, message, status))
    for index, (problem, detail) in staged.signature_problems():
        error = _problem_error(problem, detail, now_s, TOLERANCE_S_DEFAULT)
        jobs[index].answer(RequestError(error.code, str(error), 401))
    return staged
