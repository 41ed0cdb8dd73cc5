"""The ledger's money rules, consent (owners and mandates), and its invariants under any sequence
of operations."""

from dataclasses import dataclass, field

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from instapay.engine import payment_lsn
from instapay.ledger import BALANCE_MAX, Account, Ledger, Owner, PaymentEntry
from instapay.mandates import SECONDS_PER_DAY, Mandate, MandateGrant, mandate_id
from instapay.model import Failure
from legacy_ledger import legacy_state

ACCOUNTS = ["alice", "bob", "shop", "shop-usd", "overdrawn"]
# 2026-12-01T00:00:00Z
DAY_START_S = 1_795_996_800
NOW_S = DAY_START_S + 3600


def mandate(
    number: int,
    payer: str,
    merchant_id: str = "shop",
    *,
    amount_max_per_payment: int = 10**15,
    amount_max_per_day: int | None = None,
    expires_at_s: int | None = None,
) -> tuple[int, MandateGrant]:
    """A mandate's grant LSN (its id is `mdt_<number>`) and terms, for `Ledger.grant_mandate`."""
    terms = MandateGrant(
        payer, merchant_id, amount_max_per_payment, amount_max_per_day, expires_at_s, NOW_S
    )
    return number, terms


def account(ledger: Ledger, account_id: str) -> Account:
    found = ledger.account(account_id)
    assert found is not None, account_id
    return found


def entry(ledger: Ledger, payment_id: str) -> PaymentEntry:
    found = ledger.payment(payment_id)
    assert found is not None, payment_id
    return found


def mandate_of(ledger: Ledger, mandate_id_: str) -> Mandate:
    found = ledger.mandate(mandate_id_)
    assert found is not None, mandate_id_
    return found


def lsn_of(payment_id: str) -> int:
    lsn = payment_lsn(payment_id)
    assert lsn is not None, payment_id
    return lsn


def carol_with(carols: tuple[int, MandateGrant], balance: int = 10_000) -> Ledger:
    """The merchant "shop" and the customer carol, holding `balance` and this one mandate."""
    ledger = Ledger()
    ledger.open_account("carol", "EUR", False)
    ledger.open_account("shop", "EUR", False, Owner.MERCHANT)
    ledger.deposit("carol", balance, "EUR")
    ledger.grant_mandate(*carols)
    return ledger


def ledger_with_accounts() -> Ledger:
    """Customers alice, bob and overdrawn (an overdraft account), each with a mandate for the
    merchant "shop" (settling into the account "shop"); "shop-usd" settles another merchant."""
    ledger = Ledger()
    for account_id, currency, overdraft, owner in [
        ("alice", "EUR", False, Owner.CUSTOMER),
        ("bob", "EUR", False, Owner.CUSTOMER),
        ("shop", "EUR", False, Owner.MERCHANT),
        ("shop-usd", "USD", False, Owner.MERCHANT),
        ("overdrawn", "EUR", True, Owner.CUSTOMER),
    ]:
        assert ledger.open_account(account_id, currency, overdraft, owner) is None
    for number, payer in enumerate(["alice", "bob", "overdrawn"], start=1):
        ledger.grant_mandate(*mandate(number, payer))
    return ledger


def pay(
    ledger: Ledger,
    payment_id: str,
    payer: str,
    amount: int,
    *,
    settlement: str = "shop",
    merchant_id: str = "shop",
    currency: str = "EUR",
    at_s: int = NOW_S,
) -> Failure | None:
    return ledger.pay(
        lsn_of(payment_id),
        payer,
        settlement,
        amount,
        currency,
        merchant_id=merchant_id,
        created_s=at_s,
    )


def test_a_payment_moves_money_from_payer_to_merchant() -> None:
    ledger = ledger_with_accounts()
    ledger.deposit("alice", 1000, "EUR")
    assert pay(ledger, "pay_1", "alice", 400) is None
    assert (account(ledger, "alice").balance, account(ledger, "shop").balance) == (600, 400)
    assert entry(ledger, "pay_1").mandate == mandate_id(1)


