-- Conveyor's core schema: what the fleet knows about channels, catalog, stock,
-- orders and everything the pipeline produces for them. The job queue itself
-- lives in the `apalis` schema, created by apalis-postgres's own migrations.
--
-- Invariants live here where the database can hold them:
--   * one order per (channel, external id);
--   * stock never negative and never reserved beyond what is on hand;
--   * one label purchase per package (unique purchase key);
--   * states are enums, and terminal states carry their timestamp.

CREATE TYPE channel_kind AS ENUM ('shopify', 'amazon', 'ebay');

CREATE TYPE order_state AS ENUM (
    'imported',     -- stored, waiting for reserve
    'backordered',  -- some units could not be reserved; waits for a restock
    'reserved',     -- every unit is held in some warehouse; waits for split
    'packed',       -- packages planned; rate/render/purchase run per package
    'labelled',     -- every package has a label; waits for commit
    'shipped',      -- stock committed and fulfillment pushed to the channel
    'cancelled',    -- cancelled on the channel
    'rejected'      -- the channel's payload could not be used; reason kept
);

CREATE TYPE package_state AS ENUM (
    'planned',      -- contents and box chosen
    'rated',        -- carrier shipment created, rate chosen
    'rendered',     -- packing slip rendered
    'purchased',    -- label bought and print-ready PDF stored
    'voided'        -- label refunded / package abandoned
);

CREATE TYPE reservation_state AS ENUM ('held', 'committed', 'released');

CREATE TYPE label_state AS ENUM (
    'buying',       -- recorded before the carrier is asked to buy
    'purchased',    -- postage exists at the carrier
    'refunded'
);

CREATE TYPE document_kind AS ENUM ('packing_slip', 'label', 'print_ready');

-- Mirrors the statuses apalis-postgres stores as text in apalis.jobs.status,
-- so Conveyor's own code and reports never compare free text.
CREATE TYPE job_state AS ENUM ('pending', 'queued', 'running', 'done', 'failed', 'killed');

