//! Maps byte offsets in a TOML document to lines, columns and dotted keys, using the spans of
//! toml's own parse tree so inline tables, dotted keys and arrays are handled like the parser does.

use std::ops::Range;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// 1-based (line, column) of a byte offset; the column counts characters.
pub fn line_column(text: &str, offset: usize) -> (u32, u32) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (saturate(line), saturate(column))
}

/// Dotted key (`data.train[1]`) of the innermost key or value whose span holds `offset`.
pub fn key_at(root: &DeTable<'_>, offset: usize) -> Option<String> {
    let mut path = Vec::new();
    table_path(root, offset, &mut path).then(|| join(&path))
}

/// Span of the value of a dotted key such as `train.learning_rate`, if the document sets it.
pub fn value_span(root: &DeTable<'_>, dotted: &str) -> Option<Range<usize>> {
    let mut table = root;
    let mut parts = dotted.split('.').peekable();
    while let Some(part) = parts.next() {
        let value = table.get(part)?;
        if parts.peek().is_none() {
            return Some(value.span());
        }
        match value.get_ref() {
            DeValue::Table(t) => table = t,
            _ => return Some(value.span()),
        }
    }
    None
}

fn table_path(table: &DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table.iter() {
        path.push(key.get_ref().to_string());
        if value_path(value, offset, path) || key.span().contains(&offset) {
            return true;
        }
        path.pop();
    }
    false
}

fn value_path(value: &Spanned<DeValue<'_>>, offset: usize, path: &mut Vec<String>) -> bool {
    match value.get_ref() {
        // Table spans are not trusted: an implicit table made by a dotted key or a `[header]`
        // has no contiguous span, so only its children decide.
        DeValue::Table(t) => table_path(t, offset, path),
        DeValue::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(format!("[{i}]"));
                if value_path(item, offset, path) {
                    return true;
                }
                path.pop();
            }
            value.span().contains(&offset)
        }
        _ => value.span().contains(&offset),
    }
}

/// Joins path segments with dots, except array indices which attach to their key.
pub fn join(path: &[String]) -> String {
    let mut out = String::new();
    for part in path {
        if !out.is_empty() && !part.starts_with('[') {
            out.push('.');
        }
        out.push_str(part);
    }
    out
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}
