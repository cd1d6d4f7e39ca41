pub mod desired;
pub mod diagnostic;
pub mod vdev;
pub mod ops;
pub mod schema;
