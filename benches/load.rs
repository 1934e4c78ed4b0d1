//! Loading scenarios, and rejecting hostile ones.
//!
//! Target: any hostile file is rejected in under 100 ms (issue 10): a 200 KB
//! file of nested brackets, 100,000 nested block sequences, a "billion
//! laughs" alias bomb, a 17 MB file. A 5,000-node scenario is loaded for scale.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use kscratch_core::scenario::generate::routed_yaml;

fn hostile() -> Vec<(&'static str, String)> {
    let mut laughs = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 0..10 {
        let p = if i == 0 {
            "a".to_string()
        } else {
            format!("l{}", i - 1)
        };
        laughs.push_str(&format!(
            "l{i}: &l{i} [{}]\n",
            vec![format!("*{p}"); 10].join(", ")
        ));
    }
    vec![
        ("nested-brackets-200k", "[".repeat(200_000)),
        ("nested-blocks-100k", format!("{}x\n", "- ".repeat(100_000))),
        ("billion-laughs", laughs),
        ("size-17m", format!("a: 1\n# {}\n", "x".repeat(17 << 20))),
    ]
}

fn load(c: &mut Criterion) {
    let mut g = c.benchmark_group("load");
    g.sample_size(20);
    for (name, text) in hostile() {
        g.bench_function(format!("hostile/{name}"), |b| {
            b.iter(|| {
                let r = kscratch_core::load("hostile.yaml", black_box(&text), None);
                assert!(r.is_err());
            })
        });
    }
    let scale = routed_yaml(5_000, "routed");
    g.bench_function("scenario-5000-nodes", |b| {
        b.iter(|| kscratch_core::load("scale.yaml", black_box(&scale), None).expect("valid"))
    });
    g.finish();
}

criterion_group!(benches, load);
criterion_main!(benches);
