//! Planner performance at Kubernetes scale.
//!
//! Targets on a 2-core machine: 5,000 node CIDRs allocated in under 50 µs;
//! a 5,000-node plan in under 100 ms; 10,000 nodes within 2.2× of 5,000.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use kscratch_core::ipam::{self, PodCidrRequest};
use kscratch_core::scenario::generate::routed_yaml;

fn plan_generation(c: &mut Criterion) {
    let mut g = c.benchmark_group("plan");
    g.sample_size(20);
    for n in [1_000usize, 5_000, 10_000] {
        let loaded = kscratch_core::load("bench.yaml", &routed_yaml(n, "routed"), None)
            .expect("generated scenario is valid");
        g.bench_with_input(BenchmarkId::from_parameter(n), &loaded.scenario, |b, s| {
            b.iter(|| kscratch_core::plan::plan(black_box(s)))
        });
    }
    g.finish();
}

fn node_cidr_allocation(c: &mut Criterion) {
    let names: Vec<String> = (0..5_000).map(|i| format!("node-{i}")).collect();
    let reqs: Vec<PodCidrRequest<'_>> = names
        .iter()
        .map(|n| PodCidrRequest { name: n, pin: None })
        .collect();
    let cluster = "100.64.0.0/10".parse().unwrap();
    c.bench_function("ipam/allocate-5000", |b| {
        b.iter(|| {
            let a = ipam::allocate(cluster, 24, black_box(&reqs), None).expect("fits");
            black_box(a.pod_cidrs.len())
        })
    });
}

criterion_group!(benches, plan_generation, node_cidr_allocation);
criterion_main!(benches);
