"""The ledger's money rules, and its invariant under any sequence of operations."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from instapay.ledger import BALANCE_MAX, Ledger
from instapay.model import Failure

ACCOUNTS = ["alice", "bob", "shop", "shop-usd", "overdrawn"]


def ledger_with_accounts() -> Ledger:
    ledger = Ledger()
    for account_id, currency, overdraft in [
        ("alice", "EUR", False),
        ("bob", "EUR", False),
        ("shop", "EUR", False),
        ("shop-usd", "USD", False),
        ("overdrawn", "EUR", True),
    ]:
        assert ledger.open_account(account_id, currency, overdraft) is None
    return ledger


def test_a_payment_moves_money_from_payer_to_merchant() -> None:
    ledger = ledger_with_accounts()
    ledger.deposit("alice", 1000, "EUR")
    assert ledger.pay("pay_1", "alice", "shop", 400, "EUR") is None
    assert (ledger.accounts["alice"].balance, ledger.accounts["shop"].balance) == (600, 400)


@pytest.mark.parametrize(
    ("payer", "settlement", "amount", "currency", "failure"),
    [
        ("alice", "shop", 1001, "EUR", Failure.INSUFFICIENT_FUNDS),
        ("nobody", "shop", 1, "EUR", Failure.ACCOUNT_NOT_FOUND),
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
    assert ledger.pay("pay_1", payer, settlement, amount, currency) == failure
    assert ledger.accounts["alice"].balance == 1000
    assert "pay_1" not in ledger.payments


def test_an_overdraft_account_may_go_below_zero() -> None:
    ledger = ledger_with_accounts()
    assert ledger.pay("pay_1", "overdrawn", "shop", 50, "EUR") is None
    assert ledger.accounts["overdrawn"].balance == -50
    ledger.check_invariants()


def test_refunds_never_exceed_the_payment() -> None:
    ledger = ledger_with_accounts()
    ledger.deposit("alice", 1000, "EUR")
    ledger.pay("pay_1", "alice", "shop", 400, "EUR")
    assert ledger.refund("pay_1", 150) == (150, None)
    assert ledger.refund("pay_1", 251) == (251, Failure.REFUND_EXCEEDS_PAYMENT)
    assert ledger.refund("pay_1", None) == (250, None)
    assert ledger.refund("pay_1", None) == (0, Failure.REFUND_EXCEEDS_PAYMENT)
    assert ledger.refund("pay_2", 1) == (1, Failure.PAYMENT_NOT_REFUNDABLE)
    assert ledger.accounts["alice"].balance == 1000


def test_a_refund_the_merchant_cannot_cover_is_declined() -> None:
    ledger = ledger_with_accounts()
    ledger.deposit("alice", 1000, "EUR")
    ledger.pay("pay_1", "alice", "shop", 400, "EUR")
    ledger.withdraw("shop", 400, "EUR")
    assert ledger.refund("pay_1", 100) == (100, Failure.INSUFFICIENT_FUNDS)
    assert ledger.payments["pay_1"].refunded == 0


def test_balances_are_bounded() -> None:
    ledger = ledger_with_accounts()
    assert ledger.deposit("alice", BALANCE_MAX, "EUR") is None
    assert ledger.deposit("alice", 1, "EUR") == Failure.AMOUNT_TOO_LARGE


def test_a_snapshot_restores_the_same_ledger() -> None:
    ledger = ledger_with_accounts()
    ledger.deposit("alice", 1000, "EUR")
    ledger.pay("pay_1", "alice", "shop", 400, "EUR")
    ledger.refund("pay_1", 100)
    restored = Ledger.from_snapshot(ledger.to_snapshot())
    assert restored.accounts == ledger.accounts
    assert restored.payments == ledger.payments
    assert restored.net_inflow == ledger.net_inflow


amounts = st.integers(min_value=1, max_value=10**15)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("deposit"), st.sampled_from(ACCOUNTS), amounts),
        st.tuples(st.just("withdraw"), st.sampled_from(ACCOUNTS), amounts),
        st.tuples(st.just("pay"), st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS), amounts),
        st.tuples(st.just("refund"), st.integers(0, 30), st.none() | amounts),
    ),
    max_size=60,
)


@given(operations)
def test_any_sequence_of_operations_keeps_the_invariants(ops: list[tuple[object, ...]]) -> None:
    ledger = ledger_with_accounts()
    deposited: dict[str, int] = {"EUR": 0, "USD": 0}
    paid = 0
    for op in ops:
        match op:
            case ("deposit", str(account), int(amount)):
                currency = ledger.accounts[account].currency
                if ledger.deposit(account, amount, currency) is None:
                    deposited[currency] += amount
            case ("withdraw", str(account), int(amount)):
                currency = ledger.accounts[account].currency
                if ledger.withdraw(account, amount, currency) is None:
                    deposited[currency] -= amount
            case ("pay", str(payer), str(settlement), int(amount)):
                paid += 1
                ledger.pay(f"pay_{paid}", payer, settlement, amount, "EUR")
            case ("refund", int(number), amount):
                ledger.refund(f"pay_{number}", amount if isinstance(amount, int) else None)
        ledger.check_invariants()
    for currency, total in deposited.items():
        balances = sum(a.balance for a in ledger.accounts.values() if a.currency == currency)
        assert balances == total, currency
    for holder in ledger.accounts.values():
        assert holder.overdraft or holder.balance >= 0
