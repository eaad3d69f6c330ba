#!/usr/bin/env python3
"""The drift-to-promotion loop on a real domain shift, end to end through the release binary.

    scripts/adapt-figures.py [--kind fast|transformer] [--swap-labels] [--cooldown 120]
                             [--interval 20] [--batches 20] [--rows 500] [--budget 900]
                             [--workdir DIR] [--binary PATH] [--port 18090]

1. Trains the base model (default config, the bundled tweets) into a fresh store and starts
   `sentimentd serve` on it with the default config except [retrain] cooldown_secs (and the
   paths and port of the work directory).
2. Drops the SST-2 stream (scripts/sst2-stream.py: time-ordered labelled batches of movie-review
   phrases) into the inbox, one batch every --interval seconds, while one connection sends
   /predict requests and times them.
3. Waits until every batch is scored, or --budget seconds after the first batch.
4. Reports: when each candidate was decided and why (the run log), which version scored each
   batch (the outbox's model_version column), the macro-recall of the original model and of
   the newest promoted version on the batches scored after the first promotion and on SST-2
   dev, both models on the reporting split, and /predict p50/p99 while retrains ran and
   otherwise.

Macro-recall is printed over the classes a set has rows of (SST-2 has no neutral rows), with
the three-class mean (`sentimentd eval`'s figure, which counts the absent class as 0) beside it.

--retrain-once turns drift-driven retraining off, drops every batch, then asks for one
retrain through the admin API and reports how long it took and /predict latency meanwhile:
the cost of a retrain on all the stream's rows (25 batches of 500 = 10,000 training rows once
the 20% holdout is out).

--swap-labels sends the poisoned stream (negative and positive swapped): the gate must reject
every candidate, and the reporting-split figure of what serves must not fall.

Only the standard library; needs the release binary (cargo build --release) and, for
--kind transformer, the encoder from scripts/fetch-pretrained.sh.
"""

import argparse
import csv
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent


def binary_default() -> pathlib.Path:
    target = os.environ.get("CARGO_TARGET_DIR", str(pathlib.Path.home() / ".cache/sentimentd-target"))
    return pathlib.Path(target) / "release" / "sentimentd"


def pretrained_default() -> pathlib.Path:
    return pathlib.Path(
        os.environ.get("SENTIMENTD_PRETRAINED", str(pathlib.Path.home() / ".cache/sentimentd-pretrained"))
    )


