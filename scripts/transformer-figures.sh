#!/usr/bin/env bash
# Real-size figures of the transformer kind on the bundled data (issue: transformer kind):
# trains, through the release CLI, (1) the frozen-encoder head averaged with a fast model and
# (2) the same with the encoder's top layers fine-tuned, each with early stopping and weights
# chosen on the selection split, and prints what each scored on the validation split (which
# selects nothing) and what it cost in wall time. Embeddings are cached between the runs.
#
#   scripts/transformer-figures.sh [WORKDIR]     (default: target-bench-store/transformer)
#
# Environment: SENTIMENTD_PRETRAINED (default ~/.cache/sentimentd-pretrained),
# FINETUNE_LAYERS (4), FINETUNE_EPOCHS (3), CARGO_TARGET_DIR as for any build. With the
# defaults the fine-tuned run took 24 minutes and 0.70 GB on the 2-core VM (0.7395; 81 minutes
# and 3.4 GB before fine-tuning left burn autodiff).
set -euo pipefail
cd "$(dirname "$0")/.."
work="${1:-target-bench-store/transformer}"
pretrained="${SENTIMENTD_PRETRAINED:-$HOME/.cache/sentimentd-pretrained}"
./scripts/fetch-pretrained.sh "$pretrained" >/dev/null
cargo build --release --bin sentimentd
bin="${CARGO_TARGET_DIR:-target}/release/sentimentd"
mkdir -p "$work"
run() {
    local name="$1" finetune="$2"
    cat > "$work/$name.toml" <<TOML
[paths]
model_store = "$work/models"
state_dir = "$work/state"

[model]
kind = "transformer"

[transformer]
pretrained_dir = "$pretrained"
finetune_layers = $finetune
finetune_epochs = ${FINETUNE_EPOCHS:-3}
TOML
    echo "== $name (finetune_layers = $finetune)"
    /usr/bin/time -f "wall %e s, peak RSS %M KB" \
        "$bin" --config "$work/$name.toml" train --no-promote 2>"$work/$name.log" | tee "$work/$name.out"
    tail -1 "$work/$name.log"
}
run frozen 0
run finetuned "${FINETUNE_LAYERS:-4}"
