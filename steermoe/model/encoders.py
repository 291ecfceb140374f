"""Frozen audio encoders, exposed as a layer stack the engine runs itself so it can act between layers.

Every stack has the same interface:
    x, lengths = stack.embed(features, feature_lengths)   # (B, T, D), (B,) valid frames
    ctx = stack.context(x, lengths)                       # masks/positions for this length (rebuilt after pooling)
    x = stack.run_layer(i, x, ctx)                        # one encoder layer, padding masked
    x = stack.final_norm(x)                               # the encoder's closing LayerNorm (identity if none)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F
from steermoe.declare.settings import DYNAMIC_WINDOW, WHISPER_WINDOW
from steermoe.errors import ModelFolderError
from steermoe.model import fireredasr

WHISPER_TYPES = ("whisper",)
PARAKEET_TYPES = ("parakeet_encoder", "parakeet_ctc", "parakeet_tdt", "parakeet_rnnt")
FIREREDASR_TYPES = ("fireredasr_aed",)  # a release folder (model.pth.tar, cmvn.ark), not a Hugging Face one
ENCODER_TYPES = WHISPER_TYPES + PARAKEET_TYPES + FIREREDASR_TYPES


def weights_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a module computes in: its weights'. DeepSpeed casts weights, not buffers, and the Trainer casts the
    features to its own dtype, so the model brings the features to this one at the encoder's boundary."""
    return next(module.parameters()).dtype


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool, True on valid positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


class WhisperStack(nn.Module):
    """Whisper encoder: conv stem + sinusoidal-learned positions + pre-LN transformer layers + final LayerNorm."""

    kind = "whisper"
    lora_targets = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]

    def __init__(self, encoder: nn.Module, window: str):
        super().__init__()
        self.encoder = encoder  # transformers WhisperEncoder
        self.window = window
        self.hidden_size = encoder.config.d_model
        self.num_layers = encoder.config.encoder_layers
        self.num_mel_bins = encoder.config.num_mel_bins
        self.max_frames = encoder.config.max_source_positions  # 1500 encoder frames = 30 s
        self.frames_per_second = 50.0  # 100 mel frames/s, conv stride 2
        self.max_seconds = self.max_frames / self.frames_per_second  # the longest input it takes
        self.layers = encoder.layers

    def embed(self, features: torch.Tensor, feature_lengths: torch.Tensor):
        # features: (B, n_mels, F) log-mel, zero beyond each utterance's F_b frames
        if features.shape[-1] > 2 * self.max_frames:
            raise ValueError(f"Whisper takes at most 30 s of audio ({2 * self.max_frames} mel frames), "
                             f"got {features.shape[-1]}; lower max_audio_length")
        if self.window == WHISPER_WINDOW:
            # original behaviour: every input padded to 30 s, the whole window attended to
            features = F.pad(features, (0, 2 * self.max_frames - features.shape[-1]))
            feature_lengths = torch.full_like(feature_lengths, 2 * self.max_frames)
        enc = self.encoder
        x = F.gelu(enc.conv1(features))  # (B, D, F)
        # zero the stem output beyond each utterance so conv2 sees what it would see on the utterance alone
        x = x * length_mask(feature_lengths, x.shape[-1])[:, None, :].to(x.dtype)
        x = F.gelu(enc.conv2(x))  # (B, D, T), T = ceil(F / 2)
        x = x.transpose(1, 2)  # (B, T, D)
        lengths = (feature_lengths - 1) // 2 + 1
        return x + enc.embed_positions.weight[: x.shape[1]], lengths

    def context(self, x: torch.Tensor, lengths: torch.Tensor):
        if bool((lengths == x.shape[1]).all()):
            return None  # nothing padded: no mask (also the 30 s window's behaviour)
        # additive key mask (B, 1, 1, T): padded keys get -inf-like scores; padded queries stay finite
        mask = length_mask(lengths, x.shape[1])[:, None, None, :]
        return torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(~mask, torch.finfo(x.dtype).min)

    def run_layer(self, index: int, x: torch.Tensor, ctx) -> torch.Tensor:
        return self.layers[index](x, ctx)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.layer_norm(x)


