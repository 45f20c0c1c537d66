//! What a run has done, step by step (MTC's itinerary): each step's start, end and outcome, for
//! the report, and kept by a [`RunLog`] where the next run finds it, so that a final run that
//! failed after the source was quiesced picks up where it stopped instead of starting over.
//!
//! Resuming: a step that succeeded in the unfinished final run before is not run again (its
//! hooks do not run twice, the source is not quiesced twice); the volume copies always run
//! again (they are incremental, and the last one must be the final, strict one).

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::model::{Phase, Plan};

/// One step of a run, in the order a final run takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Step {
    /// `PreBackup` hooks.
    PreBackup,
    /// The source's workloads scaled down (final runs of plans with `clusters:`).
    Quiesce,
    /// The volume copies and the image transfers.
    Transfers,
    /// `PostBackup` hooks.
    PostBackup,
    /// `PreRestore` hooks.
    PreRestore,
    /// `PostRestore` hooks.
    PostRestore,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 6] =
        [Step::PreBackup, Step::Quiesce, Step::Transfers, Step::PostBackup, Step::PreRestore, Step::PostRestore];

    /// The hook phase this step runs, if it is one.
    #[must_use]
    pub fn phase(self) -> Option<Phase> {
        match self {
            Step::PreBackup => Some(Phase::PreBackup),
            Step::PostBackup => Some(Phase::PostBackup),
            Step::PreRestore => Some(Phase::PreRestore),
            Step::PostRestore => Some(Phase::PostRestore),
            Step::Quiesce | Step::Transfers => None,
        }
    }
}

impl std::fmt::Display for Step {
    /// As the report's JSON spells it (the hook phases as MTC does).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepOutcome {
    /// Started, not ended (the run stopped during it).
    Running,
    /// Ended well.
    Succeeded,
    /// Ended with an error (the run stopped there).
    Failed,
    /// Succeeded in an earlier run of the same final run: not run again.
    DoneBefore,
}

/// One step's record. Times are RFC 3339, UTC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Which step.
    pub step: Step,
    /// When it started.
    pub started: String,
    /// When it ended, if it did.
    pub ended: Option<String>,
    /// How it ended.
    pub outcome: StepOutcome,
}

/// What a run has done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The plan's name.
    pub plan: String,
    /// A final run (kept for the next run), or a stage run (reported only).
    #[serde(rename = "final")]
    pub final_run: bool,
    /// When the run (the first of a resumed final run) started.
    pub started: String,
    /// The steps that ran or were taken as done, in order.
    pub steps: Vec<StepRecord>,
    /// Every step succeeded.
    pub finished: bool,
}

/// The current time, RFC 3339 in UTC.
fn now() -> String {
    jiff::Timestamp::now().to_string()
}

impl RunRecord {
    /// A run of plan `plan` that starts now.
    #[must_use]
    pub fn new(plan: &str, final_run: bool) -> RunRecord {
        RunRecord { plan: plan.to_owned(), final_run, started: now(), steps: Vec::new(), finished: false }
    }

    /// The record a final run of plan `plan` continues: `earlier` when it is an unfinished
    /// final run of the same plan, else a new one.
    #[must_use]
    pub fn resume_or_new(plan: &str, earlier: Option<RunRecord>) -> RunRecord {
        match earlier {
            Some(earlier) if earlier.final_run && !earlier.finished && earlier.plan == plan => {
                let steps = earlier
                    .steps
                    .into_iter()
                    .filter(|record| record.step != Step::Transfers && record.outcome.is_done())
                    .map(|record| StepRecord { outcome: StepOutcome::DoneBefore, ..record })
                    .collect();
                RunRecord { steps, ..earlier }
            }
            _ => RunRecord::new(plan, true),
        }
    }

    /// The steps taken as done (an earlier run of this final run did them).
    pub fn done_before(&self) -> impl Iterator<Item = Step> + '_ {
        self.steps.iter().filter(|record| record.outcome == StepOutcome::DoneBefore).map(|record| record.step)
    }

    /// Whether `step` is done already and is not to run again.
    #[must_use]
    pub fn is_done(&self, step: Step) -> bool {
        self.done_before().any(|done| done == step)
    }

    /// `step` starts now.
    pub fn begin(&mut self, step: Step) {
        self.steps.retain(|record| record.step != step);
        self.steps.push(StepRecord { step, started: now(), ended: None, outcome: StepOutcome::Running });
    }

    /// `step` ended now; its record.
    pub fn end(&mut self, step: Step, succeeded: bool) -> StepRecord {
        let record = self.steps.iter_mut().rfind(|record| record.step == step).expect("a step ends after it begins");
        record.ended = Some(now());
        record.outcome = if succeeded { StepOutcome::Succeeded } else { StepOutcome::Failed };
        record.clone()
    }
}