@pytest.mark.parametrize(
    ("payer", "settlement", "amount", "currency", "failure"),
    [
        ("alice", "shop", 1001, "EUR", Failure.INSUFFICIENT_FUNDS),
        ("nobody", "shop", 1, "EUR", Failure.MANDATE_MISSING),
        ("alice", "nowhere", 1, "EUR", Failure.ACCOUNT_NOT_FOUND),
        ("alice", "shop-usd", 1, "EUR", Failure.CURRENCY_MISMATCH),
        ("alice", "shop", 1, "USD", Failure.CURRENCY_MISMATCH),
        ("alice", "alice", 1, "EUR", Failure.PAYER_IS_MERCHANT),
    ],
)
def test_a_declined_payment_changes_nothing(
    payer: str, settlement: str, amount: int, currency: str, failure: Failure
) -> None:
    ledger = ledger_with_accounts()
    ledger.deposit("alice", 1000, "EUR")
    assert pay(ledger, "pay_1", payer, amount, settlement=settlement, currency=currency) == failure
    assert account(ledger, "alice").balance == 1000
    assert ledger.payment("pay_1") is None
    assert mandate_of(ledger, mandate_id(1)).spent == 0


@pytest.mark.parametrize(
    ("payer", "failure"),
    [
        # The theft of issue 12: merchant "other" names "shop" (a settlement account) as payer.
        ("shop", Failure.PAYER_NOT_AUTHORIZED),
        # alice granted "shop" a mandate, not "other".
        ("alice", Failure.MANDATE_MISSING),
    ],
)
def test_a_merchant_debits_no_account_that_did_not_consent_to_it(
    payer: str, failure: Failure
) -> None:
    ledger = ledger_with_accounts()
    ledger.open_account("other.settlement", "EUR", False, Owner.MERCHANT)
    ledger.deposit(payer, 4000, "EUR")
    paid = pay(ledger, "pay_1", payer, 4000, settlement="other.settlement", merchant_id="other")
    assert paid == failure
    assert account(ledger, payer).balance == 4000


def test_a_mandate_caps_each_payment() -> None:
    ledger = carol_with(mandate(1, "carol", amount_max_per_payment=300), 1000)
    assert pay(ledger, "pay_1", "carol", 301) == Failure.MANDATE_AMOUNT_EXCEEDED
    assert pay(ledger, "pay_2", "carol", 300) is None
    assert account(ledger, "carol").balance == 700


def test_a_daily_limit_counts_the_utc_day_of_each_payment() -> None:
    ledger = carol_with(mandate(1, "carol", amount_max_per_payment=400, amount_max_per_day=1000))
    last_second = DAY_START_S + SECONDS_PER_DAY - 1
    for number in range(2):
        assert pay(ledger, f"pay_{number}", "carol", 400, at_s=DAY_START_S + number) is None
    declined = pay(ledger, "pay_2", "carol", 201, at_s=last_second)
    assert declined == Failure.MANDATE_DAILY_LIMIT_EXCEEDED
    assert pay(ledger, "pay_3", "carol", 200, at_s=last_second) is None
    # The next UTC day starts afresh.
    assert pay(ledger, "pay_4", "carol", 400, at_s=last_second + 1) is None
    assert mandate_of(ledger, mandate_id(1)).spent == 400


def test_a_payment_stamped_before_the_latest_debits_day_gets_no_fresh_allowance() -> None:
    ledger = carol_with(mandate(1, "carol", amount_max_per_day=1000))
    assert pay(ledger, "pay_1", "carol", 1000, at_s=DAY_START_S + SECONDS_PER_DAY) is None
    earlier = pay(ledger, "pay_2", "carol", 1, at_s=DAY_START_S)
    assert earlier == Failure.MANDATE_DAILY_LIMIT_EXCEEDED


def test_a_mandate_ends_at_its_expiry_and_when_revoked() -> None:
    ledger = ledger_with_accounts()
    ledger.deposit("alice", 1000, "EUR")
    ledger.open_account("carol", "EUR", False)
    ledger.deposit("carol", 1000, "EUR")
    ledger.grant_mandate(*mandate(9, "carol", expires_at_s=NOW_S + 10))
    assert pay(ledger, "pay_1", "carol", 1, at_s=NOW_S + 9) is None
    assert pay(ledger, "pay_2", "carol", 1, at_s=NOW_S + 10) == Failure.MANDATE_EXPIRED
    ledger.revoke_mandate(mandate_id(1), NOW_S)
    assert pay(ledger, "pay_3", "alice", 1) == Failure.MANDATE_MISSING
    assert account(ledger, "alice").balance == 1000


