//! The states of orders, packages, reservations, labels and jobs: Rust
//! mirrors of the Postgres enums in `migrations/`, so that no state is ever
//! free text. `docs/state_machine.md` draws how they move.

use serde::{Deserialize, Serialize};

macro_rules! pg_enum {
    ($(#[$m:meta])* $name:ident = $pg:literal { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type)]
        #[sqlx(type_name = $pg, rename_all = "snake_case")]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pg_enum!(
    /// Where an order is in the pipeline.
    OrderState = "order_state" {
        Imported = "imported",
        Backordered = "backordered",
        Reserved = "reserved",
        Packed = "packed",
        Labelled = "labelled",
        OnHold = "on_hold",
        Shipped = "shipped",
        Cancelled = "cancelled",
        Rejected = "rejected",
    }
);

pg_enum!(
    /// Where a package is between split and purchase.
    PackageState = "package_state" {
        Planned = "planned",
        Rated = "rated",
        Rendered = "rendered",
        Purchased = "purchased",
        Voided = "voided",
    }
);

pg_enum!(
    ReservationState = "reservation_state" {
        Held = "held",
        Committed = "committed",
        Released = "released",
    }
);

pg_enum!(
    LabelState = "label_state" {
        Buying = "buying",
        Purchased = "purchased",
        Refunded = "refunded",
    }
);

pg_enum!(
    DocumentKind = "document_kind" {
        PackingSlip = "packing_slip",
        Label = "label",
        PrintReady = "print_ready",
    }
);

pg_enum!(
    /// apalis-postgres's task statuses (stored by it as text), lower-cased.
    JobState = "job_state" {
        Pending = "pending",
        Queued = "queued",
        Running = "running",
        Done = "done",
        Failed = "failed",
        Killed = "killed",
    }
);

pg_enum!(
    DeadLetterState = "dead_letter_state" {
        Open = "open",
        Retried = "retried",
        Discarded = "discarded",
    }
);
