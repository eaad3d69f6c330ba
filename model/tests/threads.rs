//! `train.threads` bounds the threads training uses. Alone in its test binary: other tests
//! running at the same time would add their own threads to the count.
//!
//! A sampler thread counts the process's threads (`/proc/self/task`) while a whole
//! `pipeline::train_and_store` runs; the peak above the count before training is the number
//! of extra threads training started.

#![cfg(target_os = "linux")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use sentimentd_model::kinds::fast::train::Quiet;
use sentimentd_model::pipeline::{self, TrainJob};

fn task_count() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The most extra threads alive at once while `f` runs.
fn peak_extra_threads(f: impl FnOnce()) -> usize {
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(task_count(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_micros(100));
            }
        })
    };
    // Let the sampler start, so it is part of the baseline.
    std::thread::sleep(Duration::from_millis(20));
    let baseline = task_count();
    peak.store(baseline, Ordering::Relaxed);
    f();
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    peak.load(Ordering::Relaxed) - baseline
}

#[test]
fn train_threads_bounds_the_threads_training_uses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut cfg = common::small_config(d, 4000, 200);
    cfg.model.embedding_dim = 8;
    cfg.model.vocab_size = 1000;
    cfg.model.buckets = 2048;
    cfg.train.epochs = 1;

    // The config key: with 1, everything runs on the calling thread.
    cfg.train.threads = 1;
    let one = peak_extra_threads(|| {
        pipeline::train_and_store(&cfg, &TrainJob::default(), &mut Quiet).unwrap();
    });
    assert!(one <= 1, "train.threads = 1 but {one} extra threads ran");

    // The job's override, and proof that the sampler sees the threads it is meant to count.
    let four = peak_extra_threads(|| {
        let job = TrainJob {
            threads: Some(4),
            ..TrainJob::default()
        };
        pipeline::train_and_store(&cfg, &job, &mut Quiet).unwrap();
    });
    assert!(
        (2..=4).contains(&four),
        "threads = 4: {four} extra threads seen (expected 2 to 4)"
    );
    eprintln!("extra threads: {one} with threads = 1, {four} with threads = 4");
}
