"""Every key of an experiment's config in one table: its place in the YAML, type, default and bounds, and for the
keys a catalog or a matrix column may set (the *settings*) their name, their abbreviation in experiment ids, and
whether they change only how a trained model is evaluated.

Everything else is derived from this table: the config validator (steermoe.declare.runconfig), the catalog and matrix
checks, the settings blocks of the rendered configs (steermoe.declare.render), the model options
(steermoe.declare.model_config.SteerMoEConfig), the compute plan and the CLI defaults. Adding a setting is one line
here, plus the code that uses it.

Torch-free and cheap to import: everything else builds on it, the Snakefile at parse time.
"""
from __future__ import annotations

from dataclasses import dataclass

from steermoe.declare.protocols import PROTOCOLS



@dataclass(frozen=True)
class Method:
    """What a trained method adds to the frozen encoder and LLM: the model builds it, the plan costs it."""
    steering: str | None = None  # where steering sits: EVERY_LAYER (after each encoder layer), OUTPUT, or nowhere
    lora: bool = False  # LoRA adapters inside the encoder's layers
    llm_lora: bool = False  # LoRA adapters inside the frozen LLM's attention (SLAM-LLM's, WavLLM's)

    def encoder_backward_layers(self, layers: int) -> int:
        """Encoder layers gradients flow back through (activation gradients only: the weights stay frozen):
        steering from layer 0's output on needs layers 1.., LoRA every layer, the others none."""
        return layers - 1 if self.steering == EVERY_LAYER else layers if self.lora else 0

    @property
    def uses_lora(self) -> bool:
        """Whether the config's `lora` section (rank, alpha, dropout, targets) applies."""
        return self.lora or self.llm_lora


EVERY_LAYER, OUTPUT = "every layer", "output"
TRAINED_METHODS = {  # a SteerMoE model (SteerMoEConfig.method)
    "layer_wise": Method(steering=EVERY_LAYER),
    "linear": Method(),  # the projection only
    "post_encoder": Method(steering=OUTPUT),
    "lora": Method(lora=True),
    "llm_lora": Method(llm_lora=True),  # the projection and LoRA in the LLM: the field's lever for a small LLM
}
# the frozen encoder's own model decoded with no training, e.g. Whisper's decoder (the original's "Whisper (frozen)" row)
REFERENCE = "reference"
METHODS = (*TRAINED_METHODS, REFERENCE)
OWN_DECODER = "own"  # a reference row's decoder: the encoder model's own
POOLING_TYPES = ("avg", "max")
# the projection into the LLM: one linear layer, or SLAM-LLM's two-layer MLP (linear, ReLU, linear)
PROJECTORS = ("linear", "mlp")
SAMPLE_RATE = 16000  # the encoders' rate: every corpus is prepared at it (the sample_rate key)
# the encoder's input: padded to Whisper's 30 s window (the original code), or the batch's real length
WHISPER_WINDOW, DYNAMIC_WINDOW = "30s", "dynamic"
ENCODER_WINDOWS = (WHISPER_WINDOW, DYNAMIC_WINDOW)
PROMPT_FORMATS = ("raw", "chat")
DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: the precision policy (steermoe/run/precision.py)
METRICS = ("wer", "cer", "qa_accuracy")
SCHEDULERS = ("linear", "cosine", "constant_with_warmup", "constant")
TRACKERS = ("tensorboard", "mlflow", "wandb")  # TensorBoard is always written; steermoe/run/tracking.py
ENCODER_SECTIONS = ("whisper_encoder", "conformer_encoder")  # a config has exactly one
REQUIRED = object()  # the default of a key a config must give


@dataclass(frozen=True)
class Key:
    """One config key. `setting` is its name in the catalog and the matrix (None: a config-only key)."""
    path: str  # dotted: section.key, or key at the top level
    type: type | tuple
    default: object = None
    choices: tuple | None = None
    minimum: float | None = None  # inclusive
    maximum: float | None = None  # inclusive
    positive: bool = False  # strictly > 0
    forbidden: tuple | None = None  # (a value inside the bounds that is still invalid, why)
    setting: str | None = None
    short: str | None = None  # its part of automatic variants (default: the setting name without '_')
    evaluation_only: bool = False  # changes only how a trained model is evaluated: never retrains
    model: str | None = None  # the SteerMoEConfig option it sets
    new: bool = False  # added by this project (not in the original code's reference)

    @property
    def section(self) -> str:
        return self.path.rpartition(".")[0]

    @property
    def name(self) -> str:
        return self.path.rpartition(".")[2]


def _setting(path: str, type_, default, **options) -> Key:
    """A key the catalog and the matrix may set; its setting name is the key's own unless given."""
    return Key(path, type_, default, setting=options.pop("setting", path.rpartition(".")[2]), **options)


