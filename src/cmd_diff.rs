//! `kscratch diff`: what a changed scenario does to the cluster, without SSH.
//!
//! `diff OLD NEW` compares two scenarios; `diff SCENARIO` compares the
//! scenario with the plan last applied from it (the record `apply` keeps
//! next to the key store, `<dir>/.kscratch/<cluster>/applied.json`). Exit
//! codes follow diff(1): 0 no change, 1 changes, 2 invalid input or a change
//! kscratch refuses to apply.

use crate::load;
use kscratch_core::diff::{diff, Snapshot};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct DiffArgs {
    /// The old scenario; alone, the scenario to compare with its last applied plan.
    pub first: PathBuf,
    /// The new scenario.
    pub second: Option<PathBuf>,
    /// Output: readable text, or a JSON document for CI.
    #[arg(long, value_enum, default_value_t = DiffFormat::Text)]
    pub format: DiffFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    Text,
    Json,
}

/// Where `apply` records the plan it applied for the scenario at `path`.
pub fn applied_path(path: &Path, cluster: &str) -> PathBuf {
    kscratch_backends::ssh_backend::state_dir(path, cluster).join("applied.json")
}

/// The snapshot of a scenario file, read-only (no lock is written), planned
/// over `old`: the nodes `old` has and the scenario does not get their
/// removal steps.
fn snapshot(path: &Path, old: Option<&Snapshot>) -> Result<Snapshot, load::Error> {
    let loaded = load::scenario_read_only(path, false)?;
    let departed = match old {
        Some(o) => departed_of(o, &loaded.scenario, path)?,
        None => Vec::new(),
    };
    let plan = kscratch_core::plan::plan_removing(&loaded.scenario, &departed);
    Ok(Snapshot::of(&loaded.scenario, &plan))
}

/// [`Snapshot::departed`], its error with the file it is about (exit 2).
fn departed_of(
    old: &Snapshot,
    s: &kscratch_core::Scenario,
    about: &Path,
) -> Result<Vec<kscratch_core::plan::Departed>, load::Error> {
    old.departed(s).map_err(|e| {
        load::Error::Usage(format!(
            "error: {}: removing the nodes it no longer has: {e}",
            about.display()
        ))
    })
}

/// The nodes the applied record of the scenario at `path` has and `s` does
/// not, with what the record says the cluster holds for them (none without
/// a record): the planner's removal input.
pub fn departed(
    path: &Path,
    s: &kscratch_core::Scenario,
) -> Result<Vec<kscratch_core::plan::Departed>, load::Error> {
    let record = applied_path(path, &s.name);
    match read_applied(&record)? {
        Some(old) => departed_of(&old, s, &record),
        None => Ok(Vec::new()),
    }
}

pub fn run(args: DiffArgs) -> Result<ExitCode, load::Error> {
    let (old, new) = match &args.second {
        Some(second) => {
            let old = snapshot(&args.first, None)?;
            let new = snapshot(second, Some(&old))?;
            (old, new)
        }
        None => {
            let loaded = load::scenario_read_only(&args.first, false)?;
            let record = applied_path(&args.first, &loaded.scenario.name);
            match read_applied(&record)? {
                Some(old) => {
                    let new = snapshot(&args.first, Some(&old))?;
                    (old, new)
                }
                None => {
                    return Err(load::Error::Usage(format!(
                        "error: no applied plan recorded at {}\n  hint: `kscratch apply` records it after a successful run; to compare two scenarios, pass both: kscratch diff OLD.yaml NEW.yaml",
                        record.display()
                    )))
                }
            }
        }
    };
    let d = diff(&old, &new);
    match args.format {
        DiffFormat::Text => crate::out(&d.to_string()),
        DiffFormat::Json => crate::out(&crate::output::json("diff", &d)),
    }
    Ok(ExitCode::from(if d.refused {
        2
    } else if d.changed {
        1
    } else {
        0
    }))
}

/// The applied record at `record`, `None` when there is none yet (a
/// cluster never applied); a damaged record is an error with its line and
/// column.
pub fn read_applied(record: &Path) -> Result<Option<Snapshot>, load::Error> {
    let text = match std::fs::read_to_string(record) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(load::Error::Usage(format!(
                "error: cannot read {}: {e}",
                record.display()
            )))
        }
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        load::Error::Usage(format!(
            "error: {}:{}:{}: the applied record is damaged: {e}\n  hint: it is rewritten by the next successful `kscratch apply`",
            record.display(),
            e.line(),
            e.column()
        ))
    })
}

/// Records `snapshot` as the applied plan: 0600, atomically (a kill never
/// leaves a torn record).
pub fn record_applied(path: &Path, snapshot: &Snapshot) -> Result<PathBuf, String> {
    let record = applied_path(path, &snapshot.cluster);
    let mut json = serde_json::to_string(snapshot).map_err(|e| e.to_string())?;
    json.push('\n');
    kscratch_backends::keyfile::write_secret_file(&record, json.as_bytes())
        .map_err(|e| e.to_string())?;
    Ok(record)
}
