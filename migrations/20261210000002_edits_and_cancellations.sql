-- Edits and cancellations after import.
--
-- * An order on hold says why (`hold_reason`), like a rejected one.
-- * An edit that drops a line keeps the line's row (reservations and
--   package items of earlier plans still point at it) with quantity 0.
-- * A refunded label carries when it was refunded.

ALTER TABLE orders ADD COLUMN hold_reason TEXT;
ALTER TABLE orders ADD CONSTRAINT on_hold_has_reason
    CHECK ((state = 'on_hold') = (hold_reason IS NOT NULL));

ALTER TABLE order_lines DROP CONSTRAINT order_lines_quantity_check;
-- 0: the line was removed from the order by an edit on the channel.
ALTER TABLE order_lines ADD CONSTRAINT order_lines_quantity_check CHECK (quantity >= 0);

ALTER TABLE labels ADD COLUMN refunded_at TIMESTAMPTZ;
ALTER TABLE labels ADD CONSTRAINT refunded_has_timestamp
    CHECK ((state = 'refunded') = (refunded_at IS NOT NULL));