def test_payments_logged_before_consent_replay_by_their_rules() -> None:
    """A PAYMENT record from before mandates: it applied without one, and replays so."""
    ledger = ledger_with_accounts()
    ledger.open_account("carol", "EUR", False)
    ledger.deposit("carol", 1000, "EUR")
    assert ledger.pay_as_before_consent(1, "carol", "shop", 400, "EUR") is None
    assert entry(ledger, "pay_1").mandate is None
    ledger.check_invariants()


def test_an_overdraft_account_may_go_below_zero() -> None:
    ledger = ledger_with_accounts()
    assert pay(ledger, "pay_1", "overdrawn", 50) is None
    assert account(ledger, "overdrawn").balance == -50
    ledger.check_invariants()


def test_refunds_never_exceed_the_payment() -> None:
    ledger = ledger_with_accounts()
    ledger.deposit("alice", 1000, "EUR")
    pay(ledger, "pay_1", "alice", 400)
    assert ledger.refund("pay_1", 150) == (150, None)
    assert ledger.refund("pay_1", 251) == (251, Failure.REFUND_EXCEEDS_PAYMENT)
    assert ledger.refund("pay_1", None) == (250, None)
    assert ledger.refund("pay_1", None) == (0, Failure.REFUND_EXCEEDS_PAYMENT)
    assert ledger.refund("pay_2", 1) == (1, Failure.PAYMENT_NOT_REFUNDABLE)
    assert account(ledger, "alice").balance == 1000


def test_a_refund_gives_money_back_but_not_daily_spend() -> None:
    ledger = ledger_with_accounts()
    ledger.open_account("carol", "EUR", False)
    ledger.deposit("carol", 1000, "EUR")
    ledger.grant_mandate(*mandate(9, "carol", amount_max_per_day=500))
    assert pay(ledger, "pay_1", "carol", 500) is None
    assert ledger.refund("pay_1", None) == (500, None)
    assert account(ledger, "carol").balance == 1000
    assert pay(ledger, "pay_2", "carol", 1) == Failure.MANDATE_DAILY_LIMIT_EXCEEDED


def test_a_refund_the_merchant_cannot_cover_is_declined() -> None:
    ledger = ledger_with_accounts()
    ledger.deposit("alice", 1000, "EUR")
    pay(ledger, "pay_1", "alice", 400)
    ledger.withdraw("shop", 400, "EUR")
    assert ledger.refund("pay_1", 100) == (100, Failure.INSUFFICIENT_FUNDS)
    assert entry(ledger, "pay_1").refunded == 0


def test_an_overdraft_of_null_is_none() -> None:
    """An admin request may send `"overdraft": null`, and the log holds it so: no overdraft."""
    ledger = Ledger()
    assert ledger.open_account("carol", "EUR", None) is None
    assert account(ledger, "carol").overdraft is False
    assert ledger.withdraw("carol", 1, "EUR") == Failure.INSUFFICIENT_FUNDS
    state = {"accounts": [["dave", "EUR", None, 0]], "payments": [], "net_inflow": {"EUR": 0}}
    assert account(Ledger.from_snapshot(state), "dave").overdraft is False


def test_balances_are_bounded() -> None:
    ledger = ledger_with_accounts()
    assert ledger.deposit("alice", BALANCE_MAX, "EUR") is None
    assert ledger.deposit("alice", 1, "EUR") == Failure.AMOUNT_TOO_LARGE


def test_a_snapshot_restores_the_same_ledger() -> None:
    ledger = ledger_with_accounts()
    ledger.deposit("alice", 1000, "EUR")
    other = mandate(
        7, "bob", "other", amount_max_per_payment=50, amount_max_per_day=60, expires_at_s=NOW_S + 99
    )
    ledger.grant_mandate(*other)
    pay(ledger, "pay_1", "alice", 400)
    ledger.refund("pay_1", 100)
    ledger.revoke_mandate(mandate_id(2), NOW_S)
    restored = Ledger.from_snapshot(ledger.to_snapshot())
    assert restored.accounts() == ledger.accounts()
    assert restored.payment("pay_1") == entry(ledger, "pay_1")
    for payer in ("alice", "bob"):
        assert restored.mandates_of(payer) == ledger.mandates_of(payer)
    # The whole state, net inflows included: a snapshot of the restored ledger is the same.
    assert restored.to_snapshot() == ledger.to_snapshot()
    assert restored.current_mandate("bob", "shop") is None
    assert restored.current_mandate("bob", "other") == mandate_of(ledger, mandate_id(7))


