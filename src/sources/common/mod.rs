//! Plumbing every kind shares, once: the kind contract (`kind`), the connect context
//! (`context`), in-order acknowledgement (`in_order`) and state files (`state_file`).
//! Kinds import from here and never from `sources` itself, which lists them.

pub mod context;
pub mod in_order;
pub mod kind;
pub mod state_file;
