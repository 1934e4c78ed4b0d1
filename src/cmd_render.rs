//! `kscratch render SCENARIO --out DIR`: materialize every file of the plan.
//!
//! Prints the render report (names and paths, never key material).

use crate::load;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// Loads and plans the scenario, renders its tree into `out` and prints the report.
pub fn run(scenario: &Path, locked: bool, out: &Path) -> Result<ExitCode, load::Error> {
    let loaded = load::scenario(scenario, locked)?;
    crate::diag(&loaded.warnings.to_string());
    let plan = kscratch_core::plan::plan(&loaded.scenario);
    match kscratch_backends::render::render_tree(&loaded.scenario, &plan, out) {
        Ok(report) => {
            // A closed pipe (`| head`) ends the listing, not the program.
            let _ = write!(std::io::stdout().lock(), "{report}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(2))
        }
    }
}
