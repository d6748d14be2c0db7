"""Benchmark the pipeline: our pretraining step vs `transformers`, optimisations, tokenizer,
pre-tokenisation, data loading, t-SNE. Writes <paths.outputs>/benchmark/benchmark.{json,md}.

python pipelines/benchmark.py                     # CPU sizes (+ bert_base where CUDA is)
python pipelines/benchmark.py benchmark=smoke     # seconds: does every suite run?
python pipelines/benchmark.py benchmark.steps=20 'benchmark.experiments=[compile]'
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from bertforge.bench.config import BenchmarkRunConfig, to_benchmark_config
from bertforge.errors import BertforgeError
from bertforge.pipeline.overrides import check_overrides, fail

CONF = Path(__file__).resolve().parents[1] / "conf"


@hydra.main(version_base="1.3", config_path="../conf", config_name="benchmark")
def main(cfg: DictConfig) -> None:
    try:
        config = to_benchmark_config(cfg)
        from bertforge.bench.run import run_benchmark  # heavy imports only once the config is valid

        result_dir = Path(config.paths.outputs) / "benchmark"
        run_benchmark(config, CONF)
    except BertforgeError as exc:
        fail(str(exc))
    except OmegaConfBaseException as exc:
        fail(str(exc).splitlines()[0])
    print((result_dir / "benchmark.md").read_text())
    print(f"written: {result_dir / 'benchmark.json'}, {result_dir / 'benchmark.md'}")


if __name__ == "__main__":
    check_overrides(root=BenchmarkRunConfig, config_name="benchmark")
    main()
