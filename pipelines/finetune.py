"""Run the `finetune` stage alone (missing upstream stages are built first).

python pipelines/finetune.py                                  # BBC News from our pretrained model
python pipelines/finetune.py task=rte task.data_dir=../shared/data/glue \
    finetune.init=hf finetune.hf_model=<checkpoint dir> finetune.lr=5e-5 finetune.seeds=[1,2,3]
"""

import hydra
from omegaconf import DictConfig

from bertforge.pipeline.cli import run_pipeline
from bertforge.pipeline.overrides import check_overrides


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return run_pipeline(cfg, only=["finetune"])


if __name__ == "__main__":
    check_overrides()
    main()
