//! Naming a batch's outputs. The names are chosen once, when the journal entry is written,
//! so every rerun writes the same files; an earlier file of the same name keeps its outputs
//! (the new one becomes `name.1.csv`, `name.2.csv`, ...).

use sentimentd_config::IngestConfig;

use crate::journal::{Journal, JournalEntry};

/// A new journal entry for inbox file `input`, with names no other batch uses: not in the
/// outbox, archive, rejected or processing folders, and not reserved by another entry.
pub fn new_entry(g: &IngestConfig, journal: &Journal, input: &str) -> JournalEntry {
    let name = free_name(g, journal, input);
    let now = chrono::Utc::now();
    JournalEntry {
        input: input.to_string(),
        output: name.clone(),
        errors: format!("{name}.errors.csv"),
        labelled: Some(labelled_name(&name)),
        archived: name,
        started_at: now.to_rfc3339(),
        claimed: None,
        attempts: Vec::new(),
    }
}

/// `input`, or `input` with the first free suffix: a name no output, archived, rejected,
/// claimed or journalled file has.
pub fn free_name(g: &IngestConfig, journal: &Journal, input: &str) -> String {
    let (stem, ext) = match input.rsplit_once('.') {
        Some((s, e)) => (s.to_string(), format!(".{e}")),
        None => (input.to_string(), String::new()),
    };
    let mut n = 0usize;
    loop {
        let name = if n == 0 {
            input.to_string()
        } else {
            format!("{stem}.{n}{ext}")
        };
        let taken = g.outbox.join(&name).exists()
            || g.archive.join(&name).exists()
            || g.rejected.join(&name).exists()
            || g.rejected.join(format!("{name}.errors.csv")).exists()
            || g.rejected.join(format!("{name}.error.txt")).exists()
            || g.processing.join(&name).exists()
            || journal.has(&name);
        if !taken {
            return name;
        }
        n += 1;
    }
}

/// The batch's file in the labelled-data store: arrival time first, so name order is
/// arrival order.
pub fn labelled_name(output: &str) -> String {
    sentimentd_data::labelled::file_name(
        &chrono::Utc::now().format("%Y%m%dT%H%M%S%.6fZ").to_string(),
        "batch",
        output,
    )
}
