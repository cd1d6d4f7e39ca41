//! Attacks on xendisk's safety guarantees, on real loop devices (root and
//! /dev/loop-control; skipped, and said so, elsewhere) with a simulated
//! xenstored seeded with the backends each attack needs.
//!
//! Every refused plan is checked three ways: `plan` and `apply` exit 3, the
//! state DB and xenstore are unchanged, and markers written into the victim
//! sectors beforehand are still there byte for byte. Each attack that
//! broke a guarantee when it was written says how it did, above its test.
//!
//! The harness is `tests/attack/mod.rs`, shared with `attack_round2`.

#[path = "../attack/mod.rs"]
mod attack;
#[path = "../common/mod.rs"]
mod common;

mod breaks;
mod holds;
