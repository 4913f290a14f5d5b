"""From Zero's shared toolbox. Notebooks import what they need from here in one line.

Where the code lives:
  utils.cells       add_to_class                                   (a class written across notebook cells)
  utils.hardware    pick_device, amp_dtype, describe, preset       (CUDA → MPS → CPU, AMP dtype)
  utils.seeding     seed_everything, set_deterministic, seed_worker
  utils.loop        train, evaluate_loss, TrainConfig, History    (the one training loop)
  utils.plots       plot_history, bar_chart, heatmap, draw_graph, LivePlot, course_style
  utils.encoder     Encoder, EncoderLayer, encoder_from_bert         (chapter 03's BERT from scratch)
  utils.models      PRESETS, bert_config, build_on_meta             (model sizes used in the course)
  utils.params      parameter_formulas, count_by_component, apply_strategy   (where parameters live)
  utils.lora        LoRALinear, add_lora, merge_lora                 (low-rank adaptation from scratch)
  utils.data        fetch, load_corpus, load_sentiment, train_wordpiece   (offline data, chapter 04 on)
  utils.mlm         mask_tokens, pack_blocks, pretrain, pretrained_mini_bert (chapter 04's pretraining)
  utils.finetune    SentenceClassifier, fine_tune, run, scores, teacher (chapter 05's fine-tuning)
  utils.checkpoint  save_module, load_module, save_state, load_state (safetensors, atomic)
  utils.artifacts   get_or_build                                   (build-on-demand cache)
  utils.report      what_we_measured, compare_gradients, show_source (closing table, gradient checks)

Importing this package has no side effects: nothing is seeded, no global setting is changed.
"""
from .artifacts import cache_root, get_or_build
from .cells import add_to_class
from .checkpoint import CheckpointError, load_module, load_state, save_module, save_state
from .hardware import amp_dtype, describe, needs_grad_scaler, pick_device, preset
from .loop import History, TrainConfig, evaluate_loss, lr_multiplier, train
from .plots import LivePlot, bar_chart, course_style, draw_graph, heatmap, plot_history
from .report import compare_gradients, show_source, what_we_measured
from .seeding import seed_everything, seed_worker, set_deterministic

__all__ = [
    "CheckpointError", "History", "LivePlot", "TrainConfig", "add_to_class", "amp_dtype", "bar_chart", "cache_root", "compare_gradients",
    "course_style", "describe", "draw_graph", "evaluate_loss", "get_or_build", "heatmap", "load_module", "load_state",
    "lr_multiplier", "needs_grad_scaler", "pick_device", "plot_history", "preset", "save_module",
    "save_state", "seed_everything", "seed_worker", "set_deterministic", "show_source", "train", "what_we_measured",
]
