//! Second round of attacks on xendisk's safety guarantees (the first is
//! `attack_safety`). Real loop devices where a marker must be checked
//! (root and /dev/loop-control; skipped, and said so, elsewhere), a
//! simulated xenstored seeded with the backends each attack needs, and for
//! what this kernel cannot make (device-mapper, md) a captured /sys tree.
//!
//! A refused plan is checked three ways: `plan` and `apply` exit 3, the
//! state DB and xenstore are unchanged, and markers written into the victim
//! sectors beforehand are still there byte for byte. An attack that still
//! breaks a guarantee is `#[ignore]`d with a one-line reason, and asserts
//! the guarantee: run it with `cargo test --test attack_round2 -- --ignored`.
//!
//! The harness is `tests/attack/mod.rs`, shared with `attack_safety`.

#[path = "../attack/mod.rs"]
mod attack;
#[path = "../common/mod.rs"]
mod common;

mod breaks;
mod captured;
mod holds;
