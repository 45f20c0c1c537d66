//! The preflight table: one row per check (check, result, remedy), as text or JSON lines.

use std::fmt::Write as _;

use serde::Serialize;

use crate::args::OutputFormat;

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Fine.
    Ok,
    /// Not fine: the plan would fail.
    Fail,
    /// Could not be checked because an earlier check failed, or does not apply yet.
    Skipped,
}

/// One row of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    #[serde(rename = "check")]
    pub name: String,
    /// How it ended.
    pub result: Status,
    /// What was found.
    pub detail: String,
    /// What to do about a failure.
    pub remedy: String,
}

/// All checks of a plan.
#[derive(Debug, Default)]
pub struct Checks(pub Vec<Check>);

impl Checks {
    pub(super) fn ok(&mut self, check: impl Into<String>, detail: impl Into<String>) {
        self.0.push(Check { name: check.into(), result: Status::Ok, detail: detail.into(), remedy: String::new() });
    }

    pub(super) fn fail(&mut self, check: impl Into<String>, detail: impl Into<String>, remedy: impl Into<String>) {
        self.0.push(Check { name: check.into(), result: Status::Fail, detail: detail.into(), remedy: remedy.into() });
    }

    pub(super) fn skip(&mut self, check: impl Into<String>, detail: impl Into<String>) {
        self.0.push(Check {
            name: check.into(),
            result: Status::Skipped,
            detail: detail.into(),
            remedy: String::new(),
        });
    }

    /// Failed checks.
    #[must_use]
    pub fn failures(&self) -> usize {
        self.0.iter().filter(|check| check.result == Status::Fail).count()
    }

    /// The table: CHECK, RESULT, REMEDY.
    #[must_use]
    pub fn table(&self) -> String {
        let results: Vec<String> = self
            .0
            .iter()
            .map(|check| {
                let word = match check.result {
                    Status::Ok => "ok",
                    Status::Fail => "FAIL",
                    Status::Skipped => "skipped",
                };
                if check.detail.is_empty() { word.to_owned() } else { format!("{word}: {}", check.detail) }
            })
            .collect();
        let check_width = self.0.iter().map(|c| c.name.len()).max().unwrap_or(0).max(5);
        let result_width = results.iter().map(String::len).max().unwrap_or(0).max(6);
        let mut out = format!("{:<check_width$}  {:<result_width$}  REMEDY\n", "CHECK", "RESULT");
        for (check, result) in self.0.iter().zip(&results) {
            let line = format!("{:<check_width$}  {result:<result_width$}  {}", check.name, check.remedy);
            out.push_str(line.trim_end());
            out.push('\n');
        }
        let _ = writeln!(out, "{} checks, {} failed", self.0.len(), self.failures());
        out
    }

    /// Prints the table on stdout, or one JSON line per check and a last `preflight` line
    /// whose `errors` name the failed checks.
    pub fn print(&self, output: OutputFormat) {
        if output == OutputFormat::Json {
            for check in &self.0 {
                let mut value = serde_json::to_value(check).expect("checks serialise");
                value["type"] = "check".into();
                crate::output::json_line(&value);
            }
            let errors: Vec<String> = self
                .0
                .iter()
                .filter(|check| check.result == Status::Fail)
                .map(|check| format!("{}: {}", check.name, check.detail))
                .collect();
            crate::output::json_final(&serde_json::json!({
                "type": "preflight", "checks": self.0.len(), "failed": self.failures(), "errors": errors,
            }));
        } else {
            crate::output::print(&self.table());
        }
    }
}