def http(port, method, path, body=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def macro_recall(truth, predicted):
    """(over present classes, three-class mean)."""
    classes = ("negative", "neutral", "positive")
    support = {c: 0 for c in classes}
    hit = {c: 0 for c in classes}
    for t, p in zip(truth, predicted):
        support[t] += 1
        hit[t] += t == p
    present = [c for c in classes if support[c]]
    recalls = {c: (hit[c] / support[c] if support[c] else 0.0) for c in classes}
    return (sum(recalls[c] for c in present) / max(len(present), 1), sum(recalls.values()) / 3)


def eval_model(binary, config, version, data):
    out = subprocess.run(
        [str(binary), "--config", str(config), "eval", "--model", version, "--data", str(data), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    m = json.loads(out.stdout)
    cm = m["confusion_matrix"]
    present = [i for i in range(3) if sum(cm[i])]
    over_present = sum(cm[i][i] / sum(cm[i]) for i in present) / len(present)
    return over_present, m["macro_recall"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    ap.add_argument("--kind", choices=["fast", "transformer"], default="fast")
    ap.add_argument("--swap-labels", action="store_true")
    ap.add_argument("--cooldown", type=int, default=120, help="[retrain] cooldown_secs")
    ap.add_argument("--interval", type=float, default=20.0, help="seconds between batches")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--rows", type=int, default=500)
    ap.add_argument("--budget", type=float, default=900.0, help="seconds from the first batch")
    ap.add_argument("--workdir", type=pathlib.Path)
    ap.add_argument("--binary", type=pathlib.Path, default=binary_default())
    ap.add_argument("--port", type=int, default=18090)
    ap.add_argument("--retrain-once", action="store_true")
    a = ap.parse_args()
    if not a.binary.is_file():
        print(f"error: no binary at {a.binary}: cargo build --release --bin sentimentd", file=sys.stderr)
        return 2
    work = a.workdir or pathlib.Path(tempfile.mkdtemp(prefix="sentimentd-adapt-"))
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    state = work / "state"
    stream = work / "stream"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts/sst2-stream.py"), str(stream), "--batches", str(a.batches),
         "--rows", str(a.rows)] + (["--swap-labels"] if a.swap_labels else []),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    data = ROOT / "data/datasets"
    config = work / "sentimentd.toml"
    model = f'[model]\nkind = "{a.kind}"\n\n' if a.kind != "fast" else ""
    transformer = (
        f'[transformer]\npretrained_dir = "{pretrained_default()}"\n\n' if a.kind == "transformer" else ""
    )
    config.write_text(
        f'[paths]\nstate_dir = "{state}"\nmodel_store = "{state}/models"\n\n'
        f'[data]\ntrain = ["{data}/tweeteval/train.csv"]\nval = "{data}/tweeteval/val.csv"\n\n'
        f"{model}{transformer}"
        f'[server]\nport = {a.port}\n\n'
        f'[ingest]\ninbox = "{state}/inbox"\noutbox = "{state}/outbox"\narchive = "{state}/archive"\n'
        f'rejected = "{state}/rejected"\nprocessing = "{state}/processing"\njournal = "{state}/journal"\n'
        f'labelled_dir = "{state}/labelled"\n\n'
        f"[retrain]\ncooldown_secs = {a.cooldown}\n"
        + ("on_drift = false\n" if a.retrain_once else "")
        + (f'\n[admin]\ntoken_file = "{work}/admin.token"\n' if a.retrain_once else "")
    )
    if a.retrain_once:
        (work / "admin.token").write_text("adapt-figures-token\n")
        os.chmod(work / "admin.token", 0o600)
    print(f"work directory {work}; config {config}", flush=True)

    t0 = time.time()
    subprocess.run([str(a.binary), "--config", str(config), "train"], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    print(f"base model trained in {time.time() - t0:.0f} s", flush=True)

    log = open(work / "daemon.log", "w")
    daemon = subprocess.Popen([str(a.binary), "--config", str(config), "serve"], stdout=log, stderr=subprocess.STDOUT)
    try:
        return run(a, daemon, config, state, stream, data, work)
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()


def run(a, daemon, config, state, stream, data, work) -> int:
    deadline = time.time() + 120
    while True:
        try:
            status, body = http(a.port, "GET", "/model", timeout=5)
            if status == 200:
                break
        except OSError:
            pass
        if time.time() > deadline or daemon.poll() is not None:
            print("error: the daemon did not come up; see daemon.log", file=sys.stderr)
            return 1
        time.sleep(0.5)
    original = json.loads(body)["version"]
    print(f"serving {original}", flush=True)

    # One connection of /predict traffic, timed, for the whole run.
    texts = [r["text"] for r in csv.DictReader(open(data / "tweeteval/val.csv", encoding="utf-8"))]
    latencies = []  # (end time, seconds)
    stop = threading.Event()

    def load():
        i = 0
        while not stop.is_set():
            t = time.time()
            try:
                http(a.port, "POST", "/predict", {"text": texts[i % len(texts)]}, timeout=10)
                latencies.append((time.time(), time.time() - t))
            except OSError:
                pass
            i += 1
            time.sleep(0.02)

    loader = threading.Thread(target=load, daemon=True)
    loader.start()

    files = sorted(stream.glob("*.csv"))
    inbox = state / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    first = time.time()
    dropped = {}
    promoted_at = None
    next_drop = first
    retrain_windows = []  # [start, end] from sampling sentiment_retrain_running each second
    retraining = False
    asked = False
    while time.time() - first < a.budget:
        now = time.time()
        if files and now >= next_drop:
            f = files.pop(0)
            tmp = inbox / f".{f.name}.part"
            shutil.copy(f, tmp)
            tmp.rename(inbox / f.name)
            dropped[f.name] = now - first
            next_drop = now + a.interval
        running = retrain_running(a.port)
        if running and not retraining:
            retrain_windows.append([time.time(), None])
        if not running and retraining:
            retrain_windows[-1][1] = time.time()
        retraining = running
        status, body = http(a.port, "GET", "/model", timeout=10)
        if status == 200 and promoted_at is None and json.loads(body)["version"] != original:
            promoted_at = time.time() - first
            print(f"{promoted_at:6.0f} s  promoted {json.loads(body)['version']}", flush=True)
        done = len(list((state / "outbox").glob("*.csv"))) if (state / "outbox").is_dir() else 0
        if a.retrain_once and not files and done >= a.batches and not asked:
            req = urllib.request.Request(f"http://127.0.0.1:{a.port}/admin/retrain", data=b"", method="POST")
            req.add_header("Authorization", "Bearer adapt-figures-token")
            with urllib.request.urlopen(req, timeout=30) as r:
                print(f"{time.time() - first:6.0f} s  asked for a retrain: {r.status}", flush=True)
            asked = True
            time.sleep(2)
            continue
        if not files and done >= a.batches and (asked or not a.retrain_once):
            # Every batch scored: wait for a retrain still running to decide.
            if not retrain_running(a.port):
                break
        time.sleep(1)
    stop.set()
    loader.join(timeout=15)
    elapsed = time.time() - first
    if retrain_windows and retrain_windows[-1][1] is None:
        retrain_windows[-1][1] = time.time()

    runs = read_runs(state)
    print(f"\n== decisions ({elapsed:.0f} s from the first batch)")
    for r in runs:
        if r.get("name") != "retrain":
            continue
        p, m = r.get("params", {}), r.get("metrics", {})
        e = iso(r["ended_at"]) - first
        print(
            f"  decided at {e:4.0f} s after {m.get('retrain_seconds', float('nan')):.1f} s:"
            f"  {r['tags'].get('decision', r.get('status'))}  {r['tags'].get('model_version', '')}"
            f"  recent rows {p.get('recent_train_rows', '?')}+{p.get('recent_selection_rows', '?')}"
            f" x{p.get('recent_row_weight', '?')} = {100 * m.get('recent_weight_share', 0):.1f}% of the weight"
        )
        print(
            f"      holdout {m.get('candidate_holdout_macro_recall', float('nan')):.4f} vs "
            f"{m.get('serving_holdout_macro_recall', float('nan')):.4f} (label agreement "
            f"{m.get('holdout_label_agreement', float('nan')):.2f}); reporting "
            f"{m.get('candidate_val_macro_recall', float('nan')):.4f} vs {m.get('serving_val_macro_recall', float('nan')):.4f}"
        )
        print(f"      {r['tags'].get('reason', '')}")
    for r in runs:
        if r.get("kind") == "retrain_skipped":
            print(f"  skipped: {r['tags'].get('reason', '')}")

    # Which version scored which batch, and the served macro-recall per batch.
    print("\n== batches (served by)")
    by_version = {}
    # Rows of the batches scored after the first promotion, as served when they arrived (no
    # model had trained on them then).
    later_truth, later_pred, later_texts = [], [], []
    for name in sorted(dropped):
        outs = sorted((state / "outbox").glob(f"{pathlib.Path(name).stem}*"))
        if not outs:
            print(f"  {name}: not scored")
            continue
        rows = list(csv.DictReader(open(outs[0], encoding="utf-8")))
        versions = sorted({r["model_version"] for r in rows})
        # The input's label column is renamed input_label; label is the prediction.
        truth = [r["input_label"] for r in rows]
        pred = [r["label"] for r in rows]
        mr, mr3 = macro_recall(truth, pred)
        print(f"  {name} at {dropped[name]:5.0f} s: {','.join(versions)} macro-recall {mr:.4f} ({mr3:.4f})")
        if versions != [original]:
            later_truth += truth
            later_pred += pred
            later_texts += [r["text"] for r in rows]
        for v in versions:
            by_version.setdefault(v, 0)
            by_version[v] += len(rows)

    status, body = http(a.port, "GET", "/model")
    serving = json.loads(body)["version"] if status == 200 else None
    print(f"\n== serving at the end: {serving}")
    lat = sorted(l for _, l in latencies)
    during = sorted(l for t, l in latencies if any(s <= t <= e for s, e in retrain_windows))
    pct = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else float("nan")
    print(f"/predict (one connection): all {len(lat)} requests p50 {pct(lat, .5):.1f} ms p99 {pct(lat, .99):.1f} ms;"
          f" during retrains {len(during)} requests p50 {pct(during, .5):.1f} ms p99 {pct(during, .99):.1f} ms;"
          f" retrains ran {sum(e - s for s, e in retrain_windows):.0f} s in all")

    if serving and serving != original:
        later = work / "later.csv"
        with open(later, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["text", "label"])
            w.writerows(zip(later_texts, later_truth))
        if later_truth:
            print(f"\n== original {original} vs what served")
            o = eval_model(a.binary, config, original, later)
            s = macro_recall(later_truth, later_pred)
            print(f"  batches scored after the first promotion ({len(later_truth)} rows), as served on arrival: "
                  f"{o[0]:.4f} -> {s[0]:.4f} ({s[0] - o[0]:+.4f}); three-class mean {o[1]:.4f} -> {s[1]:.4f} ({s[1] - o[1]:+.4f})")
        print(f"== original {original} vs serving {serving} at the end")
        for what, path in (
            ("SST-2 dev (872 sentences, no stream row)", data / "sst2/dev.csv"),
            ("reporting split (tweeteval/val.csv)", data / "tweeteval/val.csv"),
        ):
            o = eval_model(a.binary, config, original, path)
            s = eval_model(a.binary, config, serving, path)
            print(f"  {what}: {o[0]:.4f} -> {s[0]:.4f} ({s[0] - o[0]:+.4f}); three-class mean {o[1]:.4f} -> {s[1]:.4f} ({s[1] - o[1]:+.4f})")
    else:
        o = eval_model(a.binary, config, original, data / "tweeteval/val.csv")
        print(f"\n== no promotion; the original {original} serves: reporting split {o[1]:.4f}")
    (work / "summary.json").write_text(json.dumps({"dropped": dropped, "promoted_at": promoted_at,
                                                   "by_version": by_version}, indent=2))
    return 0


def retrain_running(port) -> bool:
    status, body = http(port, "GET", "/metrics")
    for line in body.decode(errors="replace").splitlines():
        if line.startswith("sentiment_retrain_running "):
            return float(line.split()[-1]) > 0
    return False


def read_runs(state):
    path = state / "runs" / "runs.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def iso(s):
    import datetime
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


if __name__ == "__main__":
    sys.exit(main())
