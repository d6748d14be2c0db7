"""Reference parity for fine-tuning: our `finetune` stage vs `transformers.Trainer` on the same
HF checkpoint, data and settings. Takes the pipeline's overrides; writes
<paths.outputs>/parity/<task>.{json,md} and prints the table. Needs `accelerate` (dev extra).

python pipelines/parity.py task=rte task.data_dir=../shared/data/glue finetune.init=hf \
    finetune.hf_model=<checkpoint dir> finetune.lr=5e-5 finetune.max_epochs=3 \
    'finetune.seeds=[1,2,3]' trainer.num_threads=1 logger=csv
"""

import hydra
from omegaconf import DictConfig

from bertforge.config import to_config
from bertforge.pipeline.failures import one_line_failures
from bertforge.pipeline.overrides import check_overrides
from bertforge.pipeline.runs import hydra_run_name


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    with one_line_failures(cfg):
        config = to_config(cfg)
        config.run_name = config.run_name or hydra_run_name()
        from bertforge.bench.parity import run_parity  # heavy imports once the config is valid

        _, md = run_parity(config)
    print(md.read_text())
    print(f"written: {md.with_suffix('.json')}, {md}")


if __name__ == "__main__":
    check_overrides()
    main()
