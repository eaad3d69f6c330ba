//! Naming a batch's outputs. The names are chosen once, when the journal entry is written,
//! so every rerun writes the same files; an earlier file of the same name keeps its outputs
//! (the new one becomes `name.1.csv`, `name.2.csv`, ...).

use sentimentd_config::IngestConfig;

use crate::sources::file::journal::{Journal, JournalEntry};

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
/// claimed or journalled file has, and whose own outputs and reports collide with none of
/// the names a pending batch will write (a later success of that batch would overwrite or
/// remove them).
pub fn free_name(g: &IngestConfig, journal: &Journal, input: &str) -> String {
    let reserved = reserved_names(journal);
    let (stem, ext) = match input.rsplit_once('.') {
        Some((s, e)) => (s.to_string(), format!(".{e}")),
        None => (input.to_string(), String::new()),
    };
    let mut n = 0usize;
    loop {
        let name = if n == 0 && input.len() <= MAX_NAME {
            input.to_string()
        } else {
            // Shortened so that every name derived from it fits the filesystem's limit.
            let suffix = if n == 0 {
                ext.clone()
            } else {
                format!(".{n}{ext}")
            };
            let room = MAX_NAME.saturating_sub(suffix.len());
            format!("{}{suffix}", &stem[..stem.floor_char_boundary(room)])
        };
        let writes = names_written(&name);
        let taken = g.outbox.join(&name).exists()
            || g.archive.join(&name).exists()
            || writes.iter().any(|w| g.rejected.join(w).exists())
            || g.processing.join(&name).exists()
            || journal.has(&name)
            || writes.iter().any(|w| reserved.contains(w));
        if !taken {
            return name;
        }
        n += 1;
    }
}

/// The longest batch name: `<name>.errors.csv`, the longest name derived from it, must fit in
/// the 255 bytes Linux filesystems allow a name; a longer one failed every attempt, for
/// good, before it could even be quarantined.
pub const MAX_NAME: usize = 255 - ".errors.csv".len();

/// Every name a batch called `name` may write in the outbox, archive or `rejected/`.
fn names_written(name: &str) -> [String; 3] {
    [
        name.to_string(),
        format!("{name}.errors.csv"),
        format!("{name}.error.txt"),
    ]
}

/// The names the journal's pending batches will write.
fn reserved_names(journal: &Journal) -> std::collections::HashSet<String> {
    let entries = match journal.entries() {
        Ok(entries) => entries,
        Err(e) => {
            // The per-name check on the journal still runs; only cross-name clashes are
            // unguarded, and the next file's check reads the journal again.
            tracing::warn!(error = %e, "cannot read the journal to reserve pending batches' names");
            Vec::new()
        }
    };
    let mut reserved = std::collections::HashSet::new();
    for (_, e) in entries {
        reserved.extend(names_written(&e.archived));
        reserved.insert(e.output);
        reserved.insert(e.errors);
    }
    reserved
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
