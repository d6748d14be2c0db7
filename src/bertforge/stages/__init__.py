"""The stage graph, in build order. A stage is one module here (its settings, its builder,
its upstream) plus its config group; adding one is one more line below.

    tokenizer ──► pretrain_data ──► pretrain ──► finetune ──► extract ──► visualize
        └──────────────────────────────┴─────────────┘ (random init)
                                           └──► evolution (pretrain.snapshot_steps)
    probe ◄── pretrain, tokenizer (random init), finetune: the models in probe.models
"""

from bertforge.stages import (
    evolution,
    extract,
    finetune,
    pretrain,
    pretrain_data,
    probe,
    tokenizer,
    visualize,
)

GRAPH = {
    stage.name: stage
    for stage in (
        tokenizer.STAGE,
        pretrain_data.STAGE,
        pretrain.STAGE,
        finetune.STAGE,
        extract.STAGE,
        visualize.STAGE,
        evolution.STAGE,
        probe.STAGE,
    )
}
