//! The watched folder: the watcher notices files, the processor claims each into
//! `processing/` (claim), records it in the journal, streams it through scoring in chunks
//! (stream) and writes outputs under names no other batch takes (names).

pub mod claim;
pub mod journal;
pub mod names;
pub mod processor;
pub mod stream;
pub mod watcher;

use actix::SyncArbiter;
use std::path::PathBuf;
use std::time::Duration;

use crate::messages::Reconfigure;
use crate::sources::{Source, SourceContext, SourceHandle};
use processor::BatchProcessor;
use watcher::FolderWatcher;

/// The watched folder as a [`Source`]: a watcher that notices settled files and one
/// processor thread that claims and streams them through the scorer.
#[derive(Default)]
pub struct FileSource {
    /// Claimed files a crash left unfinished, resumed before anything new.
    resume: Vec<PathBuf>,
}

impl Source for FileSource {
    fn name(&self) -> &'static str {
        "file"
    }

    fn prepare(&mut self, cfg: &sentimentd_config::Config) -> Result<(), String> {
        // Crash leftovers are cleared before any file can be taken.
        self.resume = BatchProcessor::recover(cfg)?;
        Ok(())
    }

    fn start(self: Box<Self>, cx: SourceContext) -> SourceHandle {
        let cfg = cx.config.borrow().clone();
        let processor = {
            let cx = cx.clone();
            let cfg = cfg.clone();
            SyncArbiter::start(1, move || {
                BatchProcessor::new(
                    cfg.clone(),
                    cx.scorer.clone(),
                    cx.metrics.clone(),
                    cx.shutdown.clone(),
                    cx.faults.clone(),
                    cx.reputation.clone(),
                )
            })
        };
        let watcher = {
            let inbox = cfg.ingest.inbox.clone();
            let settle = Duration::from_millis(cfg.ingest.settle_ms);
            let (metrics, resume) = (cx.metrics.clone(), self.resume);
            let processor = processor.clone().recipient();
            let ask_writers = !cx.faults.no_leases();
            actix::Supervisor::start(move |_| {
                FolderWatcher::new(
                    inbox,
                    settle,
                    processor,
                    metrics,
                    resume.clone(),
                    ask_writers,
                )
            })
        };
        // A reloaded config reaches both actors.
        let mut config = cx.config;
        let (w, p) = (watcher.clone(), processor);
        actix::Arbiter::current().spawn(async move {
            while config.changed().await.is_ok() {
                let c = config.borrow_and_update().clone();
                w.do_send(Reconfigure(c.clone()));
                p.do_send(Reconfigure(c));
            }
        });
        SourceHandle::new("file", watcher.recipient())
    }
}
