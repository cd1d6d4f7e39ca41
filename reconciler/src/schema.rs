//! JSON Schemas of xendisk's file formats, generated from the Rust types so
//! they cannot drift; the committed copies under `schemas/` are checked
//! against these by the tests.

use crate::desired::Desired;

/// The desired-state file's schema, pretty-printed with a final newline.
pub fn desired_state_schema() -> String {
    pretty(schemars::schema_for!(Desired))
}

/// The snapshot file's schema.
pub fn snapshot_schema() -> String {
    pretty(schemars::schema_for!(crate::observe::snapshot::Snapshot))
}

/// The saved plan's schema.
pub fn plan_schema() -> String {
    pretty(schemars::schema_for!(crate::render::plan::SavedPlan))
}

fn pretty(schema: schemars::Schema) -> String {
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema is always valid JSON");
    text.push('\n');
    text
}
