//! End-to-end `mover copy ./a ./b` through the real loopback mutual-TLS path, in process, on a
//! generated tree (small files, a few medium ones, symlinks and hard links). Each iteration
//! copies into a fresh empty target.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use mover_engine::CopyOptions;
use mover_engine::client;
use mover_engine::progress::NoProgress;

fn copy(c: &mut Criterion) {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let mut spec = mover_testdata::TreeSpec::with_entries(3_000);
    spec.exotic = false;
    let stats = mover_testdata::generate(&src, &spec).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut group = c.benchmark_group("copy_loopback");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(stats.bytes));
    let mut round = 0;
    group.bench_function(format!("{}_entries_{}_bytes", stats.entries, stats.bytes), |b| {
        b.iter(|| {
            round += 1;
            let dst = tmp.path().join(format!("dst{round}"));
            std::fs::create_dir(&dst).unwrap();
            let summary =
                runtime.block_on(client::copy_local(&src, &dst, CopyOptions::default(), Arc::new(NoProgress))).unwrap();
            assert!(summary.is_success());
            std::fs::remove_dir_all(&dst).unwrap();
        });
    });
    group.finish();
}

criterion_group!(benches, copy);
criterion_main!(benches);
