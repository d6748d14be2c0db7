"""Tabulate a finished sweep: per setting n, mean, std and 95% CI; paired differences.

    python pipelines/report.py outputs/multirun/2026-11-29/12-00-00 [--metrics STAGE/METRIC ...]

Writes report.md, report.csv and report.png into the sweep directory (a multirun also does this
itself when it ends, and logs them to W&B). Default metrics: the sweep's `report_metrics`.
"""

import argparse
import sys
from pathlib import Path

from omegaconf import OmegaConf

from bertforge.errors import BertforgeError
from bertforge.pipeline.report import render_markdown, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument(
        "--metrics", nargs="+", help="stage/metric names, e.g. finetune/val_accuracy"
    )
    args = parser.parse_args()
    metrics = args.metrics
    if not metrics:
        configs = sorted(args.sweep_dir.glob("*/.hydra/config.yaml"))
        metrics = list(OmegaConf.load(configs[0]).get("report_metrics", [])) if configs else []
    try:
        if not metrics:
            raise BertforgeError(
                f"no metrics given and no job config (*/.hydra/config.yaml) in {args.sweep_dir}; "
                "pass --metrics stage/metric"
            )
        report = write_report(args.sweep_dir, metrics)
    except BertforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(render_markdown(report))
    print(f"wrote {args.sweep_dir / 'report.md'}, report.csv, report.png")


if __name__ == "__main__":
    main()
