"""Zipformer2's front end: fbank [N, T, 80] at 100 Hz -> [N, (T-7)//2, encoder_dim[0]] at 50 Hz.

Three Conv2d layers (SwooshR after each) halve the time and quarter the
frequency axis, a ConvNeXt block refines the result, and a linear layer,
BiasNorm and Dropout3 give the embedding (icefall's subsampling.py; same
module and parameter names).
"""

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from scaling import BiasNorm, Dropout3, FloatLike, ScaledConv2d, ScheduledFloat, SwooshL, SwooshR
from scaling_grad import Balancer, ScaleGrad, Whiten


class ConvNeXt(nn.Module):
    """x + pointwise_conv2(SwooshL(pointwise_conv1(depthwise_conv(x)))) on [N, C, T, F].

    In training the residual branch is dropped per sequence with
    probability layerdrop_rate (0.2 falling to 0.015 over 20k batches).
    """

    def __init__(self, channels: int, hidden_channels: Optional[int] = None,
                 kernel_size: Tuple[int, int] = (7, 7), layerdrop_rate: Optional[FloatLike] = None):
        super().__init__()
        self.padding = ((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)
        if hidden_channels is None:
            hidden_channels = 3 * channels
        if layerdrop_rate is None:
            layerdrop_rate = ScheduledFloat((0.0, 0.2), (20000.0, 0.015))
        self.layerdrop_rate = layerdrop_rate
        self.depthwise_conv = nn.Conv2d(channels, channels, kernel_size, groups=channels,
                                        padding=self.padding)
        self.pointwise_conv1 = nn.Conv2d(channels, hidden_channels, kernel_size=1)
        self.hidden_balancer = Balancer(hidden_channels, channel_dim=1, min_positive=0.3,
                                        max_positive=1.0, min_abs=0.75, max_abs=5.0)
        self.activation = SwooshL()
        self.pointwise_conv2 = ScaledConv2d(hidden_channels, channels, kernel_size=1,
                                            initial_scale=0.01)
        self.out_balancer = Balancer(channels, channel_dim=1, min_positive=0.4,
                                     max_positive=0.6, min_abs=1.0, max_abs=6.0)
        self.out_whiten = Whiten(num_groups=1, whitening_limit=5.0, prob=(0.025, 0.25),
                                 grad_scale=0.01)

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, C, T, F] -> same shape."""
        mask = None
        if self.training:
            layerdrop_rate = float(self.layerdrop_rate)
            if layerdrop_rate != 0.0:
                mask = torch.rand((x.shape[0], 1, 1, 1), dtype=x.dtype,
                                  device=x.device) > layerdrop_rate
        bypass = x
        x = self.hidden_balancer(self.pointwise_conv1(self.depthwise_conv(x)))
        x = self.pointwise_conv2(self.activation(x))
        if mask is not None:
            x = x * mask
        x = self.out_balancer(bypass + x)
        if x.requires_grad:
            # Whiten wants channels last.
            x = self.out_whiten(x.transpose(1, 3)).transpose(1, 3)
        return x

    def streaming_forward(self, x: Tensor, cached_left_pad: Tensor) -> Tuple[Tensor, Tensor]:
        """One chunk: x [N, C, T, F] whose last padding[0] frames are only
        look-ahead; cached_left_pad [N, C, padding[0], F], the frames before
        the chunk. Returns ([N, C, T - padding[0], F], the new cache)."""
        pad_t, pad_f = self.padding
        T = x.size(2) - pad_t
        bypass = x[:, :, :T]
        assert cached_left_pad.size(2) == pad_t, (cached_left_pad.shape, pad_t)
        x = torch.cat([cached_left_pad, x], dim=2)
        cached_left_pad = x[:, :, T: T + pad_t]
        x = nn.functional.conv2d(x, self.depthwise_conv.weight, self.depthwise_conv.bias,
                                 padding=(0, pad_f), groups=self.depthwise_conv.groups)
        x = self.pointwise_conv2(self.activation(self.pointwise_conv1(x)))
        return bypass + x, cached_left_pad


class Conv2dSubsampling(nn.Module):
    """[N, T, in_channels] -> ([N, (T-7)//2, out_channels], lengths (x_lens-7)//2).

    Needs T >= 9 (so that one frame comes out) and in_channels >= 7.
    icefall's channels are 8, 32, 128 and 384 (the ConvNeXt's hidden layer);
    fewer make the front end, most of a small model's cost, much cheaper.
    """

    def __init__(self, in_channels: int, out_channels: int, layer1_channels: int = 8,
                 layer2_channels: int = 32, layer3_channels: int = 128,
                 dropout: FloatLike = 0.1, convnext_hidden_channels: Optional[int] = None):
        super().__init__()
        assert in_channels >= 7, in_channels
        # Indices 0, 4 and 7 hold the convolutions (icefall's state_dict names).
        self.conv = nn.Sequential(
            nn.Conv2d(1, layer1_channels, kernel_size=3, padding=(0, 1)),  # (time, freq)
            ScaleGrad(0.2),
            Balancer(layer1_channels, channel_dim=1, max_abs=1.0),
            SwooshR(),
            nn.Conv2d(layer1_channels, layer2_channels, kernel_size=3, stride=2, padding=0),
            Balancer(layer2_channels, channel_dim=1, max_abs=4.0),
            SwooshR(),
            nn.Conv2d(layer2_channels, layer3_channels, kernel_size=3, stride=(1, 2)),
            Balancer(layer3_channels, channel_dim=1, max_abs=4.0),
            SwooshR(),
        )
        self.convnext = ConvNeXt(layer3_channels, convnext_hidden_channels, kernel_size=(7, 7))
        self.out_width = (((in_channels - 1) // 2) - 1) // 2
        self.layer3_channels = layer3_channels
        self.out = nn.Linear(self.out_width * layer3_channels, out_channels)
        self.out_whiten = Whiten(
            num_groups=1, whitening_limit=ScheduledFloat((0.0, 4.0), (20000.0, 8.0), default=4.0),
            prob=(0.025, 0.25), grad_scale=0.02)
        self.out_norm = BiasNorm(out_channels)
        self.dropout = Dropout3(dropout, shared_dim=1)

    def forward(self, x: Tensor, x_lens: Tensor) -> Tuple[Tensor, Tensor]:
        """x: [N, T, in_channels] (padded frames as given; they reach the convolutions);
        x_lens: [N]. Returns ([N, (T-7)//2, out_channels], [N])."""
        x = self.convnext(self.conv(x.unsqueeze(1)))  # [N, C, T', F']
        b, c, t, f = x.shape
        x = self.out(x.transpose(1, 2).reshape(b, t, c * f))
        x = self.dropout(self.out_norm(self.out_whiten(x)))
        x_lens = (x_lens - 7) // 2
        assert x.size(1) == int(x_lens.max()), (x.shape, x_lens)
        return x, x_lens

    def streaming_forward(self, x: Tensor, x_lens: Tensor,
                          cached_left_pad: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """One chunk (eval): x [N, T, in_channels] holding the chunk plus 13 frames
        of look-ahead; cached_left_pad from get_init_states() or the previous call.
        Returns ([N, (T-7)//2 - 3, out_channels], lengths (x_lens-7)//2 - 3, new cache)."""
        x, cached_left_pad = self.convnext.streaming_forward(self.conv(x.unsqueeze(1)),
                                                             cached_left_pad)
        b, c, t, f = x.shape
        x = self.out_norm(self.out(x.transpose(1, 2).reshape(b, t, c * f)))
        x_lens = (x_lens - 7) // 2 - self.convnext.padding[0]
        assert x.size(1) == int(x_lens.max()), (x.shape, x_lens)
        return x, x_lens, cached_left_pad

    def get_init_states(self, batch_size: int = 1,
                        device: torch.device = torch.device("cpu")) -> Tensor:
        """The ConvNeXt's zero left padding [N, layer3_channels, 3, out_width]."""
        return torch.zeros(batch_size, self.layer3_channels, self.convnext.padding[0],
                           self.out_width, device=device)
