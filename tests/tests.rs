//! Integration tests: one binary, one module per area.

/// Golden-file `check` helper and scenario loading.
mod support;

/// `kscratch diff`: scenario pairs, the applied record, exit codes.
mod diff;
/// Faults: grammar, damage plans, applicability, the damage's node state.
mod faults;
/// CI outputs: JSON schemas, SARIF, JUnit, the HTML report in a browser, no side effects.
mod formats;
/// Node lifecycle: the control-plane endpoint that survives a node.
mod lifecycle;
/// The planner on the bundled scenarios: goldens, determinism, structure.
mod plan;
/// Random and mutated scenarios never panic.
mod proptests;
/// What each release's real binaries accept (core/data tables) and the version matrix.
mod release;
/// Removing a node: removal steps, the simulator's proof, the quorum refusal.
mod removal;
/// Rendered assets: PKI, kubeconfigs, manifests, units, checked with real tools.
mod render;
/// `kscratch reset`: teardown plans, refusals, and resets on the simulator.
mod reset;
/// The simulator: conformance, faults, traces, determinism.
mod sim;
/// The real-kernel testbed (KSCRATCH_TESTBED=1, root).
mod testbed;
/// Broken scenarios fail with every problem, precisely.
mod validate;