S, K = _setting, Key
# Settings keep this relative order: automatic variants list their overrides in it (so ids stay the same).
TABLE: tuple[Key, ...] = (
    K("method", str, None, choices=METHODS, model="method", new=True),  # default: the file name's prefix
    K("run_name", str, None, new=True),  # the tracker's run name (the workflow: the experiment id); default file name
    *(K(f"{section}.{key}", type_, default, **bounds)
      for section in ENCODER_SECTIONS
      for key, type_, default, bounds in (("model_path", str, REQUIRED, {}),
                                          ("feature_dim", int, None, {"positive": True}),  # checked against the folder
                                          ("num_layers", int, None, {"positive": True}))),
    K("llm_decoder.model_name", str, REQUIRED),
    K("llm_decoder.use_cache", bool, False),  # KV cache in training forward passes (generation always uses it)
    K("training.output_dir", str, REQUIRED),
    K("training.logging_dir", str, None),  # TensorBoard; default output_dir/logs
    S("training.batch_size", int, 4, positive=True, short="bs"),
    S("training.epochs", float, 10, positive=True),
    S("training.max_steps", int, -1, minimum=-1, short="steps", new=True,  # > 0 overrides epochs
      forbidden=(0, "would train no step: give a step count > 0, or -1 to train by epochs")),
    S("training.learning_rate", float, 1e-4, minimum=0, short="lr"),  # projection / LoRA
    S("training.steering_learning_rate", float, 1e-2, minimum=0, short="slr"),  # steering vectors + layer scales
    S("training.router_learning_rate", float, 1e-3, minimum=0, short="rlr"),
    S("training.weight_decay", float, 0.01, minimum=0),
    S("training.warmup_steps", int, 0, minimum=0),
    S("training.lr_scheduler", str, "linear", choices=SCHEDULERS, new=True),
    S("training.gradient_clipping", float, 1.0, minimum=0),  # global max norm; 0 disables
    S("training.gradient_accumulation_steps", int, 1, positive=True, new=True),
    S("training.fp16", bool, False),
    S("training.bf16", (bool, str), "auto", choices=(True, False, "auto"), new=True),  # auto: the precision policy
    S("training.use_deepspeed", bool, False),
    S("training.deepspeed_config", str, None),  # the DeepSpeed JSON; default the shipped ZeRO-2 one
    S("training.report_to", str, "tensorboard", choices=TRACKERS),  # where the curves and metrics also go
    # at most 256: the original code's experiments use 4 to 16; 10,000 would train 31 M parameters on Whisper-large
    S("steering.num_experts", int, 8, positive=True, maximum=256, short="experts", model="num_experts"),
    S("steering.steering_scale", float, 0.1, short="scale", model="steering_scale"),
    S("steering.use_layer_scales", bool, True, short="layerscales", model="use_layer_scales"),
    K("steering.use_gradient_clipping", bool, None),  # the same switch as clip_steering_gradients
    S("steering.steering_gradient_clip", float, 1.0, positive=True),
    S("lora.r", int, 8, positive=True, setting="lora_r", model="lora_r", new=True),
    S("lora.alpha", int, 16, positive=True, setting="lora_alpha", model="lora_alpha", new=True),
    S("lora.dropout", float, 0.0, minimum=0, setting="lora_dropout", model="lora_dropout", new=True),
    # None: the encoder's attention + FFN (lora), the LLM's q_proj and v_proj (llm_lora, as SLAM-LLM)
    K("lora.target_modules", list, None, model="lora_target_modules", new=True),
    S("training.llm_lora_learning_rate", float, 1e-4, minimum=0, short="llmlr", new=True),  # LoRA inside the LLM
    S("llm_decoder.max_length", int, 512, positive=True),  # longest packed sequence; longer rows are dropped
    S("llm_decoder.dtype", str, "auto", choices=DTYPES, new=True),  # frozen LLM weights; trainable parts stay fp32
    K("evaluation.checkpoint", str, None, new=True),  # trained folder; default training.output_dir/final
    K("evaluation.output_dir", str, None, new=True),  # default training.output_dir/eval
    K("evaluation.metric", str, "wer", choices=METRICS, new=True),
    S("evaluation.batch_size", int, 16, positive=True, setting="eval_batch_size", new=True),  # also training's dev
    S("evaluation.num_beams", int, 1, positive=True, short="beams", evaluation_only=True, new=True),
    S("evaluation.max_new_tokens", int, 128, positive=True, evaluation_only=True, new=True),
    # 1.0: none. Explicit because generate() would otherwise take the decoder's own (Qwen2.5's: 1.05)
    S("evaluation.repetition_penalty", float, 1.0, positive=True, short="reppen", evaluation_only=True, new=True),
    S("evaluation.protocol", str, "honest", choices=PROTOCOLS, evaluation_only=True, new=True,
      forbidden=("seed", "is called 'original' now (the original code's evaluation): write protocol: original")),
    S("evaluation.sampling_seeds", int, 3, positive=True, evaluation_only=True, new=True),  # protocol original: 0..n-1
    S("evaluation.bootstrap_resamples", int, 1000, positive=True, evaluation_only=True, new=True),
    # which of the dataset's test sets (catalog `test_sets`) is decoded; the workflow sets it, default the first
    S("evaluation.test_set", str, None, short="on-", evaluation_only=True, new=True),
    S("seed", int, 0, minimum=0, new=True),
    S("encoder_window", str, DYNAMIC_WINDOW, choices=ENCODER_WINDOWS, short="window", model="encoder_window", new=True),
    S("prompt_format", str, "raw", choices=PROMPT_FORMATS, short="prompt", model="prompt_format", new=True),
    S("textual_prompt", str, "please transcribe the audio content into text: ", short="textprompt",
      model="textual_prompt"),
    S("max_audio_length", float, 30.0, positive=True),  # seconds
    S("max_text_length", int, 448, positive=True),  # target tokens
    S("filter_dataset", bool, True),
    S("max_prompt_tokens", int, 2048, positive=True, short="maxprompt", model="max_prompt_tokens"),
    S("use_adapter", bool, True, model="use_adapter"),
    S("projector", str, "linear", choices=PROJECTORS, short="proj", model="projector", new=True),
    # the MLP's hidden width (projector: mlp only)
    S("projector_hidden", int, 2048, positive=True, short="projhidden", model="projector_hidden", new=True),
    S("save_total_limit", int, None, positive=True),
    S("logging_steps", int, 100, positive=True),
    S("eval_steps", int, None, positive=True),  # None: no dev evaluation during training
    S("save_steps", int, 1000, positive=True),
    S("log_steering_analysis", bool, False),
    S("steering_log_interval", int, 100, positive=True),
    S("clip_steering_gradients", bool, None),
    S("use_early_stopping", bool, False),
    S("early_stopping_patience", int, 3, positive=True),
    S("pooling_kernel_size", int, 1, positive=True, short="pool", model="pooling_kernel_size"),  # 1: no pooling
    # encoder layers run before pooling; None: after the last
    S("pooling_position", int, None, minimum=0, short="poolpos", model="pooling_position"),
    S("pooling_type", str, "avg", choices=POOLING_TYPES, short="pooltype", model="pooling_type"),
    S("gradient_checkpointing", bool, False),
    S("dataloader_num_workers", int, None, minimum=0),  # None: default_loader_workers
    K("parquet_dirs", list, REQUIRED),  # train config: training data; test config: the test data
    K("eval_parquet_dirs", list, None, new=True),  # dev data; without it a sample of training rows is held out
    K("audio_column", str, "audio"),
    K("text_column", str, "text"),
    K("sample_rate", int, SAMPLE_RATE, choices=(SAMPLE_RATE,)),  # every corpus is prepared at the encoders' rate
)
del S, K

