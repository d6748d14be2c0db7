"""Run the `probe` stage alone (missing upstream stages are built first).

python pipelines/probe.py [overrides...]
"""

import hydra
from omegaconf import DictConfig

from bertforge.pipeline.cli import run_pipeline
from bertforge.pipeline.overrides import check_overrides


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_pipeline(cfg, only=["probe"])


if __name__ == "__main__":
    check_overrides()
    main()
