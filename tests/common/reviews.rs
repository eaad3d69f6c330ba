//! A generator of labelled product-review texts: a domain the bundled tweets do not cover,
//! whose sentiment lives in domain phrases ("battery died after two days") more than in
//! general sentiment words, so a model trained on tweets alone does poorly on it and a drift
//! check sees the shift. Deterministic for a seed.

pub const PRODUCTS: [&str; 10] = [
    "phone",
    "headphones",
    "kettle",
    "blender",
    "laptop",
    "charger",
    "speaker",
    "smartwatch",
    "vacuum",
    "camera",
];

pub const BRANDS: [&str; 8] = [
    "Zentrix",
    "Voltaro",
    "Nordqvist",
    "Kumbaya",
    "Prexley",
    "Oomba",
    "Tarvik",
    "Ulmero",
];

pub const POSITIVE: [&str; 14] = [
    "battery lasts the whole week",
    "charges in ten minutes flat",
    "still runs after three years",
    "arrived a day early",
    "setup took two minutes",
    "screen stays readable in full sun",
    "fits in my coat pocket",
    "survived a drop onto concrete",
    "firmware update fixed the lag",
    "support replaced it within a day",
    "runs silent at night",
    "pairs instantly with my car",
    "cleans the whole flat on one charge",
    "sound fills the room without distortion",
];

pub const NEGATIVE: [&str; 14] = [
    "battery died after two days",
    "stopped charging after a week",
    "screen cracked on day one",
    "arrived with a dented corner",
    "refund still pending after a month",
    "app crashes every time I open it",
    "had to return it twice",
    "buttons stick after a fortnight",
    "overheats within ten minutes",
    "lost connection every few minutes",
    "leaks from the bottom seam",
    "support never answered my ticket",
    "smells of burnt plastic when running",
    "firmware update bricked it",
];

pub const NEUTRAL: [&str; 14] = [
    "comes in blue and grey",
    "ships in a cardboard box",
    "has a manual in four languages",
    "weighs about two hundred grams",
    "has the model number on the back",
    "is sold from march",
    "uses a usb-c cable",
    "has a two year warranty",
    "was delivered on tuesday",
    "is made in the same plant as the old one",
    "has three speed settings",
    "replaces last year's version",
    "measures twenty centimetres across",
    "takes a standard wall plug",
];

const TEMPLATES: [&str; 6] = [
    "the {brand} {product} {phrase}",
    "my {brand} {product} {phrase}",
    "ordered the {product} from {brand}: it {phrase}",
    "{brand} {product} review - {phrase}",
    "bought a {product}, {brand} model, it {phrase}",
    "update on the {brand} {product}: {phrase}",
];

/// `n` (text, label) pairs; labels cycle so the three classes are balanced.
pub fn reviews(n: usize, seed: u64) -> Vec<(String, &'static str)> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = |m: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % m
    };
    (0..n)
        .map(|i| {
            let (phrases, label): (&[&str], &str) = match i % 3 {
                0 => (&POSITIVE, "positive"),
                1 => (&NEGATIVE, "negative"),
                _ => (&NEUTRAL, "neutral"),
            };
            let text = TEMPLATES[next(TEMPLATES.len())]
                .replace("{brand}", BRANDS[next(BRANDS.len())])
                .replace("{product}", PRODUCTS[next(PRODUCTS.len())])
                .replace("{phrase}", phrases[next(phrases.len())]);
            (text, label)
        })
        .collect()
}

/// A labelled CSV (`id,text,label`) of generated reviews, ids prefixed by `tag`.
pub fn reviews_csv(n: usize, seed: u64, tag: &str) -> String {
    let mut out = String::from("id,text,label\n");
    for (i, (text, label)) in reviews(n, seed).into_iter().enumerate() {
        out.push_str(&format!("{tag}-{i},\"{text}\",{label}\n"));
    }
    out
}