class ParakeetStack(nn.Module):
    """FastConformer (Parakeet) encoder: 2-D conv subsampling + relative-position Conformer blocks (no final norm)."""

    kind = "parakeet"
    lora_targets = ["q_proj", "k_proj", "v_proj", "o_proj", "linear1", "linear2"]

    def __init__(self, encoder: nn.Module, window: str):
        super().__init__()
        if window != DYNAMIC_WINDOW:
            raise ValueError("encoder_window: '30s' is Whisper's fixed window; Conformer encoders take 'dynamic'")
        self.encoder = encoder  # transformers ParakeetEncoder
        self.window = window
        self.hidden_size = encoder.config.hidden_size
        self.num_layers = encoder.config.num_hidden_layers
        self.num_mel_bins = encoder.config.num_mel_bins
        self.frames_per_second = 100.0 / encoder.config.subsampling_factor  # 10 ms fbank hop
        self.max_seconds = None  # relative positions of any length
        self.layers = encoder.layers

    def embed(self, features: torch.Tensor, feature_lengths: torch.Tensor):
        # features: (B, F, n_mels) normalised log-mel
        enc = self.encoder
        self._match_batch_norm_statistics()
        frame_mask = length_mask(feature_lengths, features.shape[1]).long()
        x = enc.subsampling(features, frame_mask) * enc.input_scale  # (B, T, D)
        return x, enc._get_subsampling_output_length(feature_lengths).long()

    def _match_batch_norm_statistics(self) -> None:
        """The convolution modules' BatchNorm running statistics in their weights' dtype: DeepSpeed casts weights,
        not buffers, and a bf16/fp16 batch norm refuses fp32 statistics."""
        for module in self.encoder.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None \
                    and module.running_mean.dtype != module.weight.dtype:
                module.running_mean.data = module.running_mean.data.to(module.weight.dtype)
                module.running_var.data = module.running_var.data.to(module.weight.dtype)

    def context(self, x: torch.Tensor, lengths: torch.Tensor):
        valid = length_mask(lengths, x.shape[1])
        pair_mask = (valid[:, None, :] & valid[:, :, None])[:, None]  # (B, 1, T, T), as ParakeetEncoder builds it
        return pair_mask, self.encoder.encode_positions(x)

    def run_layer(self, index: int, x: torch.Tensor, ctx) -> torch.Tensor:
        pair_mask, positions = ctx
        return self.layers[index](x, attention_mask=pair_mask, position_embeddings=positions)

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return x  # every Conformer block ends in its own LayerNorm


def read_model_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise ModelFolderError(f"model folder {path} does not exist: run `steermoe models import` for the embedded "
                               f"models, or point the catalog at a local Hugging Face model folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelFolderError(f"{path} has no config.json: it is not a Hugging Face model folder (nor a FireRedASR-AED "
                               f"release folder, which has {fireredasr.CHECKPOINT})")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ModelFolderError(f"{config_file} is not valid JSON ({err})") from err


def encoder_from_config(config, window: str) -> nn.Module:
    """Build a randomly initialised stack from a transformers config or a FireRedConfig (used on the meta device and
    in tests)."""
    from transformers import ParakeetEncoder, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    if isinstance(config, fireredasr.FireRedConfig):
        return fireredasr.FireRedStack(fireredasr.ConformerEncoder(config), window)
    if isinstance(config, WhisperConfig):
        return WhisperStack(WhisperEncoder(config), window)
    if config.model_type in PARAKEET_TYPES[1:]:
        config = config.encoder_config
    if config.model_type == "parakeet_encoder":
        return ParakeetStack(ParakeetEncoder(config), window)
    raise ModelFolderError(f"a {config.model_type!r} model is not an audio encoder this project supports "
                           f"({', '.join(ENCODER_TYPES)})")


def check_encoder_folder(path: str | Path) -> None:
    """That a folder holds an audio encoder this project supports, from its config file alone (a FireRedASR-AED
    release: that its files are there)."""
    if fireredasr.is_release_folder(path):
        return fireredasr.check_folder(path)
    model_type = read_model_config(path).get("model_type")
    if model_type not in ENCODER_TYPES:
        raise ModelFolderError(f"{path} holds a {model_type!r} model, not an audio encoder "
                               f"(supported: {', '.join(ENCODER_TYPES)})")


def load_encoder(path: str | Path, window: str = DYNAMIC_WINDOW) -> nn.Module:
    """Load a frozen encoder stack (fp32) from a local Hugging Face folder or a FireRedASR-AED release folder; only
    the encoder's weights are read."""
    from safetensors import safe_open
    from transformers import AutoConfig

    if fireredasr.is_release_folder(path):
        return fireredasr.load_stack(path, window)
    check_encoder_folder(path)
    stack = encoder_from_config(AutoConfig.from_pretrained(path), window)
    # checkpoint prefixes: WhisperForConditionalGeneration "model.encoder.", WhisperModel "encoder.",
    # ParakeetForCTC "encoder.", a bare encoder ""
    prefixes = ("model.encoder.", "encoder.", "")
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise ModelFolderError(f"{path} has no *.safetensors weights")
    wanted = set(stack.encoder.state_dict())
    state = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                for prefix in prefixes:
                    if key.startswith(prefix) and key[len(prefix):] in wanted:
                        state[key[len(prefix):]] = handle.get_tensor(key).float()
                        break
    missing = sorted(k for k in wanted - set(state) if not k.endswith("num_batches_tracked"))
    if missing:
        raise ModelFolderError(f"{path}: encoder weights missing from the checkpoint, e.g. {missing[:3]}")
    stack.encoder.load_state_dict(state, strict=False)
    return stack.float().eval().requires_grad_(False)
