//! Share and revoke requests shaped like the share API: the wire format,
//! request ids and status, and the share history.

pub mod wire;