MAX_LOADER_WORKERS = 8


def default_loader_workers(threads: int, gpu: bool) -> int:
    """Loader processes when dataloader_num_workers is unset: none on the CPU, where the step itself needs every
    core; on a GPU the process's threads but one (at most MAX_LOADER_WORKERS), so that decoding and features overlap
    the accelerator's step."""
    return min(MAX_LOADER_WORKERS, max(1, threads - 1)) if gpu else 0


KEYS: dict[str, Key] = {key.path: key for key in TABLE}  # dotted path -> key
SETTINGS: dict[str, Key] = {key.setting: key for key in TABLE if key.setting}  # setting name -> key
EVALUATION_ONLY = frozenset(name for name, key in SETTINGS.items() if key.evaluation_only)
MODEL_OPTIONS: dict[str, Key] = {key.model: key for key in TABLE if key.model}  # SteerMoEConfig option -> key
PATH_SETTINGS = ("deepspeed_config",)  # settings whose value is a path

# the workflow config (experiments/config.yaml, --config): its keys and their defaults
WORKFLOW_CONFIG = {"matrix": "experiments/matrix.tsv", "catalog": "experiments/catalog.yaml", "results": "results",
                   "logs": "logs", "models": "models", "data": "data", "templates": "templates", "quick": False}


def default(path: str):
    """The default of a dotted config key."""
    return KEYS[path].default


def abbreviation(name: str) -> str:
    """A setting's part of automatic variants: experts4, window30s, ..."""
    return SETTINGS[name].short or name.replace("_", "")
