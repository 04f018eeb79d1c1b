-- An order edited on the channel after one of its labels was bought is not
-- re-planned automatically: it waits in `on_hold` for ops. A new enum value
-- cannot be used in the transaction that adds it, so the columns and
-- constraints that mention it come in the next migration.
ALTER TYPE order_state ADD VALUE IF NOT EXISTS 'on_hold' AFTER 'labelled';
