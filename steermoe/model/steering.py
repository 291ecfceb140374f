"""The trainable part that acts inside the encoder: steering experts mixed by a router, and length-aware pooling."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from steermoe.model.encoders import length_mask


class Steering(nn.Module):
    """SteerMoE steering for `num_layers` sites (L encoder layers for layer_wise, 1 for post_encoder).

    steering_vectors (L, N, D) ~ N(0, 0.01^2); one shared router Linear(D -> N*L) with bias; layer_scales (L,).
    At site l, for the layer output h (B, T, D):
        g = softmax(router(h)[..., l*N:(l+1)*N])      # (B, T, N), dense gates
        h + scale_l * g @ steering_vectors[l]           # (B, T, D)
    """

    def __init__(self, num_layers: int, hidden_size: int, num_experts: int, steering_scale: float,
                 use_layer_scales: bool = True):
        super().__init__()
        self.num_experts = num_experts
        self.steering_vectors = nn.Parameter(torch.randn(num_layers, num_experts, hidden_size) * 0.01)
        self.router = nn.Linear(hidden_size, num_experts * num_layers)
        scales = torch.full((num_layers,), float(steering_scale))
        if use_layer_scales:
            self.layer_scales = nn.Parameter(scales)
        else:
            self.register_buffer("layer_scales", scales)  # frozen at steering_scale

    def forward(self, site: int, h: torch.Tensor):
        n = self.num_experts
        # only this site's slice of the shared router is computed: same math as router(h)[..., site*N:(site+1)*N]
        logits = F.linear(h, self.router.weight[site * n:(site + 1) * n], self.router.bias[site * n:(site + 1) * n])
        gates = logits.float().softmax(-1).to(h.dtype)  # (B, T, N)
        return h + self.layer_scales[site] * (gates @ self.steering_vectors[site]), gates


def pool(x: torch.Tensor, lengths: torch.Tensor, kernel: int, kind: str):
    """Pool (B, T, D) over time by `kernel`, counting only valid frames. Returns (B, ceil(T/k), D), ceil(lengths/k).

    A window that straddles the end of an utterance pools only its valid frames, so an utterance gives the same
    result alone and in a padded batch.
    """
    if kernel == 1:
        return x, lengths
    b, t, d = x.shape
    windows = -(-t // kernel)
    valid = length_mask(lengths, t)
    x = F.pad(x, (0, 0, 0, windows * kernel - t)).view(b, windows, kernel, d)
    valid = F.pad(valid, (0, windows * kernel - t)).view(b, windows, kernel, 1)
    count = valid.sum(2)  # (B, T', 1)
    if kind == "avg":
        pooled = (x * valid.to(x.dtype)).sum(2) / count.clamp(min=1).to(x.dtype)
    else:
        pooled = x.masked_fill(~valid, torch.finfo(x.dtype).min).amax(2).masked_fill(count == 0, 0.0)
    return pooled, -(-lengths // kernel)
