"""The runtime of every generated model.py, as ordinary Python: imported by its unit tests,
linted and type-checked, and inlined into model.py by `par.codegen.pytorch.inline`.

The compiler never imports these modules (they import torch): the emitter reads their text as
package resources. One module per concern, in the order model.py holds them:

* beside the layer: `ops` (attention over fused Q, K, V; head reorderings), `context` (context
  parallelism: the sequence's parts, ring and all-gather attention), `linears`
  (column- and row-parallel linears); beside Reference: `seeds` (random streams);
  after the SHARDING table: `sharding` (shard_state_dict);
* the harness: `groups` (ranks and process groups), `trace` (--trace), `collectives` (every
  torch.distributed call of the model), `regather` (--regather: gathered
  activations saved as their shard), `pairs` (autograd forward/backward pairs), `batches`,
  `pipeline` or `single_stage` (the schedule: one of the two, both define PipelineSchedule),
  `step` (the flat gradient buffer, its reduction, train_step), `optimizer` (AdamW on fp32
  master weights, fp16 loss scaling), `checkpoint` (--load and --save of Hugging Face
  checkpoints), `modes` (--check, --steps), `cli` (main).

Rules that make a module inlinable:

* Spec constants come from `spec` (values of a small deployment for the tests); model.py
  defines them itself, and every import of a runtime module is dropped when inlining. The
  model part that model.py writes per spec (layer, Stage, Reference, SHARDING) comes from
  `model`, a small hand-written instance of it.
* An `if` on constants or build-time facts (`spec.SEQUENCE_PARALLEL`, `SCHEDULE`, `BY_HEAD`)
  is decided when model.py is written; its test is on one line, with no `elif`. A leading
  `FACT and` of a test is decided the same way.
* A comment block that opens a module's body is its section header in model.py; comments
  right above a statement go with it. Only the statements model.py reaches are written.
"""
