"""Run the pipeline's stages in order through the artifact store (complete ones are reused).

python pipelines/run.py                          # every stage, embedded defaults
python pipelines/run.py stages=[tokenizer]       # a subset
python pipelines/run.py model=bert_mini pretrain.max_steps=2000
"""

import hydra
from omegaconf import DictConfig

from bertforge.pipeline.cli import run_pipeline
from bertforge.pipeline.overrides import check_overrides


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_pipeline(cfg)


if __name__ == "__main__":
    check_overrides()
    main()
