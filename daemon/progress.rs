//! Training progress on a terminal: one bar over all steps, with epoch, loss and the
//! selection-split macro-recall (what early stopping watches) of the last epoch.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sentimentd_model::kinds::fast::train::{EpochReport, TrainObserver};

pub struct BarObserver {
    bar: ProgressBar,
    epochs: usize,
    last_recall: Option<f64>,
    loss_ewma: Option<f64>,
    /// The long step `on_progress` is reporting, and the last tenth printed for it.
    step: Option<(String, usize)>,
}

impl BarObserver {
    pub fn new() -> BarObserver {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} steps  {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        BarObserver {
            bar,
            epochs: 0,
            last_recall: None,
            loss_ewma: None,
            step: None,
        }
    }

    /// Above the bar on a terminal; plain lines when stderr is a file or a pipe, where
    /// indicatif draws nothing.
    fn say(&self, line: String) {
        if self.bar.is_hidden() {
            eprintln!("{line}");
        } else {
            self.bar.println(line);
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

impl TrainObserver for BarObserver {
    fn on_start(&mut self, epochs: usize, steps_per_epoch: usize) {
        self.epochs = epochs;
        self.bar.set_length((epochs * steps_per_epoch) as u64);
        self.bar.reset_elapsed();
    }

    fn on_step(&mut self, epoch: usize, _step: usize, loss: f64) {
        let l = match self.loss_ewma {
            Some(prev) => 0.95 * prev + 0.05 * loss,
            None => loss,
        };
        self.loss_ewma = Some(l);
        let recall = self
            .last_recall
            .map_or("-".to_string(), |r| format!("{r:.4}"));
        self.bar.set_message(format!(
            "epoch {epoch}/{}  loss {l:.4}  selection macro-recall {recall}",
            self.epochs
        ));
        self.bar.inc(1);
    }

    fn on_epoch(&mut self, r: &EpochReport) {
        self.last_recall = Some(r.selection_macro_recall);
        self.say(format!(
            "epoch {:>2}  loss {:.4}  selection macro-recall {:.4}  accuracy {:.4}  {:.1}s{}",
            r.epoch,
            r.train_loss,
            r.selection_macro_recall,
            r.selection_accuracy,
            r.seconds,
            if r.improved { "  *best" } else { "" }
        ));
    }

    fn on_message(&mut self, message: &str) {
        self.say(message.to_string());
    }

    fn on_progress(&mut self, what: &str, done: usize, total: usize) {
        if self.step.as_ref().is_none_or(|(w, _)| w != what) {
            self.step = Some((what.to_string(), 0));
            self.bar.set_length(total as u64);
            self.bar.set_position(0);
            self.bar.reset_elapsed();
            self.bar.reset_eta();
            self.bar.set_message(what.to_string());
        }
        self.bar.set_position(done as u64);
        self.bar
            .set_message(format!("{what} (eta {})", eta(&self.bar)));
        // Where nothing is drawn (a pipe, the journal), one line per tenth.
        if self.bar.is_hidden()
            && let Some((_, shown)) = self.step.as_mut()
        {
            let tenth = done * 10 / total.max(1);
            if tenth > *shown {
                *shown = tenth;
                eprintln!(
                    "{what}: {done}/{total} ({}0%), {:.0}s so far, eta {}",
                    tenth,
                    self.bar.elapsed().as_secs_f64(),
                    eta(&self.bar)
                );
            }
        }
    }
}

fn eta(bar: &ProgressBar) -> String {
    let secs = bar.eta().as_secs();
    if secs >= 60 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}