def test_a_snapshot_from_before_consent_still_loads() -> None:
    """Rows without owner or mandate fields, and no mandates: what older versions wrote."""
    state = {
        "accounts": [["alice", "EUR", False, 600], ["shop", "EUR", False, 400]],
        "payments": [["pay_1", "alice", "shop", 400, "EUR", 0]],
        "net_inflow": {"EUR": 1000},
    }
    ledger = Ledger.from_snapshot(state)
    assert account(ledger, "shop").owner is Owner.CUSTOMER  # the engine marks settlement ones
    assert entry(ledger, "pay_1").mandate is None
    assert ledger.mandates_of("alice") == ledger.mandates_of("shop") == []


def test_check_invariants_catches_a_debit_without_consent() -> None:
    ledger = ledger_with_accounts()
    ledger.deposit("alice", 1000, "EUR")
    pay(ledger, "pay_1", "alice", 400)
    # The native state cannot be changed by hand: a snapshot in the older JSON form is forged.
    state = legacy_state(ledger, ["pay_1"])
    Ledger.from_snapshot(state).check_invariants()
    state["payments"][0][6] = mandate_id(2)  # bob's mandate: not alice's consent
    with pytest.raises(AssertionError, match="without consent"):
        Ledger.from_snapshot(state)


def test_a_snapshot_in_the_older_json_form_loads_as_the_same_ledger() -> None:
    """Snapshots written before the ledger was native hold it as JSON rows: they load to the
    state the native snapshot holds, byte for byte."""
    ledger = ledger_with_accounts()
    ledger.deposit("alice", 1000, "EUR")
    ledger.open_account("usd", "USD", True)
    ledger.withdraw("usd", 5, "USD")
    ledger.grant_mandate(*mandate(7, "bob", "other", amount_max_per_day=60, expires_at_s=NOW_S))
    assert ledger.pay_as_before_consent(8, "alice", "shop", 10, "EUR") is None
    pay(ledger, "pay_9", "alice", 400)
    ledger.refund("pay_9", 100)
    ledger.revoke_mandate(mandate_id(2), NOW_S)
    state = legacy_state(ledger, ["pay_8", "pay_9"])
    assert Ledger.from_snapshot(state).to_snapshot() == ledger.to_snapshot()


