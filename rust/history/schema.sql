-- The history database (`history.db` in the data directory): every payment, refund, account
-- entry and webhook delivery attempt ever logged, projected from the write-ahead log. Derived
-- data: the log is the truth, and a deleted database is rebuilt from the log that is kept.
-- Money in minor units (integers), times in unix seconds unless the name ends in `_ms`.
-- Ids are not stored: a payment's id is 'pay_' || lsn, a refund's 're_' || lsn, an event's
-- 'evt_' || lsn (the views below spell them out). No secret is ever written here.

-- How far the log is projected: one row, updated in the same transaction as the rows.
CREATE TABLE projection (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    schema_version INTEGER NOT NULL,
    -- The last LSN applied: every record up to it is in the tables, none after it.
    lsn INTEGER NOT NULL
);

CREATE TABLE payments (
    lsn INTEGER PRIMARY KEY,
    merchant_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    payer TEXT NOT NULL,
    settlement_account TEXT NOT NULL,
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('succeeded', 'failed')),
    failure_code TEXT,
    -- What its succeeded refunds gave back so far (updated as refunds are projected).
    amount_refunded INTEGER NOT NULL DEFAULT 0,
    description TEXT,
    -- The metadata object as JSON text, NULL without metadata.
    metadata TEXT,
    created INTEGER NOT NULL
);
-- A merchant's payments newest first (lists, cursors), and by order id.
CREATE INDEX payments_by_merchant ON payments (merchant_id, lsn);
CREATE INDEX payments_by_order ON payments (merchant_id, order_id);

CREATE TABLE refunds (
    lsn INTEGER PRIMARY KEY,
    -- The payment refunded ('pay_<lsn>'); a declined refund may name an id no payment has.
    payment_id TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    -- What the refund gave back, in the payment's currency; for a declined refund the amount
    -- it asked for (as its result answers it): sum `amount` over succeeded refunds only.
    amount INTEGER NOT NULL,
    currency TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('succeeded', 'failed')),
    failure_code TEXT,
    reason TEXT,
    created INTEGER NOT NULL
);
CREATE INDEX refunds_by_payment ON refunds (payment_id, lsn);
CREATE INDEX refunds_by_merchant ON refunds (merchant_id, lsn);

-- Every account and its balance as of `projection.lsn`.
CREATE TABLE accounts (
    account_id TEXT PRIMARY KEY,
    currency TEXT NOT NULL,
    balance INTEGER NOT NULL,
    opened_lsn INTEGER NOT NULL
) WITHOUT ROWID;

-- Every change of a balance, with the balance after it: an account statement. A payment that
-- succeeded is two entries (the payer's debit, the settlement account's credit) at its LSN; a
-- refund that succeeded the two the other way; a deposit or withdrawal one. Declined
-- operations change no balance and have no entry. A database rebuilt from a snapshot (the log
-- before it gone) starts each account with one 'opening' entry: its balance at that LSN.
CREATE TABLE account_entries (
    account_id TEXT NOT NULL,
    lsn INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('opening', 'deposit', 'withdrawal', 'payment', 'refund')),
    -- Signed: positive credits the account, negative debits it.
    amount INTEGER NOT NULL,
    balance_after INTEGER NOT NULL,
    PRIMARY KEY (account_id, lsn)
) WITHOUT ROWID;

-- Every finished webhook delivery attempt, as the dispatcher logged it.
CREATE TABLE delivery_attempts (
    -- The LSN of the DELIVERIES record that logged the attempt, and its place in that record.
    logged_lsn INTEGER NOT NULL,
    position INTEGER NOT NULL,
    event_lsn INTEGER NOT NULL,
    at_ms INTEGER NOT NULL,
    -- An HTTP status ('200', '500') or what went wrong ('timeout', 'connection_refused').
    outcome TEXT NOT NULL,
    delivered INTEGER NOT NULL CHECK (delivered IN (0, 1)),
    -- When the next attempt was due; NULL once delivered or the schedule was spent.
    next_at_ms INTEGER,
    round INTEGER NOT NULL,
    PRIMARY KEY (logged_lsn, position)
) WITHOUT ROWID;
CREATE INDEX delivery_attempts_by_event ON delivery_attempts (event_lsn);

-- The same rows with their API ids, for people querying with the sqlite3 shell.
CREATE VIEW payments_view AS
    SELECT 'pay_' || lsn AS id, * FROM payments;
CREATE VIEW refunds_view AS
    SELECT 're_' || lsn AS id, * FROM refunds;
-- Every payment and refund result is an event of its merchant (`GET /v1/events`).
CREATE VIEW events AS
    SELECT lsn, 'evt_' || lsn AS id, merchant_id, 'payment.' || status AS type, created
    FROM payments
    UNION ALL
    SELECT lsn, 'evt_' || lsn AS id, merchant_id, 'refund.' || status AS type, created
    FROM refunds;
