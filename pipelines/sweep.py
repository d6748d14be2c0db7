"""Create a W&B sweep from conf/sweeps/<name>.yaml, or run the same sweep here offline.

    python pipelines/sweep.py conf/sweeps/finetune_lr.yaml            # create it; then run
    wandb agent <entity/project/id>                                   #   agents from the repo root
    python pipelines/sweep.py conf/sweeps/finetune_lr.yaml --offline  # Hydra multirun(s) here
    python pipelines/sweep.py conf/sweeps/finetune_lr.yaml --dry-run  # print both, run nothing
    python pipelines/sweep.py SWEEP.yaml --offline -- trainer.num_threads=1 hydra/launcher=local

Overrides after `--` go to every run (offline: to `pipelines/run.py -m`; online: into the
sweep's command). Random sweeps run `run_cap` (or --count) points, sampled with --seed offline.
"""

import argparse
import shlex
import sys

import yaml

from bertforge.errors import BertforgeError
from bertforge.pipeline import sweeps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_file")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--offline", action="store_true", help="run it here as a Hydra multirun")
    mode.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    parser.add_argument("--count", type=int, help="random: number of runs (default: run_cap)")
    parser.add_argument("--seed", type=int, default=0, help="random: sampling seed offline")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    args.overrides = argv[cut + 1 :]  # Hydra overrides for every run
    try:
        sweep = sweeps.load_sweep(args.sweep_file)
        sweeps.check_extra_args(sweep, args.overrides)
        if not (args.offline or args.dry_run):
            print(f"created W&B sweep; run agents from the repo root: wandb agent "
                  f"{sweeps.create_wandb_sweep(sweep, args.overrides)}")  # fmt: skip
            return
        try:
            config = sweeps.wandb_sweep_config(sweep, args.overrides)
            print("W&B sweep (not created here):")
            print(yaml.safe_dump(config, sort_keys=False, allow_unicode=True).rstrip())
        except BertforgeError as exc:
            print(f"no W&B sweep possible: {exc}")
        if sweep.method == "bayes" and args.dry_run:
            print("offline: method bayes needs the W&B service; nothing would run here")
            return
        commands = sweeps.offline_commands(sweep, args.overrides, args.count, args.seed)
    except BertforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"offline: {len(commands)} Hydra multirun(s):")
    for command in commands:
        print("  " + shlex.join(command))
    if args.offline:
        sys.exit(sweeps.run_offline(commands))


if __name__ == "__main__":
    main()
