"""From Zero's infrastructure: what the notebooks use but do not teach. The lesson code itself is written
in the chapters and exported to the `course` package (course.ch02_autograd, …); utils never imports it.

Where the code lives:
  utils.cells       add_to_class                                   (a class written across notebook cells)
  utils.hardware    pick_device, amp_dtype, describe, preset       (CUDA → MPS → CPU, AMP dtype)
  utils.seeding     seed_everything, set_deterministic, seed_worker
  utils.loop        train, evaluate_loss, evaluating, TrainConfig, History   (the one training loop, on accelerate)
  utils.resume      checkpoint_steps, random state and data position, KeptAtSteps  (what exact resume needs)
  utils.distributed accelerator, shard                            (what accelerate is asked for; batches per process)
  utils.plots       plot_history, bar_chart, heatmap, draw_graph, LivePlot, course_style
  utils.models      bert_config, build_on_meta, load_pretrained, quiet_libraries  (model sizes and loading)
  utils.data        fetch, load_corpus, load_sentiment, load_behaviour_set   (offline data, chapter 04 on)
  utils.checkpoint  save_module, load_module, save_state, load_state (safetensors, atomic)
  utils.artifacts   get_or_build                                   (build-on-demand cache)
  utils.identity    made_from, digest                              (what a result is made from: recipe + inputs)
  utils.report      show_table, what_we_measured, compare_gradients  (tables, gradient checks)
  utils.random_programs  random_expression, random_tensor_program, *_gradient_gap  (chapter 02's test bench)
  utils.sweeps      write_record, read_record, sweep_arguments     (committed bench/ sweep records)

Importing this package has no side effects: nothing is seeded, no global setting is changed.
"""
from .artifacts import cache_root, get_or_build
from .cells import add_to_class
from .checkpoint import CheckpointError, load_module, load_state, save_module, save_state
from .identity import digest, made_from
from .hardware import amp_dtype, describe, needs_grad_scaler, pick_device, preset
from .loop import History, TrainConfig, evaluate_loss, evaluating, lr_multiplier, train
from .models import quiet_libraries
from .resume import KeptAtSteps
from .plots import LivePlot, bar_chart, course_style, draw_graph, heatmap, plot_history
from .report import compare_gradients, markdown_table, show_table, what_we_measured
from .seeding import seed_everything, seed_worker, set_deterministic

__all__ = [
    "CheckpointError", "History", "KeptAtSteps", "LivePlot", "TrainConfig", "add_to_class", "amp_dtype", "bar_chart", "cache_root", "compare_gradients",
    "course_style", "describe", "digest", "draw_graph", "evaluate_loss", "evaluating", "get_or_build", "heatmap", "load_module", "load_state",
    "lr_multiplier", "made_from", "markdown_table", "needs_grad_scaler", "pick_device", "plot_history", "preset", "quiet_libraries", "save_module",
    "save_state", "seed_everything", "seed_worker", "set_deterministic", "show_table", "train", "what_we_measured",
]