def test_a_damaged_snapshot_is_refused() -> None:
    ledger = ledger_with_accounts()
    ledger.deposit("alice", 1000, "EUR")
    pay(ledger, "pay_1", "alice", 400)
    encoded = ledger.to_snapshot()
    for at in (0, len(encoded) // 2, len(encoded) - 1):
        damaged = bytearray(encoded)
        damaged[at] ^= 1
        with pytest.raises(ValueError, match="not a valid ledger snapshot"):
            Ledger.from_snapshot(bytes(damaged))
    with pytest.raises(ValueError, match="not a valid ledger snapshot"):
        Ledger.from_snapshot(encoded[:-1])
    with pytest.raises(ValueError, match="not a payment id"):
        Ledger.from_snapshot({**legacy_state(ledger, ["pay_1"]), "payments": [["pay_01"] * 6]})


def test_errors_leave_the_ledger_unchanged() -> None:
    """What the engine refuses before it logs never reaches the ledger; if it did, it is an
    error, not a result: a negative amount, a payment out of log order, an unknown mandate."""
    ledger = ledger_with_accounts()
    ledger.deposit("alice", 1000, "EUR")
    pay(ledger, "pay_5", "alice", 1)
    before = ledger.to_snapshot()
    with pytest.raises(ValueError, match="amounts are at least 0"):
        ledger.deposit("alice", -1, "EUR")
    with pytest.raises(ValueError, match="pay_5 is not newer than pay_5"):
        pay(ledger, "pay_5", "alice", 1)
    with pytest.raises(KeyError, match="mdt_99"):
        ledger.revoke_mandate(mandate_id(99), NOW_S)
    with pytest.raises(KeyError, match="no account nobody"):
        ledger.grant_mandate(*mandate(99, "nobody"))
    assert ledger.to_snapshot() == before


# ---- any sequence of operations, against a model --------------------------------------------


@dataclass
class ModelMandate:
    payer: str
    merchant_id: str
    per_payment: int
    per_day: int | None
    expires_at_s: int | None
    # UTC day -> debited that day.
    spent: dict[int, int] = field(default_factory=dict)
    revoked: bool = False

    def decline(self, amount: int, at_s: int) -> Failure | None:
        if self.expires_at_s is not None and at_s >= self.expires_at_s:
            return Failure.MANDATE_EXPIRED
        if amount > self.per_payment:
            return Failure.MANDATE_AMOUNT_EXCEEDED
        day = at_s // SECONDS_PER_DAY
        if self.per_day is not None and self.spent.get(day, 0) + amount > self.per_day:
            return Failure.MANDATE_DAILY_LIMIT_EXCEEDED
        return None


CUSTOMERS = ["alice", "bob", "overdrawn"]
# merchant id -> its settlement account
MERCHANTS = {"shop": "shop", "other": "other.settlement"}
SETTLEMENTS = list(MERCHANTS.values())
amounts = st.integers(min_value=1, max_value=2000)


class LedgerMachine(RuleBasedStateMachine):
    """Deposits, withdrawals, mandates granted, revoked and expiring, payments by either merchant
    from any account (settlement accounts too) at a clock that moves across UTC days, refunds,
    and restarts from a snapshot.

    A small model predicts every consent decision; the ledger must agree, money must be conserved,
    balances must equal the model's, and no account may lose money but by a withdrawal, a refund
    it owes as a merchant, or a payment a live mandate of its own allowed."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger()
        self.now_s = NOW_S
        self.balances: dict[str, int] = {}
        self.mandates: dict[str, ModelMandate] = {}
        self.paid: list[str] = []
        self.next_lsn = 1

    @initialize()
    def open_accounts(self) -> None:
        for account in CUSTOMERS:
            self.ledger.open_account(account, "EUR", account == "overdrawn")
        for account in SETTLEMENTS:
            self.ledger.open_account(account, "EUR", False, Owner.MERCHANT)
        self.balances = dict.fromkeys(CUSTOMERS + SETTLEMENTS, 0)
        for account in CUSTOMERS:
            self.deposit(account, 5000)

    def _lsn(self) -> int:
        self.next_lsn += 1
        return self.next_lsn

    @rule(account=st.sampled_from(CUSTOMERS + SETTLEMENTS), amount=amounts)
    def deposit(self, account: str, amount: int) -> None:
        assert self.ledger.deposit(account, amount, "EUR") is None
        self.balances[account] += amount

    @rule(account=st.sampled_from(CUSTOMERS + SETTLEMENTS), amount=amounts)
    def withdraw(self, account: str, amount: int) -> None:
        if self.ledger.withdraw(account, amount, "EUR") is None:
            self.balances[account] -= amount

    @rule(seconds=st.integers(0, SECONDS_PER_DAY // 3))
    def advance_clock(self, seconds: int) -> None:
        self.now_s += seconds

    @rule(
        payer=st.sampled_from(CUSTOMERS),
        merchant_id=st.sampled_from(list(MERCHANTS)),
        per_payment=amounts,
        extra_per_day=st.none() | st.integers(0, 1000),
        lasts_s=st.none() | st.integers(1, SECONDS_PER_DAY),
    )
    def grant(
        self,
        payer: str,
        merchant_id: str,
        per_payment: int,
        extra_per_day: int | None,
        lasts_s: int | None,
    ) -> None:
        current = self._current(payer, merchant_id)
        if current is not None and not self._expired(self.mandates[current], self.now_s):
            return  # the engine refuses a second live mandate for one pair
        per_day = None if extra_per_day is None else per_payment + extra_per_day
        expires_at_s = None if lasts_s is None else self.now_s + lasts_s
        number = self._lsn()
        self.ledger.grant_mandate(
            number, MandateGrant(payer, merchant_id, per_payment, per_day, expires_at_s, self.now_s)
        )
        self.mandates[mandate_id(number)] = ModelMandate(
            payer, merchant_id, per_payment, per_day, expires_at_s
        )

    @precondition(lambda self: any(not m.revoked for m in self.mandates.values()))
    @rule(data=st.data())
    def revoke(self, data: st.DataObject) -> None:
        live = sorted(mid for mid, m in self.mandates.items() if not m.revoked)
        chosen = data.draw(st.sampled_from(live))
        self.ledger.revoke_mandate(chosen, self.now_s)
        self.mandates[chosen].revoked = True

    @staticmethod
    def _expired(mandate: ModelMandate, at_s: int) -> bool:
        return mandate.expires_at_s is not None and at_s >= mandate.expires_at_s

    def _current(self, payer: str, merchant_id: str) -> str | None:
        """The pair's newest mandate (a new grant supersedes an expired one), unless revoked."""
        for mid, mandate in reversed(self.mandates.items()):
            if (mandate.payer, mandate.merchant_id) == (payer, merchant_id):
                return None if mandate.revoked else mid
        return None

    def _expected_consent(self, payer: str, merchant_id: str, amount: int) -> Failure | str:
        """The model's decision: a decline, or the id of the mandate that allows the payment."""
        if payer == MERCHANTS[merchant_id]:
            return Failure.PAYER_IS_MERCHANT
        if payer in SETTLEMENTS:
            return Failure.PAYER_NOT_AUTHORIZED
        mid = self._current(payer, merchant_id)
        if mid is None:
            return Failure.MANDATE_MISSING
        return self.mandates[mid].decline(amount, self.now_s) or mid

    @rule(
        payer=st.sampled_from(CUSTOMERS + SETTLEMENTS),
        merchant_id=st.sampled_from(list(MERCHANTS)),
        amount=amounts,
    )
    def pay(self, payer: str, merchant_id: str, amount: int) -> None:
        self._pay(payer, merchant_id, amount)

    @precondition(lambda self: bool(self.mandates))
    @rule(data=st.data(), amount=amounts)
    def pay_a_pair_that_had_a_mandate(self, data: st.DataObject, amount: int) -> None:
        """Most payers and merchants never agreed: this rule makes the ones that did pay often."""
        chosen = self.mandates[data.draw(st.sampled_from(sorted(self.mandates)))]
        self._pay(chosen.payer, chosen.merchant_id, amount)

    def _pay(self, payer: str, merchant_id: str, amount: int) -> None:
        payment_id = f"pay_{self._lsn()}"
        expected = self._expected_consent(payer, merchant_id, amount)
        settlement = MERCHANTS[merchant_id]
        failure = pay(
            self.ledger,
            payment_id,
            payer,
            amount,
            settlement=settlement,
            merchant_id=merchant_id,
            at_s=self.now_s,
        )
        if isinstance(expected, Failure):
            assert failure == expected
            return
        assert failure in (None, Failure.INSUFFICIENT_FUNDS)
        if failure is None:
            day = self.now_s // SECONDS_PER_DAY
            spent = self.mandates[expected].spent
            spent[day] = spent.get(day, 0) + amount
            self.balances[payer] -= amount
            self.balances[settlement] += amount
            self.paid.append(payment_id)
            assert entry(self.ledger, payment_id).mandate == expected

    @precondition(lambda self: bool(self.paid))
    @rule(data=st.data(), amount=st.none() | amounts)
    def refund(self, data: st.DataObject, amount: int | None) -> None:
        payment_id = data.draw(st.sampled_from(self.paid))
        paid = entry(self.ledger, payment_id)
        refunded, failure = self.ledger.refund(payment_id, amount)
        if failure is None:
            self.balances[paid.settlement] -= refunded
            self.balances[paid.payer] += refunded

    @rule()
    def restart_from_a_snapshot(self) -> None:
        """Recovery from a snapshot must leave every later consent decision as it was."""
        self.ledger = Ledger.from_snapshot(self.ledger.to_snapshot())

    @invariant()
    def invariants_hold(self) -> None:
        self.ledger.check_invariants()

    @invariant()
    def balances_are_the_models(self) -> None:
        actual = {account.id: account.balance for account in self.ledger.accounts()}
        assert actual == self.balances

    @invariant()
    def daily_spend_never_exceeds_a_mandates_limit(self) -> None:
        for mandate in self.mandates.values():
            if mandate.per_day is not None:
                assert all(total <= mandate.per_day for total in mandate.spent.values())


TestLedgerMachine = LedgerMachine.TestCase
