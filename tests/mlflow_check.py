"""Reads back what sentimentd sent to an MLflow server, with MLflow's own Python client.

Used by tests/mlflow.rs: it prints one JSON object of facts on stdout and the Rust test does
the asserting, so a failure shows the whole picture in one place.

    mlflow_check.py TRACKING_URI EXPERIMENT LOCAL_RUN_ID [--model NAME] [--history KEY ...]
        [--download PATH ...]
"""

import argparse
import json
import os
import sys
import tempfile

import mlflow
from mlflow import MlflowClient


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("tracking_uri")
    ap.add_argument("experiment")
    ap.add_argument("local_run_id")
    ap.add_argument("--model", help="registered model whose 'champion' alias to resolve")
    ap.add_argument("--history", nargs="*", default=[], help="metric keys to fetch history of")
    ap.add_argument("--download", nargs="*", default=[], help="run artifact paths to read")
    args = ap.parse_args()

    client = MlflowClient(tracking_uri=args.tracking_uri, registry_uri=args.tracking_uri)
    exp = client.get_experiment_by_name(args.experiment)
    if exp is None:
        print(json.dumps({"error": f"no experiment {args.experiment!r}"}))
        return 0
    runs = client.search_runs(
        [exp.experiment_id],
        filter_string=f"tags.`sentimentd.run_id` = '{args.local_run_id}'",
    )
    out = {"experiment_id": exp.experiment_id, "runs_found": len(runs)}
    if not runs:
        print(json.dumps(out))
        return 0

    run_id = runs[0].info.run_id
    run = client.get_run(run_id)
    out.update(
        run_id=run_id,
        run_name=run.info.run_name,
        status=run.info.status,
        start_time=run.info.start_time,
        end_time=run.info.end_time,
        params=run.data.params,
        metrics=run.data.metrics,
        tags={k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
        history={
            key: [
                [m.step, m.value]
                for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
            ]
            for key in args.history
        },
        artifacts=sorted(a.path for a in client.list_artifacts(run_id)),
        model_artifacts=sorted(a.path for a in client.list_artifacts(run_id, "model")),
    )

    with tempfile.TemporaryDirectory() as tmp:
        downloads = {}
        for path in args.download:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=tmp, tracking_uri=args.tracking_uri
            )
            with open(local, encoding="utf-8") as f:
                downloads[path] = f.read()
        out["downloads"] = downloads

        if args.model:
            mv = client.get_model_version_by_alias(args.model, "champion")
            # Resolving the alias and fetching through the version's source is what a follower
            # daemon would do to load the champion.
            manifest = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{mv.source}/manifest.json",
                dst_path=os.path.join(tmp, "champion"),
                tracking_uri=args.tracking_uri,
            )
            with open(manifest, encoding="utf-8") as f:
                champion_manifest = f.read()
            out["champion"] = {
                "version": mv.version,
                "run_id": mv.run_id,
                "source": mv.source,
                "tags": mv.tags,
                "aliases": sorted(mv.aliases),
                "manifest": champion_manifest,
            }

    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
