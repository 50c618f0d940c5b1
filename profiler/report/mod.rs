//! Reports: the terminal summary ([`render_text`]) and the JSON document ([`render_json`],
//! schema: docs/report-schema.md) of the analysis of one or more trace files
//! ([`crate::analyze::files`]) and the HTML page ([`html`]); the Chrome-trace export is
//! [`crate::export::chrome`]. Rendering only: the analysis is in [`crate::analyze`].

mod json;
mod text;

pub mod html;
pub mod model;

pub use json::{render_json, write_json};
pub use model::ReportDoc;
pub use text::render_text;

pub(crate) fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}
