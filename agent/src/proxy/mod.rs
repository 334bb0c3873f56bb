//! The service proxy: Services and EndpointSlices in, a programmed dataplane out.
pub mod metrics;
pub mod model;
pub mod runner;