impl StepOutcome {
    fn is_done(self) -> bool {
        matches!(self, StepOutcome::Succeeded | StepOutcome::DoneBefore)
    }
}

impl std::fmt::Display for StepOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StepOutcome::Running => "running",
            StepOutcome::Succeeded => "succeeded",
            StepOutcome::Failed => "failed",
            StepOutcome::DoneBefore => "done-before",
        })
    }
}

/// Where a plan's final run is kept between runs (a plan with `clusters:` keeps it in the
/// source cluster; [`NoRunLog`] keeps nothing).
pub trait RunLog: Send + Sync {
    /// The record the last final run of `plan` left, if any.
    fn load<'a>(&'a self, plan: &'a Plan) -> BoxFuture<'a, anyhow::Result<Option<RunRecord>>>;
    /// Keeps `record`, replacing the one before.
    fn save<'a>(&'a self, plan: &'a Plan, record: &'a RunRecord) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// Keeps nothing: every final run starts from the beginning.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRunLog;

impl RunLog for NoRunLog {
    fn load<'a>(&'a self, _plan: &'a Plan) -> BoxFuture<'a, anyhow::Result<Option<RunRecord>>> {
        Box::pin(async { Ok(None) })
    }

    fn save<'a>(&'a self, _plan: &'a Plan, _record: &'a RunRecord) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed_after_quiesce(plan: &str) -> RunRecord {
        let mut record = RunRecord::new(plan, true);
        for step in [Step::PreBackup, Step::Quiesce] {
            record.begin(step);
            record.end(step, true);
        }
        record.begin(Step::Transfers);
        record.end(Step::Transfers, false);
        record
    }

    /// A final run that failed at its copies is resumed: its hooks and its quiesce are done, its
    /// copies run again; a finished run, a stage run or another plan's record start afresh.
    #[test]
    fn an_unfinished_final_run_resumes_after_its_last_done_step() {
        let plan = "shop";
        let earlier = failed_after_quiesce(plan);
        let resumed = RunRecord::resume_or_new(plan, Some(earlier.clone()));
        assert_eq!(resumed.done_before().collect::<Vec<_>>(), [Step::PreBackup, Step::Quiesce]);
        assert_eq!(resumed.started, earlier.started);
        assert!(!resumed.is_done(Step::Transfers));
        for other in [
            RunRecord { finished: true, ..earlier.clone() },
            RunRecord { final_run: false, ..earlier.clone() },
            RunRecord { plan: "other".into(), ..earlier.clone() },
        ] {
            assert!(RunRecord::resume_or_new(plan, Some(other)).steps.is_empty());
        }
        // A step that failed, or was running when the run stopped, runs again.
        let mut stopped = RunRecord::new(plan, true);
        stopped.begin(Step::PreBackup);
        assert_eq!(RunRecord::resume_or_new(plan, Some(stopped)).done_before().count(), 0);
    }

    /// A resumed run's record keeps what an earlier resume took as done.
    #[test]
    fn a_second_resume_keeps_the_steps_done_before() {
        let plan = "shop";
        let mut resumed = RunRecord::resume_or_new(plan, Some(failed_after_quiesce(plan)));
        resumed.begin(Step::Transfers);
        resumed.end(Step::Transfers, false);
        let again = RunRecord::resume_or_new(plan, Some(resumed));
        assert_eq!(again.done_before().collect::<Vec<_>>(), [Step::PreBackup, Step::Quiesce]);
    }

    /// The record round-trips through JSON with its outcomes spelled as the report shows them.
    #[test]
    fn the_record_is_json_with_readable_outcomes() {
        let record = failed_after_quiesce("shop");
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains(r#""outcome":"failed""#), "{json}");
        assert!(json.contains(r#""final":true"#), "{json}");
        assert_eq!(serde_json::from_str::<RunRecord>(&json).unwrap(), record);
        for step in Step::ALL {
            assert_eq!(serde_json::to_value(step).unwrap(), step.to_string());
        }
        assert_eq!(Step::PreBackup.to_string(), Phase::PreBackup.to_string());
        // The table's spelling is the JSON's.
        for outcome in [StepOutcome::Running, StepOutcome::Succeeded, StepOutcome::Failed, StepOutcome::DoneBefore] {
            assert_eq!(serde_json::to_value(outcome).unwrap(), outcome.to_string());
        }
    }
}
