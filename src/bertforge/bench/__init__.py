"""Throughput benchmarks: our pretraining step against `transformers`, the optimisations behind
it, tokenizer training, pre-tokenisation, data loading and t-SNE backends.

`python pipelines/benchmark.py` (config `conf/benchmark.yaml`, group `benchmark`) calls
`bertforge.bench.run.run_benchmark`; the schema is in `bertforge.bench.config` (light imports).
`python pipelines/parity.py` (the pipeline's config) calls `bertforge.bench.parity.run_parity`:
fine-tuning accuracy of our `finetune` stage against `transformers.Trainer`.
"""
