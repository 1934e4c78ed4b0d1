//! The executor's own cost per step: the whole plan of the 8-node testbed
//! scenario run against a backend that answers every check at once
//! ("satisfied"), with `apply`'s default options (16 in flight, 1 per node).
//! What is left is scheduling, dependency bookkeeping and the futures
//! machinery; `kscratch apply`'s goal is at most 5 ms per step.

use async_trait::async_trait;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use kscratch_core::exec::{execute, Backend, ExecOptions, Probe, Quiet, StepCx, StepError};

struct Converged;

#[async_trait]
impl Backend for Converged {
    async fn check(&self, _cx: &StepCx<'_>) -> Result<Probe, StepError> {
        // A real backend awaits the node: yield once, as it would.
        tokio::task::yield_now().await;
        Ok(Probe::Satisfied)
    }
    async fn apply(&self, _cx: &StepCx<'_>) -> Result<(), StepError> {
        Ok(())
    }
}

fn scenario(nodes: usize) -> kscratch_core::Scenario {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scenarios/testbed/routed-4.yaml"
    );
    let mut text = std::fs::read_to_string(path).expect("bundled scenario");
    let extra: String = (5..=nodes)
        .map(|k| format!("  - name: node{k}\n    ip: 198.51.100.{k}\n"))
        .collect();
    let at = text.find("\nnetwork:").expect("network section") + 1;
    text.insert_str(at, &extra);
    kscratch_core::load("bench.yaml", &text, None)
        .expect("valid")
        .scenario
}

fn executor(c: &mut Criterion) {
    let s = scenario(8);
    let plan = kscratch_core::plan::plan(&s);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let opts = ExecOptions::default();
    let mut g = c.benchmark_group("exec");
    g.sample_size(30);
    g.bench_function(
        format!("converged-8-nodes-{}-steps", plan.steps.len()),
        |b| {
            b.iter(|| {
                let r = rt.block_on(execute(&plan, &s, &Converged, &opts, &mut Quiet));
                black_box(r.outcomes.len())
            })
        },
    );
    g.finish();
}

criterion_group!(benches, executor);
criterion_main!(benches);
