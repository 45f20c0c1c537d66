//! Throughput of mover's building blocks on this machine: blake3 hashing, chunk compression
//! (compressible and incompressible), and frame encode/decode of a data chunk.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use mover_engine::compress::{Compressor, Decompressor};
use mover_engine::wire::{CHUNK_SIZE, DataChunk, Message, decode_message, encode_message};

fn text_chunk() -> Vec<u8> {
    let mut text = Vec::with_capacity(CHUNK_SIZE);
    let mut i = 0u64;
    while text.len() < CHUNK_SIZE {
        text.extend_from_slice(
            format!(
                "{{\"ts\":{i},\"level\":\"info\",\"service\":\"api\",\"trace\":\"{:016x}\",\"latency_ms\":{}}}\n",
                i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                i % 977
            )
            .as_bytes(),
        );
        i += 1;
    }
    text.truncate(CHUNK_SIZE);
    text
}

fn hashing(c: &mut Criterion) {
    let data = mover_testdata::random_bytes(1, CHUNK_SIZE);
    let mut group = c.benchmark_group("blake3");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("1MiB", |b| b.iter(|| blake3::hash(&data)));
    group.finish();
}

/// How a changed file's basis is summarised (an rsync signature: rolling checksum + MD4 per
/// block, `blocks::sign`), beside blake3 per block (what protocol 2 used), over 4 KiB blocks.
fn block_signatures(c: &mut Criterion) {
    let data = mover_testdata::random_bytes(3, CHUNK_SIZE);
    let mut group = c.benchmark_group("block_summary_1MiB_4KiB");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("blake3_per_block", |b| {
        b.iter(|| data.chunks(4096).map(blake3::hash).count());
    });
    group.bench_function("rsync_signature", |b| {
        b.iter(|| {
            fast_rsync::Signature::calculate(
                &data,
                fast_rsync::SignatureOptions { block_size: 4096, crypto_hash_size: 8 },
            )
        });
    });
    group.finish();
}

/// The rsync delta of 1 MiB against a signature of the 5 MiB around it: content shifted by an
/// insert (almost all copies) and new content (all literal, the worst case).
fn delta(c: &mut Criterion) {
    let basis = mover_testdata::random_bytes(4, 5 * CHUNK_SIZE);
    let signature = fast_rsync::Signature::calculate(
        &basis,
        fast_rsync::SignatureOptions { block_size: 2048, crypto_hash_size: 8 },
    );
    let index = signature.index();
    let mut shifted = b"inserted".to_vec();
    shifted.extend_from_slice(&basis[2 * CHUNK_SIZE..3 * CHUNK_SIZE - 8]);
    let fresh = mover_testdata::random_bytes(5, CHUNK_SIZE);
    let mut group = c.benchmark_group("rsync_delta_1MiB");
    group.throughput(Throughput::Bytes(CHUNK_SIZE as u64));
    for (name, data) in [("shifted", &shifted), ("new", &fresh)] {
        let mut out = Vec::with_capacity(2 * CHUNK_SIZE);
        group.bench_function(BenchmarkId::new("diff", name), |b| {
            b.iter(|| {
                out.clear();
                fast_rsync::diff(&index, data, &mut out).unwrap();
            });
        });
    }
    let mut patch = Vec::new();
    fast_rsync::diff(&index, &shifted, &mut patch).unwrap();
    let mut out = Vec::with_capacity(CHUNK_SIZE);
    group.bench_function("apply/shifted", |b| {
        b.iter(|| {
            out.clear();
            fast_rsync::apply_limited(&basis, &patch, &mut out, CHUNK_SIZE).unwrap();
        });
    });
    group.finish();
}

fn compression(c: &mut Criterion) {
    let mut group = c.benchmark_group("chunk");
    for (name, data) in [("text", text_chunk()), ("random", mover_testdata::random_bytes(2, CHUNK_SIZE))] {
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.bench_with_input(BenchmarkId::new("pack_zstd1", name), &data, |b, data| {
            let mut compressor = Compressor::new(1).unwrap();
            b.iter(|| {
                compressor.reset();
                compressor.pack(data).unwrap()
            });
        });
        let packed = Compressor::new(1).unwrap().pack(&data).unwrap();
        group.bench_with_input(BenchmarkId::new("unpack", name), &packed, |b, packed| {
            let mut decompressor = Decompressor::new().unwrap();
            let mut out = Vec::with_capacity(CHUNK_SIZE);
            b.iter(|| decompressor.unpack(packed.compressed, &packed.bytes, CHUNK_SIZE, &mut out).unwrap());
        });
    }
    group.finish();
}

fn framing(c: &mut Criterion) {
    let message = Message::Data(DataChunk {
        id: 7,
        offset: 1 << 30,
        raw_len: CHUNK_SIZE as u32,
        compressed: false,
        bytes: vec![5; CHUNK_SIZE],
    });
    let frame = encode_message(&message);
    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Bytes(CHUNK_SIZE as u64));
    group.bench_function("encode_1MiB_chunk", |b| b.iter(|| encode_message(&message)));
    group.bench_function("decode_1MiB_chunk", |b| b.iter(|| decode_message(&frame[4..]).unwrap()));
    group.finish();
}

criterion_group!(benches, hashing, block_signatures, delta, compression, framing);
criterion_main!(benches);
