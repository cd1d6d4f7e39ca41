//! xendisk: a declarative reconciler for the disk state of a Xen host (dom0).
//!
//! An operator declares pools, vdisks and each domain's attachments in TOML;
//! xendisk compares that with the host, plans the operations, proves the plan
//! never shares a disk unsafely, and applies it. The data flows one way, one
//! module per step:
//!
//! ```text
//! desired.toml ──► desired ──► Desired ─┐
//! state DB ──────► state ────► Actual ──┼─► plan ─► safety ─► render (text, JSON, DOT)
//! xenstore, /proc, /sys ─► observe ─────┘                  └─► apply ─► drivers
//! ```
//!
//! Each step takes plain values and returns plain values; only `apply` changes
//! the host, and only `observe` and `state` read it.
//!
//! What exists today:
//!
//! - [`desired`]: reads a desired-state file into the [`desired::Desired`]
//!   model and validates it, reporting every problem at `file:line:column`.
//! - [`vdev`]: guest-side device names and their xenstore ids.
//! - [`diagnostic`]: located problems, rendered for a person.
//! - [`schema`]: JSON Schemas generated from the types.
//! - [`ops`]: the commands as functions, called by the thin `main.rs`.

pub mod apply;
pub mod desired;
pub mod diagnostic;
pub mod extent;
pub mod generate;
pub mod observe;
pub mod ops;
pub mod plan;
pub mod render;
pub mod safety;
pub mod schema;
pub mod sim;
pub mod state;
pub mod vdev;
pub mod xs_client;
pub mod xs_wire;
