//! xendisk: a declarative reconciler for the disk state of a Xen host (dom0).
//!
//! An operator declares pools, vdisks and each domain's attachments in TOML;
//! xendisk compares that with the host, plans the operations, proves the plan
//! never shares a disk unsafely, and applies it. The data flows one way, one
//! module per step:
//!
//! ```text
//! desired.toml ──► desired ──► Desired ───────┐
//! state DB ──────► state ────► StateSnapshot ─┼─► plan ─► safety ─► Plan ─► render (text, JSON, DOT)
//! xenstore, /proc, /sys ─► observe ─► HostState┘                        └─► apply ─► drivers
//! ```
//!
//! Each step takes plain values and returns plain values. `observe` and
//! `state` read the host and the state DB; `plan` and `safety` are pure;
//! only `apply` changes anything.
//!
//! - [`desired`]: the desired-state file: model, parsing, validation with
//!   every problem located at `file:line:column`.
//! - [`state`]: the SQLite state DB (pools, extents, vdisks, the apply
//!   journal) and its allocator; `import --legacy` of the ancestor's DB.
//! - [`observe`]: xenstore (domains, attachments) and dom0's own use of
//!   disks (mounts, swap, holders), and snapshots of both.
//! - [`plan`]: desired against actual: operations, their order, the
//!   allocations new vdisks will get; [`generate`] goes the other way.
//! - [`safety`]: the sharing check at every step of a plan.
//! - [`apply`]: carrying a plan out: lock, journal, toolstacks, block
//!   devices, scrubbing.
//! - [`render`]: what people and programs read.
//! - [`sim`]: a xenstored simulator, for tests and for trying xendisk.
//! - [`vdev`], [`extent`], [`diagnostic`], [`xs_wire`], [`xs_client`]:
//!   the shared vocabulary (device names, sector ranges, located errors,
//!   the xenstore wire format and a client for what xenstore-rs lacks).
//! - [`ops`]: the commands as functions, called by the thin `main.rs`.

pub mod apply;
pub mod desired;
pub mod diagnostic;
pub mod extent;
pub mod generate;
pub mod loop_ioctl;
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
