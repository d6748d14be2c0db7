"""Reference parity for fine-tuning: our `finetune` stage vs `transformers.Trainer` on the same
HF checkpoint, data and settings. Takes the pipeline's overrides; writes
<paths.outputs>/parity/<task>.{json,md} and prints the table. Needs `accelerate` (dev extra).

python pipelines/parity.py task=rte task.data_dir=../shared/data/glue finetune.init=hf \
    finetune.hf_model=<checkpoint dir> finetune.lr=5e-5 finetune.max_epochs=3 \
    'finetune.seeds=[1,2,3]' trainer.num_threads=1 logger=csv
"""

import hydra
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from bertforge.config import to_config
from bertforge.errors import BertforgeError
from bertforge.pipeline.failures import configured_outputs, exit_interrupted, write_error_message
from bertforge.pipeline.overrides import check_overrides, fail, omegaconf_message
from bertforge.pipeline.runs import hydra_run_name


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        config = to_config(cfg)
        config.run_name = config.run_name or hydra_run_name()
        from bertforge.bench.parity import run_parity  # heavy imports once the config is valid

        _, md = run_parity(config)
    except BertforgeError as exc:
        fail(str(exc))
    except OmegaConfBaseException as exc:
        fail(omegaconf_message(exc))
    except OSError as exc:  # a full disk or an unwritable directory: one line, as the pipeline
        message = write_error_message(exc, configured_outputs(cfg))
        if message is None:
            raise
        fail(message)
    except KeyboardInterrupt as exc:
        exit_interrupted(exc, configured_outputs(cfg))
    print(md.read_text())
    print(f"written: {md.with_suffix('.json')}, {md}")


if __name__ == "__main__":
    check_overrides()
    main()
