//! The service proxy: Services and EndpointSlices in, a programmed dataplane out.
pub mod model;
