//! Recording: sessions (record / attach) that assemble the collectors ([`crate::collect`]) and
//! the pipeline ([`crate::pipeline`]) that carries their records to the trace writer.

pub mod attach;
mod collectors;
mod launch_probes;
pub mod progress;
pub mod session;
pub mod watch;
