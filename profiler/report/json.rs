//! The JSON document of a report (docs/report-schema.md, `ghostprof.report.v1`): the
//! serialization of [`ReportDoc`].

use serde_json::Value;

use super::model::ReportDoc;
use crate::analyze::files::FileReport;

/// The JSON document (docs/report-schema.md) as a `Value`.
pub fn render_json(reports: &[FileReport]) -> Value {
    serde_json::to_value(ReportDoc::from_reports(reports)).expect("a report document serializes: its keys are strings")
}

/// [`render_json`] written to `out` as `serde_json::to_writer_pretty` would write it, byte for
/// byte, without building the per-step and per-bin objects all at once: a report of a long run
/// has hundreds of thousands of steps, and [`ReportDoc`] makes each one as it is written.
pub fn write_json(reports: &[FileReport], out: impl std::io::Write) -> serde_json::Result<()> {
    serde_json::to_writer_pretty(out, &ReportDoc::from_reports(reports))
}
