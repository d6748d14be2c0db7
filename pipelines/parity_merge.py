"""Merge parity reports of runs that differ only in their seeds into one table.

Seeds of a parity comparison are independent: on a machine with N cores, run one seed per
process (`finetune.seeds=[1]`, `[2]`, ... each with its own paths.outputs, one thread each) and
merge their `<task>.json` reports:

    python pipelines/parity_merge.py out1/parity/rte.json out2/parity/rte.json --out rte_parity
"""

import argparse
import json
import sys
from pathlib import Path

from bertforge.bench.parity import markdown, merge
from bertforge.errors import BertforgeError
from bertforge.files import write_atomic, write_json_atomic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="<task>.json of parity runs")
    parser.add_argument("--out", type=Path, required=True, help="directory for the merged report")
    args = parser.parse_args()
    try:
        results = [json.loads(path.read_text(encoding="utf-8")) for path in args.reports]
        merged = merge(results)
    except (OSError, ValueError, KeyError, BertforgeError) as exc:
        print(f"error: {exc}; give the <task>.json files written by pipelines/parity.py",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / f"{merged['task']}.json", merged)
    md = markdown(json.loads(json.dumps(merged, default=str)))
    write_atomic(args.out / f"{merged['task']}.md", md)
    print(md)


if __name__ == "__main__":
    main()
