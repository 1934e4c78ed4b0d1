//! Simulator performance at Kubernetes scale: generated routed clusters with
//! 10,000 Services.
//!
//! Targets on a 2-core machine: all-pairs pod reachability for 5,000 nodes
//! under 100 ms; the whole 5,000-node `check` under 2 s.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use kscratch_core::scenario::generate::routed_yaml;
use kscratch_sim::checks::{self, CheckInput};
use kscratch_sim::classes::Classes;
use kscratch_sim::CheckOptions;

const SERVICES: usize = 10_000;

fn whole_check(c: &mut Criterion) {
    let mut g = c.benchmark_group("check");
    g.sample_size(10);
    for n in [1_000usize, 5_000] {
        let s = kscratch_core::load("bench.yaml", &routed_yaml(n, "routed"), None)
            .expect("valid")
            .scenario;
        g.bench_with_input(BenchmarkId::from_parameter(n), &s, |b, s| {
            b.iter(|| {
                let plan = kscratch_core::plan::plan(s);
                let r = kscratch_sim::check(
                    s,
                    &plan,
                    &CheckOptions {
                        extra_services: SERVICES,
                        ..Default::default()
                    },
                )
                .expect("simulates");
                assert!(r.passed);
                r
            })
        });
    }
    g.finish();
}

fn all_pairs_pod_reachability(c: &mut Criterion) {
    let mut g = c.benchmark_group("pod-to-pod");
    g.sample_size(10);
    for n in [1_000usize, 5_000] {
        let s = kscratch_core::load("bench.yaml", &routed_yaml(n, "routed"), None)
            .expect("valid")
            .scenario;
        let plan = kscratch_core::plan::plan(&s);
        let sim = kscratch_sim::simulate(
            &s,
            &plan,
            &CheckOptions {
                extra_services: SERVICES,
                ..Default::default()
            },
        )
        .expect("simulates");
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                // Classes are part of the all-pairs work: they are what makes it exact and fast.
                let classes = Classes::compute(&sim.world, &s);
                checks::pod_to_pod(&CheckInput {
                    world: &sim.world,
                    scenario: &s,
                    prepared: &sim.prepared,
                    classes: &classes,
                    restarting: &[],
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, whole_check, all_pairs_pod_reachability);
criterion_main!(benches);