CREATE TABLE channels (
    id             BIGSERIAL PRIMARY KEY,
    code           TEXT NOT NULL UNIQUE CHECK (code ~ '^[a-z0-9][a-z0-9_-]*$'),
    kind           channel_kind NOT NULL,
    -- Orders updated at or after this instant (minus the overlap window) are
    -- fetched by the next import. NULL: never imported.
    cursor         TIMESTAMPTZ,
    last_import_at TIMESTAMPTZ,
    -- One import per channel at a time across the fleet: an import holds
    -- this lease (renewed per page) and a crashed one's lease runs out.
    import_lease_until TIMESTAMPTZ,
    import_lease_by    TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE products (
    sku        TEXT PRIMARY KEY CHECK (length(sku) BETWEEN 1 AND 64),
    name       TEXT NOT NULL,
    weight_g   INTEGER NOT NULL CHECK (weight_g > 0),
    length_mm  INTEGER NOT NULL CHECK (length_mm > 0),
    width_mm   INTEGER NOT NULL CHECK (width_mm > 0),
    height_mm  INTEGER NOT NULL CHECK (height_mm > 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE warehouses (
    code       TEXT PRIMARY KEY CHECK (length(code) BETWEEN 1 AND 32),
    name       TEXT NOT NULL,
    address1   TEXT NOT NULL,
    city       TEXT NOT NULL,
    province   TEXT NOT NULL,
    zip        TEXT NOT NULL,
    country    TEXT NOT NULL,
    latitude   DOUBLE PRECISION NOT NULL CHECK (latitude BETWEEN -90 AND 90),
    longitude  DOUBLE PRECISION NOT NULL CHECK (longitude BETWEEN -180 AND 180),
    priority   INTEGER NOT NULL DEFAULT 100,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE stock (
    sku        TEXT NOT NULL REFERENCES products (sku),
    warehouse  TEXT NOT NULL REFERENCES warehouses (code),
    on_hand    INTEGER NOT NULL DEFAULT 0,
    reserved   INTEGER NOT NULL DEFAULT 0,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (sku, warehouse),
    CONSTRAINT stock_never_oversold CHECK (reserved >= 0 AND reserved <= on_hand)
);

CREATE TABLE orders (
    id                 BIGSERIAL PRIMARY KEY,
    channel_id         BIGINT NOT NULL REFERENCES channels (id),
    external_id        TEXT NOT NULL,
    name               TEXT NOT NULL,
    state              order_state NOT NULL DEFAULT 'imported',
    -- The channel's own version of the order (its updatedAt); an import only
    -- overwrites a row with a strictly newer version.
    channel_updated_at TIMESTAMPTZ NOT NULL,
    -- Conveyor's plan version: bumped when an edit re-plans the order, and part
    -- of the reserve and split job keys.
    version            INTEGER NOT NULL DEFAULT 1,
    service_level      TEXT NOT NULL DEFAULT 'standard',
    ship_to            JSONB NOT NULL DEFAULT '{}'::jsonb,
    raw                JSONB NOT NULL,
    rejected_reason    TEXT,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    shipped_at         TIMESTAMPTZ,
    cancelled_at       TIMESTAMPTZ,
    UNIQUE (channel_id, external_id),
    CONSTRAINT shipped_has_timestamp CHECK ((state = 'shipped') = (shipped_at IS NOT NULL)),
    CONSTRAINT cancelled_has_timestamp CHECK ((state = 'cancelled') = (cancelled_at IS NOT NULL)),
    CONSTRAINT rejected_has_reason CHECK ((state = 'rejected') = (rejected_reason IS NOT NULL))
);
CREATE INDEX orders_state_idx ON orders (state, created_at);

CREATE TABLE order_lines (
    id               BIGSERIAL PRIMARY KEY,
    order_id         BIGINT NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    external_id      TEXT NOT NULL,
    sku              TEXT NOT NULL,
    name             TEXT NOT NULL,
    quantity         INTEGER NOT NULL CHECK (quantity > 0),
    -- The channel's fulfillment-order line this line is fulfilled through.
    fulfillment_ref  JSONB,
    UNIQUE (order_id, external_id)
);

CREATE TABLE reservations (
    id            BIGSERIAL PRIMARY KEY,
    order_id      BIGINT NOT NULL REFERENCES orders (id),
    order_line_id BIGINT NOT NULL REFERENCES order_lines (id),
    sku           TEXT NOT NULL,
    warehouse     TEXT NOT NULL REFERENCES warehouses (code),
    quantity      INTEGER NOT NULL CHECK (quantity > 0),
    state         reservation_state NOT NULL DEFAULT 'held',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    settled_at    TIMESTAMPTZ,
    CONSTRAINT settled_has_timestamp CHECK ((state = 'held') = (settled_at IS NULL)),
    FOREIGN KEY (sku, warehouse) REFERENCES stock (sku, warehouse)
);
CREATE INDEX reservations_order_idx ON reservations (order_id, state);

CREATE TABLE packages (
    id            BIGSERIAL PRIMARY KEY,
    order_id      BIGINT NOT NULL REFERENCES orders (id),
    order_version INTEGER NOT NULL,
    warehouse     TEXT NOT NULL REFERENCES warehouses (code),
    seq           INTEGER NOT NULL CHECK (seq > 0),
    box_code      TEXT NOT NULL,
    length_mm     INTEGER NOT NULL,
    width_mm      INTEGER NOT NULL,
    height_mm     INTEGER NOT NULL,
    weight_g      INTEGER NOT NULL CHECK (weight_g > 0),
    state         package_state NOT NULL DEFAULT 'planned',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (order_id, order_version, seq)
);

CREATE TABLE package_items (
    package_id    BIGINT NOT NULL REFERENCES packages (id) ON DELETE CASCADE,
    order_line_id BIGINT NOT NULL REFERENCES order_lines (id),
    sku           TEXT NOT NULL,
    quantity      INTEGER NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (package_id, order_line_id)
);

CREATE TABLE rate_quotes (
    id                  BIGSERIAL PRIMARY KEY,
    package_id          BIGINT NOT NULL REFERENCES packages (id),
    carrier_shipment_id TEXT NOT NULL,
    carrier_rate_id     TEXT NOT NULL,
    carrier             TEXT NOT NULL,
    service             TEXT NOT NULL,
    amount_cents        BIGINT NOT NULL CHECK (amount_cents >= 0),
    currency            TEXT NOT NULL,
    delivery_days       INTEGER,
    chosen              BOOLEAN NOT NULL DEFAULT false,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (package_id, carrier_rate_id)
);
CREATE UNIQUE INDEX rate_quotes_one_chosen ON rate_quotes (package_id) WHERE chosen;

CREATE TABLE labels (
    id                  BIGSERIAL PRIMARY KEY,
    package_id          BIGINT NOT NULL UNIQUE REFERENCES packages (id),
    -- One purchase per package: the key the purchase job is idempotent on.
    purchase_key        TEXT NOT NULL UNIQUE,
    carrier_shipment_id TEXT NOT NULL UNIQUE,
    carrier_rate_id     TEXT NOT NULL,
    carrier             TEXT NOT NULL,
    service             TEXT NOT NULL,
    amount_cents        BIGINT NOT NULL,
    state               label_state NOT NULL DEFAULT 'buying',
    tracking_code       TEXT,
    label_url           TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    purchased_at        TIMESTAMPTZ,
    CONSTRAINT purchased_has_tracking CHECK (state = 'buying' OR (tracking_code IS NOT NULL AND purchased_at IS NOT NULL))
);

CREATE TABLE documents (
    id         BIGSERIAL PRIMARY KEY,
    package_id BIGINT NOT NULL REFERENCES packages (id),
    kind       document_kind NOT NULL,
    pages      INTEGER NOT NULL CHECK (pages > 0),
    pdf        BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (package_id, kind)
);

-- One fulfillment pushed to the channel per package (its tracking number).
CREATE TABLE fulfillments (
    package_id   BIGINT PRIMARY KEY REFERENCES packages (id),
    order_id     BIGINT NOT NULL REFERENCES orders (id),
    external_id  TEXT,
    pushed_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Each stock or restock file loaded, so that a restock can be referred to.
CREATE TABLE stock_loads (
    id         BIGSERIAL PRIMARY KEY,
    kind       TEXT NOT NULL CHECK (kind IN ('stock', 'restock')),
    source     TEXT NOT NULL,
    rows       INTEGER NOT NULL,
    loaded_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE audit_log (
    id        BIGSERIAL PRIMARY KEY,
    at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    entity    TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    detail    JSONB NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_entity_idx ON audit_log (entity, entity_id);

-- Jobs that failed for good: kept, with their raw payload, until ops review
-- them (retry or discard).
CREATE TYPE dead_letter_state AS ENUM ('open', 'retried', 'discarded');

CREATE TABLE dead_letters (
    id          BIGSERIAL PRIMARY KEY,
    job_id      TEXT NOT NULL UNIQUE,
    queue       TEXT NOT NULL,
    job_key     TEXT,
    payload     BYTEA NOT NULL,
    error_class TEXT NOT NULL,
    error       TEXT NOT NULL,
    attempts    INTEGER NOT NULL,
    worker      TEXT NOT NULL,
    order_id    BIGINT,
    state       dead_letter_state NOT NULL DEFAULT 'open',
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    reviewed_at TIMESTAMPTZ,
    CONSTRAINT reviewed_has_timestamp CHECK ((state = 'open') = (reviewed_at IS NULL))
);
CREATE INDEX dead_letters_open_idx ON dead_letters (queue, created_at) WHERE state = 'open';
